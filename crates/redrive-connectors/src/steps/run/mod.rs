//! `run = { cmd, shell, cwd, env, timeout, output }`: a command per item, without a shell
//! unless `shell` is given. Its stdout and stderr go to a log file per item and step; a non-zero
//! exit fails the item with the code and the last lines of stderr; `output` must exist after.

pub(crate) mod config;
mod orphans;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use self::config::RunSpec;
use async_trait::async_trait;
use redrive_core::error::{ErrorClass, StepError};
use redrive_core::item::Fields;
use redrive_core::step::{Done, Outcome, Produced, Step, StepContext};
use redrive_core::template::TemplateError;
use tokio::io::AsyncBufReadExt;

/// Lines of stderr quoted in a failure.
const TAIL: usize = 8;

/// Runs a command.
#[derive(Debug)]
pub struct RunStep {
    spec: RunSpec,
    name: String,
    base_dir: PathBuf,
    log_dir: PathBuf,
    /// This process as the owner of its commands; set by the first command, after the
    /// commands of a dead run of this job were swept away.
    owner: std::sync::OnceLock<String>,
}

struct Command {
    program: String,
    args: Vec<String>,
    cwd: PathBuf,
    env: Vec<(String, String)>,
}

impl RunStep {
    /// A step named `name`; relative paths are relative to `base_dir`, logs go to `log_dir`.
    pub fn new(spec: RunSpec, name: &str, base_dir: &Path, log_dir: &Path) -> Self {
        Self {
            spec,
            name: name.to_owned(),
            base_dir: base_dir.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            owner: std::sync::OnceLock::new(),
        }
    }

    /// The owner every command carries; the first call kills what a dead run of this job left.
    fn owner(&self) -> &str {
        self.owner.get_or_init(|| {
            orphans::sweep(&self.log_dir);
            orphans::owner(&self.log_dir)
        })
    }

    fn command(&self, fields: &Fields) -> Result<Command, TemplateError> {
        let cwd = match &self.spec.cwd {
            Some(cwd) => self.base_dir.join(cwd.render(fields)?),
            None => self.base_dir.clone(),
        };
        let (program, args) = match &self.spec.shell {
            // Field values are data, not shell syntax: quoted, unless `{field|raw}`.
            Some(shell) => (
                "sh".to_owned(),
                vec!["-c".to_owned(), shell.render_quoted(fields, sh_quote)?],
            ),
            None => {
                let mut parts = self
                    .spec
                    .cmd
                    .iter()
                    .map(|part| part.render(fields))
                    .collect::<Result<Vec<_>, _>>()?;
                let program = if parts.is_empty() {
                    String::new()
                } else {
                    parts.remove(0)
                };
                // `./convert` means the one in the working directory, whatever the process's is.
                let program = if program.contains('/') && Path::new(&program).is_relative() {
                    cwd.join(&program).display().to_string()
                } else {
                    program
                };
                (program, parts)
            }
        };
        let env = self
            .spec
            .env
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.render(fields)?)))
            .collect::<Result<Vec<_>, TemplateError>>()?;
        Ok(Command {
            program,
            args,
            cwd,
            env,
        })
    }

    fn output(&self, fields: &Fields) -> Result<Option<PathBuf>, TemplateError> {
        self.spec
            .output
            .as_ref()
            .map(|o| Ok(self.base_dir.join(o.render(fields)?)))
            .transpose()
    }
}

/// `program args`, made to die with redrive: under `setpriv --pdeathsig KILL` (util-linux)
/// when the machine has it, so that a redrive killed with SIGKILL leaves no command running
/// that a resumed run would start a second time. Without `setpriv`, the command is run as it
/// is (and outlives a SIGKILLed redrive; a first-run warning says so at `-v`).
fn guarded(program: &str, args: &[String]) -> tokio::process::Command {
    static SETPRIV: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let setpriv = SETPRIV.get_or_init(|| {
        let found = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("setpriv"))
                .find(|candidate| candidate.is_file())
        });
        if found.is_none() {
            tracing::info!("`setpriv` (util-linux) is not on PATH: `run` commands outlive a redrive killed with SIGKILL.");
        }
        found
    });
    match setpriv {
        Some(setpriv) => {
            let mut command = tokio::process::Command::new(setpriv);
            command
                .args(["--pdeathsig", "KILL", "--"])
                .arg(program)
                .args(args);
            command
        }
        None => {
            let mut command = tokio::process::Command::new(program);
            command.args(args);
            command
        }
    }
}

