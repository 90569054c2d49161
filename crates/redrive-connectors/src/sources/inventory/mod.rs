//! `inventory = "URL/manifest.json"`: the objects an S3 Inventory report lists, read from its
//! data files in the manifest's order, streamed (gzip CSV as S3 writes it). The manifest is
//! read from any store or a local copy; each data file's MD5 is checked against the
//! manifest's as it is read. Fields: the report's columns in snake case (`bucket`, `key`,
//! `size`, `last_modified_date`, `e_tag`, `storage_class`, …; keys URL-decoded), `url`
//! (`s3://bucket/key`, usable by `copy`), and where the row is (`inventory_file`, the data
//! file's key, and `inventory_row`, its row there), so that a resumed load starts at the row
//! after the last one recorded without reading the earlier data files again.

pub(crate) mod config;
mod manifest;

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;

use futures::stream::BoxStream;
use md5::Digest as _;
use redrive_core::item::Fields;
use redrive_core::source::{Source, SourceError};
use tokio::sync::mpsc;

use self::manifest::{DataFile, Manifest, decode_key, snake_case};
use super::input_file::InputFile;
use super::{blocking_stream, input};
use crate::storage::Stores;

/// The largest manifest read (S3's list a few thousand files).
const MANIFEST_LIMIT: u64 = 64 << 20;

/// The field naming a row's data file, and the one naming its row there.
const FILE_FIELD: &str = "inventory_file";
const ROW_FIELD: &str = "inventory_row";

/// An S3 Inventory report.
#[derive(Debug)]
pub(crate) struct InventorySource {
    manifest: String,
    columns: Arc<Vec<String>>,
    source_bucket: String,
    /// Each data file: its URL and what the manifest says of it.
    files: Arc<Vec<(String, DataFile)>>,
    stores: Arc<Stores>,
    revision: Option<String>,
}

impl InventorySource {
    /// Reads the manifest and checks it.
    pub(crate) fn read(file: InputFile, stores: &Arc<Stores>) -> Result<Self, SourceError> {
        let shown = file.display();
        let io = |e: std::io::Error| SourceError::Io {
            location: shown.clone(),
            source: Box::new(e),
        };
        let mut text = String::new();
        file.open()
            .map_err(io)?
            .take(MANIFEST_LIMIT)
            .read_to_string(&mut text)
            .map_err(io)?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
            input(
                &shown,
                format!(
                    "not an S3 Inventory manifest ({e}); name the report's `manifest.json`, which has `fileFormat`, `fileSchema` and `files`"
                ),
            )
        })?;
        if !manifest.file_format.eq_ignore_ascii_case("CSV") {
            return Err(input(
                &shown,
                format!(
                    "the report's data files are {}, which this version of redrive does not read; configure the inventory's output format as CSV",
                    manifest.file_format
                ),
            ));
        }
        let columns: Vec<String> = manifest.file_schema.split(',').map(snake_case).collect();
        for needed in ["bucket", "key"] {
            if !columns.iter().any(|c| c == needed) {
                return Err(input(
                    &shown,
                    format!(
                        "the report's fileSchema has no `{needed}` column: `{}`",
                        manifest.file_schema
                    ),
                ));
            }
        }
        if let Some(taken) = columns
            .iter()
            .find(|c| ["url", FILE_FIELD, ROW_FIELD].contains(&c.as_str()))
        {
            return Err(input(
                &shown,
                format!(
                    "the report's fileSchema has a column `{taken}`, a name redrive gives a field of its own"
                ),
            ));
        }
        let files = manifest
            .files
            .iter()
            .map(|data| {
                data_file_url(&shown, &manifest.destination_bucket, &data.key)
                    .map(|url| (url, data.clone()))
                    .map_err(|message| input(&shown, message))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            revision: file.revision(),
            manifest: shown,
            columns: Arc::new(columns),
            source_bucket: manifest.source_bucket,
            files: Arc::new(files),
            stores: Arc::clone(stores),
        })
    }

    /// The rows from data file `first` on, skipping that file's first `skip` rows.
    fn rows(&self, first: usize, skip: u64) -> BoxStream<'static, Result<Fields, SourceError>> {
        let reading = Reading {
            columns: Arc::clone(&self.columns),
            files: Arc::clone(&self.files),
            source_bucket: self.source_bucket.clone(),
            stores: Arc::clone(&self.stores),
        };
        blocking_stream(move |sender| {
            for index in first..reading.files.len() {
                let skip = if index == first { skip } else { 0 };
                if reading.file(index, skip, sender).is_err() {
                    return;
                }
            }
        })
    }
}

