//! `list = "URL"`: an object-store prefix listing; fields `key`, `name`, `size`, `url`.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use redrive_core::item::Fields;
use redrive_core::source::{Source, SourceError};

use crate::storage::{Location, Stores};

/// The objects under a prefix, recursively unless `recursive = false`. Directory markers are
/// left out.
#[derive(Debug)]
pub struct ListSource {
    location: Location,
    /// The URL the listing's keys are appended to, so `url` is usable by `copy`.
    base: String,
    recursive: bool,
}

impl ListSource {
    /// A listing of `url`.
    pub fn new(stores: &Arc<Stores>, url: &str, recursive: bool) -> Result<Self, SourceError> {
        let location = stores.resolve(url).map_err(|e| SourceError::Input {
            location: redrive_core::secrets::redact(url).into_owned(),
            message: e.to_string(),
        })?;
        let base = if location.local {
            "/".to_owned()
        } else {
            let without_query = url.split('?').next().unwrap_or(url);
            without_query[..without_query.len() - location.path.len()].to_owned()
        };
        let mut location = location;
        if location.local {
            // Local listings are of directories: make sure the path ends with `/`.
            location.path = format!(
                "{}/",
                location.path.trim_start_matches('/').trim_end_matches('/')
            );
        }
        Ok(Self {
            location,
            base,
            recursive,
        })
    }
}

impl Source for ListSource {
    fn fields(&self) -> BTreeSet<String> {
        ["key", "name", "size", "url"].map(str::to_owned).into()
    }

    fn items(&self) -> BoxStream<'static, Result<Fields, SourceError>> {
        let operator = self.location.operator.clone();
        let path = self.location.path.clone();
        let display = self.location.display.clone();
        let base = self.base.clone();
        let local = self.location.local;
        let recursive = self.recursive;
        let lister = async move {
            let io = |e: opendal::Error| SourceError::Io {
                location: display.clone(),
                source: Box::new(e),
            };
            let lister = operator
                .lister_with(&path)
                .recursive(recursive)
                .await
                .map_err(io)?;
            let entries = lister.filter_map(move |entry| {
                let operator = operator.clone();
                let base = base.clone();
                let display = display.clone();
                async move {
                    let io = |e: opendal::Error| SourceError::Io {
                        location: display.clone(),
                        source: Box::new(e),
                    };
                    let entry = match entry {
                        Ok(entry) => entry,
                        Err(e) => return Some(Err(io(e))),
                    };
                    if entry.path().ends_with('/') || entry.metadata().is_dir() {
                        return None;
                    }
                    let mut size = entry.metadata().content_length();
                    if local && size == 0 {
                        // Local listings do not carry sizes.
                        match operator.stat(entry.path()).await {
                            Ok(meta) => size = meta.content_length(),
                            Err(e) => return Some(Err(io(e))),
                        }
                    }
                    let url = format!("{base}{}", entry.path());
                    let key = if local {
                        url.clone()
                    } else {
                        entry.path().to_owned()
                    };
                    let mut fields = Fields::new();
                    fields.insert(
                        "name".to_owned(),
                        entry.name().trim_end_matches('/').to_owned(),
                    );
                    fields.insert("size".to_owned(), size.to_string());
                    fields.insert("key".to_owned(), key);
                    fields.insert("url".to_owned(), url);
                    Some(Ok(fields))
                }
            });
            Ok::<_, SourceError>(entries)
        };
        Box::pin(
            futures::stream::once(lister)
                .map(|result| match result {
                    Ok(entries) => entries.boxed(),
                    Err(error) => futures::stream::once(async { Err(error) }).boxed(),
                })
                .flatten(),
        )
    }
}
