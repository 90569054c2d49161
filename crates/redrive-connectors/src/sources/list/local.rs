//! A local folder's files, read a batch at a time on redrive's local threads.
//!
//! OpenDAL's fs lister reads each entry's metadata through tokio's blocking pool: a hand-off
//! and ~30 µs of CPU a file, as much as copying a small file — `redrive cp` of a folder of
//! 20,000 small files spent longer listing than copying. Here one call on `local_io` reads up
//! to [`BATCH`] entries, their sizes included.

use futures::StreamExt;
use futures::stream::BoxStream;

/// Entries read in one call.
const BATCH: usize = 512;

/// A file found by the walk.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// Its path below the file system's root, as OpenDAL's would be (`tmp/in/a.json`).
    pub path: String,
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The files below `dir` (a path below the root ending in `/`, e.g. `tmp/in/`), in its
/// folders too with `recursive`. A `dir` that is missing or not a folder is an error; a
/// folder or file removed while the walk goes on is left out.
pub(super) fn files(dir: String, recursive: bool) -> BoxStream<'static, std::io::Result<Entry>> {
    let walk = Walk {
        recursive,
        start: Some(dir),
        open: Vec::new(),
    };
    futures::stream::unfold(Some(walk), |walk| async move {
        let mut walk = walk?;
        let (walk, batch) = crate::local_io::run(move || {
            let batch = walk.batch();
            (walk, batch)
        })
        .await
        .unwrap_or_else(|stopped| (Walk::done(), vec![Err(std::io::Error::other(stopped))]));
        if batch.is_empty() {
            return None;
        }
        let ended = batch.last().is_some_and(Result::is_err);
        Some((
            futures::stream::iter(batch),
            (!ended && !walk.is_done()).then_some(walk),
        ))
    })
    .flatten()
    .boxed()
}

/// A depth-first walk that holds one open folder per level below the listed one, never a list
/// of the folders still to read: its memory follows the tree's depth, not its number of
/// folders (a tree of a million partitions costs what a tree of ten does).
struct Walk {
    recursive: bool,
    /// The listed folder, until it is opened (below the root, ending in `/`).
    start: Option<String>,
    /// The folders being read, outermost first: each one's path and its entries not read yet.
    open: Vec<(String, std::fs::ReadDir)>,
}

impl Walk {
    fn done() -> Self {
        Self {
            recursive: false,
            start: None,
            open: Vec::new(),
        }
    }

    fn is_done(&self) -> bool {
        self.start.is_none() && self.open.is_empty()
    }

