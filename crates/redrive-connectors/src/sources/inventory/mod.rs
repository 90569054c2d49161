//! `inventory = "URL/manifest.json"`: the objects an S3 Inventory or Azure Blob Inventory
//! report lists, read from its data files in the manifest's order, streamed (CSV, gzip CSV,
//! or Parquet a row group at a time). The manifest is read from any store or a local copy;
//! each data file's size (and, for S3, MD5) is checked against the manifest's as it is read.
//! Fields: the report's columns in snake case (S3: `bucket`, `key`, `size`,
//! `last_modified_date`, `e_tag`, …, keys URL-decoded from CSV; Azure: `name`,
//! `content_length`, `last_modified`, …), `url` (`s3://bucket/key` or `az://container/blob`,
//! usable by `copy`), for Azure also `key` (its `Name`, `container/blob`), `container`, `blob`
//! and `size`; and where the row is (`inventory_file`, the data file's key, and
//! `inventory_row`, its row there), so that a resumed load starts at the row after the last
//! one recorded without reading the earlier data files again.

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

use self::manifest::{DataFile, Format, Report, Service, decode_key};
use super::input_file::InputFile;
use super::{blocking_stream, input};
use crate::storage::Stores;

/// The largest manifest read (S3's list a few thousand files).
const MANIFEST_LIMIT: u64 = 64 << 20;

/// The field naming a row's data file, and the one naming its row there.
const FILE_FIELD: &str = "inventory_file";
const ROW_FIELD: &str = "inventory_row";

/// Fields redrive adds to an Azure report's rows.
const AZURE_FIELDS: [&str; 4] = ["key", "container", "blob", "size"];

