//! `glob = "PATTERN"`: local files; fields `path`, `name`, `size`.

pub(crate) mod config;
pub(crate) mod walk;

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::stream::BoxStream;
use redrive_core::item::Fields;
use redrive_core::source::{Source, SourceError};
use redrive_core::template::Template;

use super::{blocking_stream, input};
use crate::storage::Stores;

/// Local files matching a pattern (`*`, `?`, `[…]`, `**`), in path order; directories are left
/// out, and `**` does not go through links to folders ([`walk`]). The pattern may use a
/// parent's fields under `[expand]`, each matched as it is written (`{field|raw}`: as a
/// pattern).
#[derive(Debug)]
pub struct GlobSource {
    pattern: Template,
    /// The job's own files (its state and logs), left out of what matches.
    own: Option<Arc<Stores>>,
}

impl GlobSource {
    /// Checks the pattern (now when it uses no fields, otherwise once rendered).
    pub fn new(pattern: Template) -> Result<Self, SourceError> {
        if pattern.fields().next().is_none() {
            let text = pattern
                .render(&Fields::new())
                .map_err(|e| input(format!("glob `{pattern}`"), e.to_string()))?;
            glob::Pattern::new(&text)
                .map_err(|e| input(format!("glob `{text}`"), format!("{e}")))?;
        }
        Ok(Self { pattern, own: None })
    }

    /// Leaves out the job's own files (see [`Stores::with_own_files`]).
    pub(crate) fn leaving_out_own_files(mut self, stores: &Arc<Stores>) -> Self {
        self.own = Some(Arc::clone(stores));
        self
    }
}

impl Source for GlobSource {
    fn fields(&self) -> BTreeSet<String> {
        ["path", "name", "size"].map(str::to_owned).into()
    }

