//! `drift`: compares the clean rows of `current` with the clean training reference. Numeric
//! features: the two-sample KS test (statistic and p-value as scipy's `ks_2samp`); categorical
//! features: PSI and the chi-square test of the category counts. Predictions: KS between each
//! model's scores of `current` (from a score stage before this one) and its holdout predictions.
//! Numeric columns of few distinct values are counted rather than sorted (`ks::Counted`: the
//! same statistic and p-value, bit for bit).
//! A feature or prediction drifts when its KS statistic exceeds `ks_threshold` (default 0.1, the
//! threshold of the monitoring strategy this project implements) or its PSI exceeds
//! `psi_threshold` (default 0.2); the dataset drifts when any does. Writes `drift.json`
//! ([`Report`]).

use std::collections::{BTreeMap, HashMap};

use arrow::array::AsArray;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use indexmap::IndexMap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::context::StageCtx;
use super::StageDone;
use crate::config::StageKind;
use crate::error::{Error, Result};
use crate::stats::{categorical, ks};

/// When a feature or a prediction drifts.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// KS statistic above this: drift (numeric features, predictions).
    pub ks: f64,
    /// PSI above this: drift (categorical features).
    pub psi: f64,
}

/// A compared dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Side {
    pub dataset: String,
    pub rows: u64,
}

/// One feature's test.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FeatureDrift {
    Numeric(NumericDrift),
    Categorical(CategoricalDrift),
}

impl FeatureDrift {
    pub fn drifted(&self) -> bool {
        match self {
            FeatureDrift::Numeric(n) => n.drifted,
            FeatureDrift::Categorical(c) => c.drifted,
        }
    }

    /// The KS statistic of a numeric feature.
    pub fn ks(&self) -> Option<f64> {
        match self {
            FeatureDrift::Numeric(n) => n.ks,
            FeatureDrift::Categorical(_) => None,
        }
    }
}

/// The two-sample KS test of a numeric feature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NumericDrift {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ks: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    /// Whether the p-value is exact (else asymptotic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<bool>,
    #[serde(default)]
    pub drifted: bool,
    /// Why there is no test (no values on one side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// PSI and the chi-square test of a categorical feature's counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CategoricalDrift {
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub psi: f64,
    pub chi2: Option<f64>,
    pub p_value: Option<f64>,
    pub dof: Option<u64>,
    pub categories: Vec<String>,
    pub reference_counts: Vec<u64>,
    pub current_counts: Vec<u64>,
    pub drifted: bool,
}

/// A model's predictions on the current rows against its holdout predictions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PredictionDrift {
    pub ks: f64,
    pub p_value: f64,
    pub drifted: bool,
    pub train_stage: String,
}

/// `drift.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub reference: Side,
    pub current: Side,
    pub ks_threshold: f64,
    pub psi_threshold: f64,
    pub features: IndexMap<String, FeatureDrift>,
    pub predictions: IndexMap<String, PredictionDrift>,
    pub drifted_features: Vec<String>,
    pub drifted_predictions: Vec<String>,
    pub dataset_drift: bool,
    pub max_feature_ks: f64,
}

/// What a drift stage reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub dataset_drift: bool,
    pub drifted_features: Vec<String>,
    pub drifted_predictions: Vec<String>,
    pub max_feature_ks: f64,
}

fn numbers(b: &RecordBatch, col: &str) -> Option<Vec<f64>> {
    let a = b.column_by_name(col)?;
    let mut v = Vec::new();
    crate::data::extend_numbers(a.as_ref(), |x| !x.is_nan(), &mut v).ok()?;
    crate::stats::sort_f64(&mut v);
    Some(v)
}

/// Distinct values a column may have for the KS test to count them instead of sorting them.
const COUNTED_LIMIT: usize = 1 << 16;

/// A numeric column's values counted (see [`ks::Counted`]), when it has few distinct ones.
fn counted(b: &RecordBatch, col: &str) -> Option<ks::Counted> {
    let a = b.column_by_name(col)?;
    let f = arrow::compute::cast(a, &DataType::Float64).ok()?;
    let f = f.as_primitive::<arrow::datatypes::Float64Type>();
    ks::Counted::of(f.iter().flatten().filter(|x| !x.is_nan()), COUNTED_LIMIT)
}

