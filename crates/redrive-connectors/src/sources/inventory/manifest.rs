//! An S3 Inventory report's `manifest.json`: the data files' format, their columns, and each
//! file's key, size and MD5 (as S3 writes it; see "Inventory manifest" in the S3 user guide).

use serde::Deserialize;

/// Which service wrote the report: it says how a row names its object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Service {
    /// S3 Inventory: `bucket` and `key` columns (URL-encoded in CSV).
    S3,
    /// Azure Blob Inventory: a `Name` column, `container/blob`.
    Azure,
}

/// How the data files are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    /// CSV (S3: gzip, no header; Azure: a header row).
    Csv,
    /// Apache Parquet.
    Parquet,
}

/// What redrive needs of a manifest, whichever service wrote it.
#[derive(Debug)]
pub(super) struct Report {
    pub(super) service: Service,
    pub(super) format: Format,
    /// The columns, in snake case, in order.
    pub(super) columns: Vec<String>,
    /// The bucket the report lists (S3).
    pub(super) source_bucket: String,
    /// Where the data files are: `s3://BUCKET` or `az://CONTAINER`, if the manifest says.
    pub(super) destination: Option<String>,
    /// The data files, in order.
    pub(super) files: Vec<DataFile>,
}

/// An S3 Inventory manifest (see "Inventory manifest" in the S3 user guide).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct S3Manifest {
    /// The bucket the report lists.
    #[serde(default)]
    source_bucket: String,
    /// `arn:aws:s3:::BUCKET`: where the data files are.
    #[serde(default)]
    destination_bucket: String,
    /// `CSV`, `Parquet` or `ORC`.
    file_format: String,
    /// The columns, `Bucket, Key, Size, …` (for Parquet and ORC, a schema message).
    file_schema: String,
    /// The data files, in order.
    files: Vec<DataFile>,
}

/// One data file of the report.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct DataFile {
    /// Its key in the destination bucket (or its blob in the destination container).
    #[serde(alias = "blob")]
    pub(super) key: String,
    /// Its size in bytes, as stored (compressed).
    #[serde(default)]
    pub(super) size: Option<u64>,
    /// The MD5 of its bytes as stored, in hex (S3 only).
    #[serde(default, rename = "MD5checksum")]
    pub(super) md5: Option<String>,
}

/// An Azure Blob Inventory manifest, `RULE-manifest.json` (see "Inventory output" in the
/// Azure Storage blob inventory documentation).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AzureManifest {
    /// The container the data files are in.
    destination_container: String,
    /// The data files (`blob`, `size`).
    files: Vec<DataFile>,
    rule_definition: RuleDefinition,
    /// `Succeeded`, `PartiallySucceeded` or `Failed`.
    #[serde(default)]
    status: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleDefinition {
    /// `csv` or `parquet`.
    format: String,
    /// `blob` or `container`.
    #[serde(default)]
    object_type: Option<String>,
    /// The columns, `Name, Creation-Time, …`.
    schema_fields: Vec<String>,
}

/// Reads a manifest as S3 or Azure writes it.
pub(super) fn read(text: &str) -> Result<Report, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        format!("not JSON ({e}); name the report's manifest (S3: `manifest.json`, Azure: `RULE-manifest.json`)")
    })?;
    let shape =
        |e: serde_json::Error, what: &str| format!("not an {what} manifest as expected ({e})");
    if value.get("fileFormat").is_some() {
        let manifest: S3Manifest =
            serde_json::from_value(value).map_err(|e| shape(e, "S3 Inventory"))?;
        return s3(manifest);
    }
    if value.get("ruleDefinition").is_some() || value.get("destinationContainer").is_some() {
        let manifest: AzureManifest =
            serde_json::from_value(value).map_err(|e| shape(e, "Azure Blob Inventory"))?;
        return azure(manifest);
    }
    Err("not an inventory manifest: an S3 Inventory `manifest.json` has `fileFormat`, `fileSchema` and `files`; an Azure Blob Inventory `RULE-manifest.json` has `destinationContainer`, `files` and `ruleDefinition`".to_owned())
}

