//! An S3 Inventory report's `manifest.json`: the data files' format, their columns, and each
//! file's key, size and MD5 (as S3 writes it; see "Inventory manifest" in the S3 user guide).

use serde::Deserialize;

/// The manifest, as S3 writes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Manifest {
    /// The bucket the report lists.
    #[serde(default)]
    pub(super) source_bucket: String,
    /// `arn:aws:s3:::BUCKET`: where the data files are.
    #[serde(default)]
    pub(super) destination_bucket: String,
    /// `CSV`, `Parquet` or `ORC`.
    pub(super) file_format: String,
    /// The columns, `Bucket, Key, Size, …` (for Parquet and ORC, a schema message).
    pub(super) file_schema: String,
    /// The data files, in order.
    pub(super) files: Vec<DataFile>,
}

/// One data file of the report.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct DataFile {
    /// Its key in the destination bucket.
    pub(super) key: String,
    /// Its size in bytes, as stored (compressed).
    #[serde(default)]
    pub(super) size: Option<u64>,
    /// The MD5 of its bytes as stored, in hex.
    #[serde(default, rename = "MD5checksum")]
    pub(super) md5: Option<String>,
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
        let manifest: Manifest = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(manifest.destination_bucket, "arn:aws:s3:::inv");
        assert_eq!(manifest.files[0].md5.as_deref(), Some("00ff"));
        assert_eq!(manifest.files[0].size, Some(12));
    }
}