/// The KS test of a numeric column of the reference and current tables: counted when both
/// sides have few distinct values, else sorted.
fn ks_numeric(r: &RecordBatch, c: &RecordBatch, col: &str) -> Option<ks::KsResult> {
    if let (Some(a), Some(b)) = (counted(r, col), counted(c, col)) {
        return ks::ks_2samp_counted(&a, &b);
    }
    let (a, b) = (
        numbers(r, col).unwrap_or_default(),
        numbers(c, col).unwrap_or_default(),
    );
    ks::ks_2samp_sorted(&a, &b)
}

fn counts(
    r: &RecordBatch,
    c: &RecordBatch,
    col: &str,
) -> Option<(Vec<String>, Vec<u64>, Vec<u64>)> {
    let text = [r, c].map(|b| {
        b.column_by_name(col)
            .and_then(|a| arrow::compute::cast(a, &DataType::Utf8).ok())
    });
    // Counted by the values as they are in the columns, then ordered: a string made for every
    // row was most of this.
    let mut m: HashMap<&str, (u64, u64), foldhash::fast::FixedState> = HashMap::default();
    for (side, s) in text.iter().enumerate() {
        for v in s.as_ref()?.as_string::<i32>().iter() {
            let e = m.entry(v.unwrap_or("(null)")).or_default();
            if side == 0 {
                e.0 += 1
            } else {
                e.1 += 1
            }
        }
    }
    let m: BTreeMap<String, (u64, u64)> = m.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let cats: Vec<String> = m.keys().cloned().collect();
    Some((
        cats,
        m.values().map(|v| v.0).collect(),
        m.values().map(|v| v.1).collect(),
    ))
}

pub async fn run(
    ctx: &StageCtx,
    reference: &str,
    current: &str,
    features: &[String],
    t: Thresholds,
) -> Result<StageDone> {
    let clean = |d: &str| ctx.upstream_output(&format!("{d}.clean"), "validate");
    let r = ctx.read_table(&clean(reference)?).await?;
    let c = ctx.read_table(&clean(current)?).await?;
    ctx.progress
        .set_message(format!("comparing {} features", features.len()));
    let ds = ctx.pipeline().datasets[reference].clone();
    let feats = features.to_vec();
    let (rr, cc) = (r.clone(), c.clone());
    let results: Vec<(String, FeatureDrift)> = tokio::task::spawn_blocking(move || {
        feats
            .par_iter()
            .map(|f| {
                let numeric = ds.column(f).is_some_and(|col| col.ty.is_numeric());
                let d = if numeric {
                    numeric_drift(&rr, &cc, f, t.ks)
                } else {
                    categorical_drift(&rr, &cc, f, t.psi)
                };
                (f.clone(), d)
            })
            .collect()
    })
    .await
    .map_err(|e| Error::Infra(format!("drift tests panicked: {e}")))?;

    let predictions = prediction_drift(ctx, t.ks).await?;
    let drifted_predictions: Vec<String> = predictions
        .iter()
        .filter(|(_, p)| p.drifted)
        .map(|(m, _)| m.clone())
        .collect();
    let drifted_features: Vec<String> = results
        .iter()
        .filter(|x| x.1.drifted())
        .map(|x| x.0.clone())
        .collect();
    for (f, d) in &results {
        let (ks, p_value, psi) = match d {
            FeatureDrift::Numeric(n) => (n.ks, n.p_value, None),
            FeatureDrift::Categorical(c) => (None, c.p_value, Some(c.psi)),
        };
        ctx.emit(crate::telemetry::Event::FeatureDrift {
            feature: f,
            ks,
            p_value,
            psi,
            drifted: d.drifted(),
        });
    }
    let dataset_drift = !drifted_features.is_empty() || !drifted_predictions.is_empty();
    let max_feature_ks = results.iter().filter_map(|x| x.1.ks()).fold(0.0, f64::max);
    let report = Report {
        reference: Side {
            dataset: reference.to_string(),
            rows: r.num_rows() as u64,
        },
        current: Side {
            dataset: current.to_string(),
            rows: c.num_rows() as u64,
        },
        ks_threshold: t.ks,
        psi_threshold: t.psi,
        features: results.into_iter().collect(),
        predictions,
        drifted_features,
        drifted_predictions,
        dataset_drift,
        max_feature_ks,
    };
    ctx.write_json("drift", "drift.json", &report).await?;
    Ok(StageDone::new(Summary {
        dataset_drift,
        drifted_features: report.drifted_features,
        drifted_predictions: report.drifted_predictions,
        max_feature_ks,
    }))
}

