//! `jsonl = "FILE"`: one item per line holding a JSON object (blank lines ignored); its
//! top-level members are the item's fields: strings as they are, numbers and booleans as
//! written, `null` as empty, arrays and objects as their JSON text. The fields are the first
//! object's members. `FILE` is a path or any store's URL; `FILE.gz` and `FILE.zst` are read
//! through their compression.

pub(crate) mod config;

use std::collections::BTreeSet;
use std::io::BufRead;
#[cfg(test)]
use std::path::Path;

use futures::stream::BoxStream;
use redrive_core::item::Fields;
use redrive_core::source::{Source, SourceError};

use super::input;
use super::input_file::InputFile;

/// A JSON-lines file.
#[derive(Debug)]
pub(crate) struct JsonlSource {
    file: InputFile,
    fields: BTreeSet<String>,
}

impl JsonlSource {
    /// Opens a local file and reads its first object for the fields.
    #[cfg(test)]
    pub(crate) fn open(path: &Path) -> Result<Self, SourceError> {
        Self::read(InputFile::Local(path.to_path_buf()))
    }

    /// Reads the file's first object for the fields.
    pub(crate) fn read(file: InputFile) -> Result<Self, SourceError> {
        let shown = file.display();
        let io = |e: std::io::Error| SourceError::Io {
            location: shown.clone(),
            source: Box::new(e),
        };
        let reader = std::io::BufReader::new(file.open().map_err(io)?);
        for (number, line) in (1u64..).zip(reader.lines()) {
            let line = line.map_err(|e| input(format!("{shown}:{number}"), e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let fields =
                object(&line).map_err(|message| input(format!("{shown}:{number}"), message))?;
            return Ok(Self {
                file,
                fields: fields.into_keys().collect(),
            });
        }
        Err(input(
            format!("{shown}:1"),
            "the file holds no JSON object; a jsonl source needs one object per line, e.g. {\"key\": \"a.json\", \"size\": 10}",
        ))
    }
}

/// The fields of one line's object.
fn object(line: &str) -> Result<Fields, String> {
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| format!("not JSON ({e}); each line must be one JSON object"))?;
    let serde_json::Value::Object(members) = value else {
        return Err("the line is JSON but not an object; each line must be one object, e.g. {\"key\": \"a\"}".to_owned());
    };
    Ok(members
        .into_iter()
        .map(|(name, value)| {
            let text = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            (name, text)
        })
        .collect())
}

impl Source for JsonlSource {
    fn revision(&self) -> Option<String> {
        self.file.revision()
    }

    fn fields(&self) -> BTreeSet<String> {
        self.fields.clone()
    }

    fn place_of(&self, fields: &Fields) -> futures::future::BoxFuture<'static, Option<String>> {
        let wanted = fields.clone();
        super::place_in_file(&self.file, move |input| {
            let reader = std::io::BufReader::new(input.open().ok()?);
            for (number, line) in (1u64..).zip(reader.lines()) {
                let line = line.ok()?;
                if let Ok(fields) = object(&line)
                    && super::holds(|name| fields.get(name).cloned(), &wanted)
                {
                    return Some(number);
                }
            }
            None
        })
    }

    fn items(&self, _context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        super::line_items(&self.file, object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn written(text: &str) -> (tempfile::TempDir, Result<JsonlSource, SourceError>) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("items.jsonl");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        let source = JsonlSource::open(&path);
        (dir, source)
    }

    #[tokio::test]
    async fn each_object_is_an_item_with_its_members_as_text() {
        let (_dir, source) = written(
            "{\"key\": \"a.json\", \"size\": 10, \"tags\": [\"x\"], \"gone\": null, \"ok\": true}\n\n{\"key\": \"b.json\", \"size\": 2.5}\n",
        );
        let source = source.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            source.fields().into_iter().collect::<Vec<_>>(),
            ["gone", "key", "ok", "size", "tags"]
        );
        let items: Vec<Fields> = source
            .items(&Fields::new())
            .map(|item| item.unwrap_or_else(|e| panic!("{e}")))
            .collect()
            .await;
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["size"], "10");
        assert_eq!(items[0]["tags"], "[\"x\"]");
        assert_eq!(items[0]["gone"], "");
        assert_eq!(items[0]["ok"], "true");
        assert_eq!(items[1]["size"], "2.5");
    }

    #[tokio::test]
    async fn a_byte_order_mark_before_the_first_object_is_not_read_as_json() {
        let (_dir, source) = written("\u{feff}{\"key\": \"a.json\"}\n");
        let source = source.unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<String> = source
            .items(&Fields::new())
            .filter_map(|item| async move { item.ok().and_then(|f| f.get("key").cloned()) })
            .collect()
            .await;
        assert_eq!(keys, ["a.json"]);
    }

    #[tokio::test]
    async fn a_line_that_is_not_an_object_is_named() {
        let (_dir, source) = written("{\"key\": \"a\"}\n[1, 2]\n");
        let source = source.unwrap_or_else(|e| panic!("{e}"));
        let last = source.items(&Fields::new()).collect::<Vec<_>>().await.pop();
        let message = last
            .and_then(Result::err)
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.ends_with("items.jsonl:2: the line is JSON but not an object; each line must be one object, e.g. {\"key\": \"a\"}"), "{message}");
        let (_dir, broken) = written("{\"key\": \n");
        let message = broken.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("items.jsonl:1: not JSON"), "{message}");
        let (_dir, empty) = written("\n\n");
        let message = empty.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("holds no JSON object"), "{message}");
    }
}
