//! What the fuzz targets (`fuzz/`, run by `scripts/fuzz`) call, and their regression test
//! (`tests/fuzz_regressions.rs`) too: each takes arbitrary bytes and must return, with a value
//! or an error, whatever the bytes hold. A panic is a bug.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use redrive_core::item::Fields;
use redrive_core::source::Source;
use redrive_core::template::Template;

use crate::sources::CsvSource;

/// The plan parser: the bytes as `plan.toml`.
pub fn plan(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::Plan::parse(text, Path::new("/fuzz/plan.toml"));
}

/// The template engine: the first line is the template, the rest the value of every field
/// it may name (`name`, `path`, `key`, `line`).
pub fn template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (raw, value) = text.split_once('\n').unwrap_or((&text, ""));
    let Ok(template) = Template::parse_with(raw, |name| (name == "FUZZ").then(String::new)) else {
        return;
    };
    let fields: Fields = ["name", "path", "key", "line"]
        .into_iter()
        .map(|name| (name.to_owned(), value.to_owned()))
        .collect();
    let _ = template.render(&fields);
    let _ = template.render_target(&fields);
    let _ = template.render(&Fields::new());
}

/// The CSV source: the bytes as the file, read to its end or its first error.
pub fn csv(data: &[u8]) {
    static FILES: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "redrive-fuzz-{}-{}.csv",
        std::process::id(),
        FILES.fetch_add(1, Ordering::Relaxed)
    ));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(source) = CsvSource::open(&path, b',')
        && let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build()
    {
        runtime.block_on(async {
            let mut items = source.items(&Fields::new());
            while let Some(item) = items.next().await {
                if item.is_err() {
                    break;
                }
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

/// The XML extractor: the first line is the element path (prefix `p` is `urn:p`), the rest
/// the document; extracted with and without its ancestors.
pub fn xml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, doc) = text.split_once('\n').unwrap_or((text, ""));
    let namespaces = BTreeMap::from([("p".to_owned(), "urn:p".to_owned())]);
    let Ok(path) = crate::xml::parse_xml_path(path, &namespaces) else {
        return;
    };
    let _ = crate::xml::extract(doc, &path, false);
    let _ = crate::xml::extract(doc, &path, true);
}
