//! Reading a host-owned image as a `std::io::Read` + `Seek`.

use std::io;

/// Largest read the host serves in one call.
pub const MAX_READ: u32 = 1024 * 1024;

/// Reads an image through a `read(offset, len)` function.
pub struct Reader<F> {
    read: F,
    size: u64,
    position: u64,
}

impl<F> Reader<F>
where
    F: FnMut(u64, u32) -> Result<Vec<u8>, String>,
{
    pub fn new(size: u64, read: F) -> Self {
        Self {
            read,
            size,
            position: 0,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads exactly `len` bytes at `offset`, or says the image is too short.
    pub fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let want = (len - out.len()).min(MAX_READ as usize) as u32;
            let chunk = (self.read)(offset + out.len() as u64, want)?;
            if chunk.is_empty() {
                return Err(format!(
                    "image ends at byte {} but {} bytes were expected at offset {offset}",
                    self.size, len
                ));
            }
            out.extend_from_slice(&chunk);
        }
        out.truncate(len);
        Ok(out)
    }
}

impl<F> io::Read for Reader<F>
where
    F: FnMut(u64, u32) -> Result<Vec<u8>, String>,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.position >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(MAX_READ as usize) as u32;
        let chunk = (self.read)(self.position, want).map_err(io::Error::other)?;
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        self.position += n as u64;
        Ok(n)
    }
}

impl<F> io::Seek for Reader<F> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let next = match pos {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::End(d) => self.size.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        self.position = next.ok_or_else(|| io::Error::other("seek before the start"))?;
        Ok(self.position)
    }
}

/// A NUL-terminated (or NUL-padded) text field, lossily decoded and trimmed.
pub fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn reads_whole_images_in_pieces() {
        let data: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let source = data.clone();
        let mut reader = Reader::new(data.len() as u64, move |off, len| {
            let start = (off as usize).min(source.len());
            let end = (start + len as usize).min(source.len()).min(start + 7);
            Ok(source[start..end].to_vec())
        });
        assert_eq!(reader.read_at(10, 20).unwrap(), data[10..30]);
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
        assert!(reader.read_at(2990, 20).is_err());
    }
}
