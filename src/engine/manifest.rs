//! `runs/<run_id>/manifest.json`: what a run did, stage by stage. A stage's outputs are trusted
//! only when its record here says it succeeded; that write is the commit point of a stage.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// The state of a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
}

/// The state of one stage within a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Selected, not started yet.
    Pending,
    Running,
    Succeeded,
    /// Outputs taken from an earlier run whose stage had the same fingerprint, or from the run
    /// named for `--stage`/`--from`/`--to`.
    Reused,
    Failed,
    /// Not run because a stage it needs failed.
    Skipped,
    /// Not part of this invocation.
    NotSelected,
}

impl StageStatus {
    /// Whether downstream stages may use this stage's outputs.
    pub fn is_done(self) -> bool {
        matches!(self, StageStatus::Succeeded | StageStatus::Reused)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Pending => "pending",
            StageStatus::Running => "running",
            StageStatus::Succeeded => "succeeded",
            StageStatus::Reused => "reused",
            StageStatus::Failed => "failed",
            StageStatus::Skipped => "skipped",
            StageStatus::NotSelected => "not selected",
        }
    }
}

/// One file a stage wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// The stage's name for it, e.g. `quality` or `customers.clean`.
    pub name: String,
    /// Relative to the artifacts root, e.g. `20261121T101500Z-3fa2/validate/quality.json`.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// What one stage did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub kind: String,
    pub status: StageStatus,
    pub fingerprint: String,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    /// The run whose outputs were reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    #[serde(default)]
    pub outputs: Vec<OutputRecord>,
    /// Stage-specific figures for people and for downstream stages (row counts, statuses, ...).
    #[serde(default)]
    pub summary: serde_json::Value,
    /// After this time the outputs may no longer be reused (e.g. freshness measured on the clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// The metric samples the stage emitted, replayed when the stage is reused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<crate::telemetry::Sample>,
}

impl StageRecord {
    pub fn new(kind: &str, status: StageStatus, fingerprint: String) -> StageRecord {
        StageRecord {
            kind: kind.to_string(),
            status,
            fingerprint,
            attempts: 0,
            started_at: None,
            finished_at: None,
            duration_s: None,
            reused_from: None,
            outputs: Vec::new(),
            summary: serde_json::Value::Null,
            valid_until: None,
            error: None,
            error_kind: None,
            samples: Vec::new(),
        }
    }

    pub fn output(&self, name: &str) -> Option<&OutputRecord> {
        self.outputs.iter().find(|o| o.name == name)
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub run_id: String,
    pub pipeline: String,
    pub pipeline_file: String,
    pub status: RunStatus,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    /// Estimated Fargate cost of this invocation, in US dollars (`telemetry::fargate_cost_usd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// How many times this run id was started (1 + resumes).
    pub invocations: u32,
    pub code_version: String,
    /// The "now" freshness was measured against.
    pub as_of: String,
    /// Datasets read, with their files' fingerprints.
    #[serde(default)]
    pub inputs: serde_json::Map<String, serde_json::Value>,
    /// Stage name → record, in declaration order.
    pub stages: IndexMap<String, StageRecord>,
    /// The pipeline file's resolved values.
    pub config: serde_json::Value,
}

impl Manifest {
    pub fn stage(&self, name: &str) -> Option<&StageRecord> {
        self.stages.get(name)
    }
}
