//! `redrive cp SRC DST`: a one-line copy through the same engine. The command writes its plan
//! to `.redrive/cp-<hash>.toml` (the hash of its arguments) and runs it, so rerunning the same
//! command resumes, and `status`/`failed` work on it like on any plan.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use redrive_core::template::Template;
use sha2::{Digest, Sha256};

use crate::cli::{CpArgs, GlobalArgs, RunArgs, StateArg};
use crate::exit::{ExitStatus, Hinted};

/// A TOML basic string (JSON's escapes are TOML's).
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

fn is_url(text: &str) -> bool {
    text.contains("://")
}

fn absolute(text: &str, here: &Path) -> String {
    if is_url(text) {
        text.to_owned()
    } else {
        here.join(text).display().to_string()
    }
}

/// `path` with its links and `..` resolved, as far as it exists (the rest appended as written);
/// `None` when not even its root resolves.
fn resolved(path: &Path) -> Option<PathBuf> {
    // `.` and `..` first, as the copy step reads them (`out/x/../a` is `out/a`, whether `x`
    // exists or not).
    let mut lexical = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                lexical.pop();
            }
            other => lexical.push(other),
        }
    }
    let mut rest = Vec::new();
    let mut existing = lexical.as_path();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return Some(
                rest.iter()
                    .rev()
                    .fold(real, |p: PathBuf, part| p.join(part)),
            );
        }
        rest.push(existing.file_name()?.to_owned());
        existing = existing.parent()?;
    }
}

/// `path` below `dir` (both resolved), as a path relative to `dir`.
fn inside(path: &Path, dir: &Path) -> Option<String> {
    let (path, dir) = (resolved(path)?, resolved(dir)?);
    let below = path.strip_prefix(&dir).ok()?;
    (!below.as_os_str().is_empty()).then(|| below.display().to_string())
}

/// `text` matched literally by a glob pattern.
fn glob_escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '*' | '?' | '[' | ']' => format!("[{c}]"),
            c => c.to_string(),
        })
        .collect()
}

