//! `parquet = "FILE"`: one item per row of an Apache Parquet file, its top-level columns as
//! fields (text as it is; numbers and booleans as written; timestamps as RFC 3339 times, dates
//! as `YYYY-MM-DD`; a null as empty; nested values as their text). `FILE` is a path or any
//! store's URL. Also how Parquet inventory reports are read ([`Seekable`], [`each_row`]).
//!
//! Parquet keeps its schema and row-group index at the end of the file, so a reader seeks:
//! a file in a store is first copied to a temporary file without a name (nothing is left
//! behind, even by a kill -9), then read a row group at a time. Memory is one row group's
//! columns, never the file.

pub(crate) mod config;

use std::collections::BTreeSet;
use std::io::{Read, Seek as _};

use ::parquet::file::reader::{FileReader, SerializedFileReader};
use ::parquet::record::Field;
use futures::stream::BoxStream;
use redrive_core::item::Fields;
use redrive_core::source::{Source, SourceError};

use super::input_file::InputFile;
use super::{blocking_stream, input};

/// A Parquet file.
#[derive(Debug)]
pub(crate) struct ParquetSource {
    file: InputFile,
    columns: Vec<String>,
}

impl ParquetSource {
    /// Reads the file's schema for the fields.
    pub(crate) fn read(file: InputFile) -> Result<Self, SourceError> {
        let shown = file.display();
        let seekable = Seekable::of(&file, |raw| raw).map_err(|e| SourceError::Io {
            location: shown.clone(),
            source: Box::new(e),
        })?;
        let columns = seekable
            .columns()
            .map_err(|message| input(&shown, message))?;
        Ok(Self { file, columns })
    }
}

impl Source for ParquetSource {
    fn fields(&self) -> BTreeSet<String> {
        self.columns.iter().cloned().collect()
    }

    fn revision(&self) -> Option<String> {
        self.file.revision()
    }

    fn items(&self, _context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        let file = self.file.clone();
        blocking_stream(move |sender| {
            let shown = file.display();
            let seekable = match Seekable::of(&file, |raw| raw) {
                Ok(seekable) => seekable,
                Err(e) => {
                    let _ = sender.blocking_send(Err(SourceError::Io {
                        location: shown,
                        source: Box::new(e),
                    }));
                    return;
                }
            };
            let read = each_row(seekable, 0, |_, fields| {
                sender.blocking_send(Ok(fields)).map_err(|_| Gone)
            });
            if let Err(Stopped::Failed { row, message }) = read {
                let _ = sender.blocking_send(Err(input(format!("{shown}: row {row}"), message)));
            }
        })
    }
}

/// A Parquet file where the reader can seek: a local file as it is, or an object's bytes in
/// an unnamed temporary file.
pub(crate) struct Seekable {
    file: std::fs::File,
}

impl Seekable {
    /// Opens `file` for reading, passing its bytes as stored through `check` on the way (an
    /// inventory's MD5 and size; the check's error stops here). A local file is read through
    /// `check` once, then opened again.
    pub(crate) fn of(
        file: &InputFile,
        check: impl FnOnce(Box<dyn Read + Send>) -> Box<dyn Read + Send>,
    ) -> std::io::Result<Self> {
        let mut bytes = check(file.raw()?);
        match file {
            InputFile::Local(path) => {
                std::io::copy(&mut bytes, &mut std::io::sink())?;
                Ok(Self {
                    file: std::fs::File::open(path)?,
                })
            }
            InputFile::Object(_) => {
                let mut copy = tempfile::tempfile()?;
                std::io::copy(&mut bytes, &mut copy)?;
                copy.rewind()?;
                Ok(Self { file: copy })
            }
        }
    }

    fn reader(&self) -> Result<SerializedFileReader<std::fs::File>, String> {
        let file = self.file.try_clone().map_err(|e| e.to_string())?;
        SerializedFileReader::new(file).map_err(|e| {
            format!("not a Parquet file that can be read ({e}); a parquet source needs an Apache Parquet file")
        })
    }

    /// The top-level columns' names, in order.
    pub(crate) fn columns(&self) -> Result<Vec<String>, String> {
        let reader = self.reader()?;
        let schema = reader.metadata().file_metadata().schema();
        Ok(schema
            .get_fields()
            .iter()
            .map(|field| field.name().to_owned())
            .collect())
    }
}

/// The consumer of the rows is gone: stop reading.
pub(crate) struct Gone;

/// Why reading rows stopped early.
pub(crate) enum Stopped {
    /// The consumer is gone.
    Gone,
    /// The file could not be read at `row` (1-based; 0 before the first).
    Failed { row: u64, message: String },
}

/// Calls `row` with each row's number (from 1) and fields, after the first `skip` rows.
pub(crate) fn each_row(
    file: Seekable,
    skip: u64,
    mut row: impl FnMut(u64, Fields) -> Result<(), Gone>,
) -> Result<(), Stopped> {
    let failed = |row: u64, message: String| Stopped::Failed { row, message };
    let reader = file.reader().map_err(|message| failed(0, message))?;
    let rows = ::parquet::record::reader::RowIter::from_file_into(Box::new(reader));
    for (number, read) in (1u64..).zip(rows) {
        let read = read.map_err(|e| failed(number, codec_hint(e.to_string())))?;
        if number <= skip {
            continue;
        }
        let fields: Fields = read
            .get_column_iter()
            .map(|(name, value)| (name.clone(), text(value)))
            .collect();
        row(number, fields).map_err(|Gone| Stopped::Gone)?;
    }
    Ok(())
}