fn s3(manifest: S3Manifest) -> Result<Report, String> {
    let format = match manifest.file_format.to_ascii_lowercase().as_str() {
        "csv" => Format::Csv,
        "parquet" => Format::Parquet,
        other => {
            return Err(format!(
                "the report's data files are {}, which redrive does not read; configure the inventory's output format as CSV or Parquet",
                if other == "orc" {
                    "ORC"
                } else {
                    &manifest.file_format
                }
            ));
        }
    };
    let columns: Vec<String> = match format {
        Format::Csv => manifest.file_schema.split(',').map(snake_case).collect(),
        Format::Parquet => ::parquet::schema::parser::parse_message_type(&manifest.file_schema)
            .map_err(|e| {
                format!(
                    "the report's fileSchema is not a Parquet schema message ({e}): `{}`",
                    manifest.file_schema
                )
            })?
            .get_fields()
            .iter()
            .map(|field| snake_case(field.name()))
            .collect(),
    };
    for needed in ["bucket", "key"] {
        if !columns.iter().any(|c| c == needed) {
            return Err(format!(
                "the report's fileSchema has no `{needed}` column: `{}`",
                manifest.file_schema
            ));
        }
    }
    Ok(Report {
        service: Service::S3,
        format,
        columns,
        destination: manifest
            .destination_bucket
            .strip_prefix("arn:aws:s3:::")
            .filter(|bucket| !bucket.is_empty())
            .map(|bucket| format!("s3://{bucket}")),
        source_bucket: manifest.source_bucket,
        files: manifest.files,
    })
}

fn azure(manifest: AzureManifest) -> Result<Report, String> {
    let rule = &manifest.rule_definition;
    if let Some(status) = &manifest.status
        && !status.eq_ignore_ascii_case("Succeeded")
    {
        return Err(format!(
            "the inventory run's status is `{status}`: its files may not list every blob; use a report whose status is Succeeded"
        ));
    }
    if rule
        .object_type
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("blob"))
    {
        return Err(
            "the report lists containers, not blobs; use a rule whose objectType is `blob`"
                .to_owned(),
        );
    }
    let format = match rule.format.to_ascii_lowercase().as_str() {
        "csv" => Format::Csv,
        "parquet" => Format::Parquet,
        _ => {
            return Err(format!(
                "the report's format is `{}`; redrive reads csv and parquet",
                rule.format
            ));
        }
    };
    let columns: Vec<String> = rule.schema_fields.iter().map(|f| snake_case(f)).collect();
    if !columns.iter().any(|c| c == "name") {
        return Err(format!(
            "the report's schemaFields have no `Name`: {:?}",
            rule.schema_fields
        ));
    }
    Ok(Report {
        service: Service::Azure,
        format,
        columns,
        source_bucket: String::new(),
        destination: Some(format!("az://{}", manifest.destination_container)),
        files: manifest.files,
    })
}

/// A manifest's column name in snake case, the way fields are named: `LastModifiedDate` →
/// `last_modified_date`, `ETag` → `e_tag`, `VersionId` → `version_id`.
pub(super) fn snake_case(column: &str) -> String {
    let chars: Vec<char> = column.trim().chars().collect();
    let mut name = String::with_capacity(chars.len() + 4);
    for (i, c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let before = chars[i - 1];
            let after = chars.get(i + 1).copied();
            let boundary = before.is_ascii_lowercase()
                || before.is_ascii_digit()
                || (before.is_ascii_uppercase() && after.is_some_and(|a| a.is_ascii_lowercase()));
            if boundary {
                name.push('_');
            }
        }
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else if !name.ends_with('_') {
            name.push('_');
        }
    }
    name
}

