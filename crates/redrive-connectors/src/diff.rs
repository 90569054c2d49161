//! `redrive diff SRC DST`: which keys of SRC have their counterpart in DST.
//!
//! SRC and DST are prefix listings (any URL `list` takes) or local files of keys, one per line.
//! Each SRC item's counterpart key is `--map` rendered with its fields (`{rel}`, the key below
//! the listed prefix, by default); DST keys are taken below DST's prefix. Both sides stream:
//! when both arrive in order (object stores list in key order) a sorted merge needs no memory;
//! when either is out of order, the comparison starts over with DST's keys in a temporary
//! on-disk index. Memory stays flat for any number of keys either way.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use redrive_core::item::Fields;
use redrive_core::source::{Source, SourceError};
use redrive_core::template::Template;

use crate::sources::{LinesSource, ListSource};
use crate::storage::Stores;

/// What the comparison found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiffReport {
    /// SRC keys compared.
    pub total: u64,
    /// With a counterpart.
    pub present: u64,
    /// Without one.
    pub missing: u64,
    /// True when the sorted merge was used; false for the on-disk index.
    pub merged: bool,
}

/// A comparison that could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiffError {
    /// A side could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// `--map` is not a template over SRC's fields.
    #[error("--map: {0}")]
    Map(String),
    /// An output or the temporary index failed.
    #[error("{what}")]
    Io {
        /// What was being written.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiffError {
    let what = what.into();
    move |e| DiffError::Io {
        what,
        source: Box::new(e),
    }
}

/// A side: a listing, or a file of keys whose lines become `key`, `name` and `rel`.
fn side(
    stores: &Arc<Stores>,
    base_dir: &Path,
    location: &str,
) -> Result<Box<dyn Source>, DiffError> {
    let local = base_dir.join(location);
    if !location.contains("://") && local.is_file() {
        return Ok(Box::new(KeyFile(LinesSource::open(&local)?)));
    }
    // A location given on the command line is a path as written, not a template.
    let url =
        Template::parse(&Template::escape(location)).map_err(|e| DiffError::Map(e.to_string()))?;
    Ok(Box::new(ListSource::new(stores, url, true)?))
}

/// A side with no keys.
#[derive(Debug)]
struct Nothing;

impl Source for Nothing {
    fn fields(&self) -> BTreeSet<String> {
        ["key", "name", "rel"].map(str::to_owned).into()
    }

    fn items(&self, _context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        futures::stream::empty().boxed()
    }
}

#[derive(Debug)]
struct KeyFile(LinesSource);

impl Source for KeyFile {
    fn fields(&self) -> BTreeSet<String> {
        ["key", "name", "rel"].map(str::to_owned).into()
    }

    fn items(&self, context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        self.0
            .items(context)
            .map(|line| {
                line.map(|fields| {
                    let key = fields.get("line").cloned().unwrap_or_default();
                    let name = key.rsplit('/').next().unwrap_or_default().to_owned();
                    Fields::from([
                        ("key".to_owned(), key.clone()),
                        ("name".to_owned(), name),
                        ("rel".to_owned(), key),
                    ])
                })
            })
            .boxed()
    }
}

struct Outputs {
    missing: (PathBuf, std::io::BufWriter<std::fs::File>),
    present: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
}

impl Outputs {
    fn create(missing: &Path, present: Option<&Path>) -> Result<Self, DiffError> {
        let open =
            |path: &Path| -> Result<(PathBuf, std::io::BufWriter<std::fs::File>), DiffError> {
                let file = std::fs::File::create(path)
                    .map_err(io(format!("cannot create `{}`", path.display())))?;
                Ok((path.to_path_buf(), std::io::BufWriter::new(file)))
            };
        Ok(Self {
            missing: open(missing)?,
            present: present.map(open).transpose()?,
        })
    }

