//! A plan made runnable: its source and steps built, its templates checked against the
//! source's fields.

use std::sync::Arc;

use redrive_core::engine::{Expansion, Pipeline, PipelineStep, StepTarget};
use redrive_core::job::PlanError;
use redrive_core::source::{Shard, Source, SourceError};
use redrive_core::step::Step;

use crate::plan::{Plan, SourceSpec};
use crate::sources::{Sharded, SourceBuildContext};
use crate::steps::{BuildContext, Required};
use crate::storage::{Env, Stores};

/// A plan that cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The plan itself is wrong (including a template naming a field the source lacks).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The source cannot be opened.
    #[error("{file}: in [{table}]: cannot open the source")]
    Source {
        /// The plan file.
        file: String,
        /// `source` or `expand`.
        table: String,
        /// The cause.
        #[source]
        source: SourceError,
    },
    /// A section the plan uses is not available in this version.
    #[error("{file}: in [{table}]: {message}")]
    Unsupported {
        /// The plan file.
        file: String,
        /// The table.
        table: String,
        /// What is missing.
        message: String,
    },
}

/// Builds the plan's source and steps, reading the environment for storage settings.
pub fn build(plan: &Plan) -> Result<Pipeline, BuildError> {
    build_with(plan, Env::from_process())
}

/// Builds the plan with `env` as the environment.
pub fn build_with(plan: &Plan, env: Env) -> Result<Pipeline, BuildError> {
    build_shard(plan, env, None)
}

/// Builds the plan for one shard of its items (`--shard I/N`), or all of them.
pub fn build_shard(plan: &Plan, env: Env, shard: Option<Shard>) -> Result<Pipeline, BuildError> {
    let file = plan.path.display().to_string();
    // Local copies are written in the logs folder's `.partial` (one per shard, each with its
    // own run lock) and renamed into place.
    let partial = match shard {
        None => ".partial".to_owned(),
        Some(shard) => format!(".partial-{}-of-{}", shard.index, shard.count),
    };
    // A state in a file: its path (a PostgreSQL URL has `://`).
    let state_file = (!plan.state.contains("://")).then(|| std::path::Path::new(&plan.state));
    let stores = Arc::new(
        Stores::new(&plan.base_dir, plan.stores.clone(), env)
            .with_partial_dir(plan.log_dir.join(partial))
            .with_own_files(plan.log_dir.clone(), state_file),
    );
    let source_error = |table: &str, source: SourceError| BuildError::Source {
        file: file.clone(),
        table: table.to_owned(),
        source,
    };
    let source =
        self::source(&plan.source, &stores, shard).map_err(|e| source_error("source", e))?;
    let source = match shard {
        Some(shard) if !plan.source.kind.config().shards_itself() => {
            Arc::new(Sharded::new(source, plan.key()?, shard)) as Arc<dyn Source>
        }
        _ => source,
    };
    let expand = match (&plan.expand, plan.expand_key()?) {
        (Some(spec), Some(key)) => Some(Expansion {
            source: self::source(spec, &stores, None).map_err(|e| source_error("expand", e))?,
            key,
        }),
        _ => None,
    };
    let child_fields = expand.as_ref().map(|e| e.source.fields());
    let source_fields = source.fields();
    plan.check_fields(&source_fields, child_fields.as_ref())?;
    let steps = plan
        .steps
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let config = spec.action.config();
            let cx = BuildContext {
                name: &spec.name,
                stores: &stores,
                base_dir: &plan.base_dir,
                log_dir: &plan.log_dir,
            };
            let step = config
                .build(&cx)
                .map_err(|message| BuildError::Unsupported {
                    file: file.clone(),
                    table: crate::plan::step_table(index, Some(&spec.name)),
                    message,
                })?;
            let step: Arc<dyn Step> = match &spec.require {
                Some(require) => Arc::new(Required::new(
                    step,
                    require.path.clone(),
                    require.field.clone(),
                    Arc::clone(&stores),
                )),
                None => step,
            };
            // A target that renders from the items' own fields (a child's: its parent's and
            // its own) is claimed as they load; one that needs fields a step binds, when the
            // item reaches its step.
            let known = |field: &str| {
                source_fields.contains(field)
                    || child_fields.as_ref().is_some_and(|c| c.contains(field))
            };
            let names = Arc::clone(&stores);
            let target = config.target().map(|template| StepTarget {
                template: template.clone(),
                name: Arc::new(move |url: &str| names.target_name(url)),
                bound: !template.fields().all(known),
            });
            Ok(PipelineStep {
                name: spec.name.clone(),
                step,
                traits: config.traits(),
                target,
            })
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    Ok(Pipeline {
        source,
        key: plan.key()?,
        expand,
        steps,
        duplicates: plan.source.duplicates,
    })
}

fn source(
    spec: &SourceSpec,
    stores: &Arc<Stores>,
    shard: Option<Shard>,
) -> Result<Arc<dyn Source>, SourceError> {
    let built = spec
        .kind
        .config()
        .build(&SourceBuildContext { stores, shard })?;
    match &spec.filter {
        None => Ok(built),
        Some(filter) => crate::sources::Filtered::new(built, filter.clone())
            .map(|filtered| Arc::new(filtered) as Arc<dyn Source>)
            .map_err(|message| SourceError::Input {
                location: spec.kind.name().to_owned(),
                message,
            }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use redrive_core::step::StepTraits;

    use super::*;

    fn pipeline(steps: &str) -> Pipeline {
        let text = format!(
            "[job]\nname = \"t\"\n[source]\ndates = {{ from = \"2026-01-01\", to = \"2026-01-02\" }}\n{steps}"
        );
        let plan =
            Plan::parse(&text, Path::new("/tmp/plan.toml")).unwrap_or_else(|e| panic!("{e}"));
        build_with(&plan, Env::from_pairs([])).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn what_a_step_needs_from_the_engine_survives_require() {
        let built = pipeline(
            r#"
[[step]]
require = "in/{date}"
http = { url = "http://127.0.0.1:9/x", batch = 10 }
[[step]]
require = "in/{date}"
xml = { field = "date", path = "/a" }
[[step]]
require = "in/{date}"
copy = { from = "in/{date}", to = "out/{date}" }
"#,
        );
        let traits: Vec<StepTraits> = built.steps.iter().map(|s| s.traits).collect();
        assert_eq!(
            traits,
            [
                StepTraits {
                    paces_itself: true,
                    binds_fields: false,
                    batch: Some((10, std::time::Duration::from_secs(1))),
                },
                StepTraits {
                    paces_itself: false,
                    binds_fields: true,
                    batch: None,
                },
                StepTraits::default(),
            ]
        );
    }
}
