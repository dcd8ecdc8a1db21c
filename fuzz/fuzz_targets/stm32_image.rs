//! An uploaded stm32 image through the `device-stm32` plugin's validator.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rollway_fuzz::validate_image::<device_stm32::Stm32>(data);
});