pub(crate) async fn cp(args: &CpArgs, global: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    let here = std::env::current_dir().context("cannot read the current directory")?;
    if let Some(checksum) = &args.checksum
        && redrive_connectors::checksum::Checksum::parse(checksum).is_none()
    {
        return Err(Hinted {
            message: format!("--checksum {checksum} is not an algorithm"),
            hint: "use md5, crc32c or sha256".to_owned(),
        }
        .into());
    }
    let src = absolute(&args.src, &here);
    let dst = absolute(&args.dst, &here);
    let single_file = !is_url(&src) && Path::new(&src).is_file();
    // The paths go into the plan's templates as written: a folder named `{name}`, `${HOME}` or
    // `d[1]` is that folder, not a field, a variable or a pattern.
    let (source, from, to) = if single_file {
        let to = if dst.ends_with('/') || (!is_url(&dst) && Path::new(&dst).is_dir()) {
            format!("{}/{{name}}", Template::escape(dst.trim_end_matches('/')))
        } else {
            Template::escape(&dst)
        };
        (
            format!(
                "glob = {}",
                toml_string(&Template::escape(&glob_escape(&src)))
            ),
            "{path}".to_owned(),
            to,
        )
    } else {
        let src_dir = Template::escape(&format!("{}/", src.trim_end_matches('/')));
        let dst_dir = Template::escape(&format!("{}/", dst.trim_end_matches('/')));
        match &args.files_from {
            Some(list) => (
                format!(
                    "lines = {}\nkey = \"{{line}}\"",
                    toml_string(&absolute(&list.display().to_string(), &here))
                ),
                format!("{src_dir}{{line}}"),
                format!("{dst_dir}{{line}}"),
            ),
            None => (
                format!("list = {}", toml_string(&src_dir)),
                "{url}".to_owned(),
                format!("{dst_dir}{{rel}}"),
            ),
        }
    };
    let local_tree = !single_file && args.files_from.is_none() && !is_url(&src) && !is_url(&dst);
    if local_tree
        && let Some(src_dir) = resolved(Path::new(&src))
        && resolved(Path::new(&dst)).is_some_and(|d| d.starts_with(&src_dir))
    {
        return Err(Hinted {
            message: format!(
                "`{}` is inside `{}`: the copy would list the copies it makes and copy them again",
                args.dst, args.src
            ),
            hint: "copy to a folder outside SRC, or give the files to copy with --files-from"
                .to_owned(),
        }
        .into());
    }
    if !single_file && !is_url(&dst) && Path::new(&dst).is_file() {
        return Err(Hinted {
            message: format!(
                "`{}` is a file: a folder or prefix is copied into a folder",
                args.dst
            ),
            hint: "give a folder for DST (it is made if it does not exist)".to_owned(),
        }
        .into());
    }
    let mut exclude = args.exclude.clone();
    // The job's own state, written while SRC is listed, is not one of SRC's files.
    if local_tree && let Some(own) = inside(&here.join(".redrive"), Path::new(&src)) {
        exclude.push(format!("{}/**", glob_escape(&own)));
    }
    let mut source = source;
    for (key, patterns) in [("include", &args.include), ("exclude", &exclude)] {
        if !patterns.is_empty() {
            let list: Vec<String> = patterns.iter().map(|p| toml_string(p)).collect();
            source.push_str(&format!("\n{key} = [{}]", list.join(", ")));
        }
    }
    let mut options = String::new();
    if let Some(checksum) = &args.checksum {
        options.push_str(&format!(
            ", checksum = {}",
            toml_string(&checksum.to_ascii_lowercase())
        ));
    }
    if let Some(manifest) = &args.manifest {
        options.push_str(&format!(
            ", manifest = {}",
            toml_string(&absolute(&manifest.display().to_string(), &here))
        ));
    }
    options.push_str(&format!(
        ", part_size = {}, parts = {}",
        toml_string(&args.part_size),
        args.parts
    ));

    let mut identity = format!("{src}\n{dst}\n{:?}\n{:?}", args.files_from, args.checksum);
    // Filters are part of the job (and absent ones leave an earlier release's name as it was).
    if !args.include.is_empty() || !args.exclude.is_empty() {
        identity.push_str(&format!("\n{:?}\n{:?}", args.include, args.exclude));
    }
    let hash: String = Sha256::digest(identity.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = format!("cp-{hash}");
    let dir = here.join(".redrive");
    // A dry run writes its plan elsewhere, and reads the state of this command's earlier runs.
    let state = if args.dry_run {
        dir.join(format!("{name}.db")).display().to_string()
    } else {
        format!("{name}.db")
    };
    let plan = format!(
        "# Written by `redrive cp {} {}`; rerun that command to resume.\n\
         [job]\nname = {}\nstate = {}\n\n[source]\n{source}\n\n[[step]]\ncopy = {{ from = {}, to = {}{options} }}\n",
        args.src,
        args.dst,
        toml_string(&name),
        toml_string(&state),
        toml_string(&from),
        toml_string(&to),
    );
    // The dry run's plan: in the temporary folder, removed when it ends.
    let dir = if args.dry_run {
        std::env::temp_dir().join(format!("redrive-{name}-dry-run-{}", std::process::id()))
    } else {
        dir
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let plan_path: PathBuf = dir.join(format!("{name}.toml"));
    std::fs::write(&plan_path, plan)
        .with_context(|| format!("cannot write `{}`", plan_path.display()))?;
    let run = RunArgs {
        plan: plan_path,
        state: StateArg { state: None },
        dry_run: args.dry_run,
        check_targets: false,
        limit: None,
        retry_failed: true,
        reload: true,
        max_errors: None,
        restart: false,
        yes: false,
        rate: None,
        concurrency: Some(args.concurrency),
        grace: std::time::Duration::from_secs(10),
        metrics: None,
        telemetry: None,
        shard: None,
        workers: None,
        no_hooks: true,
        progress_json: false,
        json: false,
        metrics_addr: None,
    };
    let status = super::run::run(&run, global).await;
    if args.dry_run {
        let _ = std::fs::remove_dir_all(&dir);
    }
    status
}
