//! Exit codes, as documented in `--help` and the README ("Commands"): 0 done, 1 some items
//! failed, 2 usage, configuration or a fatal error, 130 interrupted.

use std::process::ExitCode;

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    /// Every item done or skipped.
    Success,
    /// Some items failed.
    Failed,
    /// Usage, plan or state error.
    Error,
    /// Interrupted by a signal; the state is consistent.
    Interrupted,
}

impl ExitStatus {
    /// The process exit code.
    pub(crate) fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failed => 1,
            ExitStatus::Error => 2,
            ExitStatus::Interrupted => 130,
        }
    }
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        ExitCode::from(status.code())
    }
}

/// An error with a hint for the user, printed after the cause chain.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Hinted {
    pub(crate) message: String,
    pub(crate) hint: String,
}
