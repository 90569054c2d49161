//! A source's file read through its compression, chosen by its name: `.gz` (gzip, every
//! member of a concatenated file), `.zst` or `.zstd` (every frame), anything else as it is.
//! Reading streams: memory stays at the decoders' windows whatever the file's size.

use std::io::{BufRead, BufReader, Read};

/// `raw` read through the compression `name` says.
pub(crate) fn decode(
    name: &str,
    raw: Box<dyn Read + Send>,
) -> std::io::Result<Box<dyn Read + Send>> {
    let name = name.to_ascii_lowercase();
    Ok(if name.ends_with(".gz") {
        Box::new(Decoded {
            inner: flate2::read::MultiGzDecoder::new(BufReader::new(raw)),
            format: "gzip",
        })
    } else if name.ends_with(".zst") || name.ends_with(".zstd") {
        Box::new(Decoded {
            inner: Zstd {
                source: Some(BufReader::new(raw)),
                frame: None,
            },
            format: "zstd",
        })
    } else {
        raw
    })
}

/// A decoder whose errors say what the file was taken for, and how to fix it.
struct Decoded<R> {
    inner: R,
    format: &'static str,
}

impl<R: Read> Read for Decoded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "cannot decompress it as {} ({e}): its name says it is compressed; rename it if it is not",
                    self.format
                ),
            )
        })
    }
}

/// A zstd stream of any number of frames (`zstd` and `pzstd` write several for large files).
struct Zstd<R: BufRead> {
    /// The compressed bytes, between frames.
    source: Option<R>,
    /// The frame being read.
    frame: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(frame) = &mut self.frame {
                let n = frame.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                // The frame is done: the next one (if any) starts where it ended.
                self.source = self.frame.take().map(|frame| frame.into_inner());
            }
            let Some(mut source) = self.source.take() else {
                return Ok(0);
            };
            if source.fill_buf()?.is_empty() {
                self.source = Some(source);
                return Ok(0);
            }
            let frame = ruzstd::decoding::StreamingDecoder::new(source)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            self.frame = Some(frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gzip(text: &str) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        encoder.finish().unwrap_or_else(|e| panic!("{e}"))
    }

    fn zstd(text: &str) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(
            text.as_bytes(),
            ruzstd::encoding::CompressionLevel::Fastest,
        )
    }

    fn read(name: &str, bytes: &[u8]) -> std::io::Result<String> {
        let mut text = String::new();
        decode(name, Box::new(std::io::Cursor::new(bytes.to_vec())))?.read_to_string(&mut text)?;
        Ok(text)
    }

    #[test]
    fn each_member_and_frame_is_read_in_turn() {
        let gz = [gzip("a\nb\n"), gzip("c\n")].concat();
        assert_eq!(read("keys.txt.gz", &gz).ok().as_deref(), Some("a\nb\nc\n"));
        let zst = [zstd("a\nb\n"), zstd("c\n")].concat();
        assert_eq!(
            read("keys.txt.zst", &zst).ok().as_deref(),
            Some("a\nb\nc\n")
        );
        assert_eq!(read("KEYS.ZSTD", &zstd("x")).ok().as_deref(), Some("x"));
        assert_eq!(read("keys.txt", b"plain").ok().as_deref(), Some("plain"));
    }

    #[test]
    fn a_file_that_is_not_what_its_name_says_is_an_error() {
        assert!(read("keys.txt.gz", b"not gzip at all").is_err());
        let error = read("keys.txt.zst", b"not zstd at all")
            .err()
            .map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .unwrap_or("")
                .contains("cannot decompress it as zstd"),
            "{error:?}"
        );
    }
}