impl Source for InventorySource {
    fn fields(&self) -> BTreeSet<String> {
        let mut fields: BTreeSet<String> = self.columns.iter().cloned().collect();
        fields.extend(["url", FILE_FIELD, ROW_FIELD].map(str::to_owned));
        fields
    }

    fn items(&self, _context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        self.rows(0, 0)
    }

    fn items_after(
        &self,
        last: &Fields,
    ) -> Option<BoxStream<'static, Result<Fields, SourceError>>> {
        let file = last.get(FILE_FIELD)?;
        let row: u64 = last.get(ROW_FIELD)?.parse().ok()?;
        let index = self.files.iter().position(|(_, data)| &data.key == file)?;
        tracing::debug!(
            "{}: resuming at data file {} of {}, after row {row}",
            self.manifest,
            index + 1,
            self.files.len()
        );
        Some(self.rows(index, row))
    }

    fn revision(&self) -> Option<String> {
        self.revision.clone()
    }
}

/// What the blocking reader needs.
struct Reading {
    columns: Arc<Vec<String>>,
    files: Arc<Vec<(String, DataFile)>>,
    source_bucket: String,
    stores: Arc<Stores>,
}

/// The stream's consumer is gone, or an error was sent: stop.
struct Stop;

impl Reading {
    /// Sends data file `index`'s rows after the first `skip`.
    fn file(
        &self,
        index: usize,
        skip: u64,
        sender: &mpsc::Sender<Result<Fields, SourceError>>,
    ) -> Result<(), Stop> {
        let (url, data) = &self.files[index];
        let send = |item: Result<Fields, SourceError>| {
            let failed = item.is_err();
            match sender.blocking_send(item) {
                Ok(()) if !failed => Ok(()),
                _ => Err(Stop),
            }
        };
        let file = match InputFile::object(url, &self.stores) {
            Ok(file) => file,
            Err(error) => {
                return send(Err(input(
                    url,
                    format!(
                        "the manifest lists this data file but it cannot be read: {error}; is the report complete?"
                    ),
                )));
            }
        };
        let shown = file.display();
        let reader = file.raw().and_then(|raw| {
            let checked = Md5Check {
                inner: raw,
                hasher: md5::Md5::new(),
                expected: data.md5.clone(),
                size: data.size,
                seen: 0,
                done: false,
            };
            super::compressed::decode(&file.name(), Box::new(checked))
        });
        let reader = match reader {
            Ok(reader) => reader,
            Err(e) => {
                return send(Err(SourceError::Io {
                    location: shown,
                    source: Box::new(e),
                }));
            }
        };
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(reader);
        let mut record = csv::StringRecord::new();
        for row in 1u64.. {
            let at = |line: u64| format!("{shown}:{line}");
            match csv.read_record(&mut record) {
                Ok(false) => return Ok(()),
                Ok(true) if row <= skip => {}
                Ok(true) => {
                    let line = record.position().map_or(row, csv::Position::line);
                    let item = self
                        .fields(&record, &data.key, row)
                        .map_err(|message| input(at(line), message));
                    send(item)?;
                }
                Err(error) => {
                    let line = error.position().map_or(row, csv::Position::line);
                    let message = match error.kind() {
                        csv::ErrorKind::Io(e) => e.to_string(),
                        _ => error.to_string(),
                    };
                    return send(Err(input(at(line), message)));
                }
            }
        }
        Ok(())
    }

