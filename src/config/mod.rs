//! The pipeline file: a loose serde [`spec`], compiled in one step ([`compile`]) into a checked
//! [`Pipeline`] with resolved references, or an error listing every problem found.

pub mod compile;
pub mod graph;
pub mod spec;

use std::time::Duration;

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::Serialize;

pub use compile::{compile_file, compile_str, Overrides};
pub use graph::Dag;

/// The default pipeline file.
pub const DEFAULT_PIPELINE: &str = "pipelines/engagement.toml";

/// A checked pipeline: every reference resolved, every value valid.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub description: Option<String>,
    /// Where the file came from, for messages.
    pub file: String,
    pub storage: Storage,
    pub as_of: Option<DateTime<Utc>>,
    pub seed: u64,
    /// How many train stages may fit at once (`run.max_concurrent_fits`); 0: no limit.
    pub max_concurrent_fits: usize,
    pub datasets: IndexMap<String, Dataset>,
    pub quality: Quality,
    pub models: IndexMap<String, Model>,
    pub fairness: Fairness,
    pub stages: Vec<Stage>,
    pub dag: Dag,
    /// The pipeline file's resolved values (after `--set`, `--input` and the environment), as
    /// recorded in the manifest.
    pub resolved: serde_json::Value,
    /// How personal-data columns (`pii`) are pseudonymised in the tables a run writes.
    pub pseudonyms: crate::data::pseudonym::Pseudonyms,
}

/// The three storage roots, as URLs.
#[derive(Debug, Clone, Serialize)]
pub struct Storage {
    pub data: String,
    pub artifacts: String,
    pub registry: String,
}

/// A declared column type. Each has one canonical Arrow type that readers convert to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Int32,
    Int64,
    Float64,
    Bool,
    Date,
    Timestamp,
}

impl ColumnType {
    pub fn parse(s: &str) -> Option<ColumnType> {
        Some(match s {
            "string" | "str" | "utf8" => ColumnType::String,
            "int32" | "int" => ColumnType::Int32,
            "int64" | "long" => ColumnType::Int64,
            "float64" | "float" | "double" => ColumnType::Float64,
            "bool" | "boolean" => ColumnType::Bool,
            "date" => ColumnType::Date,
            "timestamp" | "datetime" => ColumnType::Timestamp,
            _ => return None,
        })
    }

    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            ColumnType::Int32 | ColumnType::Int64 | ColumnType::Float64
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Int32 => "int32",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Bool => "bool",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "timestamp",
        }
    }
}

/// A declared column with its domain.
#[derive(Debug, Clone, Serialize)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub values: Option<Vec<String>>,
}

/// A declared dataset.
#[derive(Debug, Clone, Serialize)]
pub struct Dataset {
    pub name: String,
    /// A URL, or a path relative to the `data` root.
    pub location: String,
    pub primary_key: Vec<String>,
    pub timestamp: Option<String>,
    pub pii: Vec<String>,
    pub columns: Vec<Column>,
}

impl Dataset {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// What a failed check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFail {
    /// The stage fails and the pipeline stops (exit code 1).
    Stop,
    /// The failure is recorded and reported; the pipeline goes on with the clean rows.
    Continue,
}

/// Thresholds of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub enabled: bool,
    pub warn: f64,
    pub fail: f64,
    pub on_fail: OnFail,
}

/// The outlier rule.
#[derive(Debug, Clone, Serialize)]
pub struct OutlierRule {
    pub check: Check,
    /// Tukey's fences: values beyond `k` × IQR outside the quartiles.
    pub k: f64,
    pub columns: Option<Vec<String>>,
}

/// The data-quality checks of SPEC §6.
#[derive(Debug, Clone, Serialize)]
pub struct Quality {
    pub null_rate: Check,
    pub schema_violations: Check,
    pub outliers: OutlierRule,
    pub duplicates: Check,
    /// In hours.
    pub freshness: Check,
}

