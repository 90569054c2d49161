//! `list = "URL"`: an object-store prefix listing; fields `key`, `name`, `rel` (the key below
//! the listed prefix), `size`, `url`.

pub(crate) mod config;
mod local;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use redrive_core::item::Fields;
use redrive_core::source::{Source, SourceError};
use redrive_core::template::Template;

use crate::storage::{Location, Stores};

/// The objects under a prefix, recursively unless `recursive = false`. Directory markers are
/// left out. The URL may use a parent's fields under `[expand]`.
#[derive(Debug)]
pub struct ListSource {
    url: Template,
    stores: Arc<Stores>,
    recursive: bool,
}

impl ListSource {
    /// A listing of `url`; a URL without fields is checked now.
    pub fn new(stores: &Arc<Stores>, url: Template, recursive: bool) -> Result<Self, SourceError> {
        let source = Self {
            url,
            stores: Arc::clone(stores),
            recursive,
        };
        if source.url.fields().next().is_none() {
            source.locate(&Fields::new())?;
        }
        Ok(source)
    }

    /// The operator and path to list, and the URL the listing's keys are appended to (so
    /// `url` is usable by `copy`).
    fn locate(&self, context: &Fields) -> Result<(Location, String), SourceError> {
        let url = self.url.render(context).map_err(|e| SourceError::Input {
            location: format!("list `{}`", self.url),
            message: e.to_string(),
        })?;
        let mut location = self.stores.resolve(&url).map_err(|e| SourceError::Input {
            location: redrive_core::secrets::redact(&url).into_owned(),
            message: e.to_string(),
        })?;
        let base = if location.local {
            // Local listings are of directories: make sure the path ends with `/`.
            location.path = format!(
                "{}/",
                location.path.trim_start_matches('/').trim_end_matches('/')
            );
            "/".to_owned()
        } else {
            let without_query = url.split('?').next().unwrap_or(&url);
            let keep = without_query.len().saturating_sub(location.path.len());
            without_query[..keep].to_owned()
        };
        Ok((location, base))
    }
}

impl Source for ListSource {
    fn fields(&self) -> BTreeSet<String> {
        ["key", "name", "rel", "size", "url"]
            .map(str::to_owned)
            .into()
    }

    fn items(&self, context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        let (location, base) = match self.locate(context) {
            Ok(found) => found,
            Err(error) => return futures::stream::once(async { Err(error) }).boxed(),
        };
        let operator = location.operator.clone();
        let path = location.path.clone();
        let prefix = location.path.clone();
        let display = location.display.clone();
        let stalled = display.clone();
        let local = location.local;
        let recursive = self.recursive;
        if local {
            return Box::pin(progressing(
                local_items(path, base, display, recursive, Arc::clone(&self.stores)),
                NO_PROGRESS,
                stalled,
            ));
        }
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
                let base = base.clone();
                let display = display.clone();
                let prefix = prefix.clone();
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
                    let found = Found {
                        path: entry.path(),
                        name: entry.name().trim_end_matches('/'),
                        size: entry.metadata().content_length(),
                    };
                    Some(Ok(found.fields(&base, &prefix, false)))
                }
            });
            Ok::<_, SourceError>(entries)
        };
        Box::pin(progressing(
            futures::stream::once(lister)
                .map(|result| match result {
                    Ok(entries) => entries.boxed(),
                    Err(error) => futures::stream::once(async { Err(error) }).boxed(),
                })
                .flatten()
                .boxed(),
            NO_PROGRESS,
            stalled,
        ))
    }
}

/// A listed object or file.
struct Found<'a> {
    /// Its path in the store (below the file system's root for a local file).
    path: &'a str,
    name: &'a str,
    size: u64,
}

impl Found<'_> {
    /// Its fields, its URL being `base` and its path (`prefix`: the listed path).
    fn fields(&self, base: &str, prefix: &str, local: bool) -> Fields {
        let url = format!("{base}{}", self.path);
        let key = if local {
            url.clone()
        } else {
            self.path.to_owned()
        };
        let mut fields = Fields::new();
        fields.insert("name".to_owned(), self.name.to_owned());
        fields.insert("size".to_owned(), self.size.to_string());
        fields.insert("key".to_owned(), key);
        // The key below the listed prefix: what `diff` compares across two listings.
        let rel = self.path.strip_prefix(prefix).unwrap_or(self.path);
        fields.insert("rel".to_owned(), rel.to_owned());
        fields.insert("url".to_owned(), url);
        fields
    }
}

/// A local folder's files as items (see [`local`]); a folder that is missing or is a file
/// is an error, not an empty listing (a mistyped path copied nothing and said so only as a
/// warning).
fn local_items(
    dir: String,
    base: String,
    display: String,
    recursive: bool,
    stores: Arc<Stores>,
) -> BoxStream<'static, Result<Fields, SourceError>> {
    local::files(dir.clone(), recursive)
        // The job's own state and logs, written while the folder is listed, are not its files.
        .filter(move |entry| {
            let own = entry
                .as_ref()
                .is_ok_and(|entry| stores.is_own(Path::new(&format!("/{}", entry.path))));
            futures::future::ready(!own)
        })
        .map(move |entry| {
            let entry = entry.map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => SourceError::Input {
                    location: display.clone(),
                    message: "no such folder; check the path".to_owned(),
                },
                std::io::ErrorKind::NotADirectory => SourceError::Input {
                    location: display.clone(),
                    message: "not a folder; list a folder".to_owned(),
                },
                _ => SourceError::Io {
                    location: display.clone(),
                    source: Box::new(error),
                },
            })?;
            let found = Found {
                path: &entry.path,
                name: &entry.name,
                size: entry.size,
            };
            Ok(found.fields(&base, &dir, true))
        })
        .boxed()
}

/// Longest a listing may go without yielding an entry: every page has its own deadline, so a
/// listing this quiet is one that goes round in circles (a storage layer skipping the same
/// entry again and again), not a slow one.
const NO_PROGRESS: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// `entries`, ended with an error when none comes for `limit`.
fn progressing(
    entries: BoxStream<'static, Result<Fields, SourceError>>,
    limit: std::time::Duration,
    what: String,
) -> impl futures::Stream<Item = Result<Fields, SourceError>> + Send + 'static {
    futures::stream::unfold(Some(entries), move |entries| {
        let what = what.clone();
        async move {
            let mut entries = entries?;
            match tokio::time::timeout(limit, entries.next()).await {
                Ok(Some(item)) => Some((item, Some(entries))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(SourceError::Io {
                        location: what.clone(),
                        source: format!(
                            "the listing yielded nothing for {} minutes: it makes no progress (a path the storage layer cannot list, such as one with `..`?); stopped",
                            limit.as_secs() / 60
                        )
                        .into(),
                    }),
                    None,
                )),
            }
        }
    })
}

#[cfg(test)]
mod no_progress_tests {
    use super::*;

    #[tokio::test]
    async fn a_listing_that_yields_nothing_for_too_long_ends_with_an_error() {
        let silent: BoxStream<'static, Result<Fields, SourceError>> =
            futures::stream::pending().boxed();
        let mut entries = Box::pin(progressing(
            silent,
            std::time::Duration::from_millis(50),
            "s3://b/in/".to_owned(),
        ));
        let first = entries.next().await;
        let message = match first {
            Some(Err(error)) => format!(
                "{error}: {}",
                std::error::Error::source(&error)
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
            other => panic!("{other:?}"),
        };
        assert!(message.contains("makes no progress"), "{message}");
        assert!(entries.next().await.is_none(), "the listing ends there");
    }
}
