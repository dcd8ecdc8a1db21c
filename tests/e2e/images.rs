//! Firmware images for the tests, built byte by byte: valid ones of each
//! family (shared with `rollway up`'s demo firmware) and broken ones.

pub use rollway::demo::{ESP32C3, ESP32S3, esp32, jetson, stm32};

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