fn numeric_drift(r: &RecordBatch, c: &RecordBatch, f: &str, threshold: f64) -> FeatureDrift {
    FeatureDrift::Numeric(match ks_numeric(r, c, f) {
        Some(k) => NumericDrift {
            ks: Some(k.statistic),
            p_value: Some(k.p_value),
            exact: Some(k.exact),
            drifted: k.statistic > threshold,
            error: None,
        },
        None => NumericDrift {
            ks: None,
            p_value: None,
            exact: None,
            drifted: false,
            error: Some("no values on one side".into()),
        },
    })
}

fn categorical_drift(r: &RecordBatch, c: &RecordBatch, f: &str, threshold: f64) -> FeatureDrift {
    let (categories, a, b) = counts(r, c, f).unwrap_or_default();
    let psi = categorical::psi(&a, &b);
    let chi = categorical::chi2_contingency(&a, &b);
    FeatureDrift::Categorical(CategoricalDrift {
        psi,
        chi2: chi.map(|x| x.statistic),
        p_value: chi.map(|x| x.p_value),
        dof: chi.map(|x| x.dof),
        categories,
        reference_counts: a,
        current_counts: b,
        drifted: psi > threshold,
    })
}

/// Prediction drift: each model's scores of the current rows (from a score stage before this
/// one) against its holdout predictions, in the pipeline's model order.
async fn prediction_drift(
    ctx: &StageCtx,
    threshold: f64,
) -> Result<IndexMap<String, PredictionDrift>> {
    let mut out = IndexMap::new();
    let Some(scores) = ctx
        .upstream_of(StageKind::Score)
        .into_iter()
        .find_map(|(_, r)| r.output("scores"))
    else {
        return Ok(out);
    };
    let scores = ctx.read_table(scores).await?;
    let mut compared = Vec::new();
    for (stage, rec) in ctx.upstream_of(StageKind::Train) {
        let Some(t) = rec.train() else { continue };
        let (Some(hold), Some(_)) = (rec.output("holdout"), scores.column_by_name(&t.model)) else {
            continue;
        };
        compared.push((stage.clone(), t.model.clone(), ctx.read_table(hold).await?));
    }
    let order = |m: &str| ctx.pipeline().models.get_index_of(m).unwrap_or(usize::MAX);
    compared.sort_by_key(|(_, model, _)| order(model));
    // The models' tests at once: each sorts a model's scores of every current row.
    let tests = tokio::task::spawn_blocking(move || {
        compared
            .into_par_iter()
            .map(|(stage, model, h)| {
                let a = numbers(&h, "prediction").unwrap_or_default();
                let b = numbers(&scores, &model).unwrap_or_default();
                (stage, model, ks::ks_2samp_sorted(&a, &b))
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| Error::Infra(format!("prediction drift tests panicked: {e}")))?;
    for (stage, model, k) in tests {
        let Some(k) = k else { continue };
        let drifted = k.statistic > threshold;
        ctx.emit(crate::telemetry::Event::PredictionDrift {
            model: &model,
            ks: k.statistic,
            drifted,
        });
        let p = PredictionDrift {
            ks: k.statistic,
            p_value: k.p_value,
            drifted,
            train_stage: stage,
        };
        out.insert(model, p);
    }
    Ok(out)
}
