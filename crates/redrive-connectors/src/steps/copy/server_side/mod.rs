//! Server-side copies: the service copies the object itself, so its bytes never pass through
//! redrive. Azure Blob → Azure Blob by Copy Blob From URL and, above `copy_cutoff` (at most
//! 256 MiB), Put Block From URL (`azure`); S3 → S3 by CopyObject and, above `copy_cutoff`,
//! UploadPartCopy (`s3`); GCS → GCS by rewrite (`gcs`).
//!
//! [`route`] decides, for one object, whether the service copies it or redrive streams it,
//! and says why not; the run and the dry run's request counts ask it the same question. A
//! store pair whose server refused such a copy once (another account without access, an
//! emulator that does not implement it) is streamed from then on (`mode = "auto"`, said once),
//! or fails (`mode = "server"`).

mod azure;
mod gcs;
mod s3;

use std::collections::HashSet;
use std::sync::Mutex;

pub(crate) use self::azure::{AzureCopier, MAX_SYNC_COPY};
pub(crate) use self::gcs::GcsCopier;
pub(crate) use self::s3::{MAX_COPY_OBJECT, S3Copier};

use redrive_core::error::StepError;

use super::config::{CopyMode, CopySpec, IfExists};
use crate::azure_account::AzureBlob;
use crate::checksum::Checksum;
use crate::storage::{GcsObject, S3Object, Stores};

/// What a server-side attempt came to.
#[derive(Debug)]
pub(crate) enum Server {
    /// The target is complete (its size, when the answer says it).
    Copied(Option<u64>),
    /// A create-only target exists.
    Exists,
    /// The service cannot copy this way between these stores: why (stream instead).
    Unsupported(String),
    /// The object is too large for one copy request (S3's 5 GiB): copy it in parts.
    TooLarge,
}

/// A copy request that got no answer (the connection failed, timed out): worth another try.
pub(crate) fn unanswered(source: &str, target: &str, error: &str) -> StepError {
    StepError::new(
        redrive_core::error::ErrorClass::Transient,
        format!(
            "cannot copy `{source}` to `{target}`: {}",
            redrive_core::secrets::redact(error)
        ),
    )
}

/// Why the parts of a server-side copy stopped: the first part the service does not copy
/// stops the rest (a refusal is met once per object, not once per part).
pub(crate) enum Halt {
    /// The service answered, but did not copy the part (exists, unsupported).
    Answer(Server),
    /// The part failed.
    Failed(StepError),
}

impl Halt {
    /// A part's outcome: `Ok` when it was copied.
    pub(crate) fn of(judged: Result<Server, StepError>) -> Result<(), Self> {
        match judged {
            Ok(Server::Copied(_)) => Ok(()),
            Ok(other) => Err(Self::Answer(other)),
            Err(error) => Err(Self::Failed(error)),
        }
    }

    /// What the whole copy comes to.
    pub(crate) fn into_result(self) -> Result<Server, StepError> {
        match self {
            Self::Answer(answer) => Ok(answer),
            Self::Failed(error) => Err(error),
        }
    }
}

/// How one object is copied (made once per object and dropped with its copy, so its size
/// does not matter).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Route {
    /// By Copy Blob From URL, or (`Some(parts)`) by that many Put Block From URL requests.
    Azure {
        source: AzureBlob,
        target: AzureBlob,
        parts: Option<PartPlan>,
    },
    /// By CopyObject, or (`Some(parts)`) by that many UploadPartCopy requests.
    S3 {
        source: S3Object,
        target: S3Object,
        parts: Option<PartPlan>,
    },
    /// By rewrite (one call, or more for a large object: the service decides).
    Gcs {
        source: GcsObject,
        target: GcsObject,
    },
    /// Streamed through redrive, for this reason.
    Stream(String),
}

/// The parts of a multipart server-side copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PartPlan {
    pub(crate) size: u64,
    pub(crate) part_size: u64,
    pub(crate) count: u64,
}

/// S3's smallest part (but the last) and most parts of one upload.
const S3_MIN_PART: u64 = 5 * 1024 * 1024;
const S3_MAX_PARTS: u64 = 10_000;

impl PartPlan {
    /// `size` bytes in parts of `part_size` (at least S3's 5 MiB, and large enough that
    /// 10,000 parts hold the object).
    pub(crate) fn new(size: u64, part_size: u64) -> Self {
        let part_size = part_size.max(S3_MIN_PART).max(size.div_ceil(S3_MAX_PARTS));
        Self {
            size,
            part_size,
            count: size.div_ceil(part_size).max(1),
        }
    }

    /// The inclusive byte range of part `n` (from 1).
    pub(crate) fn range(&self, n: u64) -> (u64, u64) {
        let start = (n - 1) * self.part_size;
        (start, (start + self.part_size).min(self.size) - 1)
    }
}

/// Store pairs whose server refused a server-side copy.
#[derive(Debug, Default)]
pub(crate) struct Refusals(Mutex<HashSet<(String, String)>>);

impl Refusals {
    /// Whether a server-side copy from `source` to `target` was refused before.
    pub(crate) fn contains(&self, source: &str, target: &str) -> bool {
        self.0
            .lock()
            .map(|r| r.contains(&(source.to_owned(), target.to_owned())))
            .unwrap_or(false)
    }

