//! Firmware images for the tests, built byte by byte: valid ones of each
//! family and broken ones.

use crate::helpers::pseudo_random_bytes;

pub const ESP32S3: u16 = 0x0009;
pub const ESP32C3: u16 = 0x0005;

/// An ESP-IDF application image of about `len` bytes: header, one segment
/// starting with `esp_app_desc_t`, filler.
pub fn esp32(chip: u16, version: &str, len: usize) -> Vec<u8> {
    let segment = len.saturating_sub(32).max(256);
    let mut img = vec![0u8; 24];
    img[0] = 0xE9;
    img[1] = 1;
    img[4..8].copy_from_slice(&0x4008_0000u32.to_le_bytes());
    img[12..14].copy_from_slice(&chip.to_le_bytes());
    img.extend_from_slice(&0x3F40_0020u32.to_le_bytes());
    img.extend_from_slice(&(segment as u32).to_le_bytes());
    let mut data = pseudo_random_bytes(segment, u64::from(chip) + version.len() as u64);
    data[..256].fill(0);
    data[0..4].copy_from_slice(&0xABCD_5432u32.to_le_bytes());
    data[16..16 + version.len()].copy_from_slice(version.as_bytes());
    data[48..58].copy_from_slice(b"brake-ecu\0");
    data[112..118].copy_from_slice(b"v5.2.1");
    img.extend_from_slice(&data);
    img
}

/// A raw STM32 binary with a sane vector table.
pub fn stm32(len: usize, seed: u64) -> Vec<u8> {
    let mut img = pseudo_random_bytes(len.max(512), seed);
    img[0..4].copy_from_slice(&0x2002_0000u32.to_le_bytes());
    img[4..8].copy_from_slice(&0x0800_0199u32.to_le_bytes());
    img
}

/// A Jetson OTA payload: tar.gz with `manifest.json` and a rootfs blob.
pub fn jetson(board: &str, version: &str) -> Vec<u8> {
    let manifest = format!(
        r#"{{"board":"{board}","l4t_version":"36.3.0","jetpack_version":"6.0","version":"{version}"}}"#
    );
    jetson_files(&[
        ("manifest.json", manifest.as_bytes()),
        ("rootfs.img", &pseudo_random_bytes(20_000, 3)),
    ])
}

/// A tar.gz of the given files.
pub fn jetson_files(files: &[(&str, &[u8])]) -> Vec<u8> {
    // Headers are filled by hand (not `append_data`) so that the tests
    // can build archives with hostile paths such as `../etc/passwd`.
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, data) in files {
        let mut header = tar::Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}
