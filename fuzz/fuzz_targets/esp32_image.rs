//! An uploaded esp32 image through the `device-esp32` plugin's validator.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rollway_fuzz::validate_image::<device_esp32::Esp32>(data);
});