    fn write(&mut self, key: &str, found: bool, report: &mut DiffReport) -> Result<(), DiffError> {
        report.total += 1;
        let target = if found {
            report.present += 1;
            self.present.as_mut()
        } else {
            report.missing += 1;
            Some(&mut self.missing)
        };
        if let Some((path, writer)) = target {
            writeln!(writer, "{key}").map_err(io(format!("cannot write `{}`", path.display())))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), DiffError> {
        self.missing
            .1
            .flush()
            .map_err(io(format!("cannot write `{}`", self.missing.0.display())))?;
        if let Some((path, writer)) = &mut self.present {
            writer
                .flush()
                .map_err(io(format!("cannot write `{}`", path.display())))?;
        }
        Ok(())
    }
}

/// Compares SRC with DST; writes SRC's keys without a counterpart to `missing` and, when
/// given, those with one to `present`, one per line (usable as a `lines` source).
pub async fn diff(
    stores: &Arc<Stores>,
    base_dir: &Path,
    src: &str,
    dst: &str,
    map: Option<&str>,
    missing: &Path,
    present: Option<&Path>,
) -> Result<DiffReport, DiffError> {
    let src_side = side(stores, base_dir, src)?;
    // A local DST folder not made yet holds nothing: every key is missing. (A missing SRC
    // folder is an error: most likely a mistyped path.)
    let dst_side: Box<dyn Source> = if !dst.contains("://") && !base_dir.join(dst).exists() {
        Box::new(Nothing)
    } else {
        side(stores, base_dir, dst)?
    };
    let map = Template::parse(map.unwrap_or("{rel}")).map_err(|e| DiffError::Map(e.to_string()))?;
    map.check_fields(&src_side.fields())
        .map_err(|e| DiffError::Map(e.to_string()))?;

    if let Some(report) =
        merge(src_side.as_ref(), dst_side.as_ref(), &map, missing, present).await?
    {
        return Ok(report);
    }
    tracing::info!("A side is not in key order: comparing through an on-disk index.");
    indexed(src_side.as_ref(), dst_side.as_ref(), &map, missing, present).await
}

/// The sorted merge; `None` when either side turns out not to be in order.
async fn merge(
    src: &dyn Source,
    dst: &dyn Source,
    map: &Template,
    missing: &Path,
    present: Option<&Path>,
) -> Result<Option<DiffReport>, DiffError> {
    let mut outputs = Outputs::create(missing, present)?;
    let mut report = DiffReport {
        merged: true,
        ..DiffReport::default()
    };
    let mut src_items = src.items(&Fields::new());
    let mut dst_items = dst
        .items(&Fields::new())
        .map(|f| f.map(|f| f.get("rel").cloned().unwrap_or_default()));
    let mut current: Option<String> = dst_items.next().await.transpose()?;
    let mut last_src: Option<String> = None;
    while let Some(fields) = src_items.next().await {
        let fields = fields?;
        let wanted = map
            .render(&fields)
            .map_err(|e| DiffError::Map(e.to_string()))?;
        if last_src.as_ref().is_some_and(|last| *last > wanted) {
            return Ok(None);
        }
        while let Some(have) = current.as_ref().filter(|have| **have < wanted) {
            let previous = have.clone();
            current = dst_items.next().await.transpose()?;
            if current.as_ref().is_some_and(|next| *next < previous) {
                return Ok(None);
            }
        }
        let found = current.as_ref() == Some(&wanted);
        outputs.write(
            fields.get("key").map_or("", String::as_str),
            found,
            &mut report,
        )?;
        last_src = Some(wanted);
    }
    outputs.finish()?;
    Ok(Some(report))
}

/// DST's keys in a temporary SQLite index, then each SRC key looked up.
async fn indexed(
    src: &dyn Source,
    dst: &dyn Source,
    map: &Template,
    missing: &Path,
    present: Option<&Path>,
) -> Result<DiffReport, DiffError> {
    let index_path = std::env::temp_dir().join(format!(
        "redrive-diff-{}-{}.db",
        std::process::id(),
        fastrand_suffix()
    ));
    let _cleanup = Cleanup(index_path.clone());
    let sqlite = |e: rusqlite::Error| DiffError::Io {
        what: "the temporary index failed".to_owned(),
        source: Box::new(e),
    };
    let mut connection = rusqlite::Connection::open(&index_path).map_err(sqlite)?;
    connection
        .execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -16000;
             CREATE TABLE dst (k TEXT PRIMARY KEY) WITHOUT ROWID;",
        )
        .map_err(sqlite)?;
    let mut dst_items = dst.items(&Fields::new());
    let mut batch = Vec::with_capacity(10_000);
    loop {
        let next = dst_items.next().await.transpose()?;
        let done = next.is_none();
        if let Some(fields) = next {
            batch.push(fields.get("rel").cloned().unwrap_or_default());
        }
        if batch.len() >= 10_000 || (done && !batch.is_empty()) {
            let tx = connection.transaction().map_err(sqlite)?;
            {
                let mut insert = tx
                    .prepare_cached("INSERT OR IGNORE INTO dst (k) VALUES (?1)")
                    .map_err(sqlite)?;
                for key in batch.drain(..) {
                    insert.execute([key]).map_err(sqlite)?;
                }
            }
            tx.commit().map_err(sqlite)?;
        }
        if done {
            break;
        }
    }
    let mut outputs = Outputs::create(missing, present)?;
    let mut report = DiffReport::default();
    let mut lookup = connection
        .prepare("SELECT 1 FROM dst WHERE k = ?1")
        .map_err(sqlite)?;
    let mut src_items = src.items(&Fields::new());
    while let Some(fields) = src_items.next().await {
        let fields = fields?;
        let wanted = map
            .render(&fields)
            .map_err(|e| DiffError::Map(e.to_string()))?;
        let found = lookup.exists([wanted]).map_err(sqlite)?;
        outputs.write(
            fields.get("key").map_or("", String::as_str),
            found,
            &mut report,
        )?;
    }
    outputs.finish()?;
    Ok(report)
}