    fn items(&self, context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        // A job's own pattern whose folder is not there is most likely mistyped: an error, as
        // for `list`, not a run of nothing that exits 0. (Under `[expand]` a parent's folder
        // may be missing: it has no children.)
        let literal = self.pattern.fields().next().is_none();
        // A field's value is a name, not a pattern: a folder `d[1]` must not match `d1`'s
        // files instead of its own. `{field|raw}` keeps a value's wildcards.
        let rendered = self
            .pattern
            .render_quoted(context, |value| glob::Pattern::escape(&value));
        let own = self.own.clone();
        let is_own = move |path: &std::path::Path| {
            own.as_ref().is_some_and(|stores| {
                std::path::absolute(path).is_ok_and(|path| stores.is_own(&path))
            })
        };
        blocking_stream(move |sender| {
            let pattern = match rendered {
                Ok(pattern) => pattern,
                Err(e) => {
                    let _ = sender.blocking_send(Err(input("glob", e.to_string())));
                    return;
                }
            };
            let walk = match walk::Walk::new(&pattern) {
                Ok(walk) => walk,
                Err(e) => {
                    let _ = sender
                        .blocking_send(Err(input(format!("glob `{pattern}`"), e.to_string())));
                    return;
                }
            };
            let base = walk.base();
            if literal && std::fs::symlink_metadata(base).is_err() {
                let what = if walk.names_one_path() {
                    "no such file; check the path"
                } else {
                    "no such folder; check the path"
                };
                let _ = sender.blocking_send(Err(input(
                    format!("glob `{pattern}`: {}", base.display()),
                    what,
                )));
                return;
            }
            let walked = walk.run(&mut |path, size| {
                if is_own(&path) {
                    return true;
                }
                let mut fields = Fields::new();
                fields.insert("path".to_owned(), path.display().to_string());
                fields.insert(
                    "name".to_owned(),
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
                fields.insert("size".to_owned(), size.to_string());
                sender.blocking_send(Ok(fields)).is_ok()
            });
            if let Err(e) = walked {
                let _ = sender.blocking_send(Err(SourceError::Io {
                    location: e.path.display().to_string(),
                    source: Box::new(e.error),
                }));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn files_match_in_order_with_name_and_size() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for (name, body) in [("b.json", "22"), ("a.json", "1"), ("c.txt", "")] {
            std::fs::write(dir.path().join(name), body).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::create_dir(dir.path().join("d.json")).unwrap_or_else(|e| panic!("{e}"));
        let source = GlobSource::new(
            Template::parse(&format!("{}/*.json", dir.path().display()))
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let items: Vec<Fields> = source
            .items(&Fields::new())
            .filter_map(|i| async move { i.ok() })
            .collect()
            .await;
        let names: Vec<(&str, &str)> = items
            .iter()
            .map(|f| (f["name"].as_str(), f["size"].as_str()))
            .collect();
        assert_eq!(names, [("a.json", "1"), ("b.json", "2")]);
        assert!(items[0]["path"].ends_with("/a.json"));
    }

    /// A link to nothing is left out (it stopped the run); a link to a file is that file.
    #[tokio::test]
    async fn a_link_to_nothing_is_left_out_and_a_link_to_a_file_is_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path();
        std::fs::write(root.join("a.txt"), b"hello").unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("a.txt", root.join("b-link.txt"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("/nonexistent-redrive-test", root.join("c-dangling.txt"))
            .unwrap_or_else(|e| panic!("{e}"));
        let source = GlobSource::new(
            Template::parse(&format!("{}/*.txt", root.display())).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let items: Vec<Result<Fields, SourceError>> = source.items(&Fields::new()).collect().await;
        let found: Vec<(String, String)> = items
            .into_iter()
            .map(|item| item.unwrap_or_else(|e| panic!("{e}")))
            .map(|f| (f["name"].clone(), f["size"].clone()))
            .collect();
        assert_eq!(
            found,
            [
                ("a.txt".to_owned(), "5".to_owned()),
                ("b-link.txt".to_owned(), "5".to_owned())
            ]
        );
    }

    /// A parent's folder `d[1]` lists its own files, not those of `d1` (which `d[1]` matches
    /// as a pattern); `|raw` keeps the wildcards.
    #[tokio::test]
    async fn a_fields_value_is_matched_as_written_unless_raw() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for file in ["d[1]/a.json", "d1/evil.json", "d*2/b.json", "dx2/c.json"] {
            let path = dir.path().join(file);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
            }
            std::fs::write(&path, b"x").unwrap_or_else(|e| panic!("{e}"));
        }
        let names = |template: &str, folder: &str| {
            let source = GlobSource::new(
                Template::parse(&format!("{}/{template}", dir.path().display()))
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let mut context = Fields::new();
            context.insert("dir".to_owned(), folder.to_owned());
            async move {
                let items: Vec<Result<Fields, SourceError>> =
                    source.items(&context).collect().await;
                items
                    .into_iter()
                    .map(|item| item.unwrap_or_else(|e| panic!("{e}"))["name"].clone())
                    .collect::<Vec<String>>()
            }
        };
        assert_eq!(names("{dir}/*.json", "d[1]").await, ["a.json"]);
        assert_eq!(names("{dir}/*.json", "d*2").await, ["b.json"]);
        assert_eq!(names("{dir|raw}/*.json", "d*2").await, ["b.json", "c.json"]);
    }

    /// A pattern whose folder (or file) is not there is an error naming it; one that matches
    /// nothing in a folder that is there is not.
    #[tokio::test]
    async fn a_missing_folder_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir(dir.path().join("in")).unwrap_or_else(|e| panic!("{e}"));
        let first = |pattern: String| async move {
            let source =
                GlobSource::new(Template::parse(&pattern).unwrap_or_else(|e| panic!("{e}")))
                    .unwrap_or_else(|e| panic!("{e}"));
            let items: Vec<Result<Fields, SourceError>> =
                source.items(&Fields::new()).collect().await;
            items
                .into_iter()
                .next()
                .map(|item| item.map(|_| ()).map_err(|e| e.to_string()))
        };
        let root = dir.path().display();
        let error = first(format!("{root}/ni/**/*.json")).await;
        assert!(
            matches!(&error, Some(Err(e)) if e.contains(&format!("{root}/ni")) && e.contains("no such folder; check the path")),
            "{error:?}"
        );
        let error = first(format!("{root}/in/a.json")).await;
        assert!(
            matches!(&error, Some(Err(e)) if e.contains("no such file; check the path")),
            "{error:?}"
        );
        assert_eq!(first(format!("{root}/in/*.json")).await, None);
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let error = GlobSource::new(Template::parse("a/[").unwrap_or_else(|e| panic!("{e}")))
            .map(|_| ())
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(error.starts_with("glob `a/[`: "), "{error}");
    }
}
