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

/// As written: a table, or a list for `cmd` alone (`run = ["converter", "{input}"]`, which
/// serde alone would read as a table's fields in order: "expected a list" for the program).
#[derive(Serialize)]
#[serde(transparent)]
pub(crate) struct RawRun(RunTable);

impl<'de> Deserialize<'de> for RawRun {
    fn deserialize<D: serde::Deserializer<'de>>(written: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = RawRun;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a table, e.g. `{ cmd = [\"converter\", \"{input}\"], timeout = \"10m\" }`, or the command as a list, e.g. `[\"converter\", \"{input}\"]`",
                )
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<RawRun, A::Error> {
                let cmd =
                    Vec::<String>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
                Ok(RawRun(RunTable {
                    cmd: Some(cmd),
                    ..RunTable::default()
                }))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawRun, A::Error> {
                RunTable::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(RawRun)
            }
        }
        written.deserialize_any(Form)
    }
}

/// `run` as a table.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunTable {
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

    fn check(RawRun(raw): &RawRun, _cx: &CheckContext<'_>) -> Result<Self, String> {
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