fn fastrand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Env;

    async fn run(src: &[&str], dst: &[&str], map: Option<&str>) -> (DiffReport, String, String) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("src.txt"), src.join("\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("dst.txt"), dst.join("\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        let stores = Arc::new(Stores::new(dir.path(), vec![], Env::from_pairs([])));
        let report = diff(
            &stores,
            dir.path(),
            "src.txt",
            "dst.txt",
            map,
            &dir.path().join("missing.txt"),
            Some(&dir.path().join("present.txt")),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        (report, read("missing.txt"), read("present.txt"))
    }

    #[tokio::test]
    async fn sorted_sides_merge() {
        let (report, missing, present) = run(&["a", "b", "c", "d"], &["b", "d", "e"], None).await;
        assert!(report.merged);
        assert_eq!((report.total, report.present, report.missing), (4, 2, 2));
        assert_eq!((missing.as_str(), present.as_str()), ("a\nc\n", "b\nd\n"));
    }

    #[tokio::test]
    async fn an_unsorted_side_falls_back_to_the_index_with_the_same_answer() {
        let (report, missing, present) = run(&["d", "a", "c", "b"], &["e", "b", "d"], None).await;
        assert!(!report.merged);
        assert_eq!((missing.as_str(), present.as_str()), ("a\nc\n", "d\nb\n"));
    }

    #[tokio::test]
    async fn map_builds_the_counterpart_from_src_fields() {
        let (report, missing, _) = run(
            &["raw/20260915/x1", "raw/20260915/x2", "raw/20260916/x0"],
            &["x0", "x2"],
            Some("{name}"),
        )
        .await;
        assert_eq!((report.present, missing.as_str()), (2, "raw/20260915/x1\n"));
    }

    #[tokio::test]
    async fn a_local_dst_folder_not_made_yet_lacks_every_key_and_a_missing_src_folder_is_an_error()
    {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(dir.path().join("in/day")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("in/a"), "1").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("in/day/b"), "2").unwrap_or_else(|e| panic!("{e}"));
        let stores = Arc::new(Stores::new(dir.path(), vec![], Env::from_pairs([])));
        let compare = |src: &'static str, dst: &'static str| {
            let (stores, base) = (Arc::clone(&stores), dir.path().to_path_buf());
            async move { diff(&stores, &base, src, dst, None, &base.join("m.txt"), None).await }
        };
        let report = compare("in", "out").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((report.total, report.missing), (2, 2));
        let missing = std::fs::read_to_string(dir.path().join("m.txt")).unwrap_or_default();
        let mut keys: Vec<&str> = missing.lines().collect();
        keys.sort_unstable();
        assert_eq!(keys.len(), 2, "{missing}");
        assert!(
            keys[0].ends_with("/in/a") && keys[1].ends_with("/in/day/b"),
            "{missing}"
        );
        let error = compare("nin", "in")
            .await
            .map(|_| ())
            .err()
            .map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("no such folder")),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_map_naming_an_unknown_field_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("k.txt"), "a").unwrap_or_else(|e| panic!("{e}"));
        let stores = Arc::new(Stores::new(dir.path(), vec![], Env::from_pairs([])));
        let error = diff(
            &stores,
            dir.path(),
            "k.txt",
            "k.txt",
            Some("{uuid}"),
            &dir.path().join("m"),
            None,
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
        assert!(error.is_err_and(|e| e.starts_with(
            "--map: field `uuid` used in `{uuid}` does not exist; available fields: key, name, rel"
        )));
    }
}