/// Whether `program` names a file: a path (relative to `cwd`), or a name found on `PATH`.
fn findable(program: &str, cwd: &Path) -> bool {
    if program.contains('/') {
        return cwd.join(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn log_name(key: &str, step: &str) -> String {
    let safe: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.{step}.log")
}

/// A value as one `sh` word: as it is when it holds nothing the shell would read (letters,
/// digits, `-_./:=@%+,`), else in single quotes (a `'` inside written `'\''`).
fn sh_quote(value: String) -> String {
    let plain = !value.is_empty()
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '@' | '%' | '+' | ',')
        });
    if plain {
        return value;
    }
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// Kills a child's process group (it is its group's leader) when dropped before
/// [`GroupGuard::disarm`].
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pid) = self
            .0
            .take()
            .and_then(|pid| rustix::process::Pid::from_raw(i32::try_from(pid).ok()?))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Longest piece of output masked at once: a program that writes megabytes without a newline
/// is logged in pieces, not held whole.
const LOG_PIECE: u64 = 64 * 1024;

/// Copies a child's output into its log a line at a time, secrets masked (a program may print
/// the token or SAS it was given), and returns the last `TAIL` lines. Output that is not UTF-8
/// is logged lossily rather than stopping the copy (which would block the child on a full pipe).
async fn log_masked(
    pipe: Option<impl tokio::io::AsyncRead + Unpin>,
    mut log: std::fs::File,
) -> VecDeque<String> {
    use std::io::Write;
    use tokio::io::AsyncReadExt;
    let mut tail = VecDeque::with_capacity(TAIL);
    let Some(pipe) = pipe else {
        return tail;
    };
    let mut reader = tokio::io::BufReader::new(pipe);
    let mut piece = Vec::new();
    loop {
        piece.clear();
        match (&mut reader)
            .take(LOG_PIECE)
            .read_until(b'\n', &mut piece)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&piece);
        let masked = redrive_core::secrets::redact(&text);
        let _ = log.write_all(masked.as_bytes());
        if tail.len() == TAIL {
            tail.pop_front();
        }
        tail.push_back(masked.trim_end_matches(['\n', '\r']).to_owned());
    }
    tail
}

