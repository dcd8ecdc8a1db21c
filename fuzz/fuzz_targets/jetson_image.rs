//! An uploaded jetson image through the `device-jetson` plugin's validator.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rollway_fuzz::validate_image::<device_jetson::Jetson>(data);
});