    /// Remembers a refusal; true the first time for that pair (to say it once).
    pub(crate) fn insert(&self, source: &str, target: &str) -> bool {
        self.0
            .lock()
            .map(|mut r| r.insert((source.to_owned(), target.to_owned())))
            .unwrap_or(false)
    }
}

/// The name of a store pair in [`Refusals`] and in what redrive says.
pub(crate) fn pair_of(route: &Route) -> Option<(String, String)> {
    match route {
        Route::Azure { source, target, .. } => {
            Some((source.endpoint.clone(), target.endpoint.clone()))
        }
        Route::S3 { source, target, .. } => Some((
            format!("{}/{}", source.access.endpoint(), source.access.bucket),
            format!("{}/{}", target.access.endpoint(), target.access.bucket),
        )),
        Route::Gcs { source, target } => Some((
            format!("{}/{}", source.endpoint, source.bucket),
            format!("{}/{}", target.endpoint, target.bucket),
        )),
        Route::Stream(_) => None,
    }
}

/// How `spec` copies `from` to `to` (a source of `size` bytes, when known).
pub(crate) fn route(
    spec: &CopySpec,
    stores: &Stores,
    refusals: &Refusals,
    from: &str,
    to: &str,
    size: Option<u64>,
) -> Route {
    let stream = |why: &str| Route::Stream(why.to_owned());
    if spec.mode == CopyMode::Stream {
        return stream("mode = \"stream\"");
    }
    if spec.content_type.is_some() {
        return stream("the copy sets content_type");
    }
    if spec.checksum.is_some_and(|c| c != Checksum::Md5) {
        return stream(
            "the copy asks for a checksum other than md5 (a server-side copy compares the MD5s \
             the stores report)",
        );
    }
    // A copy in parts has no whole-object MD5 to compare.
    let checksum_in_parts = |parts: &Option<PartPlan>| spec.checksum.is_some() && parts.is_some();
    let route = if let (Some(source), Some(target)) =
        (stores.azure_blob(from), stores.azure_blob(to))
    {
        let parts = size
            .filter(|size| *size > spec.copy_cutoff.min(MAX_SYNC_COPY))
            .map(|size| PartPlan::new(size, spec.part_size as u64));
        if checksum_in_parts(&parts) {
            return stream(IN_PARTS);
        }
        Route::Azure {
            source,
            target,
            parts,
        }
    } else if let (Some(source), Some(target)) = (stores.s3_object(from), stores.s3_object(to)) {
        if let Some(why) = s3_refusal(spec, &source, &target) {
            return Route::Stream(why);
        }
        let parts = size
            .filter(|size| *size > spec.copy_cutoff)
            .map(|size| PartPlan::new(size, spec.part_size as u64));
        if checksum_in_parts(&parts) {
            return stream(IN_PARTS);
        }
        Route::S3 {
            source,
            target,
            parts,
        }
    } else if let (Some(source), Some(target)) = (stores.gcs_object(from), stores.gcs_object(to)) {
        if source.endpoint != target.endpoint {
            return Route::Stream(format!(
                "`{}` and `{}` are different GCS services",
                source.endpoint, target.endpoint
            ));
        }
        Route::Gcs { source, target }
    } else {
        return stream(
            "only Azure Blob → Azure Blob, S3 → S3 and GCS → GCS are copied server-side",
        );
    };
    match pair_of(&route) {
        Some((source, target)) if refusals.contains(&source, &target) => {
            stream("the service refused it between these stores")
        }
        _ => route,
    }
}

/// Why a copy that asks for a checksum streams an object copied in parts.
pub(crate) const IN_PARTS: &str = "the copy asks for a checksum, and an object copied in parts has no whole-object MD5 to compare";

/// Why S3 cannot copy `source` to `target` itself, if it cannot.
fn s3_refusal(spec: &CopySpec, source: &S3Object, target: &S3Object) -> Option<String> {
    let (from, to) = (&source.access, &target.access);
    if !(from.is_aws() && to.is_aws()) && from.endpoint() != to.endpoint() {
        return Some(format!(
            "`{}` and `{}` are different S3 services",
            from.endpoint(),
            to.endpoint()
        ));
    }
    // AWS S3 honours If-None-Match on CopyObject (since 2025); an S3-compatible server may
    // not (moto copies over the target): a create-only copy there is streamed, its PUT
    // conditional, unless the plan asks for server-side copies by name.
    if spec.if_exists != IfExists::Overwrite && !to.is_aws() && spec.mode == CopyMode::Auto {
        return Some(format!(
            "`{}` is not AWS S3, and not every S3-compatible server honours If-None-Match on a \
             copy (mode = \"server\" copies there anyway)",
            to.endpoint()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_at_least_five_mib_and_at_most_ten_thousand() {
        let mib = 1024 * 1024;
        let plan = PartPlan::new(11 * mib, mib);
        assert_eq!((plan.part_size, plan.count), (5 * mib, 3));
        assert_eq!(plan.range(1), (0, 5 * mib - 1));
        assert_eq!(plan.range(3), (10 * mib, 11 * mib - 1));
        let huge = PartPlan::new(100_000 * 16 * mib, 16 * mib);
        assert!(huge.count <= 10_000, "{huge:?}");
        assert_eq!(huge.range(huge.count).1, huge.size - 1);
    }
}