#[async_trait]
impl Step for RunStep {
    async fn run(&self, fields: &Fields, cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        let command = self
            .command(fields)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let output = self
            .output(fields)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let log_path = self.log_dir.join(log_name(cx.key, &self.name));
        let log_error = |e: std::io::Error| {
            StepError::new(
                ErrorClass::Fatal,
                format!("cannot write the log `{}`", log_path.display()),
            )
            .with_source(e)
        };
        std::fs::create_dir_all(&self.log_dir).map_err(log_error)?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(log_error)?;
        {
            use std::io::Write;
            let line = redrive_core::secrets::redact(&format!(
                "==== {} {} {}\n",
                jiff::Timestamp::now(),
                command.program,
                command.args.join(" ")
            ))
            .into_owned();
            log.write_all(line.as_bytes()).map_err(log_error)?;
        }
        let stdout = log.try_clone().map_err(log_error)?;

        // Under `setpriv`, a missing program would show as setpriv's exit code: say it plainly.
        if !command.env.iter().any(|(k, _)| k == "PATH")
            && !findable(&command.program, &command.cwd)
        {
            return Err(StepError::permanent(format!(
                "cannot start `{}` in `{}`: no such program; check that it exists and is executable",
                command.program,
                command.cwd.display()
            )));
        }
        let mut child = guarded(&command.program, &command.args)
            .current_dir(&command.cwd)
            .env(orphans::OWNER_VAR, self.owner())
            .envs(command.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C at the terminal reaches redrive, which lets the
            // command finish (a first Ctrl-C drains), instead of killing it mid-item.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                StepError::permanent(format!(
                    "cannot start `{}` in `{}`: {e}; check that it exists and is executable",
                    command.program,
                    command.cwd.display()
                ))
            })?;

        // Abandoned (the run's grace period over, a second Ctrl-C) or timed out: the whole
        // group goes, not only the shell (whose `sleep`, converter, … would live on).
        let mut group = GroupGuard(child.id());
        // stdout and stderr go to the log, secrets masked like everywhere else; the last
        // lines of stderr go into the error too.
        let stdout_task = log_masked(child.stdout.take(), stdout);
        let tail_task = log_masked(child.stderr.take(), log);
        let wait = async {
            let (status, _, tail) = tokio::join!(child.wait(), stdout_task, tail_task);
            (status, tail)
        };
        let (status, tail) = match self.spec.timeout {
            Some(limit) => match tokio::time::timeout(limit, wait).await {
                Ok(done) => done,
                Err(_) => {
                    group.kill();
                    let _ = child.kill().await;
                    return Err(StepError::permanent(format!(
                        "`{}` did not finish within {}s and was killed; its output is in `{}`",
                        command.program,
                        limit.as_secs(),
                        log_path.display()
                    )));
                }
            },
            None => wait.await,
        };
        // It ended on its own: what it left running in its group is its business.
        group.disarm();
        let status = status.map_err(|e| {
            StepError::new(
                ErrorClass::Transient,
                format!("lost track of `{}`", command.program),
            )
            .with_source(e)
        })?;
        if !status.success() {
            let code = status
                .code()
                .map_or_else(|| "a signal".to_owned(), |c| format!("code {c}"));
            let tail: Vec<String> = tail.into_iter().collect();
            return Err(StepError::permanent(format!(
                "`{}` exited with {code}: {}; full output in `{}`",
                command.program,
                if tail.is_empty() {
                    "(nothing on stderr)".to_owned()
                } else {
                    tail.join(" | ")
                },
                log_path.display()
            )));
        }
        let produced = match output {
            Some(path) => match std::fs::metadata(&path) {
                Ok(meta) => Some(Produced {
                    path: path.display().to_string(),
                    bytes: meta.len(),
                }),
                Err(_) => {
                    return Err(StepError::permanent(format!(
                        "`{}` succeeded but did not produce `{}`; see `{}`",
                        command.program,
                        path.display(),
                        log_path.display()
                    )));
                }
            },
            None => None,
        };
        Ok(Outcome::Done(Done {
            bytes: 0,
            output: produced,
            target: None,
            ..Done::default()
        }))
    }

    fn calls(&self, _fields: &Fields) -> Vec<(&'static str, u64)> {
        // One process per item.
        vec![("process", 1)]
    }

    fn describe(&self, fields: &Fields) -> Result<String, TemplateError> {
        let command = self.command(fields)?;
        let output = self
            .output(fields)?
            .map(|o| format!(" → {}", o.display()))
            .unwrap_or_default();
        Ok(format!(
            "run {} {}{output}",
            command.program,
            command.args.join(" ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::sh_quote;

    #[test]
    fn shell_values_are_one_word_each() {
        for (value, quoted) in [
            ("day-2024-01-05.csv", "day-2024-01-05.csv"),
            ("s3://b/k=1,2@x+y%20", "s3://b/k=1,2@x+y%20"),
            ("a b", "'a b'"),
            ("x; rm -rf ~", "'x; rm -rf ~'"),
            ("$(touch pwned)", "'$(touch pwned)'"),
            ("it's", "'it'\\''s'"),
            ("", "''"),
        ] {
            assert_eq!(sh_quote(value.to_owned()), quoted, "{value}");
        }
    }
}
