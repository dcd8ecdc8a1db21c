//! A status message as it comes off the broker: the device id from the
//! topic and the payload, through each shipped device plugin's parser.
//! Whatever the bytes, parsing returns a status or an error; it never
//! panics, and a parsed status stays within the message's bounds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rollway_plugin_sdk::device::{DeviceFamily, load_config};

fn check<F: DeviceFamily>(topic_device: &str, payload: &[u8]) {
    let Ok(config) = load_config::<F>("{}") else {
        panic!("the default configuration is valid");
    };
    if let Ok(status) = F::parse_status(&config, topic_device, payload) {
        assert!(status.progress.is_none_or(|p| p <= 100), "{status:?}");
        assert!((1..=128).contains(&status.message_id.len()), "{status:?}");
        assert!(
            status.error.as_ref().is_none_or(|e| e.len() <= 1024),
            "{status:?}"
        );
        assert!(status.device_id.len() <= 64 || status.device_id == topic_device);
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte says how long the topic's device id is.
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let (topic, payload) = rest.split_at((len as usize).min(rest.len()));
    let topic_device = String::from_utf8_lossy(topic);
    check::<device_esp32::Esp32>(&topic_device, payload);
    check::<device_stm32::Stm32>(&topic_device, payload);
    check::<device_jetson::Jetson>(&topic_device, payload);
});
