//! The plan fingerprint: what decides which items exist and what is done to them.
//!
//! A state records the fingerprint of the plan that wrote it, and a run refuses a state whose
//! fingerprint is not its plan's. So the fingerprint must change when the work changes, and
//! only then. It is a hash of a **canonical form** of what the plan says: the job name, the
//! source, the expansion and the steps, each written as JSON with every key that is absent or
//! has its default value left out. Writing a default out, or a release adding an optional key,
//! changes nothing; golden tests (`tests/fingerprints.rs`) pin the hashes.
//!
//! States written by release 8793c89 and before recorded another hash (see [`legacy`]);
//! [`crate::Plan::earlier_fingerprints`] lets them resume.

use serde::Serialize;
use sha2::{Digest, Sha256};

mod legacy;

/// The fingerprint of a canonical form.
pub(crate) fn of(canonical: &impl Serialize) -> String {
    short_hash(&serde_json::to_vec(canonical).unwrap_or_default())
}

/// The fingerprint release 8793c89 gave this plan text, when it could read it.
pub(crate) fn legacy(text: &str) -> Option<String> {
    legacy::fingerprint(text)
}

fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// `skip_serializing_if` for a key whose value is its type's default.
pub(crate) fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}
