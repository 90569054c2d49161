//! `copy = { from, to, if_exists, content_type }`: one object, streamed from source to target
//! in bounded memory.

use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use opendal::ErrorKind;
use redrive_core::error::StepError;
use redrive_core::item::Fields;
use redrive_core::plan::{CopySpec, IfExists};
use redrive_core::step::{Outcome, Step, StepContext};
use redrive_core::template::TemplateError;

use crate::storage::{Stores, step_error};

/// Bytes read and written at a time; also the part size when a store uploads in parts.
/// Peak memory per copy is about twice this.
pub(crate) const CHUNK: usize = 8 * 1024 * 1024;

/// Copies one object.
#[derive(Debug)]
pub struct CopyStep {
    spec: CopySpec,
    stores: Arc<Stores>,
}

impl CopyStep {
    /// A copy as the plan describes it.
    pub fn new(spec: CopySpec, stores: Arc<Stores>) -> Self {
        Self { spec, stores }
    }
}

/// The target exists: a conditional create was refused.
fn target_exists(error: &opendal::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ConditionNotMatch | ErrorKind::AlreadyExists
    )
}

#[async_trait]
impl Step for CopyStep {
    async fn run(&self, fields: &Fields, cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        let render = |t: &redrive_core::Template| {
            t.render(fields)
                .map_err(|e| StepError::permanent(e.to_string()))
        };
        let from = render(&self.spec.from)?;
        let to = render(&self.spec.to)?;
        let content_type = self.spec.content_type.as_ref().map(render).transpose()?;
        let source = self.stores.resolve(&from)?;
        let target = self.stores.resolve_for_write(&to)?;

        let create_only = self.spec.if_exists != IfExists::Overwrite;
        let exists = || -> Result<Outcome, StepError> {
            match self.spec.if_exists {
                // An existing target counts as success; it is never touched.
                IfExists::Skip | IfExists::Overwrite => {
                    Ok(Outcome::done_to(0, target.display.clone()))
                }
                IfExists::Fail => Err(StepError::permanent(format!(
                    "target `{}` exists (if_exists = \"fail\"); remove it or use if_exists = \"skip\"",
                    target.display
                ))),
            }
        };

        let reader = source
            .operator
            .reader_with(&source.path)
            .chunk(CHUNK)
            .await
            .map_err(|e| step_error(format!("cannot read `{}`", source.display), e))?;
        let mut stream = reader
            .into_bytes_stream(..)
            .await
            .map_err(|e| step_error(format!("cannot read `{}`", source.display), e))?;

        let mut writer = target
            .operator
            .writer_with(&target.path)
            .chunk(CHUNK)
            .if_not_exists(create_only);
        if let Some(content_type) = &content_type {
            writer = writer.content_type(content_type);
        }
        let mut writer = match writer.await {
            Ok(writer) => writer,
            Err(e) if create_only && target_exists(&e) => return exists(),
            Err(e) => return Err(step_error(format!("cannot write `{}`", target.display), e)),
        };

        let mut bytes = 0u64;
        loop {
            let chunk = match stream.try_next().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    let _ = writer.abort().await;
                    let e = opendal::Error::new(ErrorKind::Unexpected, "read failed")
                        .set_source(e)
                        .set_temporary();
                    return Err(step_error(format!("cannot read `{}`", source.display), e));
                }
            };
            let n = chunk.len() as u64;
            if let Err(e) = writer.write(chunk).await {
                let _ = writer.abort().await;
                if create_only && target_exists(&e) {
                    return exists();
                }
                return Err(step_error(format!("cannot write `{}`", target.display), e));
            }
            bytes += n;
            cx.bytes.add(n);
        }
        match writer.close().await {
            Ok(_) => Ok(Outcome::done_to(bytes, target.display.clone())),
            Err(e) if create_only && target_exists(&e) => exists(),
            Err(e) => {
                let _ = writer.abort().await;
                Err(step_error(format!("cannot write `{}`", target.display), e))
            }
        }
    }

    fn describe(&self, fields: &Fields) -> Result<String, TemplateError> {
        let from = self.spec.from.render(fields)?;
        let to = self.spec.to.render(fields)?;
        let mode = match self.spec.if_exists {
            IfExists::Skip => "if absent",
            IfExists::Overwrite => "overwrite",
            IfExists::Fail => "fail if present",
        };
        Ok(format!("copy {from} -> {to} ({mode})"))
    }
}
