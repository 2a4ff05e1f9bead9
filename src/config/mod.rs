//! The pipeline file: a loose serde [`spec`], compiled in one step ([`compile`]) into a checked
//! [`Pipeline`] with resolved references, or an error listing every problem found.

pub mod compile;
mod datasets;
pub mod graph;
mod models;
pub mod spec;
mod stages;

use std::time::Duration;

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::Serialize;

use crate::metrics::Metric;
use crate::model::Task;

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
    /// On SIGTERM or SIGINT, how long running stages may go on before they are cancelled
    /// (`run.shutdown_grace`).
    pub shutdown_grace: Duration,
    pub datasets: IndexMap<String, Dataset>,
    pub quality: Quality,
    pub models: IndexMap<String, Model>,
    pub fairness: Fairness,
    pub health: Health,
    pub business: Option<Business>,
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
    /// A URL, or a path relative to the `data` root (empty for a dataset a `sql` stage produces).
    pub location: String,
    /// The `sql` stage whose result this dataset is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub produced_by: Option<String>,
    pub primary_key: Vec<String>,
    pub timestamp: Option<String>,
    pub pii: Vec<String>,
    pub columns: Vec<Column>,
    /// No files at the location read as no rows (outcomes before any arrive).
    pub optional: bool,
}

impl Dataset {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// What a failed check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
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

/// The data-quality checks: null rate, schema violations, outliers, duplicates, freshness.
#[derive(Debug, Clone, Serialize)]
pub struct Quality {
    pub null_rate: Check,
    pub schema_violations: Check,
    pub outliers: OutlierRule,
    pub duplicates: Check,
    /// In hours.
    pub freshness: Check,
}

/// The kinds of stage this build runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Load,
    Validate,
    Prepare,
    Train,
    Score,
    Drift,
    Fairness,
    Register,
    Health,
    Evaluate,
    Sql,
}

impl StageKind {
    /// Every kind, in the order messages list them.
    pub const ALL: [StageKind; 11] = [
        StageKind::Sql,
        StageKind::Load,
        StageKind::Validate,
        StageKind::Prepare,
        StageKind::Train,
        StageKind::Score,
        StageKind::Drift,
        StageKind::Fairness,
        StageKind::Register,
        StageKind::Health,
        StageKind::Evaluate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StageKind::Load => "load",
            StageKind::Validate => "validate",
            StageKind::Prepare => "prepare",
            StageKind::Train => "train",
            StageKind::Score => "score",
            StageKind::Drift => "drift",
            StageKind::Fairness => "fairness",
            StageKind::Register => "register",
            StageKind::Health => "health",
            StageKind::Evaluate => "evaluate",
            StageKind::Sql => "sql",
        }
    }

    pub fn parse(name: &str) -> Option<StageKind> {
        StageKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether stages of this kind decode the input datasets (the others read stage outputs).
    pub fn reads_datasets(self) -> bool {
        matches!(self, StageKind::Load | StageKind::Validate)
    }

    /// Whether a stage of this kind is ever reused from an earlier run. A health check looks
    /// at the registry, which changes between runs (promote, rollback), and an evaluation at the
    /// history other runs add to: they run every time.
    pub fn reusable(self) -> bool {
        !matches!(self, StageKind::Health | StageKind::Evaluate)
    }
}

impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl PartialEq<&str> for StageKind {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

/// A stage kind with its checked parameters.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StageParams {
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
        from: ModelSource,
    },
    Evaluate {
        outcomes: String,
        models: Vec<String>,
        #[serde(with = "secs")]
        horizon: Duration,
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
    Sql {
        query: crate::sql::Query,
        output: String,
    },
}

impl StageParams {
    /// Whether the stage is ever reused from an earlier run: as its kind is, except scoring with
    /// the registry's production versions, which change between runs.
    pub fn reusable(&self) -> bool {
        let registry = matches!(
            self,
            StageParams::Score {
                from: ModelSource::Registry,
                ..
            }
        );
        self.kind().reusable() && !registry
    }

