//! Checksums computed while a copy streams: never a second read of the data.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// A running checksum.
#[derive(Clone)]
pub(crate) enum Hasher {
    Md5(md5::Md5),
    Crc32c(u32),
    Sha256(sha2::Sha256),
}

/// Checksum algorithms for `copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checksum {
    /// MD5 (what S3 single-part ETags and Azure Content-MD5 hold).
    Md5,
    /// CRC32C (Castagnoli).
    Crc32c,
    /// SHA-256.
    Sha256,
}

impl Checksum {
    /// The name as written.
    pub fn name(self) -> &'static str {
        match self {
            Checksum::Md5 => "md5",
            Checksum::Crc32c => "crc32c",
            Checksum::Sha256 => "sha256",
        }
    }

    /// Parses `md5`, `crc32c` or `sha256`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "md5" => Some(Checksum::Md5),
            "crc32c" => Some(Checksum::Crc32c),
            "sha256" => Some(Checksum::Sha256),
            _ => None,
        }
    }
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

/// The MD5 of each part of a multipart upload, for S3's multipart ETag: the MD5 of the parts'
/// MD5s, then `-N`. Parts are cut at `part_size` bytes, as the writer cuts them; 16 bytes a
/// part (S3 allows 10,000 parts).
pub(crate) struct PartMd5s {
    part_size: usize,
    filled: usize,
    current: md5::Md5,
    parts: Vec<[u8; 16]>,
}

impl PartMd5s {
    pub(crate) fn new(part_size: usize) -> Self {
        Self {
            part_size: part_size.max(1),
            filled: 0,
            current: <md5::Md5 as md5::Digest>::new(),
            parts: Vec::new(),
        }
    }

    pub(crate) fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (self.part_size - self.filled).min(bytes.len());
            md5::Digest::update(&mut self.current, &bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == self.part_size {
                self.close_part();
            }
        }
    }

    fn close_part(&mut self) {
        let done = std::mem::replace(&mut self.current, <md5::Md5 as md5::Digest>::new());
        self.parts.push(md5::Digest::finalize(done).into());
        self.filled = 0;
    }

    /// The multipart ETag's digest and its part count.
    pub(crate) fn finish(mut self) -> (Vec<u8>, usize) {
        if self.filled > 0 || self.parts.is_empty() {
            self.close_part();
        }
        let mut all = <md5::Md5 as md5::Digest>::new();
        for part in &self.parts {
            md5::Digest::update(&mut all, part);
        }
        (md5::Digest::finalize(all).to_vec(), self.parts.len())
    }
}

/// What the store says of the object's MD5.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StoreMd5 {
    /// The MD5 of the whole object: Azure's Content-MD5, or a single-part S3 ETag.
    Whole(Vec<u8>),
    /// An S3 multipart ETag: the MD5 of the parts' MD5s, and the number of parts.
    Parts(Vec<u8>, usize),
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the store says the object's MD5 is, when it says: Azure's Content-MD5, an S3 ETag of
/// a single-part upload (32 hex digits), or a multipart one (32 hex digits, `-N`).
///
/// An S3 bucket that encrypts with SSE-KMS or SSE-C returns ETags that are not MD5s: there,
/// use `checksum = "crc32c"` or `"sha256"` (the mismatch message says so).
pub(crate) fn store_md5(content_md5: Option<&str>, etag: Option<&str>) -> Option<StoreMd5> {
    if let Some(b64) = content_md5
        && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64.trim())
        && bytes.len() == 16
    {
        return Some(StoreMd5::Whole(bytes));
    }
    let etag = etag?.trim().trim_matches('"');
    let (digest, parts) = match etag.split_once('-') {
        Some((digest, parts)) => (digest, Some(parts.parse::<usize>().ok()?)),
        None => (etag, None),
    };
    if digest.len() != 32 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let bytes = (0..16)
        .map(|i| u8::from_str_radix(&digest[2 * i..2 * i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(match parts {
        Some(n) => StoreMd5::Parts(bytes, n),
        None => StoreMd5::Whole(bytes),
    })
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
    fn the_store_md5_comes_from_content_md5_or_an_etag() {
        let md5 = [
            0x5e, 0xb6, 0x3b, 0xbb, 0xe0, 0x1e, 0xee, 0xd0, 0x93, 0xcb, 0x22, 0xbb, 0x8f, 0x5a,
            0xcd, 0xc3,
        ];
        assert_eq!(
            store_md5(None, Some("\"5eb63bbbe01eeed093cb22bb8f5acdc3\"")),
            Some(StoreMd5::Whole(md5.to_vec()))
        );
        assert_eq!(
            store_md5(Some("XrY7u+Ae7tCTyyK7j1rNww=="), None),
            Some(StoreMd5::Whole(md5.to_vec()))
        );
        assert_eq!(
            store_md5(None, Some("\"5eb63bbbe01eeed093cb22bb8f5acdc3-3\"")),
            Some(StoreMd5::Parts(md5.to_vec(), 3)),
            "multipart"
        );
        assert_eq!(store_md5(None, Some("\"0x8DC1234\"")), None, "Azure ETag");
        assert_eq!(
            store_md5(None, Some("\"5eb63bbbe01eeed093cb22bb8f5acdc3-x\"")),
            None
        );
        assert_eq!(store_md5(None, None), None);
    }

    #[test]
    fn part_md5s_make_the_s3_multipart_etag_whatever_the_chunking() {
        let data: Vec<u8> = (0..25u32).map(|i| (i * 7) as u8).collect();
        let expected = {
            let mut all = <md5::Md5 as md5::Digest>::new();
            for part in data.chunks(10) {
                let digest: [u8; 16] = md5::Digest::finalize(md5::Digest::chain_update(
                    <md5::Md5 as md5::Digest>::new(),
                    part,
                ))
                .into();
                md5::Digest::update(&mut all, digest);
            }
            md5::Digest::finalize(all).to_vec()
        };
        for split in [1, 3, 10, 11, 25] {
            let mut parts = PartMd5s::new(10);
            for chunk in data.chunks(split) {
                parts.update(chunk);
            }
            assert_eq!(parts.finish(), (expected.clone(), 3), "chunks of {split}");
        }
        // Exactly two parts: no empty third part.
        let mut parts = PartMd5s::new(10);
        parts.update(&data[..20]);
        assert_eq!(parts.finish().1, 2);
    }
}