/// An inventory report.
#[derive(Debug)]
pub(crate) struct InventorySource {
    manifest: String,
    service: Service,
    format: Format,
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
        let report = manifest::read(&text).map_err(|message| input(&shown, message))?;
        let Report {
            service,
            format,
            columns,
            source_bucket,
            destination,
            files,
        } = report;
        let mut own = vec!["url", FILE_FIELD, ROW_FIELD];
        if service == Service::Azure {
            own.extend(AZURE_FIELDS);
        }
        if let Some(taken) = columns.iter().find(|c| own.contains(&c.as_str())) {
            return Err(input(
                &shown,
                format!(
                    "the report has a column `{taken}`, a name redrive gives a field of its own"
                ),
            ));
        }
        let files = files
            .into_iter()
            .map(|data| {
                data_file_url(&shown, destination.as_deref(), &data.key)
                    .map(|url| (url, data))
                    .map_err(|message| input(&shown, message))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            revision: file.revision(),
            manifest: shown,
            service,
            format,
            columns: Arc::new(columns),
            source_bucket,
            files: Arc::new(files),
            stores: Arc::clone(stores),
        })
    }

    /// The rows from data file `first` on, skipping that file's first `skip` rows.
    fn rows(&self, first: usize, skip: u64) -> BoxStream<'static, Result<Fields, SourceError>> {
        let reading = Reading {
            service: self.service,
            format: self.format,
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
        if self.service == Service::Azure {
            fields.extend(AZURE_FIELDS.map(str::to_owned));
        }
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
    service: Service,
    format: Format,
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
        let checked = |raw: Box<dyn Read + Send>| -> Box<dyn Read + Send> {
            Box::new(Md5Check {
                inner: raw,
                hasher: md5::Md5::new(),
                expected: data.md5.clone(),
                size: data.size,
                seen: 0,
                done: false,
            })
        };
        let io = |e: std::io::Error| SourceError::Io {
            location: shown.clone(),
            source: Box::new(e),
        };
        if self.format == Format::Parquet {
            // Parquet is read from its end: the whole file is checked as it is fetched.
            let seekable = match super::parquet::Seekable::of(&file, checked) {
                Ok(seekable) => seekable,
                Err(e) => return send(Err(io(e))),
            };
            let read = super::parquet::each_row(seekable, skip, |row, fields| {
                let fields = fields
                    .into_iter()
                    .map(|(name, value)| (manifest::snake_case(&name), value))
                    .collect();
                let item = self
                    .finish(fields, &data.key, row)
                    .map_err(|message| input(format!("{shown}: row {row}"), message));
                send(item).map_err(|Stop| super::parquet::Gone)
            });
            return match read {
                Ok(()) => Ok(()),
                Err(super::parquet::Stopped::Gone) => Err(Stop),
                Err(super::parquet::Stopped::Failed { row, message }) => {
                    send(Err(input(format!("{shown}: row {row}"), message)))
                }
            };
        }
        let reader = match file
            .raw()
            .and_then(|raw| super::compressed::decode(&file.name(), checked(raw)))
        {
            Ok(reader) => reader,
            Err(e) => return send(Err(io(e))),
        };
        // S3 writes no header; Azure's first row names the columns.
        let header = self.service == Service::Azure;
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(reader);
        let mut record = csv::StringRecord::new();
        let mut columns: Vec<String> = self.columns.to_vec();
        let first_row = u64::from(header);
        for row in 0u64.. {
            let at = |line: u64| format!("{shown}:{line}");
            let line =
                |record: &csv::StringRecord| record.position().map_or(row + 1, csv::Position::line);
            match csv.read_record(&mut record) {
                Ok(false) => return Ok(()),
                Ok(true) if row < first_row => {
                    columns = record.iter().map(manifest::snake_case).collect();
                    if !columns.iter().any(|c| c == "name") {
                        return send(Err(input(
                            at(line(&record)),
                            "the first row must name the columns (`Name`, …), as Azure writes it",
                        )));
                    }
                }
                // Rows are counted from 1 after any header row.
                Ok(true) if row - first_row < skip => {}
                Ok(true) => {
                    let number = row - first_row + 1;
                    let item = self
                        .csv_fields(&columns, &record)
                        .and_then(|fields| self.finish(fields, &data.key, number))
                        .map_err(|message| input(at(line(&record)), message));
                    send(item)?;
                }
                Err(error) => {
                    let line = error.position().map_or(row + 1, csv::Position::line);
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

    /// A CSV row's fields, by `columns`.
    fn csv_fields(&self, columns: &[String], record: &csv::StringRecord) -> Result<Fields, String> {
        if record.len() != columns.len() {
            let named_by = match self.service {
                Service::S3 => "the manifest's fileSchema",
                Service::Azure => "the file's header row",
            };
            return Err(format!(
                "the row has {} fields but {named_by} has {}",
                record.len(),
                columns.len()
            ));
        }
        let mut fields = Fields::new();
        for (name, value) in columns.iter().zip(record.iter()) {
            let value = if self.service == Service::S3 && name == "key" {
                decode_key(value)?
            } else {
                value.to_owned()
            };
            fields.insert(name.clone(), value);
        }
        Ok(fields)
    }

    /// A row's fields with redrive's own added: `url`, where the row is, and for Azure the
    /// object's `key`, `container`, `blob` and `size`.
    fn finish(&self, mut fields: Fields, file: &str, number: u64) -> Result<Fields, String> {
        let url = match self.service {
            Service::S3 => {
                let bucket = fields
                    .get("bucket")
                    .filter(|b| !b.is_empty())
                    .unwrap_or(&self.source_bucket);
                format!(
                    "s3://{bucket}/{}",
                    fields.get("key").map_or("", String::as_str)
                )
            }
            Service::Azure => {
                let name = fields.get("name").cloned().unwrap_or_default();
                let Some((container, blob)) = name
                    .split_once('/')
                    .filter(|(c, b)| !c.is_empty() && !b.is_empty())
                else {
                    return Err(format!(
                        "the blob's Name is `{name}`, not `container/blob` as Azure's inventory writes it"
                    ));
                };
                let url = format!("az://{container}/{blob}");
                fields.insert("container".to_owned(), container.to_owned());
                fields.insert("blob".to_owned(), blob.to_owned());
                if let Some(length) = fields.get("content_length").cloned() {
                    fields.entry("size".to_owned()).or_insert(length);
                }
                fields.insert("key".to_owned(), name);
                url
            }
        };
        fields.insert("url".to_owned(), url);
        fields.insert(FILE_FIELD.to_owned(), file.to_owned());
        fields.insert(ROW_FIELD.to_owned(), number.to_string());
        Ok(fields)
    }
}

/// Where a data file is: beside the manifest (the report's folder, found by the longest
/// leading part of the data file's key that the manifest's URL holds), or else, for a
/// manifest in a store, in the destination the manifest names (`s3://BUCKET`,
/// `az://CONTAINER`).
fn data_file_url(manifest: &str, destination: Option<&str>, key: &str) -> Result<String, String> {
    let segments: Vec<&str> = key.split('/').collect();
    for end in (1..segments.len()).rev() {
        let folder = format!("/{}/", segments[..end].join("/"));
        if let Some(at) = manifest.find(&folder) {
            return Ok(format!("{}/{key}", &manifest[..at]));
        }
    }
    match destination {
        Some(destination)
            if destination
                .split_once("://")
                .is_some_and(|(scheme, _)| manifest.starts_with(&format!("{scheme}://"))) =>
        {
            Ok(format!("{destination}/{key}"))
        }
        _ => Err(format!(
            "the data file `{key}` is not under the manifest's folder; keep the report's files as the service wrote them, beside their manifest"
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
                None,
                key
            )
            .as_deref(),
            Ok("s3://dest/inv/src/cfg/data/a.csv.gz")
        );
        assert_eq!(
            data_file_url(
                "/copies/inv/src/cfg/2026-12-01T01-00Z/manifest.json",
                None,
                key
            )
            .as_deref(),
            Ok("/copies/inv/src/cfg/data/a.csv.gz")
        );
        assert_eq!(
            data_file_url("s3://elsewhere/manifest.json", Some("s3://dest"), key).as_deref(),
            Ok("s3://dest/inv/src/cfg/data/a.csv.gz")
        );
        assert!(data_file_url("/tmp/manifest.json", Some("s3://dest"), key).is_err());
        assert_eq!(
            data_file_url(
                "az://inv/2021/05/26/13-25-36/Rule_1/Rule_1-manifest.json",
                Some("az://inv"),
                "2021/05/26/13-25-36/Rule_1/Rule_1.csv"
            )
            .as_deref(),
            Ok("az://inv/2021/05/26/13-25-36/Rule_1/Rule_1.csv")
        );
    }
}
