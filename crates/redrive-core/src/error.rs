//! Step errors and their classification: the engine's retry decisions use the class, never
//! the text.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// A boxed error cause.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// How the engine treats an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying with backoff: timeouts, 5xx, connection resets.
    Transient,
    /// The store asked us to slow down (429, 503 SlowDown): retried, and counted as throttling.
    Throttled,
    /// Retrying cannot help (404 source, 403, bad data): the item fails now.
    Permanent,
    /// Nothing else can succeed either (bad credentials, state store broken): the run stops.
    Fatal,
}

impl ErrorClass {
    /// True when the engine should try again.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Transient | ErrorClass::Throttled)
    }
}

/// A step's failure for one item.
#[derive(Debug)]
pub struct StepError {
    message: String,
    class: ErrorClass,
    retry_after: Option<Duration>,
    source: Option<BoxError>,
    systemic: bool,
}

impl StepError {
    /// A new error with a message that names the item's object or path.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            class,
            retry_after: None,
            source: None,
            systemic: false,
        }
    }

    /// Marks an error of the endpoint or its configuration rather than of this item
    /// (connection refused, host unknown, TLS, credentials missing or refused, bucket
    /// missing). When a step's first calls all fail this way, the run stops (exit 2) with its
    /// items pending, instead of retrying and failing every item in turn.
    pub fn systemic(mut self) -> Self {
        self.systemic = true;
        self
    }

    /// The same error, acted on as `class`.
    pub fn with_class(mut self, class: ErrorClass) -> Self {
        self.class = class;
        self
    }

    /// See [`StepError::systemic`].
    pub fn is_systemic(&self) -> bool {
        self.systemic
    }

    /// A permanent error.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, message)
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Attaches the delay a server asked for (Retry-After).
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// The class the engine acts on.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// The delay the server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The message and every cause, joined with `: `, secrets masked: what the state records.
    pub fn chain(&self) -> String {
        let mut text = self.message.clone();
        let mut cause: Option<&(dyn StdError + 'static)> = self.source.as_deref().map(|e| e as _);
        while let Some(error) = cause {
            let line = error.to_string();
            if !text.contains(&line) {
                text.push_str(": ");
                text.push_str(&line);
            }
            cause = error.source();
        }
        crate::secrets::redact(&text).into_owned()
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::secrets::redact(&self.message))
    }
}

impl StdError for StepError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_causes_and_masks_secrets() {
        crate::secrets::register("hunter2-secret");
        let io = std::io::Error::other("denied for hunter2-secret");
        let error = StepError::permanent("failed to read `a.txt`").with_source(io);
        assert_eq!(error.chain(), "failed to read `a.txt`: denied for ***");
    }

    #[test]
    fn only_transient_and_throttled_retry() {
        assert!(ErrorClass::Transient.is_retryable());
        assert!(ErrorClass::Throttled.is_retryable());
        assert!(!ErrorClass::Permanent.is_retryable());
        assert!(!ErrorClass::Fatal.is_retryable());
    }
}
