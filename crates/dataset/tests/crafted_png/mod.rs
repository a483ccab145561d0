//! A crafted PNG for the tests of the image side limit, shared by the dataset crate's tests and
//! (through `#[path]`) the download crate's: both crates refuse it through
//! `dexpression_dataset::decode_image`.

/// A PNG signature and IHDR declaring `width` x `height` grayscale, with no pixel data: what a
/// crafted image needs to make a decoder allocate.
pub fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut crc = !0u32;
    for &byte in &ihdr {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&(!crc).to_be_bytes());
    // An empty IDAT (its CRC is fixed): decoders read the header up to the first data chunk.
    png.extend_from_slice(&0u32.to_be_bytes());
    png.extend_from_slice(b"IDAT");
    png.extend_from_slice(&0x35AF_061Eu32.to_be_bytes());
    png
}
