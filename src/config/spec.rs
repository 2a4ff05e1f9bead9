//! The loose, serde-deserialised form of a pipeline file. Nothing here is checked beyond types;
//! [`super::compile`] turns it into a checked [`super::Pipeline`] or a list of every problem.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// `[pipeline]`: what the pipeline is called.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PipelineMeta {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Another pipeline file (relative to this one) whose sections this one starts from: its
    /// tables merged key by key under this file's, except `[stages]`, which is this file's own.
    #[serde(default)]
    pub extends: Option<String>,
}

/// `[storage]`: the three roots, each a URL or a local path.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StorageSpec {
    #[serde(default = "default_data")]
    pub data: String,
    #[serde(default = "default_artifacts")]
    pub artifacts: String,
    #[serde(default = "default_registry")]
    pub registry: String,
}

fn default_data() -> String {
    "data".into()
}
fn default_artifacts() -> String {
    "runs".into()
}
fn default_registry() -> String {
    "models".into()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            data: default_data(),
            artifacts: default_artifacts(),
            registry: default_registry(),
        }
    }
}

/// `[run]`: run-wide settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RunSpec {
    /// The "now" that freshness is measured against; default: the clock.
    #[serde(default)]
    pub as_of: Option<String>,
    /// The seed every random choice of the pipeline derives from.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Defaults for every stage.
    #[serde(default)]
    pub stage_timeout: Option<DurationSpec>,
    #[serde(default)]
    pub stage_retries: Option<u32>,
    #[serde(default)]
    pub retry_backoff: Option<DurationSpec>,
    /// How many train stages may fit at once; 0 (the default): no limit.
    #[serde(default)]
    pub max_concurrent_fits: Option<usize>,
    /// On SIGTERM or SIGINT, how long running stages may go on before they are cancelled
    /// (default 20 s, inside ECS's default 30 s `stopTimeout`).
    #[serde(default)]
    pub shutdown_grace: Option<DurationSpec>,
}

/// A duration: a number of seconds, or a string such as `"90s"`, `"10m"`, `"1h"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum DurationSpec {
    Seconds(f64),
    Text(String),
}

/// One string or a list of them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `[datasets.NAME]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct DatasetSpec {
    /// A Parquet file, a folder (every `.parquet` under it, hive partitions included) or a glob,
    /// relative to the `data` root unless it is a URL.
    #[serde(default)]
    pub location: Option<String>,
    /// The `sql` stage whose result this dataset is (instead of a `location`): its table, written
    /// under the run, read like any dataset's files.
    #[serde(default)]
    pub produced_by: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Take columns, key, timestamp and PII list from another dataset.
    #[serde(default)]
    pub inherit: Option<String>,
    /// Columns of the inherited dataset that this one does not have.
    #[serde(default)]
    pub drop_columns: Vec<String>,
    #[serde(default)]
    pub primary_key: Option<OneOrMany>,
    /// The timestamp column freshness is measured on.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Columns holding personal data: never logged in clear.
    #[serde(default)]
    pub pii: Option<Vec<String>>,
    /// A dataset that may not exist yet (outcomes before any have arrived): no files at its
    /// location read as no rows, not as an error.
    #[serde(default)]
    pub optional: Option<bool>,
    #[serde(default)]
    pub columns: IndexMap<String, ColumnSpec>,
}

/// One declared column. A dataset that inherits a column may declare only the fields it changes
/// (`--set datasets.current.columns.age.max=120`); the others are the inherited declaration's.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ColumnSpec {
    #[serde(rename = "type", default)]
    pub ty: Option<String>,
    #[serde(default)]
    pub nullable: Option<bool>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub values: Option<Vec<String>>,
    #[serde(default)]
    pub description: Option<String>,
}

/// `[quality]`: the data-quality checks.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct QualitySpec {
    /// What a failed check does: `stop` the pipeline, or `continue` with the clean rows.
    #[serde(default)]
    pub on_fail: Option<String>,
    #[serde(default)]
    pub null_rate: Option<CheckSpec>,
    #[serde(default)]
    pub schema_violations: Option<CheckSpec>,
    #[serde(default)]
    pub outliers: Option<OutlierSpec>,
    #[serde(default)]
    pub duplicates: Option<CheckSpec>,
    #[serde(default)]
    pub freshness: Option<CheckSpec>,
}

/// Thresholds of one check: at or below `warn` passes, above `fail` fails, between warns.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CheckSpec {
    pub warn: f64,
    pub fail: f64,
    #[serde(default)]
    pub on_fail: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// The outlier check: thresholds plus the rule.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct OutlierSpec {
    pub warn: f64,
    pub fail: f64,
    #[serde(default)]
    pub on_fail: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `iqr` (Tukey's fences, `k` × IQR beyond the quartiles).
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub k: Option<f64>,
    /// Numeric columns checked; default: every numeric column that is not a key.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
}

/// `[stages.NAME]`: the fields every stage has; the kind's own fields stay in `params`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StageSpec {
    pub kind: String,
    #[serde(default)]
    pub needs: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub timeout: Option<DurationSpec>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub retry_backoff: Option<DurationSpec>,
    #[serde(flatten)]
    pub params: toml::Table,
}

/// Parameters of a `load` stage.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LoadParams {
    pub datasets: Vec<String>,
}

/// Parameters of a `validate` stage.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ValidateParams {
    pub datasets: Vec<String>,
}