    pub fn kind(&self) -> StageKind {
        match self {
            StageParams::Load { .. } => StageKind::Load,
            StageParams::Validate { .. } => StageKind::Validate,
            StageParams::Prepare { .. } => StageKind::Prepare,
            StageParams::Train { .. } => StageKind::Train,
            StageParams::Score { .. } => StageKind::Score,
            StageParams::Drift { .. } => StageKind::Drift,
            StageParams::Fairness { .. } => StageKind::Fairness,
            StageParams::Register { .. } => StageKind::Register,
            StageParams::Health => StageKind::Health,
            StageParams::Evaluate { .. } => StageKind::Evaluate,
            StageParams::Sql { .. } => StageKind::Sql,
        }
    }
}

/// Which models a score stage applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelSource {
    /// Those the run's train stages fitted.
    Run,
    /// Each model's production version in the registry.
    Registry,
}

/// The health check's thresholds (`[health]`).
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub min_outcomes: u64,
    pub evaluation_periods: u32,
    pub max_age_days: f64,
    pub drift_ks: f64,
    pub inference_ms_per_1k: f64,
}

/// The business figures' models and risk segments (`[business]`).
#[derive(Debug, Clone, Serialize)]
pub struct Business {
    pub churn_model: Option<String>,
    pub ltv_model: Option<String>,
    pub engagement_model: Option<String>,
    /// (name, lowest churn probability in it), ascending.
    pub risk_segments: Vec<(String, f64)>,
}

/// A gate: `metric op value`, e.g. `r2 >= 0.75`; written as that text in files.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Gate {
    pub metric: Metric,
    pub op: Op,
    pub value: f64,
}

/// A gate's comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Op {
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "<")]
    Lt,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Lt => "<",
        }
    }

    /// Whether `v op bound` holds.
    pub fn holds(self, v: f64, bound: f64) -> bool {
        match self {
            Op::Ge => v >= bound,
            Op::Gt => v > bound,
            Op::Le => v <= bound,
            Op::Lt => v < bound,
        }
    }
}

/// Why a gate's text is not a gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateError {
    /// Not `metric op value`.
    Syntax,
    /// A metric name this build does not know.
    UnknownMetric(String),
}

impl Gate {
    /// Parses `metric op value`, e.g. `r2 >= 0.75`.
    pub fn parse(s: &str) -> Result<Gate, GateError> {
        let s = s.trim();
        // Two-character operators first, so `>=` is not read as `>` followed by `=0.75`.
        for op in [Op::Ge, Op::Le, Op::Gt, Op::Lt] {
            if let Some((m, v)) = s.split_once(op.as_str()) {
                let value: f64 = v.trim().parse().map_err(|_| GateError::Syntax)?;
                let name = m.trim();
                if name.is_empty() || !value.is_finite() {
                    return Err(GateError::Syntax);
                }
                let metric =
                    Metric::parse(name).ok_or_else(|| GateError::UnknownMetric(name.into()))?;
                return Ok(Gate { metric, op, value });
            }
        }
        Err(GateError::Syntax)
    }

    pub fn passes(&self, v: f64) -> bool {
        self.op.holds(v, self.value)
    }
}

impl From<Gate> for String {
    fn from(g: Gate) -> String {
        g.to_string()
    }
}

impl TryFrom<String> for Gate {
    type Error = String;

    fn try_from(s: String) -> Result<Gate, String> {
        Gate::parse(&s).map_err(|_| format!("`{s}` is not a gate such as `r2 >= 0.75`"))
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.metric, self.op.as_str(), self.value)
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
    /// How a binary model's probabilities are calibrated (always `none` for regression).
    pub calibration: crate::model::calibration::Choice,
}

/// The fairness settings.
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
    /// The kind and its parameters.
    #[serde(rename = "kind")]
    pub params: StageParams,
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

impl Stage {
    pub fn kind(&self) -> StageKind {
        self.params.kind()
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
