//! Small, valid firmware images of each family, built byte by byte: the demo
//! firmware `rollway up` offers, and fixtures for tests. They pass the
//! shipped device plugins' validation; their payload is filler.

/// ESP32 chip ids of the ESP-IDF image header.
pub const ESP32S3: u16 = 0x0009;
pub const ESP32C3: u16 = 0x0005;

/// Deterministic filler bytes (xorshift), so images are reproducible.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// An ESP-IDF application image of about `len` bytes: header, one segment
/// starting with `esp_app_desc_t` (which names `version`), filler.
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
    let version = &version.as_bytes()[..version.len().min(31)];
    data[16..16 + version.len()].copy_from_slice(version);
    data[48..58].copy_from_slice(b"brake-ecu\0");
    data[112..118].copy_from_slice(b"v5.2.1");
    img.extend_from_slice(&data);
    img
}

/// A raw STM32 binary with a sane vector table (stack in SRAM, reset
/// handler in flash).
pub fn stm32(len: usize, seed: u64) -> Vec<u8> {
    let mut img = pseudo_random_bytes(len.max(512), seed);
    img[0..4].copy_from_slice(&0x2002_0000u32.to_le_bytes());
    img[4..8].copy_from_slice(&0x0800_0199u32.to_le_bytes());
    img
}

/// A Jetson OTA payload: a tar.gz with `manifest.json` and a rootfs blob.
pub fn jetson(board: &str, version: &str) -> Vec<u8> {
    let manifest = serde_json::json!({
        "board": board, "l4t_version": "36.3.0", "jetpack_version": "6.0", "version": version,
    })
    .to_string();
    let rootfs = pseudo_random_bytes(20_000, 3);
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, data) in [
        ("manifest.json", manifest.as_bytes()),
        ("rootfs.img", &rootfs),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // Writing into a Vec cannot fail.
        let _ = builder.append_data(&mut header, name, data);
    }
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .unwrap_or_default()
}

/// The demo firmware `rollway up` uploads: `(family, version, image)`,
/// matching the simulator's models (ESP32-S3, STM32F4, Jetson Orin NX).
pub fn firmware(version: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("esp32", esp32(ESP32S3, version, 64 * 1024)),
        ("stm32", stm32(32 * 1024, 7)),
        ("jetson", jetson("jetson-orin-nx", version)),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn images_are_reproducible() {
        assert_eq!(super::esp32(super::ESP32S3, "1.0.0", 4096).len(), 4096);
        assert_eq!(super::stm32(1000, 1), super::stm32(1000, 1));
        let a = super::jetson("jetson-orin-nx", "1.0.0");
        assert_eq!(&a[..2], &[0x1f, 0x8b], "gzip magic");
    }
}
