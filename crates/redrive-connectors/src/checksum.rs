//! Checksums computed while a copy streams: never a second read of the data.

use base64::Engine as _;
use redrive_core::plan::Checksum;

/// A running checksum.
pub(crate) enum Hasher {
    Md5(md5::Md5),
    Crc32c(u32),
    Sha256(sha2::Sha256),
}

impl Hasher {
    pub(crate) fn new(algorithm: Checksum) -> Self {
        match algorithm {
            Checksum::Md5 => Hasher::Md5(<md5::Md5 as md5::Digest>::new()),
            Checksum::Crc32c => Hasher::Crc32c(0),
            Checksum::Sha256 => Hasher::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Md5(h) => md5::Digest::update(h, bytes),
            Hasher::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, bytes),
            Hasher::Sha256(h) => sha2::Digest::update(h, bytes),
        }
    }

    /// The digest's bytes.
    pub(crate) fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Md5(h) => md5::Digest::finalize(h).to_vec(),
            Hasher::Crc32c(crc) => crc.to_be_bytes().to_vec(),
            Hasher::Sha256(h) => sha2::Digest::finalize(h).to_vec(),
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the store says the object's MD5 is, when it says: Azure's Content-MD5, or an S3
/// ETag of a single-part upload (32 hex digits; multipart ETags end in `-N`).
pub(crate) fn store_md5(content_md5: Option<&str>, etag: Option<&str>) -> Option<Vec<u8>> {
    if let Some(b64) = content_md5
        && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64.trim())
    {
        return Some(bytes);
    }
    let etag = etag?.trim().trim_matches('"');
    if etag.len() == 32 && etag.chars().all(|c| c.is_ascii_hexdigit()) {
        return (0..16)
            .map(|i| u8::from_str_radix(&etag[2 * i..2 * i + 2], 16).ok())
            .collect();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(algorithm: Checksum, parts: &[&[u8]]) -> String {
        let mut hasher = Hasher::new(algorithm);
        for part in parts {
            hasher.update(part);
        }
        hex(&hasher.finish())
    }

    #[test]
    fn known_digests_whatever_the_chunking() {
        assert_eq!(
            digest(Checksum::Md5, &[b"hello ", b"world"]),
            "5eb63bbbe01eeed093cb22bb8f5acdc3"
        );
        assert_eq!(
            digest(Checksum::Sha256, &[b"hello", b" world"]),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        // CRC-32C check value of "123456789" is 0xE3069283.
        assert_eq!(digest(Checksum::Crc32c, &[b"1234", b"56789"]), "e3069283");
    }

    #[test]
    fn the_store_md5_comes_from_content_md5_or_a_single_part_etag() {
        let md5 = [
            0x5e, 0xb6, 0x3b, 0xbb, 0xe0, 0x1e, 0xee, 0xd0, 0x93, 0xcb, 0x22, 0xbb, 0x8f, 0x5a,
            0xcd, 0xc3,
        ];
        assert_eq!(
            store_md5(None, Some("\"5eb63bbbe01eeed093cb22bb8f5acdc3\"")).as_deref(),
            Some(&md5[..])
        );
        assert_eq!(
            store_md5(Some("XrY7u+Ae7tCTyyK7j1rNww=="), None).as_deref(),
            Some(&md5[..])
        );
        assert_eq!(
            store_md5(None, Some("\"5eb63bbbe01eeed093cb22bb8f5acdc3-3\"")),
            None,
            "multipart"
        );
    }
}
