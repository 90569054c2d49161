//! `csv = "FILE"` (a path, or any store's URL): one item per row, fields named by the header;
//! `FILE.gz` and `FILE.zst` are read through their compression.

pub(crate) mod config;

use std::collections::BTreeSet;
use std::path::Path;

use futures::stream::BoxStream;
use redrive_core::item::Fields;
use redrive_core::source::{Source, SourceError};

use super::input_file::InputFile;
use super::{blocking_stream, input};

/// A CSV file with a header row.
#[derive(Debug)]
pub struct CsvSource {
    file: InputFile,
    delimiter: u8,
    headers: Vec<String>,
}

impl CsvSource {
    /// Opens a local file and reads its header.
    pub fn open(path: &Path, delimiter: u8) -> Result<Self, SourceError> {
        Self::read(InputFile::Local(path.to_path_buf()), delimiter)
    }

    /// Reads the file's header.
    pub(crate) fn read(source: InputFile, delimiter: u8) -> Result<Self, SourceError> {
        let file = source.display();
        let mut reader = reader(&source, delimiter)?;
        let headers = reader.headers().map_err(|e| row_error(&file, &e))?;
        if headers.is_empty() || headers.iter().all(str::is_empty) {
            return Err(input(
                format!("{file}:1"),
                "the file is empty; a csv source needs a header row naming the columns, e.g. `JobId,WorkItemId`",
            ));
        }
        let headers: Vec<String> = headers.iter().map(|h| h.trim().to_owned()).collect();
        let mut seen = BTreeSet::new();
        for header in &headers {
            if header.is_empty() {
                return Err(input(
                    format!("{file}:1"),
                    "the header has an empty column name; name every column",
                ));
            }
            if !seen.insert(header) {
                return Err(input(
                    format!("{file}:1"),
                    format!("column `{header}` appears twice in the header"),
                ));
            }
        }
        Ok(Self {
            file: source,
            delimiter,
            headers,
        })
    }
}

fn reader(
    input: &InputFile,
    delimiter: u8,
) -> Result<csv::Reader<Box<dyn std::io::Read + Send>>, SourceError> {
    let file = input.open().map_err(|e| SourceError::Io {
        location: input.display(),
        source: Box::new(e),
    })?;
    Ok(csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .from_reader(file))
}

fn row_error(file: &str, error: &csv::Error) -> SourceError {
    let line = error.position().map_or(0, csv::Position::line);
    let message = match error.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!(
            "the row has {len} fields but the header has {expected_len}; quote fields that contain the delimiter"
        ),
        csv::ErrorKind::Utf8 { .. } => {
            "the row is not valid UTF-8; save the file as UTF-8".to_owned()
        }
        _ => error.to_string(),
    };
    input(format!("{file}:{line}"), message)
}

impl Source for CsvSource {
    fn revision(&self) -> Option<String> {
        self.file.revision()
    }

    fn fields(&self) -> BTreeSet<String> {
        self.headers.iter().cloned().collect()
    }

