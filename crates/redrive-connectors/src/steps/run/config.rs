//! `run = { cmd, shell, cwd, env, timeout, output }`.

use std::collections::BTreeMap;
use std::sync::Arc;

use redrive_core::job::{parse_duration, template};
use redrive_core::step::Step;
use redrive_core::template::Template;
use serde::{Deserialize, Serialize};

use super::RunStep;
use crate::steps::{BuildContext, CheckContext, StepConfig, StepKind};

/// `run = { cmd, shell, cwd, env, timeout, output }`.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The program and its arguments, run without a shell.
    pub cmd: Vec<Template>,
    /// A command line for `sh -c`, instead of `cmd`.
    pub shell: Option<Template>,
    /// Working directory (default: the plan's folder).
    pub cwd: Option<Template>,
    /// Extra environment variables.
    pub env: Vec<(String, Template)>,
    /// Longest the command may run before it is killed.
    pub timeout: Option<std::time::Duration>,
    /// The file the command must produce; recorded, and the step is redone if it disappears.
    pub output: Option<Template>,
}

/// As written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRun {
    #[serde(skip_serializing_if = "Option::is_none")]
    cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shell: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
}

impl StepKind for RunSpec {
    type Raw = RawRun;

    fn check(raw: &RawRun, _cx: &CheckContext<'_>) -> Result<Self, String> {
        let cmd = match (&raw.cmd, &raw.shell) {
            (Some(cmd), None) if !cmd.is_empty() => cmd
                .iter()
                .map(|part| template("run.cmd", part))
                .collect::<Result<Vec<_>, _>>()?,
            (None, Some(_)) => Vec::new(),
            (Some(_), Some(_)) => {
                return Err("give `run.cmd` (no shell) or `run.shell`, not both".to_owned());
            }
            _ => {
                return Err(
                    "`run` needs `cmd`, e.g. `cmd = [\"converter\", \"--in\", \"{input}\"]`, or `shell = \"…\"`".to_owned(),
                );
            }
        };
        let timeout = raw
            .timeout
            .as_deref()
            .map(|t| {
                parse_duration(t).ok_or_else(|| {
                    format!(
                        "`run.timeout` = `{t}` is not a duration; write e.g. `90s`, `10m` or `2h`"
                    )
                })
            })
            .transpose()?;
        Ok(RunSpec {
            cmd,
            shell: raw
                .shell
                .as_deref()
                .map(|t| template("run.shell", t))
                .transpose()?,
            cwd: raw
                .cwd
                .as_deref()
                .map(|t| template("run.cwd", t))
                .transpose()?,
            env: raw
                .env
                .iter()
                .map(|(k, v)| Ok((k.clone(), template(&format!("run.env.{k}"), v)?)))
                .collect::<Result<Vec<_>, String>>()?,
            timeout,
            output: raw
                .output
                .as_deref()
                .map(|t| template("run.output", t))
                .transpose()?,
        })
    }
}

impl StepConfig for RunSpec {
    fn templates(&self) -> Vec<&Template> {
        let mut all: Vec<&Template> = self.cmd.iter().collect();
        all.extend(self.shell.as_ref());
        all.extend(self.cwd.as_ref());
        all.extend(self.env.iter().map(|(_, t)| t));
        all.extend(self.output.as_ref());
        all
    }

    fn one_at_a_time(&self) -> bool {
        true
    }

    fn build(&self, cx: &BuildContext<'_>) -> Result<Arc<dyn Step>, String> {
        Ok(Arc::new(RunStep::new(
            self.clone(),
            cx.name,
            cx.base_dir,
            cx.log_dir,
        )))
    }
}
