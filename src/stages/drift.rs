//! `drift`: compares the clean rows of `current` with the clean training reference. Numeric
//! features: the two-sample KS test (statistic and p-value as scipy's `ks_2samp`); categorical
//! features: PSI and the chi-square test of the category counts. Predictions: KS between each
//! model's scores of `current` (from a score stage before this one) and its holdout predictions.
//! Numeric columns of few distinct values are counted rather than sorted (`ks::Counted`: the
//! same statistic and p-value, bit for bit).
//! A feature or prediction drifts when its KS statistic exceeds `ks_threshold` (0.1, the seeds'
//! threshold) or its PSI exceeds `psi_threshold`; the dataset drifts when any does.
//! Writes `drift.json`.

use std::collections::{BTreeMap, HashMap};

use arrow::array::AsArray;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;

use super::StageDone;
use crate::engine::context::StageCtx;
use crate::error::{Error, Result};
use crate::stats::{categorical, ks};

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
    ks_threshold: f64,
    psi_threshold: f64,
) -> Result<StageDone> {
    let clean = |d: &str| ctx.upstream_output(&format!("{d}.clean"), "validate");
    let r = ctx.read_table(&clean(reference)?).await?;
    let c = ctx.read_table(&clean(current)?).await?;
    ctx.progress
        .set_message(format!("comparing {} features", features.len()));
    let ds = ctx.pipeline().datasets[reference].clone();
    let feats = features.to_vec();
    let (rr, cc) = (r.clone(), c.clone());
    let results: Vec<(String, serde_json::Value, bool)> = tokio::task::spawn_blocking(move || {
        feats
            .par_iter()
            .map(|f| {
                let numeric = ds.column(f).is_some_and(|col| col.ty.is_numeric());
                if numeric {
                    match ks_numeric(&rr, &cc, f) {
                        Some(k) => {
                            let drifted = k.statistic > ks_threshold;
                            (f.clone(), serde_json::json!({ "type": "numeric", "ks": k.statistic, "p_value": k.p_value, "exact": k.exact, "drifted": drifted }), drifted)
                        }
                        None => (f.clone(), serde_json::json!({ "type": "numeric", "error": "no values on one side" }), false),
                    }
                } else {
                    let (cats, a, b) = counts(&rr, &cc, f).unwrap_or_default();
                    let psi = categorical::psi(&a, &b);
                    let chi = categorical::chi2_contingency(&a, &b);
                    let drifted = psi > psi_threshold;
                    (
                        f.clone(),
                        serde_json::json!({
                            "type": "categorical", "psi": psi, "chi2": chi.map(|x| x.statistic), "p_value": chi.map(|x| x.p_value),
                            "dof": chi.map(|x| x.dof), "categories": cats, "reference_counts": a, "current_counts": b, "drifted": drifted,
                        }),
                        drifted,
                    )
                }
            })
            .collect()
    })
    .await
    .map_err(|e| Error::Infra(format!("drift tests panicked: {e}")))?;

    // Prediction drift: current scores against holdout predictions, per model.
    let mut predictions = serde_json::Map::new();
    let mut drifted_predictions = Vec::new();
    if let Some(score) = ctx
        .upstream
        .values()
        .find(|r| r.kind == "score" && r.output("scores").is_some())
    {
        let scores = ctx.read_table(score.output("scores").unwrap()).await?;
        let mut compared = Vec::new();
        for (stage, rec) in ctx.upstream.iter().filter(|(_, r)| r.kind == "train") {
            let Some(model) = rec.summary.get("model").and_then(|v| v.as_str()) else {
                continue;
            };
            let (Some(hold), Some(_)) = (rec.output("holdout"), scores.column_by_name(model))
            else {
                continue;
            };
            compared.push((
                stage.clone(),
                model.to_string(),
                ctx.read_table(hold).await?,
            ));
        }
        // In the pipeline's model order (the stage records come in a hash map's order), so
        // that drift.json lists them the same way in every run.
        let order = |m: &str| ctx.pipeline().models.get_index_of(m).unwrap_or(usize::MAX);
        compared.sort_by_key(|(_, model, _)| order(model));
        // The models' tests at once: each sorts a model's scores of every current row.
        let scores = scores.clone();
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
            if let Some(k) = k {
                let drifted = k.statistic > ks_threshold;
                if drifted {
                    drifted_predictions.push(model.clone());
                }
                ctx.emit(crate::telemetry::Event::PredictionDrift {
                    model: &model,
                    ks: k.statistic,
                    drifted,
                });
                predictions.insert(model, serde_json::json!({ "ks": k.statistic, "p_value": k.p_value, "drifted": drifted, "train_stage": stage }));
            }
        }
    }
    let drifted_features: Vec<String> = results
        .iter()
        .filter(|x| x.2)
        .map(|x| x.0.clone())
        .collect();
    for (f, v, d) in &results {
        ctx.emit(crate::telemetry::Event::FeatureDrift {
            feature: f,
            ks: v["ks"].as_f64(),
            p_value: v["p_value"].as_f64(),
            psi: v["psi"].as_f64(),
            drifted: *d,
        });
    }
    let dataset_drift = !drifted_features.is_empty() || !drifted_predictions.is_empty();
    let max_ks = results
        .iter()
        .filter_map(|x| x.1.get("ks").and_then(|v| v.as_f64()))
        .fold(0.0, f64::max);
    let doc = serde_json::json!({
        "reference": { "dataset": reference, "rows": r.num_rows() },
        "current": { "dataset": current, "rows": c.num_rows() },
        "ks_threshold": ks_threshold,
        "psi_threshold": psi_threshold,
        "features": results.iter().map(|x| (x.0.clone(), x.1.clone())).collect::<serde_json::Map<_, _>>(),
        "predictions": predictions,
        "drifted_features": drifted_features,
        "drifted_predictions": drifted_predictions,
        "dataset_drift": dataset_drift,
        "max_feature_ks": max_ks,
    });
    ctx.write_json("drift", "drift.json", &doc).await?;
    Ok(StageDone {
        summary: serde_json::json!({
            "dataset_drift": dataset_drift,
            "drifted_features": doc["drifted_features"],
            "drifted_predictions": doc["drifted_predictions"],
            "max_feature_ks": max_ks,
        }),
        ..Default::default()
    })
}
