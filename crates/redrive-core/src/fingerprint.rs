//! The plan fingerprint: what decides which items exist and what is done to them.
//!
//! A state records the fingerprint of the plan that wrote it, and a run refuses a state whose
//! fingerprint is not its plan's. So the fingerprint must change when the work changes, and
//! only then. It is a hash of a **canonical form** of what the plan says: the job name, the
//! source, the expansion and the steps, each written as JSON with every key that is absent or
//! has its default value left out. Writing a default out, or a release adding an optional key,
//! changes nothing; golden tests (`redrive-connectors/tests/fingerprints.rs`) pin the hashes.
//! Each component writes its own canonical form (its configuration as written, with defaults
//! skipped); this module hashes it.
//!
//! States written by release 8793c89 and before recorded another hash (recomputed by
//! `redrive_connectors::plan::legacy`); a plan lists that one among its earlier fingerprints,
//! so that they resume.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The fingerprint of a canonical form.
pub fn of(canonical: &impl Serialize) -> String {
    short_hash(&serde_json::to_vec(canonical).unwrap_or_default())
}

/// The fingerprint of bytes already serialized: the first 8 bytes of their SHA-256, in hex.
pub fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