/// A stage kind with its checked parameters.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StageKind {
    Load {
        datasets: Vec<String>,
    },
    Validate {
        datasets: Vec<String>,
    },
    Prepare {
        dataset: String,
        holdout: f64,
    },
    Train {
        model: String,
    },
    Score {
        dataset: String,
        models: Vec<String>,
    },
    Drift {
        reference: String,
        current: String,
        features: Vec<String>,
        ks_threshold: f64,
        psi_threshold: f64,
    },
    Fairness {
        models: Vec<String>,
    },
    Register {
        models: Vec<String>,
    },
    Health,
}

impl StageKind {
    pub fn name(&self) -> &'static str {
        match self {
            StageKind::Load { .. } => "load",
            StageKind::Validate { .. } => "validate",
            StageKind::Prepare { .. } => "prepare",
            StageKind::Train { .. } => "train",
            StageKind::Score { .. } => "score",
            StageKind::Drift { .. } => "drift",
            StageKind::Fairness { .. } => "fairness",
            StageKind::Register { .. } => "register",
            StageKind::Health => "health",
        }
    }

    /// Whether stages of this kind decode the input datasets (the others read stage outputs).
    pub fn reads_datasets(&self) -> bool {
        matches!(self, StageKind::Load { .. } | StageKind::Validate { .. })
    }

    /// The kinds this build knows, for messages.
    pub const KNOWN: &'static [&'static str] = &[
        "load", "validate", "prepare", "train", "score", "drift", "fairness", "register", "health",
    ];
}

/// What a model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Regression,
    Binary,
}

impl Task {
    /// The metrics a task produces (names usable in gates).
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            Task::Regression => &["r2", "rmse", "mae"],
            Task::Binary => &["auc", "log_loss", "brier", "precision", "recall", "f1"],
        }
    }
}

/// A gate: `metric op value`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Gate {
    pub metric: String,
    pub op: String,
    pub value: f64,
}

impl Gate {
    pub fn parse(s: &str) -> Option<Gate> {
        let s = s.trim();
        for op in [">=", "<=", ">", "<"] {
            if let Some((m, v)) = s.split_once(op) {
                let value: f64 = v.trim().parse().ok()?;
                let metric = m.trim().to_string();
                if metric.is_empty() || !value.is_finite() {
                    return None;
                }
                return Some(Gate {
                    metric,
                    op: op.to_string(),
                    value,
                });
            }
        }
        None
    }

    pub fn passes(&self, v: f64) -> bool {
        match self.op.as_str() {
            ">=" => v >= self.value,
            ">" => v > self.value,
            "<=" => v <= self.value,
            _ => v < self.value,
        }
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.metric, self.op, self.value)
    }
}

/// A checked model declaration.
#[derive(Debug, Clone, Serialize)]
pub struct Model {
    pub name: String,
    pub task: Task,
    pub dataset: String,
    pub target: String,
    pub positive_label: Option<String>,
    pub features: Vec<String>,
    /// The algorithm and its parameters.
    pub algorithm: crate::model::Algorithm,
    pub gates: Vec<Gate>,
    pub threshold: f64,
}

/// The fairness settings (SPEC §8).
#[derive(Debug, Clone, Serialize)]
pub struct Fairness {
    pub threshold: f64,
    pub min_group_size: u64,
    pub bootstrap: usize,
    pub attributes: IndexMap<String, Attribute>,
}

/// A sensitive attribute.
#[derive(Debug, Clone, Serialize)]
pub struct Attribute {
    pub column: String,
    pub bands: Option<Vec<f64>>,
}

/// A checked stage.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: String,
    pub kind: StageKind,
    pub needs: Vec<String>,
    pub description: Option<String>,
    #[serde(with = "secs")]
    pub timeout: Duration,
    pub retries: u32,
    #[serde(with = "secs")]
    pub retry_backoff: Duration,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Pipeline {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn stage_index(&self, name: &str) -> Option<usize> {
        self.dag.index(name)
    }
}
