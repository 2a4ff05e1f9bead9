//! What runs keep for the runs after them, under the artifacts root's `_history/`: found by
//! listing one model's prefix, never by scanning runs.
//!
//! - `_history/scores/<model>/<scored_at>-<run>.json`: a [`Cohort`], one scoring of a dataset by
//!   one model version, pointing at the results table (`scores.parquet`) with its SHA-256. The
//!   `evaluate` stage joins outcomes with the cohort each customer was scored in.
//! - `_history/accuracy/<model>/<checked_at>-<run>.json`: a [`Reading`], the accuracy the health
//!   check used in one run (realized, estimated or the training holdout) and whether it was below
//!   the model's gates. Retraining is due after `evaluation_periods` readings below in a row.
//!
//! Names start with the time in `YYYYMMDDTHHMMSSZ` form, so a listing's order (by name, which
//! S3 and local listings give) is the time order.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::estimate::Estimates;
use crate::model::Task;
use crate::stages::OutputRecord;
use crate::storage::Store;

/// The time as the history's names start with it.
pub fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

/// One scoring of a dataset by one model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cohort {
    pub model: String,
    pub task: Task,
    /// The run's as-of time: when the customers were scored.
    pub scored_at: String,
    pub run_id: String,
    pub dataset: String,
    /// The version the scores carry: the registry's id (`churn_v3`) when the stage scored with
    /// the production version, else `<run>:<artifact SHA-256 prefix>`.
    pub version: String,
    /// The artifact's SHA-256, which identifies the registry version it became (if any).
    pub artifact_sha256: String,
    /// The decision threshold (binary models) and what counts as selected for fairness.
    pub threshold: f64,
    pub selection_threshold: f64,
    pub rows: u64,
    /// The key columns of the results table, which of them are pseudonyms (the dataset
    /// declares them personal data), and how pseudonyms were made (outcomes must be keyed alike).
    pub key: Vec<String>,
    pub pii_keys: Vec<bool>,
    pub pseudonyms: String,
    /// The results table.
    pub scores: OutputRecord,
    /// The model's column in it.
    pub column: String,
    /// The fairness attributes' columns it holds.
    #[serde(default)]
    pub attributes: Vec<String>,
    /// The performance estimated when the cohort was scored.
    #[serde(default)]
    pub estimated: Option<Estimates>,
}

impl Cohort {
    pub fn path(&self) -> String {
        format!(
            "_history/scores/{}/{}-{}.json",
            self.model,
            stamp(self.at()),
            self.run_id
        )
    }

    pub fn at(&self) -> DateTime<Utc> {
        crate::time::parse_timestamp(&self.scored_at).unwrap_or_default()
    }
}

/// Where the accuracy health used came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Outcomes known for at least `min_outcomes` customers of a cohort.
    Realized,
    /// Estimated from the latest scoring (CBPE, DLE).
    Estimated,
    /// The holdout at training time: nothing newer is known.
    Holdout,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Realized => "realized",
            Source::Estimated => "estimated",
            Source::Holdout => "holdout",
        }
    }
}

/// The accuracy one health check used for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub model: String,
    /// The production version checked (`churn_v3`).
    pub version: String,
    pub checked_at: String,
    pub run_id: String,
    pub source: Source,
    /// The gates' metrics.
    pub metrics: Metrics,
    /// Realized: the customers with known outcomes it rests on; its cohort's scoring time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<String>,
    /// Whether a gate failed on these metrics.
    pub below_gate: bool,
}

impl Reading {
    pub fn path(&self) -> String {
        let at = crate::time::parse_timestamp(&self.checked_at).unwrap_or_default();
        format!(
            "_history/accuracy/{}/{}-{}.json",
            self.model,
            stamp(at),
            self.run_id
        )
    }
}

/// Every entry under one model's prefix, oldest first; an entry that does not parse is an
/// error naming it.
async fn entries<T: serde::de::DeserializeOwned>(
    store: &Store,
    prefix: &str,
    last: Option<usize>,
) -> Result<Vec<T>> {
    let listed = store.list(prefix).await?;
    let from = last.map_or(0, |n| listed.len().saturating_sub(n));
    let mut out = Vec::new();
    for o in &listed[from..] {
        let bytes = store.get(&o.path).await?;
        out.push(serde_json::from_slice(&bytes).map_err(|e| {
            Error::Data(format!(
                "history entry {} is not valid ({e}); delete it, or restore it from a backup",
                store.url_of(&o.path)
            ))
        })?);
    }
    Ok(out)
}

/// The cohorts a model's scoring left, oldest first.
pub async fn cohorts(store: &Store, model: &str) -> Result<Vec<Cohort>> {
    entries(store, &format!("_history/scores/{model}/"), None).await
}

/// The models with scoring history.
pub async fn scored_models(store: &Store) -> Result<Vec<String>> {
    let mut m: Vec<String> = store
        .list("_history/scores/")
        .await?
        .into_iter()
        .filter_map(|o| o.path.split('/').nth(2).map(String::from))
        .collect();
    m.dedup();
    Ok(m)
}

/// A model's latest `n` accuracy readings, oldest first.
pub async fn readings(store: &Store, model: &str, n: usize) -> Result<Vec<Reading>> {
    entries(store, &format!("_history/accuracy/{model}/"), Some(n)).await
}

/// Every accuracy reading of a model, oldest first (for charts).
pub async fn all_readings(store: &Store, model: &str) -> Result<Vec<Reading>> {
    entries(store, &format!("_history/accuracy/{model}/"), None).await
}
