//! A plan made runnable: its source and steps built, its templates checked against the
//! source's fields.

use std::sync::Arc;

use redrive_core::engine::Pipeline;
use redrive_core::plan::{Action, Plan, PlanError, SourceKind, SourceSpec};
use redrive_core::source::{Source, SourceError};
use redrive_core::step::Step;

use crate::sources::{CsvSource, GlobSource, LinesSource, ListSource};
use crate::steps::{CopyStep, ExistsStep};
use crate::storage::{Env, Stores};

/// A plan that cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The plan itself is wrong (including a template naming a field the source lacks).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The source cannot be opened.
    #[error("{file}: in [source]: cannot open the source")]
    Source {
        /// The plan file.
        file: String,
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
    let file = plan.path.display().to_string();
    if plan.expand.is_some() {
        return Err(BuildError::Unsupported {
            file,
            table: "expand".to_owned(),
            message: "`[expand]` is not available in this version of redrive; list the children in the source instead".to_owned(),
        });
    }
    let stores = Arc::new(Stores::new(&plan.base_dir, plan.stores.clone(), env));
    let source = source(&plan.source, &stores).map_err(|source| BuildError::Source {
        file: file.clone(),
        source,
    })?;
    plan.check_fields(&source.fields())?;
    let steps = plan
        .steps
        .iter()
        .map(|spec| {
            let step: Arc<dyn Step> = match &spec.action {
                Action::Exists { url, negate } => {
                    Arc::new(ExistsStep::new(url.clone(), *negate, Arc::clone(&stores)))
                }
                Action::Copy(copy) => Arc::new(CopyStep::new(copy.clone(), Arc::clone(&stores))),
            };
            (spec.name.clone(), step)
        })
        .collect();
    Ok(Pipeline {
        source,
        key: plan.key()?,
        steps,
    })
}

fn source(spec: &SourceSpec, stores: &Arc<Stores>) -> Result<Arc<dyn Source>, SourceError> {
    Ok(match &spec.kind {
        SourceKind::Csv { path, delimiter } => Arc::new(CsvSource::open(path, *delimiter)?),
        SourceKind::Lines { path } => Arc::new(LinesSource::open(path)?),
        SourceKind::Glob { pattern } => Arc::new(GlobSource::new(pattern)?),
        SourceKind::List { url, recursive } => {
            let url = url
                .render(&Default::default())
                .map_err(|e| SourceError::Input {
                    location: url.raw().to_owned(),
                    message: format!("{e}; a top-level `list` URL cannot use item fields"),
                })?;
            Arc::new(ListSource::new(stores, &url, *recursive)?)
        }
    })
}