/// A key as S3's CSV inventory writes it (URL-encoded, a space as `+`), decoded.
pub(super) fn decode_key(encoded: &str) -> Result<String, String> {
    let spaced = encoded.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|key| key.into_owned())
        .map_err(|_| {
            format!(
                "the key `{encoded}` does not decode to UTF-8 (S3 inventory keys are URL-encoded)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_named_in_snake_case() {
        let names: Vec<String> = "Bucket, Key, VersionId, IsLatest, Size, LastModifiedDate, ETag, StorageClass, IsMultipartUploaded, SSEKMSKeyId"
            .split(',')
            .map(snake_case)
            .collect();
        assert_eq!(
            names,
            [
                "bucket",
                "key",
                "version_id",
                "is_latest",
                "size",
                "last_modified_date",
                "e_tag",
                "storage_class",
                "is_multipart_uploaded",
                "ssekms_key_id"
            ]
        );
    }

    #[test]
    fn keys_are_decoded_from_plus_and_percent() {
        assert_eq!(
            decode_key("a+b%2Bc/%C3%A9t%C3%A9.txt").as_deref(),
            Ok("a b+c/été.txt")
        );
        assert_eq!(decode_key("plain/key").as_deref(), Ok("plain/key"));
        assert!(
            decode_key("bad%FF")
                .err()
                .unwrap_or_default()
                .contains("does not decode to UTF-8")
        );
    }

    #[test]
    fn a_manifest_as_s3_writes_it_is_read() {
        let text = r#"{
          "sourceBucket": "src", "destinationBucket": "arn:aws:s3:::inv",
          "version": "2016-11-30", "creationTimestamp": "1514944800000",
          "fileFormat": "CSV", "fileSchema": "Bucket, Key, Size",
          "files": [{"key": "p/src/cfg/data/a.csv.gz", "size": 12, "MD5checksum": "00ff"}]
        }"#;
        let report = read(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.service, Service::S3);
        assert_eq!(report.format, Format::Csv);
        assert_eq!(report.destination.as_deref(), Some("s3://inv"));
        assert_eq!(report.columns, ["bucket", "key", "size"]);
        assert_eq!(report.files[0].md5.as_deref(), Some("00ff"));
        assert_eq!(report.files[0].size, Some(12));
    }

    #[test]
    fn an_s3_parquet_manifest_names_its_columns_by_its_schema_message() {
        let text = r#"{"sourceBucket": "src", "destinationBucket": "arn:aws:s3:::inv",
          "fileFormat": "Parquet",
          "fileSchema": "message s3.inventory { required binary bucket (STRING); required binary key (STRING); optional int64 size; optional int64 last_modified_date (TIMESTAMP_MILLIS); }",
          "files": [{"key": "d/a.parquet", "size": 12, "MD5checksum": "00ff"}]}"#;
        let report = read(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.format, Format::Parquet);
        assert_eq!(
            report.columns,
            ["bucket", "key", "size", "last_modified_date"]
        );
    }

    #[test]
    fn an_azure_manifest_as_the_documentation_shows_it_is_read() {
        let text = r#"{
          "destinationContainer" : "inventory-destination-container",
          "endpoint" : "https://testaccount.blob.core.windows.net",
          "files" : [ { "blob" : "2021/05/26/13-25-36/Rule_1/Rule_1.csv", "size" : 12710092 } ],
          "inventoryCompletionTime" : "2021-05-26T13:35:56Z",
          "ruleDefinition" : {
            "filters" : { "blobTypes" : [ "blockBlob" ], "prefixMatch" : [ "c-1" ] },
            "format" : "csv", "objectType" : "blob", "schedule" : "daily",
            "schemaFields" : [ "Name", "Creation-Time", "BlobType", "Content-Length", "Last-Modified", "ETag", "Content-MD5" ]
          },
          "ruleName" : "Rule_1", "status" : "Succeeded",
          "summary" : { "objectCount" : 110000, "totalObjectSize" : 23789775 }, "version" : "1.0"
        }"#;
        let report = read(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.service, Service::Azure);
        assert_eq!(report.format, Format::Csv);
        assert_eq!(
            report.columns,
            [
                "name",
                "creation_time",
                "blob_type",
                "content_length",
                "last_modified",
                "e_tag",
                "content_md5"
            ]
        );
        assert_eq!(
            report.destination.as_deref(),
            Some("az://inventory-destination-container")
        );
        assert_eq!(report.files[0].key, "2021/05/26/13-25-36/Rule_1/Rule_1.csv");
        assert_eq!(report.files[0].size, Some(12_710_092));

        let failed = text.replace("\"Succeeded\"", "\"PartiallySucceeded\"");
        let error = read(&failed).err().unwrap_or_default();
        assert!(error.contains("`PartiallySucceeded`"), "{error}");
        let containers = text.replace(
            "\"objectType\" : \"blob\"",
            "\"objectType\" : \"container\"",
        );
        let error = read(&containers).err().unwrap_or_default();
        assert!(error.contains("lists containers"), "{error}");
    }

    #[test]
    fn other_json_and_orc_are_refused_by_name() {
        assert!(
            read("{}")
                .err()
                .unwrap_or_default()
                .contains("not an inventory manifest")
        );
        let orc = r#"{"fileFormat": "ORC", "fileSchema": "struct<bucket:string>", "files": []}"#;
        assert!(read(orc).err().unwrap_or_default().contains("ORC"));
    }
}