/// Parameters of a `sql` stage.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SqlParams {
    /// The query, inline.
    #[serde(default)]
    pub query: Option<String>,
    /// Or a file holding it, relative to the pipeline file.
    #[serde(default)]
    pub query_file: Option<String>,
    /// The name of the table it produces: a dataset that declares `produced_by` this stage, or
    /// a table only later `sql` stages read.
    pub output: String,
}

/// `[models.NAME]`: one model the pipeline trains.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ModelSpec {
    /// `regression` or `binary`.
    pub task: String,
    /// The dataset it is trained on (default: the `prepare` stage's dataset).
    #[serde(default)]
    pub dataset: Option<String>,
    pub target: String,
    /// For a text target: the value that counts as positive (e.g. "Yes").
    #[serde(default)]
    pub positive_label: Option<String>,
    pub features: Vec<String>,
    /// `gbdt` (default), `linear`, `logistic` or `random_forest`.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// Algorithm parameters (for gbdt: n_trees, learning_rate, num_leaves, ...; see
    /// `model::Algorithm`).
    #[serde(default)]
    pub params: Option<toml::Table>,
    /// Gates such as `"r2 >= 0.75"`; a model that fails one is not promoted.
    #[serde(default)]
    pub gates: Vec<String>,
    /// Decision threshold of a binary model.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Calibration of a binary model's probabilities: `auto` (default), `isotonic`, `platt` or
    /// `none`.
    #[serde(default)]
    pub calibration: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Parameters of a `prepare` stage.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PrepareParams {
    /// The validated dataset models train on.
    pub dataset: String,
    /// Fraction of keys held out for evaluation (default 0.2).
    #[serde(default)]
    pub holdout: Option<f64>,
}

/// Parameters of a `train` stage.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TrainParams {
    pub model: String,
}

/// Parameters of a `score` stage.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ScoreParams {
    /// The validated dataset to score.
    pub dataset: String,
    /// Models to apply (default: every declared model).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// `run` (default): the models the run's train stages fitted; `registry`: each model's
    /// production version.
    #[serde(default)]
    pub models_from: Option<String>,
}

/// Parameters of an `evaluate` stage.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct EvaluateParams {
    /// The validated dataset of outcomes: the key, the observed targets, when they were observed.
    pub outcomes: String,
    /// Models evaluated (default: every model whose target the outcomes dataset declares).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// An outcome is joined with the customer's latest score at least this long before it was
    /// observed (default 0: the latest score before it).
    #[serde(default)]
    pub horizon: Option<DurationSpec>,
}

/// `[health]`: the health check's thresholds.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct HealthSpec {
    /// Realized accuracy is used once at least this many customers of a cohort have known
    /// outcomes (default 100); below, the estimate.
    #[serde(default)]
    pub min_outcomes: Option<u64>,
    /// Retraining is due after this many evaluations below a gate in a row (default 3).
    #[serde(default)]
    pub evaluation_periods: Option<u32>,
    /// Retraining is due when the production version is older than this (default 90).
    #[serde(default)]
    pub max_age_days: Option<f64>,
    /// A feature or a prediction has drifted above this KS statistic (default 0.1).
    #[serde(default)]
    pub drift_ks: Option<f64>,
    /// Scoring time per 1 000 rows and model, milliseconds (default 100).
    #[serde(default)]
    pub inference_ms_per_1k: Option<f64>,
}

/// `[business]`: which models give the business figures, and the churn risk segments.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct BusinessSpec {
    #[serde(default)]
    pub churn_model: Option<String>,
    #[serde(default)]
    pub ltv_model: Option<String>,
    #[serde(default)]
    pub engagement_model: Option<String>,
    /// Segment name → the lowest churn probability in it; each reaches up to the next.
    #[serde(default)]
    pub risk_segments: Option<IndexMap<String, f64>>,
}

/// Parameters of a `drift` stage.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DriftParams {
    /// The training reference (its clean rows).
    pub reference: String,
    /// The dataset compared with it (its clean rows).
    pub current: String,
    /// Features compared (default: every model feature present in both datasets).
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// A numeric feature or a prediction drifts when its KS statistic exceeds this (default 0.1).
    #[serde(default)]
    pub ks_threshold: Option<f64>,
    /// A categorical feature drifts when its PSI exceeds this (default 0.2).
    #[serde(default)]
    pub psi_threshold: Option<f64>,
}

/// `[fairness]`: sensitive attributes and the four-fifths rule.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct FairnessSpec {
    /// A ratio below this is a violation (default 0.8).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Groups smaller than this are reported but left out of the ratios (default 30).
    #[serde(default)]
    pub min_group_size: Option<u64>,
    /// Bootstrap resamples for the confidence intervals (default 100; 0 turns them off).
    #[serde(default)]
    pub bootstrap: Option<usize>,
    #[serde(default)]
    pub attributes: IndexMap<String, AttributeSpec>,
}

/// One sensitive attribute: a column, optionally cut into bands.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AttributeSpec {
    pub column: String,
    /// Band edges for a numeric column, e.g. `[25, 35, 45, 55, 65]` gives `<25`, `25-34`, …, `65+`.
    #[serde(default)]
    pub bands: Option<Vec<f64>>,
}

/// Parameters of a `register` stage.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RegisterParams {
    /// Models to register (default: every model trained before the stage).
    #[serde(default)]
    pub models: Option<Vec<String>>,
}

/// Parameters of a `fairness` stage.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct FairnessParams {
    /// Models to assess (default: every model trained before the stage).
    #[serde(default)]
    pub models: Option<Vec<String>>,
}
