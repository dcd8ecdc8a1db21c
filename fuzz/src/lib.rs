//! What Rollway's fuzz targets share: feeding bytes to a device plugin's
//! logic as the host would.

use rollway_plugin_sdk::device::{DeviceFamily, Image, load_config};

/// Validates `data` as an image of `F`'s family: any bytes give facts or
/// an error, never a panic or a read past the end.
pub fn validate_image<F: DeviceFamily>(data: &[u8]) {
    let Ok(config) = load_config::<F>("{}") else {
        panic!("the default configuration is valid");
    };
    let size = data.len() as u64;
    let mut image: Image<'_> = Image::new(
        size,
        Box::new(|offset: u64, len: u32| {
            assert!(offset <= size, "read at {offset} past the end ({size})");
            let start = offset as usize;
            let end = start.saturating_add(len as usize).min(data.len());
            Ok(data[start..end].to_vec())
        }),
    );
    let _ = F::validate_image(&config, &mut image);
}