    /// One row's fields.
    fn fields(&self, record: &csv::StringRecord, file: &str, row: u64) -> Result<Fields, String> {
        if record.len() != self.columns.len() {
            return Err(format!(
                "the row has {} fields but the manifest's fileSchema has {}",
                record.len(),
                self.columns.len()
            ));
        }
        let mut fields = Fields::new();
        for (name, value) in self.columns.iter().zip(record.iter()) {
            let value = if name == "key" {
                decode_key(value)?
            } else {
                value.to_owned()
            };
            fields.insert(name.clone(), value);
        }
        let bucket = fields
            .get("bucket")
            .filter(|b| !b.is_empty())
            .unwrap_or(&self.source_bucket);
        let url = format!(
            "s3://{bucket}/{}",
            fields.get("key").map_or("", String::as_str)
        );
        fields.insert("url".to_owned(), url);
        fields.insert(FILE_FIELD.to_owned(), file.to_owned());
        fields.insert(ROW_FIELD.to_owned(), row.to_string());
        Ok(fields)
    }
}

/// Where a data file is: beside the manifest (the report's folder, found by the longest
/// leading part of the data file's key that the manifest's URL holds), or else, for a
/// manifest in S3, in the manifest's destination bucket.
fn data_file_url(manifest: &str, destination: &str, key: &str) -> Result<String, String> {
    let segments: Vec<&str> = key.split('/').collect();
    for end in (1..segments.len()).rev() {
        let folder = format!("/{}/", segments[..end].join("/"));
        if let Some(at) = manifest.find(&folder) {
            return Ok(format!("{}/{key}", &manifest[..at]));
        }
    }
    match destination.strip_prefix("arn:aws:s3:::") {
        Some(bucket) if manifest.starts_with("s3://") && !bucket.is_empty() => {
            Ok(format!("s3://{bucket}/{key}"))
        }
        _ => Err(format!(
            "the data file `{key}` is not under the manifest's folder; keep the report's files as S3 wrote them, beside their manifest"
        )),
    }
}

/// A data file's bytes as stored, hashed and counted as they pass; at their end the MD5 and
/// the size must be the manifest's.
struct Md5Check {
    inner: Box<dyn Read + Send>,
    hasher: md5::Md5,
    expected: Option<String>,
    size: Option<u64>,
    seen: u64,
    done: bool,
}

impl Read for Md5Check {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            self.seen += n as u64;
        } else if !buf.is_empty() && !self.done {
            self.done = true;
            if let Some(size) = self.size
                && size != self.seen
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the data file has {} bytes but the manifest says {size}: it was cut short or replaced after the report was written; fix the file or use a newer report",
                        self.seen
                    ),
                ));
            }
            let digest = self.hasher.finalize_reset();
            let got: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(expected) = &self.expected
                && !expected.eq_ignore_ascii_case(&got)
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the data file's MD5 is {got} but the manifest says {expected}: the file was damaged or replaced after the report was written; the rows before this one were loaded, the rest were not: fix the file or use a newer report"
                    ),
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_files_are_found_beside_their_manifest() {
        let key = "inv/src/cfg/data/a.csv.gz";
        assert_eq!(
            data_file_url(
                "s3://dest/inv/src/cfg/2026-12-01T01-00Z/manifest.json",
                "",
                key
            )
            .as_deref(),
            Ok("s3://dest/inv/src/cfg/data/a.csv.gz")
        );
        assert_eq!(
            data_file_url(
                "/copies/inv/src/cfg/2026-12-01T01-00Z/manifest.json",
                "",
                key
            )
            .as_deref(),
            Ok("/copies/inv/src/cfg/data/a.csv.gz")
        );
        assert_eq!(
            data_file_url("s3://elsewhere/manifest.json", "arn:aws:s3:::dest", key).as_deref(),
            Ok("s3://dest/inv/src/cfg/data/a.csv.gz")
        );
        assert!(data_file_url("/tmp/manifest.json", "arn:aws:s3:::dest", key).is_err());
    }
}