    fn place_of(&self, fields: &Fields) -> futures::future::BoxFuture<'static, Option<String>> {
        let (delimiter, headers, wanted) = (self.delimiter, self.headers.clone(), fields.clone());
        super::place_in_file(&self.file, move |input| {
            let mut reader = reader(input, delimiter).ok()?;
            let mut record = csv::StringRecord::new();
            while reader.read_record(&mut record).ok()? {
                let value = |name: &str| {
                    let column = headers.iter().position(|h| h == name)?;
                    record.get(column).map(str::to_owned)
                };
                if super::holds(value, &wanted) {
                    return record.position().map(csv::Position::line);
                }
            }
            None
        })
    }

    fn items(&self, _context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        let input = self.file.clone();
        let delimiter = self.delimiter;
        let headers = self.headers.clone();
        blocking_stream(move |sender| {
            let file = input.display();
            let mut reader = match reader(&input, delimiter) {
                Ok(reader) => reader,
                Err(error) => {
                    let _ = sender.blocking_send(Err(error));
                    return;
                }
            };
            let mut record = csv::StringRecord::new();
            loop {
                let item = match reader.read_record(&mut record) {
                    Ok(false) => return,
                    Ok(true) => Ok(headers
                        .iter()
                        .zip(record.iter())
                        .map(|(name, value)| (name.clone(), value.to_owned()))
                        .collect()),
                    Err(error) => Err(row_error(&file, &error)),
                };
                let stop = item.is_err();
                if sender.blocking_send(item).is_err() || stop {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("items.csv");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        (dir, path)
    }

    async fn read(text: &str) -> Result<Vec<Fields>, String> {
        let (_dir, path) = write(text);
        let source = CsvSource::open(&path, b',')
            .map_err(|e| e.to_string().replace(&path.display().to_string(), "F"))?;
        let items: Vec<_> = source.items(&Fields::new()).collect().await;
        items
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string().replace(&path.display().to_string(), "F"))
    }

    #[tokio::test]
    async fn rows_become_fields_named_by_the_header() {
        let items = read("JobId,WorkItemId\nj1,w1\nj2,\"w,2\"\n")
            .await
            .unwrap_or_default();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].get("WorkItemId").map(String::as_str), Some("w,2"));
        assert_eq!(items[0].get("JobId").map(String::as_str), Some("j1"));
    }

    #[tokio::test]
    async fn a_short_row_names_file_and_line() {
        assert_eq!(
            read("a,b\n1,2\n3\n").await,
            Err("F:3: the row has 1 fields but the header has 2; quote fields that contain the delimiter".to_owned())
        );
    }

    #[tokio::test]
    async fn invalid_utf8_names_file_and_line() {
        let (_dir, path) = write("");
        std::fs::write(&path, b"a\nok\n\xff\xfe\n").unwrap_or_else(|e| panic!("{e}"));
        let source = CsvSource::open(&path, b',').unwrap_or_else(|e| panic!("{e}"));
        let last = source.items(&Fields::new()).collect::<Vec<_>>().await.pop();
        let message = last
            .and_then(Result::err)
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.ends_with(":3: the row is not valid UTF-8; save the file as UTF-8"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn an_empty_file_needs_a_header() {
        let error = read("").await.err().unwrap_or_default();
        assert!(error.starts_with("F:1: the file is empty"), "{error}");
    }

    #[tokio::test]
    async fn duplicate_columns_are_refused() {
        assert_eq!(
            read("a,a\n1,2\n").await,
            Err("F:1: column `a` appears twice in the header".to_owned())
        );
    }

    #[tokio::test]
    async fn a_rows_place_is_its_first_line_in_the_file() {
        // The second row spans two lines (a quoted newline): the rows after it are one further.
        let (_dir, path) = write("JobId,WorkItemId\nJ1,A\nJ1,\"B\nb\"\nJ2,A\n");
        let source = CsvSource::open(&path, b',').unwrap_or_else(|e| panic!("{e}"));
        let row = |job: &str, item: &str| {
            Fields::from([
                ("JobId".to_owned(), job.to_owned()),
                ("WorkItemId".to_owned(), item.to_owned()),
            ])
        };
        let file = path.display();
        assert_eq!(
            source.place_of(&row("J1", "A")).await,
            Some(format!("{file}:2"))
        );
        assert_eq!(
            source.place_of(&row("J2", "A")).await,
            Some(format!("{file}:5"))
        );
        // Fewer fields match any row that has their values; an unknown one matches none.
        let some = Fields::from([("WorkItemId".to_owned(), "B\nb".to_owned())]);
        assert_eq!(source.place_of(&some).await, Some(format!("{file}:3")));
        assert_eq!(source.place_of(&row("J9", "A")).await, None);
    }

    #[tokio::test]
    async fn a_missing_file_is_named() {
        let error = CsvSource::open(Path::new("/nonexistent/x.csv"), b',')
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(error, Err("failed to read `/nonexistent/x.csv`".to_owned()));
    }
}
