//! Masking of secret values in every text redrive shows or stores.
//!
//! Secrets are registered once, while the plan and the environment are read at startup
//! (`${ENV}` values, storage keys, SAS tokens); every log line, error, metric and state row
//! passes through [`redact`] before it leaves the process.

use std::borrow::Cow;
use std::sync::RwLock;

/// What a secret is replaced with.
pub const MASK: &str = "***";

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers a value to be masked from now on. Values shorter than 4 characters are not
/// registered: masking them would garble ordinary text without protecting anything.
pub fn register(value: &str) {
    if value.len() < 4 {
        return;
    }
    let mut secrets = match SECRETS.write() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    if !secrets.iter().any(|known| known == value) {
        secrets.push(value.to_owned());
        // Longest first, so a secret that contains another is masked whole.
        secrets.sort_by_key(|known| std::cmp::Reverse(known.len()));
    }
}

/// Registers the values of the well-known credential variables that are set.
pub fn register_env_credentials() {
    for name in crate::env_vars::SECRETS
        .iter()
        .flat_map(|names| names.iter())
    {
        if let Ok(value) = std::env::var(name) {
            register(&value);
        }
    }
}

/// Returns `text` with every registered secret, SAS signature and account key masked.
pub fn redact(text: &str) -> Cow<'_, str> {
    let secrets = match SECRETS.read() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut out: Cow<'_, str> = Cow::Borrowed(text);
    for secret in secrets.iter() {
        if !out.contains(secret.as_str()) {
            continue;
        }
        out = Cow::Owned(if secret.len() >= WHOLE_VALUES_BELOW {
            out.replace(secret.as_str(), MASK)
        } else {
            mask_whole(&out, secret)
        });
    }
    for marker in ["sig=", "AccountKey=", "SharedAccessSignature="] {
        if out.contains(marker) {
            out = Cow::Owned(mask_after(&out, marker));
        }
    }
    out
}

/// Secrets shorter than this are masked only where they stand as a whole value (a header's,
/// a query parameter's, a `KEY=value`), not inside other words: `test` as a password must not
/// turn `/tmp/ux-test/cpdir` into `/tmp/ux-***/cpdir`.
const WHOLE_VALUES_BELOW: usize = 8;

/// Characters that continue a word or a path: a short secret touching one of them is part of
/// ordinary text, not a value of its own.
fn continues_word(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '+' | '%' | '~')
}

/// Masks each occurrence of `secret` that stands alone: at the text's edges or between
/// characters that do not continue a word.
fn mask_whole(text: &str, secret: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (at, _) in text.match_indices(secret) {
        let before = text[..at].chars().last();
        let after = text[at + secret.len()..].chars().next();
        if before.is_some_and(continues_word) || after.is_some_and(continues_word) {
            continue;
        }
        out.push_str(&text[copied..at]);
        out.push_str(MASK);
        copied = at + secret.len();
    }
    out.push_str(&text[copied..]);
    out
}

/// Masks the value that follows each `marker`, up to the next `&`, `;`, quote or space.
fn mask_after(text: &str, marker: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(marker) {
        let value_start = at + marker.len();
        out.push_str(&rest[..value_start]);
        let tail = &rest[value_start..];
        let end = tail
            .find(['&', ';', '"', '\'', ' ', '\n'])
            .unwrap_or(tail.len());
        if end > 0 {
            out.push_str(MASK);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_values_are_masked_everywhere() {
        register("s3cr3t-token-value");
        assert_eq!(
            redact("Authorization: Bearer s3cr3t-token-value, again s3cr3t-token-value"),
            "Authorization: Bearer ***, again ***"
        );
    }

    #[test]
    fn short_secrets_are_masked_as_whole_values_only() {
        register("tst7");
        assert_eq!(
            redact("/tmp/ux-tst7/cpdir and tst7s and tst7"),
            "/tmp/ux-tst7/cpdir and tst7s and ***"
        );
        assert_eq!(
            redact("Authorization: Bearer tst7\nAWS_SECRET_ACCESS_KEY=tst7&x=\"tst7\""),
            "Authorization: Bearer ***\nAWS_SECRET_ACCESS_KEY=***&x=\"***\""
        );
    }

    #[test]
    fn short_values_are_not_registered() {
        register("ab");
        assert_eq!(redact("abc"), "abc");
    }

    #[test]
    fn sas_signatures_and_account_keys_are_masked_without_registration() {
        assert_eq!(
            redact("https://a.blob.core.windows.net/c/b?sv=2020&sig=abc%2Fdef&se=1"),
            "https://a.blob.core.windows.net/c/b?sv=2020&sig=***&se=1"
        );
        assert_eq!(
            redact("AccountName=a;AccountKey=Zm9vYmFy==;EndpointSuffix=x"),
            "AccountName=a;AccountKey=***;EndpointSuffix=x"
        );
    }
}
