//! `copy = { from, to, if_exists, content_type, part_size, parts, checksum, manifest, mode,
//! copy_cutoff }`.

use std::path::PathBuf;
use std::sync::Arc;

use redrive_core::job::{parse_size, template};
use redrive_core::step::Step;
use redrive_core::template::Template;
use serde::{Deserialize, Serialize};

use super::CopyStep;
use crate::checksum::Checksum;
use crate::steps::{BuildContext, CheckContext, StepConfig, StepKind};

/// Copy one object, streamed.
#[derive(Clone, Debug)]
pub struct CopySpec {
    /// Source object URL.
    pub from: Template,
    /// Target object URL.
    pub to: Template,
    /// What to do when the target exists.
    pub if_exists: IfExists,
    /// Content type to set on the target.
    pub content_type: Option<Template>,
    /// Bytes per read and per uploaded part (multipart / block upload above it).
    pub part_size: usize,
    /// Parts uploaded at once; peak memory per copy is about `parts × part_size`.
    pub parts: usize,
    /// Checksum computed while streaming, compared with the store's where it reports one.
    pub checksum: Option<Checksum>,
    /// A file that gets one JSON line per object copied.
    pub manifest: Option<PathBuf>,
    /// Server-side or streamed.
    pub mode: CopyMode,
    /// S3 → S3 server-side: larger objects are copied in parts (UploadPartCopy), not by one
    /// CopyObject.
    pub copy_cutoff: u64,
}

/// How the bytes move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMode {
    /// Server-side where the stores allow it (Azure Blob → Azure Blob, S3 → S3, GCS → GCS), else
    /// streamed.
    #[default]
    Auto,
    /// Server-side only: an object that cannot be copied so fails.
    Server,
    /// Always streamed through redrive.
    Stream,
}

/// Default bytes per part.
pub const DEFAULT_PART_SIZE: usize = 16 * 1024 * 1024;
/// Default parts in flight.
pub const DEFAULT_PARTS: usize = 8;
/// Default (and largest) `copy_cutoff`: S3's limit for one CopyObject.
pub(crate) const DEFAULT_COPY_CUTOFF: u64 = super::server_side::MAX_COPY_OBJECT;

/// What a copy does when its target exists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IfExists {
    /// Create only (a conditional write); an existing target counts as success.
    #[default]
    Skip,
    /// Replace the target.
    Overwrite,
    /// Fail the item.
    Fail,
}

/// As written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCopy {
    from: String,
    to: String,
    #[serde(default, skip_serializing_if = "is_skip")]
    if_exists: IfExists,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    part_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parts: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checksum: Option<Checksum>,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<String>,
    #[serde(default, skip_serializing_if = "is_auto")]
    mode: CopyMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    copy_cutoff: Option<String>,
}

fn is_auto(mode: &CopyMode) -> bool {
    *mode == CopyMode::Auto
}

fn is_skip(if_exists: &IfExists) -> bool {
    *if_exists == IfExists::Skip
}

impl StepKind for CopySpec {
    type Raw = RawCopy;

    fn check(copy: &RawCopy, cx: &CheckContext<'_>) -> Result<Self, String> {
        let part_size = match copy.part_size.as_deref() {
            Some(text) => parse_size(text)
                .filter(|n| *n >= 1024 * 1024)
                .ok_or_else(|| format!("`copy.part_size` = `{text}`: give a size of at least 1MiB, e.g. \"16MiB\" (S3 parts are at least 5MiB)"))?,
            None => DEFAULT_PART_SIZE,
        };
        crate::storage::check_location("copy.from", &copy.from)?;
        crate::storage::check_location("copy.to", &copy.to)?;
        let copy_cutoff = match copy.copy_cutoff.as_deref() {
            Some(text) => parse_size(text)
                .map(|n| n as u64)
                .filter(|n| (5 * 1024 * 1024..=DEFAULT_COPY_CUTOFF).contains(n))
                .ok_or_else(|| format!("`copy.copy_cutoff` = `{text}`: give a size from 5MiB to 5GiB, e.g. \"1GiB\" (S3 → S3 objects larger than it are copied server-side in parts of part_size)"))?,
            None => DEFAULT_COPY_CUTOFF,
        };
        let parts = copy.parts.unwrap_or(DEFAULT_PARTS);
        if parts == 0 {
            return Err("`copy.parts` must be at least 1".to_owned());
        }
        Ok(CopySpec {
            from: template("copy.from", &copy.from)?,
            to: template("copy.to", &copy.to)?,
            if_exists: copy.if_exists,
            content_type: copy
                .content_type
                .as_deref()
                .map(|t| template("copy.content_type", t))
                .transpose()?,
            part_size,
            parts,
            checksum: copy.checksum,
            manifest: copy.manifest.as_deref().map(|m| cx.base_dir.join(m)),
            mode: copy.mode,
            copy_cutoff,
        })
    }

    fn canonicalize(raw: &mut RawCopy) {
        crate::plan::unless_default(&mut raw.part_size, |p| {
            parse_size(p) == Some(DEFAULT_PART_SIZE)
        });
        crate::plan::unless_default(&mut raw.parts, |p| *p == DEFAULT_PARTS);
        crate::plan::unless_default(&mut raw.copy_cutoff, |c| {
            parse_size(c).map(|n| n as u64) == Some(DEFAULT_COPY_CUTOFF)
        });
    }
}

impl StepConfig for CopySpec {
    fn templates(&self) -> Vec<&Template> {
        let mut all = vec![&self.from, &self.to];
        all.extend(self.content_type.as_ref());
        all
    }

    fn target(&self) -> Option<&Template> {
        Some(&self.to)
    }

    fn build(&self, cx: &BuildContext<'_>) -> Result<Arc<dyn Step>, String> {
        Ok(Arc::new(CopyStep::new(self.clone(), Arc::clone(cx.stores))))
    }
}
