//! `lines = "FILE"` (a path, or any store's URL): one item per non-empty line, field `line`;
//! `FILE.gz` and `FILE.zst` are read through their compression.

pub(crate) mod config;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::Path;

use futures::stream::BoxStream;
use redrive_core::item::Fields;
use redrive_core::source::{Source, SourceError};

use super::input_file::InputFile;

/// A text file, one item per line; blank lines are ignored, a trailing `\r` is dropped.
#[derive(Debug)]
pub struct LinesSource {
    file: InputFile,
}

impl LinesSource {
    /// Checks that the local file can be opened.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        Self::read(InputFile::local(path)?)
    }

    /// A source of the file's lines.
    pub(crate) fn read(file: InputFile) -> Result<Self, SourceError> {
        Ok(Self { file })
    }
}

impl Source for LinesSource {
    fn revision(&self) -> Option<String> {
        self.file.revision()
    }

    fn fields(&self) -> BTreeSet<String> {
        ["line".to_owned()].into()
    }

    fn place_of(&self, fields: &Fields) -> futures::future::BoxFuture<'static, Option<String>> {
        let wanted = fields.clone();
        super::place_in_file(&self.file, move |input| {
            let reader = std::io::BufReader::new(input.open().ok()?);
            for (number, line) in (1u64..).zip(reader.split(b'\n')) {
                let line = line.ok()?;
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches('\r');
                if super::holds(|name| (name == "line").then(|| text.to_owned()), &wanted) {
                    return Some(number);
                }
            }
            None
        })
    }

    fn items(&self, _context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        super::line_items(&self.file, |line| {
            Ok(Fields::from([("line".to_owned(), line.to_owned())]))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn non_empty_lines_become_items() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("keys.txt");
        std::fs::write(&path, "a\r\n\n  \nb c\nlast").unwrap_or_else(|e| panic!("{e}"));
        let source = LinesSource::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let lines: Vec<String> = source
            .items(&Fields::new())
            .filter_map(|item| async move { item.ok().and_then(|f| f.get("line").cloned()) })
            .collect()
            .await;
        assert_eq!(lines, ["a", "b c", "last"]);
    }

    #[tokio::test]
    async fn a_byte_order_mark_is_not_part_of_the_first_line() {
        // As a Windows editor or Excel saves a list; compressed the same.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let plain = dir.path().join("keys.txt");
        std::fs::write(&plain, "\u{feff}a.json\r\nb.json\r\n").unwrap_or_else(|e| panic!("{e}"));
        let packed = dir.path().join("keys.txt.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, "\u{feff}a.json\n".as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&packed, gz.finish().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        // A file shorter than the mark, and one that starts like it but is not, are read as is.
        let short = dir.path().join("short.txt");
        std::fs::write(&short, "x").unwrap_or_else(|e| panic!("{e}"));
        let near = dir.path().join("near.txt");
        std::fs::write(&near, b"\xEF\xBB!\n").unwrap_or_else(|e| panic!("{e}"));
        let lines = |path: std::path::PathBuf| async move {
            let source = LinesSource::open(&path).unwrap_or_else(|e| panic!("{e}"));
            source
                .items(&Fields::new())
                .map(|item| match item {
                    Ok(fields) => fields.get("line").cloned().unwrap_or_default(),
                    Err(e) => e.to_string(),
                })
                .collect::<Vec<String>>()
                .await
        };
        assert_eq!(lines(plain.clone()).await, ["a.json", "b.json"]);
        assert_eq!(lines(packed).await, ["a.json"]);
        assert_eq!(lines(short).await, ["x"]);
        let near_shown = near.display().to_string();
        assert_eq!(
            lines(near).await,
            [format!(
                "{near_shown}:1: the line is not valid UTF-8; save the file as UTF-8"
            )]
        );
        let source = LinesSource::open(&plain).unwrap_or_else(|e| panic!("{e}"));
        let line = Fields::from([("line".to_owned(), "a.json".to_owned())]);
        assert_eq!(
            source.place_of(&line).await,
            Some(format!("{}:1", plain.display()))
        );
    }

    #[tokio::test]
    async fn a_lines_place_counts_blank_lines() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("keys.txt");
        std::fs::write(&path, "a\r\n\nb\n").unwrap_or_else(|e| panic!("{e}"));
        let source = LinesSource::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let line = |text: &str| Fields::from([("line".to_owned(), text.to_owned())]);
        let file = path.display();
        assert_eq!(source.place_of(&line("a")).await, Some(format!("{file}:1")));
        assert_eq!(source.place_of(&line("b")).await, Some(format!("{file}:3")));
        assert_eq!(source.place_of(&line("c")).await, None);
    }

    #[tokio::test]
    async fn invalid_utf8_names_the_line() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("keys.txt");
        std::fs::write(&path, b"ok\n\xff\n").unwrap_or_else(|e| panic!("{e}"));
        let source = LinesSource::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let last = source.items(&Fields::new()).collect::<Vec<_>>().await.pop();
        let message = last
            .and_then(Result::err)
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            message,
            format!(
                "{}:2: the line is not valid UTF-8; save the file as UTF-8",
                path.display()
            )
        );
    }
}