/// A value as an item's field holds it.
fn text(value: &Field) -> String {
    match value {
        Field::Null => String::new(),
        Field::Str(text) => text.clone(),
        Field::Bytes(bytes) => String::from_utf8_lossy(bytes.data()).into_owned(),
        Field::TimestampMillis(ms) => jiff::Timestamp::from_millisecond(*ms)
            .map_or_else(|_| ms.to_string(), |t| t.to_string()),
        Field::TimestampMicros(us) => jiff::Timestamp::from_microsecond(*us)
            .map_or_else(|_| us.to_string(), |t| t.to_string()),
        other => other.to_string(),
    }
}

/// A codec this build leaves out says which, and what to do.
fn codec_hint(message: String) -> String {
    if message.contains("Disabled feature") || message.contains("not supported") {
        format!(
            "{message}: this build of redrive reads Parquet pages that are uncompressed or use SNAPPY, GZIP or LZ4; write the file with one of those"
        )
    } else {
        message
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use ::parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use ::parquet::file::properties::WriterProperties;
    use ::parquet::file::writer::SerializedFileWriter;
    use ::parquet::schema::parser::parse_message_type;

    /// Writes a Parquet file of `(key, size, modified ms)` rows, `per_group` rows a row group.
    fn write(path: &std::path::Path, rows: &[(&str, i64, i64)], per_group: usize) {
        let schema = Arc::new(
            parse_message_type(
                "message m { required binary key (UTF8); optional int64 size; \
                 optional int64 modified (TIMESTAMP_MILLIS); }",
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(::parquet::basic::Compression::SNAPPY)
                .build(),
        );
        let file = std::fs::File::create(path).unwrap_or_else(|e| panic!("{e}"));
        let mut writer =
            SerializedFileWriter::new(file, schema, props).unwrap_or_else(|e| panic!("{e}"));
        for group in rows.chunks(per_group.max(1)) {
            let mut rg = writer.next_row_group().unwrap_or_else(|e| panic!("{e}"));
            let keys: Vec<ByteArray> = group.iter().map(|r| ByteArray::from(r.0)).collect();
            let sizes: Vec<i64> = group.iter().map(|r| r.1).collect();
            let times: Vec<i64> = group.iter().map(|r| r.2).collect();
            let levels = vec![1i16; group.len()];
            let mut column = rg
                .next_column()
                .unwrap_or_else(|e| panic!("{e}"))
                .expect("key");
            column
                .typed::<ByteArrayType>()
                .write_batch(&keys, None, None)
                .unwrap_or_else(|e| panic!("{e}"));
            column.close().unwrap_or_else(|e| panic!("{e}"));
            for values in [&sizes, &times] {
                let mut column = rg
                    .next_column()
                    .unwrap_or_else(|e| panic!("{e}"))
                    .expect("col");
                column
                    .typed::<Int64Type>()
                    .write_batch(values, Some(&levels), None)
                    .unwrap_or_else(|e| panic!("{e}"));
                column.close().unwrap_or_else(|e| panic!("{e}"));
            }
            rg.close().unwrap_or_else(|e| panic!("{e}"));
        }
        writer.close().unwrap_or_else(|e| panic!("{e}"));
    }

    fn rows_of(path: &std::path::Path, skip: u64) -> Vec<(u64, Fields)> {
        let file = InputFile::Local(path.to_path_buf());
        let seekable = Seekable::of(&file, |raw| raw).unwrap_or_else(|e| panic!("{e}"));
        let mut rows = Vec::new();
        let read = each_row(seekable, skip, |n, fields| {
            rows.push((n, fields));
            Ok(())
        });
        assert!(read.is_ok());
        rows
    }

    #[test]
    fn rows_are_read_across_row_groups_with_their_values_as_text() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("list.parquet");
        write(
            &path,
            &[
                ("a b.txt", 10, 1_764_547_200_000),
                ("c/d.json", 0, 0),
                ("é", 7, 1_764_547_200_500),
            ],
            2,
        );
        let source =
            ParquetSource::read(InputFile::Local(path.clone())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            source.fields().into_iter().collect::<Vec<_>>(),
            ["key", "modified", "size"]
        );
        let rows = rows_of(&path, 0);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].1["key"], "a b.txt");
        assert_eq!(rows[0].1["size"], "10");
        assert_eq!(rows[0].1["modified"], "2025-12-01T00:00:00Z");
        assert_eq!(rows[2].1["key"], "é");
        assert_eq!(rows[2].1["modified"], "2025-12-01T00:00:00.5Z");
        let after: Vec<u64> = rows_of(&path, 2).iter().map(|(n, _)| *n).collect();
        assert_eq!(
            after,
            [3],
            "the rows after the first two, numbered as in the file"
        );
    }

    #[test]
    fn a_file_that_is_not_parquet_is_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("list.parquet");
        std::fs::write(&path, "key,size\na,1\n").unwrap_or_else(|e| panic!("{e}"));
        let error = ParquetSource::read(InputFile::Local(path))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("list.parquet") && error.contains("not a Parquet file"),
            "{error}"
        );
    }
}