    /// The next entries, up to [`BATCH`]; an error ends the batch (and the walk).
    fn batch(&mut self) -> Vec<std::io::Result<Entry>> {
        use std::io::ErrorKind::NotFound;
        let mut batch = Vec::new();
        if let Some(start) = self.start.take() {
            // The listed folder must be there: missing, it is an error, not an empty listing.
            match std::fs::read_dir(format!("/{start}")) {
                Ok(entries) => self.open.push((start, entries)),
                Err(error) => return vec![Err(error)],
            }
        }
        while batch.len() < BATCH {
            let Some((folder, entries)) = self.open.last_mut() else {
                break;
            };
            let entry = match entries.next() {
                None => {
                    self.open.pop();
                    continue;
                }
                Some(Ok(entry)) => entry,
                Some(Err(error)) => {
                    batch.push(Err(error));
                    break;
                }
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = match entry.file_type() {
                Ok(kind) => kind,
                Err(error) if error.kind() == NotFound => continue,
                Err(error) => {
                    batch.push(Err(error));
                    break;
                }
            };
            if kind.is_symlink() {
                // A link to a file is that file (its size is the file's, as its copy reads
                // it). A link to a folder is not followed (a link to a parent would list
                // without end), and a link to nothing has nothing to copy: both are left out,
                // each said, as rclone and AzCopy leave links out unless told to follow them.
                let path = format!("{folder}{name}");
                match std::fs::metadata(format!("/{path}")) {
                    Ok(target) if target.is_file() => batch.push(Ok(Entry {
                        path,
                        name,
                        size: target.len(),
                    })),
                    Ok(_) => tracing::warn!(
                        "left out /{path}: a link to a folder (links to folders are not followed; list the folder itself)"
                    ),
                    Err(error) => tracing::warn!(
                        "left out /{path}: a link to nothing that can be read ({error})"
                    ),
                }
                continue;
            }
            if kind.is_dir() {
                if self.recursive {
                    let inner = format!("{folder}{name}/");
                    match std::fs::read_dir(format!("/{inner}")) {
                        Ok(entries) => self.open.push((inner, entries)),
                        // Removed since it was seen in its parent.
                        Err(error) if error.kind() == NotFound => {}
                        Err(error) => {
                            batch.push(Err(error));
                            break;
                        }
                    }
                }
                continue;
            }
            let size = match entry.metadata() {
                Ok(metadata) => metadata.len(),
                Err(error) if error.kind() == NotFound => continue,
                Err(error) => {
                    batch.push(Err(error));
                    break;
                }
            };
            batch.push(Ok(Entry {
                path: format!("{folder}{name}"),
                name,
                size,
            }));
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn below_root(path: &std::path::Path) -> String {
        format!("{}/", path.display().to_string().trim_start_matches('/'))
    }

    #[tokio::test]
    async fn files_in_nested_folders_are_listed_in_batches_with_their_sizes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(root.join("empty")).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..1_200 {
            std::fs::write(root.join(format!("f{i:04}")), b"x").unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(root.join("a/b/deep.json"), b"12345").unwrap_or_else(|e| panic!("{e}"));
        let base = below_root(root);
        let mut all: Vec<Entry> = files(base.clone(), true)
            .map(|entry| entry.unwrap_or_else(|e| panic!("{e}")))
            .collect()
            .await;
        all.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(all.len(), 1_201);
        assert_eq!(
            all[0],
            Entry {
                path: format!("{base}a/b/deep.json"),
                name: "deep.json".to_owned(),
                size: 5
            }
        );
        assert!(
            all[1..]
                .iter()
                .all(|e| e.size == 1 && !e.name.contains('/'))
        );
        let top: Vec<Entry> = files(base, false)
            .map(|entry| entry.unwrap_or_else(|e| panic!("{e}")))
            .collect()
            .await;
        assert_eq!(
            top.len(),
            1_200,
            "not recursive: the top folder's files only"
        );
    }

    /// Memory follows the tree's depth: 3,000 sibling folders (and a chain 6 deep) are walked
    /// with at most one open folder a level, and every file is found once.
    #[test]
    fn a_wide_tree_is_walked_holding_one_folder_a_level() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path();
        for i in 0..3_000 {
            let folder = root.join(format!("p{i:04}"));
            std::fs::create_dir(&folder).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(folder.join("f"), b"x").unwrap_or_else(|e| panic!("{e}"));
        }
        let deep = root.join("a/b/c/d/e/f");
        std::fs::create_dir_all(&deep).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(deep.join("deep"), b"xy").unwrap_or_else(|e| panic!("{e}"));
        let mut walk = Walk {
            recursive: true,
            start: Some(below_root(root)),
            open: Vec::new(),
        };
        let (mut found, mut most_open) = (Vec::new(), 0);
        while !walk.is_done() {
            let batch = walk.batch();
            most_open = most_open.max(walk.open.len());
            found.extend(
                batch
                    .into_iter()
                    .map(|e| e.unwrap_or_else(|e| panic!("{e}")).path),
            );
        }
        found.sort();
        found.dedup();
        assert_eq!(found.len(), 3_001);
        assert!(most_open <= 7, "{most_open} folders open at once");
    }

    /// A link to a file is listed as the file, with the file's size; a link to a folder (here
    /// to its own parent: followed, the walk would not end) and a link to nothing are left out.
    #[tokio::test]
    async fn a_link_to_a_file_is_the_file_and_links_to_folders_or_nothing_are_left_out() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("sub/a.txt"), b"hello").unwrap_or_else(|e| panic!("{e}"));
        let link = |to: &str, at: &str| {
            std::os::unix::fs::symlink(to, root.join(at)).unwrap_or_else(|e| panic!("{e}"));
        };
        link("sub/a.txt", "to-file");
        link("sub", "to-folder");
        link("..", "sub/to-parent");
        link("/nonexistent-redrive-test", "dangling");
        let base = below_root(root);
        let mut all: Vec<(String, u64)> = files(base.clone(), true)
            .map(|entry| entry.unwrap_or_else(|e| panic!("{e}")))
            .map(|entry| (entry.path.trim_start_matches(&base).to_owned(), entry.size))
            .collect()
            .await;
        all.sort();
        assert_eq!(
            all,
            [("sub/a.txt".to_owned(), 5), ("to-file".to_owned(), 5)]
        );
    }

    #[tokio::test]
    async fn a_missing_folder_or_a_file_is_an_error_not_an_empty_listing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("file.txt");
        std::fs::write(&file, b"x").unwrap_or_else(|e| panic!("{e}"));
        for path in [dir.path().join("missing"), file] {
            let listed: Vec<std::io::Result<Entry>> =
                files(below_root(&path), true).collect().await;
            assert_eq!(listed.len(), 1, "{path:?}");
            assert!(listed[0].is_err(), "{path:?}");
        }
    }
}
