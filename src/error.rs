//! One error type for the library, grouped by what the user has to do about it. Each variant
//! maps to one exit code (README, "What a run does"): 1 a check failed, 2 bad usage or pipeline file,
//! 3 unusable input data, 4 storage or infrastructure.

use std::fmt;

/// The error a storage failure came from, kept so its cause can be followed (`source()`).
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, grouped by the exit code it produces.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad usage or a bad pipeline file (exit 2). Holds every problem found.
    #[error("{}", render_config(.file, .problems))]
    Config { file: String, problems: Vec<String> },

    /// Bad command-line usage (exit 2).
    #[error("{0}")]
    Usage(String),

    /// Input data unusable: missing, corrupt, wrong schema (exit 3).
    #[error("{0}")]
    Data(String),

    /// A stage output differs from what its stage recorded: its size or SHA-256 (exit 3).
    /// `path` is the output's path under the artifacts root.
    #[error("{message}")]
    Integrity { message: String, path: String },

    /// Stopped by a signal: SIGINT (exit 130) or SIGTERM (exit 143).
    #[error("{message}")]
    Interrupted { message: String, signal: i32 },

    /// The pipeline ran and a gate or check failed (exit 1).
    #[error("{0}")]
    CheckFailed(String),

    /// Storage failed: refused, unreachable, too slow (exit 4). The message says what to check;
    /// `source` is the storage library's error, when there is one.
    #[error("{message}")]
    Storage {
        message: String,
        #[source]
        source: Option<Source>,
    },

    /// A stage exceeded its timeout or failed for a reason outside the data (exit 4).
    #[error("{0}")]
    Infra(String),
}

fn render_config(file: &str, problems: &[String]) -> String {
    let mut s = String::new();
    let n = problems.len();
    let _ = fmt::Write::write_fmt(
        &mut s,
        format_args!(
            "pipeline file {file} has {n} problem{}:",
            if n == 1 { "" } else { "s" }
        ),
    );
    for p in problems {
        s.push_str("\n  - ");
        s.push_str(p);
    }
    s
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::CheckFailed(_) => 1,
            Error::Config { .. } | Error::Usage(_) => 2,
            Error::Data(_) | Error::Integrity { .. } => 3,
            Error::Interrupted { signal, .. } => 128 + signal,
            Error::Storage { .. } | Error::Infra(_) => 4,
        }
    }

    /// A storage failure with no underlying error to keep.
    pub fn storage(message: impl Into<String>) -> Error {
        Error::Storage {
            message: message.into(),
            source: None,
        }
    }

    /// Whether retrying may help: storage and infrastructure failures.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Storage { .. } | Error::Infra(_))
    }

    /// Adds context in front of the message, keeping the kind.
    pub fn context(self, ctx: impl fmt::Display) -> Error {
        match self {
            Error::Config { file, problems } => Error::Config { file, problems },
            Error::Usage(m) => Error::Usage(format!("{ctx}: {m}")),
            Error::Data(m) => Error::Data(format!("{ctx}: {m}")),
            Error::Integrity { message, path } => Error::Integrity {
                message: format!("{ctx}: {message}"),
                path,
            },
            Error::Interrupted { message, signal } => Error::Interrupted {
                message: format!("{ctx}: {message}"),
                signal,
            },
            Error::CheckFailed(m) => Error::CheckFailed(format!("{ctx}: {m}")),
            Error::Storage { message, source } => Error::Storage {
                message: format!("{ctx}: {message}"),
                source,
            },
            Error::Infra(m) => Error::Infra(format!("{ctx}: {m}")),
        }
    }

    /// A short name of the kind, used in manifests and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::Usage(_) => "usage",
            Error::Data(_) => "data",
            Error::Integrity { .. } => "integrity",
            Error::Interrupted { .. } => "interrupted",
            Error::CheckFailed(_) => "check_failed",
            Error::Storage { .. } => "storage",
            Error::Infra(_) => "infra",
        }
    }
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        crate::storage::fail("use", "storage", e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Data(format!("invalid JSON: {e}"))
    }
}
