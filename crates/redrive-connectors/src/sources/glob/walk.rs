//! The walk behind `glob`: the folders a pattern can match below, each read once, in path
//! order, without following a link to a folder through `**`.
//!
//! The `glob` crate's own walk follows every link to a folder: `src/**/*` over a tree holding
//! `src/loop -> ..` listed `src/loop/src/loop/…` until the kernel said "too many levels of
//! symbolic links", and two links forming a cycle made the walk exponential. Here, as in
//! bash's `globstar`, `**` crosses real folders only; a link to a folder is followed where a
//! component of the pattern names it (`data/current/*.json` with `current -> 2026-12-07`),
//! which each link followed uses up, so no walk can go round a cycle. The pattern is matched
//! component by component (the crate's `Pattern`, its syntax and options), as a set of the
//! positions still possible in it, so a folder is read once however many ways `**` reaches it,
//! and only folders the pattern can match below are read at all.

use std::path::{Component, Path, PathBuf};

use glob::{MatchOptions, Pattern, PatternError};

/// One component of a pattern after its literal start.
#[derive(Debug)]
enum Part {
    /// `**`: any number of real folders, none included; last, any file below too.
    Folders,
    /// A name with wildcards.
    Matching(Pattern),
    /// A name without wildcards: looked up, not listed.
    Named(String),
}

/// A compiled pattern: the folder its literal start names, then the parts matched below it.
#[derive(Debug)]
pub(crate) struct Walk {
    base: PathBuf,
    parts: Vec<Part>,
    /// The pattern ends in `/`: it names folders, so no file matches.
    folders_only: bool,
}

/// Why a walk stopped: the path it could not read and the error.
#[derive(Debug)]
pub(crate) struct WalkError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

fn has_wildcards(name: &str) -> bool {
    name.contains(['*', '?', '['])
}

impl Walk {
    /// Compiles `text` (checked whole first, with the crate's own rules: `a**` is an error).
    pub(crate) fn new(text: &str) -> Result<Self, PatternError> {
        Pattern::new(text)?;
        let mut base = PathBuf::new();
        let mut parts = Vec::new();
        for component in Path::new(text).components() {
            let name = component.as_os_str().to_string_lossy();
            let wild = matches!(component, Component::Normal(_)) && has_wildcards(&name);
            if parts.is_empty() && !wild {
                base.push(component.as_os_str());
            } else if name == "**" {
                parts.push(Part::Folders);
            } else if wild {
                parts.push(Part::Matching(Pattern::new(&name)?));
            } else {
                parts.push(Part::Named(name.into_owned()));
            }
        }
        Ok(Self {
            base,
            parts,
            folders_only: text.ends_with('/'),
        })
    }

    /// The path the pattern's literal start names (`.` for none): the folder walked, or the
    /// one file a pattern without wildcards names.
    pub(crate) fn base(&self) -> &Path {
        if self.base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &self.base
        }
    }

    /// Whether the pattern names one path (no wildcard): [`Walk::base`] is that path.
    pub(crate) fn names_one_path(&self) -> bool {
        self.parts.is_empty()
    }

    /// Calls `found` with each file that matches and its size, in path order, until it answers
    /// `false`. A folder that is missing or went away is left out; one that cannot be read
    /// stops the walk with its error.
    pub(crate) fn run(&self, found: &mut dyn FnMut(PathBuf, u64) -> bool) -> Result<(), WalkError> {
        if self.folders_only {
            return Ok(());
        }
        if self.parts.is_empty() {
            // No wildcard: the one path, if it is a file.
            match std::fs::metadata(&self.base) {
                Ok(meta) if meta.is_file() => {
                    found(self.base.clone(), meta.len());
                }
                Ok(_) => {}
                Err(error) => self.unreadable_link(&self.base, &error),
            }
            return Ok(());
        }
        let start = self.closure(vec![0]);
        self.visit(&self.base, &start, found).map(|_| ())
    }

    /// Adds the positions `**` reaches matching no folder, sorted, once each.
    fn closure(&self, mut positions: Vec<usize>) -> Vec<usize> {
        let mut i = 0;
        while i < positions.len() {
            let position = positions[i];
            if matches!(self.parts.get(position), Some(Part::Folders))
                && !positions.contains(&(position + 1))
            {
                positions.push(position + 1);
            }
            i += 1;
        }
        positions.sort_unstable();
        positions
    }

    /// Where a name at `positions` leads: whether it ends the pattern, and the positions below
    /// it (through `**` only when `through_folders`, i.e. for a real folder).
    fn advance(
        &self,
        positions: &[usize],
        name: &str,
        through_folders: bool,
    ) -> (bool, Vec<usize>) {
        let options = MatchOptions::new();
        let mut ends = false;
        let mut below = Vec::new();
        for &position in positions {
            let matched = match self.parts.get(position) {
                Some(Part::Folders) => {
                    if through_folders {
                        below.push(position);
                    }
                    // A trailing `**` matches every file below, as in bash and rclone (the
                    // crate's matched folders only: `dir/**` listed nothing).
                    !through_folders && position + 1 == self.parts.len()
                }
                Some(Part::Matching(pattern)) => pattern.matches_with(name, options),
                Some(Part::Named(named)) => named == name,
                None => false,
            };
            if matched {
                if position + 1 == self.parts.len() {
                    ends = true;
                } else {
                    below.push(position + 1);
                }
            }
        }
        (ends, self.closure(below))
    }

    /// Walks `folder`, which the path so far leaves at `positions`; `false` once `found` said
    /// to stop.
    fn visit(
        &self,
        folder: &Path,
        positions: &[usize],
        found: &mut dyn FnMut(PathBuf, u64) -> bool,
    ) -> Result<bool, WalkError> {
        for (name, kind) in self.entries(folder, positions)? {
            let path = folder.join(&name);
            let go_on = if kind.is_symlink() {
                self.link(&path, &name, positions, found)?
            } else if kind.is_dir() {
                let (_, below) = self.advance(positions, &name, true);
                below.is_empty() || self.visit(&path, &below, found)?
            } else if kind.is_file() {
                let (ends, _) = self.advance(positions, &name, false);
                !ends || self.file(path, found)
            } else {
                true
            };
            if !go_on {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A link: to a file, that file; to a folder, followed only where the pattern names it.
    fn link(
        &self,
        path: &Path,
        name: &str,
        positions: &[usize],
        found: &mut dyn FnMut(PathBuf, u64) -> bool,
    ) -> Result<bool, WalkError> {
        match std::fs::metadata(path) {
            Ok(target) if target.is_file() => {
                let (ends, _) = self.advance(positions, name, false);
                Ok(!ends || found(path.to_path_buf(), target.len()))
            }
            Ok(target) if target.is_dir() => {
                let (_, named) = self.advance(positions, name, false);
                if !named.is_empty() {
                    return self.visit(path, &named, found);
                }
                let (_, through) = self.advance(positions, name, true);
                if !through.is_empty() {
                    tracing::warn!(
                        "left out {}: a link to a folder (`**` does not follow links to folders; name it in the pattern to go through it)",
                        path.display()
                    );
                }
                Ok(true)
            }
            Ok(_) => Ok(true),
            Err(error) => {
                if self.advance(positions, name, false).0 {
                    self.unreadable_link(path, &error);
                }
                Ok(true)
            }
        }
    }

    fn file(&self, path: PathBuf, found: &mut dyn FnMut(PathBuf, u64) -> bool) -> bool {
        match std::fs::metadata(&path) {
            Ok(meta) => found(path, meta.len()),
            // Removed since it was listed.
            Err(_) => true,
        }
    }

    /// A link to nothing has nothing to copy: left out, and said.
    fn unreadable_link(&self, path: &Path, error: &std::io::Error) {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            tracing::warn!(
                "left out {}: a link to nothing that can be read ({error})",
                path.display()
            );
        }
    }

    /// The entries of `folder` that can matter at `positions`, in name order: looked up one
    /// by one when the pattern names them all, listed otherwise.
    fn entries(
        &self,
        folder: &Path,
        positions: &[usize],
    ) -> Result<Vec<(String, std::fs::FileType)>, WalkError> {
        use std::io::ErrorKind::{NotADirectory, NotFound};
        let stopped = |error: std::io::Error| WalkError {
            path: folder.to_path_buf(),
            error,
        };
        let dir = if folder.as_os_str().is_empty() {
            Path::new(".")
        } else {
            folder
        };
        let named: Option<Vec<&str>> = positions
            .iter()
            .map(|&p| match self.parts.get(p) {
                Some(Part::Named(name)) => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let mut entries = Vec::new();
        if let Some(mut names) = named {
            names.sort_unstable();
            names.dedup();
            for name in names {
                match std::fs::symlink_metadata(dir.join(name)) {
                    Ok(meta) => entries.push((name.to_owned(), meta.file_type())),
                    Err(e) if matches!(e.kind(), NotFound | NotADirectory) => {}
                    Err(e) => return Err(stopped(e)),
                }
            }
            return Ok(entries);
        }
        let listing = match std::fs::read_dir(dir) {
            Ok(listing) => listing,
            Err(e) if matches!(e.kind(), NotFound | NotADirectory) => return Ok(entries),
            Err(e) => return Err(stopped(e)),
        };
        for entry in listing {
            let entry = entry.map_err(stopped)?;
            let kind = match entry.file_type() {
                Ok(kind) => kind,
                Err(e) if e.kind() == NotFound => continue,
                Err(e) => return Err(stopped(e)),
            };
            match entry.file_name().into_string() {
                Ok(name) => entries.push((name, kind)),
                Err(name) => tracing::warn!(
                    "left out {}: its name is not UTF-8, which a pattern cannot match",
                    folder.join(name).display()
                ),
            }
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(pattern: &str) -> Vec<String> {
        let walk = Walk::new(pattern).unwrap_or_else(|e| panic!("{e}"));
        let mut paths = Vec::new();
        walk.run(&mut |path, _| {
            paths.push(path.display().to_string());
            true
        })
        .unwrap_or_else(|e| panic!("{}: {}", e.path.display(), e.error));
        paths
    }

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for file in files {
            let path = dir.path().join(file);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
            }
            std::fs::write(&path, file).unwrap_or_else(|e| panic!("{e}"));
        }
        dir
    }

    /// Matches as the `glob` crate did: `**` is zero or more folders, `*` stays in its
    /// component, hidden names match, path order. Not as it did: a trailing `**` matches the
    /// files below (the crate matched only folders, so no file).
    #[test]
    fn matches_as_the_glob_crate_did_in_path_order() {
        let dir = tree(&[
            "a/x.json",
            "a/b/y.json",
            "a/b/c/z.json",
            "a/c.json",
            "a/.h.json",
            "a/n.txt",
            "a/2026-01/in/p.json",
            "a/2026-02/in/q.json",
            "a/2026-02/out/r.json",
            "top.json",
        ]);
        let root = dir.path().display().to_string();
        let rel = |paths: Vec<String>| -> Vec<String> {
            paths
                .into_iter()
                .map(|p| p.trim_start_matches(&format!("{root}/")).to_owned())
                .collect()
        };
        for (pattern, want) in [
            (
                "a/**/*.json",
                vec![
                    "a/.h.json",
                    "a/2026-01/in/p.json",
                    "a/2026-02/in/q.json",
                    "a/2026-02/out/r.json",
                    "a/b/c/z.json",
                    "a/b/y.json",
                    "a/c.json",
                    "a/x.json",
                ],
            ),
            ("a/*.json", vec!["a/.h.json", "a/c.json", "a/x.json"]),
            (
                "a/2026-*/in/*.json",
                vec!["a/2026-01/in/p.json", "a/2026-02/in/q.json"],
            ),
            ("a/**/b/**/z.json", vec!["a/b/c/z.json"]),
            ("*/b/y.json", vec!["a/b/y.json"]),
            ("a/n.txt", vec!["a/n.txt"]),
            ("a/missing/*.json", vec![]),
            ("missing/**/*.json", vec![]),
            ("a/[bx]*", vec!["a/x.json"]),
            ("a/*/", vec![]),
        ] {
            let pattern = format!("{root}/{pattern}");
            assert_eq!(rel(matched(&pattern)), want, "{pattern}");
            // The crate's own walk (no links in this tree) agrees.
            let theirs: Vec<String> = glob::glob(&pattern)
                .unwrap_or_else(|e| panic!("{e}"))
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .map(|p| p.display().to_string())
                .collect();
            assert_eq!(rel(theirs), want, "{pattern} (glob crate)");
        }
        assert_eq!(
            rel(matched(&format!("{root}/a/b/**"))),
            ["a/b/c/z.json", "a/b/y.json"]
        );
        assert_eq!(rel(matched(&format!("{root}/**"))).len(), 10);
    }

    /// `**` does not go through a link to a folder (a link to a parent, two links forming a
    /// cycle: the crate's walk did not end); a pattern naming the link goes through it.
    #[test]
    fn links_to_folders_are_crossed_only_where_the_pattern_names_them() {
        let dir = tree(&["src/a.txt", "src/d/b.txt", "days/2026-12-07/c.txt"]);
        let root = dir.path();
        let link = |target: &str, at: &str| {
            std::os::unix::fs::symlink(target, root.join(at)).unwrap_or_else(|e| panic!("{e}"))
        };
        link("..", "src/loop");
        link("../e", "src/d/f");
        std::fs::create_dir(root.join("src/e")).unwrap_or_else(|e| panic!("{e}"));
        link("../d", "src/e/g");
        link("2026-12-07", "days/current");
        link("a.txt", "src/a-link.txt");
        let top = root.display();
        assert_eq!(
            matched(&format!("{top}/src/**/*")),
            [
                format!("{top}/src/a-link.txt"),
                format!("{top}/src/a.txt"),
                format!("{top}/src/d/b.txt"),
            ]
        );
        assert_eq!(
            matched(&format!("{top}/days/current/*.txt")),
            [format!("{top}/days/current/c.txt")]
        );
        assert_eq!(
            matched(&format!("{top}/days/*/*.txt")),
            [
                format!("{top}/days/2026-12-07/c.txt"),
                format!("{top}/days/current/c.txt")
            ]
        );
    }

    /// A folder that cannot be read (here a link to itself: ELOOP, which root meets too,
    /// unlike a folder without permissions) stops the walk, naming it.
    #[test]
    fn a_folder_that_cannot_be_read_stops_the_walk_naming_it() {
        let dir = tree(&["in/x.json"]);
        let locked = dir.path().join("in/a");
        std::os::unix::fs::symlink("a", &locked).unwrap_or_else(|e| panic!("{e}"));
        let walk = Walk::new(&format!("{}/in/a/*.json", dir.path().display()))
            .unwrap_or_else(|e| panic!("{e}"));
        let error = walk.run(&mut |_, _| true).err();
        assert_eq!(error.map(|e| e.path), Some(locked));
    }
}
