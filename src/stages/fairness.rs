//! `fairness`: for each trained model and each sensitive attribute of `[fairness]`, the holdout
//! rows grouped by the attribute (numeric attributes cut into bands): per group the size,
//! selection rate, true-positive rate (binary models) and the model's metric; the demographic
//! parity ratio and, for binary models, the equal-opportunity ratio, each with a bootstrap
//! confidence interval. "Selected" is the decision at the threshold for a binary model and a
//! prediction above the training median of the target for a regression model. A ratio below the
//! threshold (0.8, the four-fifths rule) is a violation. Writes `fairness.json`.

use std::collections::BTreeMap;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Float64Type};
use arrow::record_batch::RecordBatch;

use super::StageDone;
use crate::config::{Attribute, Task};
use crate::engine::context::StageCtx;
use crate::error::{Error, Result};
use crate::fairness::{
    demographic_parity_ratio, equal_opportunity_ratio, groups, kinds, pack, ratios_of_counts,
    resample_counts,
};
use crate::generate::Rng;

/// The group label of every row for an attribute.
pub fn labels(batch: &RecordBatch, a: &Attribute) -> Result<Vec<String>> {
    let col = batch
        .column_by_name(&a.column)
        .ok_or_else(|| Error::Data(format!("attribute column `{}` is missing", a.column)))?;
    match &a.bands {
        Some(edges) => {
            let f = arrow::compute::cast(col, &DataType::Float64)
                .map_err(|e| Error::Data(e.to_string()))?;
            let fmt = |v: f64| {
                if v.fract() == 0.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v}")
                }
            };
            // One name per band, formatted once (not once a row).
            let names: Vec<String> = (0..=edges.len())
                .map(|i| {
                    if i == 0 {
                        format!("<{}", fmt(edges[0]))
                    } else if i == edges.len() {
                        format!("{}+", fmt(edges[i - 1]))
                    } else if edges[i - 1].fract() == 0.0 && edges[i].fract() == 0.0 {
                        format!("{}-{}", fmt(edges[i - 1]), fmt(edges[i] - 1.0))
                    } else {
                        format!("[{}, {})", fmt(edges[i - 1]), fmt(edges[i]))
                    }
                })
                .collect();
            Ok(f.as_primitive::<Float64Type>()
                .iter()
                .map(|v| match v {
                    Some(x) => names[edges.partition_point(|e| *e <= x)].clone(),
                    None => "(null)".into(),
                })
                .collect())
        }
        None => {
            let s = arrow::compute::cast(col, &DataType::Utf8)
                .map_err(|e| Error::Data(e.to_string()))?;
            Ok(s.as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or("(null)").to_string())
                .collect())
        }
    }
}

/// Percentile interval of bootstrap ratios (NaNs dropped).
fn interval(mut v: Vec<f64>) -> Option<(f64, f64)> {
    v.retain(|x| x.is_finite());
    let lo = crate::stats::quantile(&mut v, 0.025)?;
    let hi = crate::stats::quantile(&mut v, 0.975)?;
    Some((lo, hi))
}

fn seed_of(base: u64, parts: &[&str]) -> u64 {
    parts.iter().fold(base ^ 0x5EED, |h, p| {
        p.bytes()
            .fold(h, |h, b| h.wrapping_mul(0x100_0000_01B3) ^ b as u64)
    })
}

pub async fn run(ctx: &StageCtx, models: &[String]) -> Result<StageDone> {
    let cfg = ctx.pipeline().fairness.clone();
    let seed = ctx.pipeline().seed;
    let mut doc = serde_json::Map::new();
    let mut summary = serde_json::Map::new();
    let mut violations = Vec::new();
    // The clean rows the models trained on, for the attribute columns.
    let prep = ctx.upstream_output("prepare", "prepare")?;
    let recipe: super::prepare::Recipe = ctx.read_json(&prep).await?;
    let clean = ctx.read_table(&recipe.source).await?;
    // Only the attribute columns are needed (the holdout rows of every column would be copied
    // once per model otherwise).
    let columns: Vec<usize> = cfg
        .attributes
        .values()
        .filter_map(|a| clean.schema().index_of(&a.column).ok())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let clean = clean
        .project(&columns)
        .map_err(|e| Error::Infra(format!("fairness: {e}")))?;
    for m in models {
        let (stage, rec) = ctx.trained(m)?;
        let task: Task =
            serde_json::from_value(rec.summary["task"].clone()).unwrap_or(Task::Binary);
        let threshold = rec.summary["selection_threshold"].as_f64().unwrap_or(0.5);
        let holdout = ctx
            .read_table(rec.output("holdout").ok_or_else(|| {
                Error::Data(format!("stage `{stage}` has no holdout predictions"))
            })?)
            .await?;
        let subset = super::train::holdout_rows(&clean, &holdout)?;
        let y: Vec<f64> = super::train::holdout_column(&holdout, "target")?;
        let p: Vec<f64> = super::train::holdout_column(&holdout, "prediction")?;
        let selected: Vec<bool> = p
            .iter()
            .map(|v| {
                if task == Task::Binary {
                    *v >= threshold
                } else {
                    *v > threshold
                }
            })
            .collect();
        let truth: Vec<bool> = y
            .iter()
            .map(|v| {
                if task == Task::Binary {
                    *v == 1.0
                } else {
                    *v > threshold
                }
            })
            .collect();
        let mut per_attr = serde_json::Map::new();
        let mut model_summary = serde_json::Map::new();
        for (attr, a) in &cfg.attributes {
            let lab = labels(&subset, a)?;
            let lr: Vec<&str> = lab.iter().map(|s| s.as_str()).collect();
            let g = groups(&lr, &selected, Some(&truth), cfg.min_group_size);
            let dpr = demographic_parity_ratio(&g);
            let eor = (task == Task::Binary).then(|| equal_opportunity_ratio(&g));
            // Each row as its group's number: per-group subsets and the bootstrap's resamples
            // are then counted with integers.
            let number: BTreeMap<&str, usize> =
                g.keys().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
            let gid: Vec<usize> = lr.iter().map(|l| number[l]).collect();
            // Per-group metric of the model.
            let mut group_metric = BTreeMap::new();
            for (k, name) in g.keys().enumerate() {
                let (gy, gp): (Vec<f64>, Vec<f64>) = gid
                    .iter()
                    .zip(y.iter().zip(&p))
                    .filter(|(l, _)| **l == k)
                    .map(|(_, (a, b))| (*a, *b))
                    .unzip();
                let v = match task {
                    Task::Binary => crate::metrics::roc_auc(
                        &gy.iter().map(|v| *v == 1.0).collect::<Vec<_>>(),
                        &gp,
                    )
                    .ok(),
                    Task::Regression => crate::metrics::r2(&gy, &gp).ok(),
                };
                group_metric.insert(name.clone(), v);
            }
            // Bootstrap: resample holdout rows with replacement, recompute the ratios. A
            // resample only needs how many rows of each kind (group, selected, positive) it drew.
            let k = kinds(
                gid.iter()
                    .zip(selected.iter().zip(&truth))
                    .map(|(g, (s, t))| pack(*g, *s, *t)),
                number.len(),
            );
            let boots: Vec<(f64, f64)> = (0..cfg.bootstrap)
                .map(|b| {
                    let mut rng = Rng::new(seed_of(seed, &[m, attr, &b.to_string()]));
                    ratios_of_counts(&resample_counts(&k, &mut rng), cfg.min_group_size)
                })
                .collect();
            let dpr_ci = interval(boots.iter().map(|b| b.0).collect());
            let eor_ci = eor.and_then(|_| interval(boots.iter().map(|b| b.1).collect()));
            let violation = dpr < cfg.threshold || eor.is_some_and(|e| e < cfg.threshold);
            let text = violation.then(|| {
                format!(
                    "model `{m}`, {attr}: parity {dpr:.3}{}",
                    eor.map(|e| format!(", equal opportunity {e:.3}"))
                        .unwrap_or_default()
                )
            });
            ctx.emit(crate::telemetry::Event::FairnessMeasured {
                model: m,
                attribute: attr,
                parity: Some(dpr).filter(|v| v.is_finite()),
                equal_opportunity: eor.filter(|v| v.is_finite()),
                violation: text.clone(),
            });
            violations.extend(text);
            per_attr.insert(
                attr.clone(),
                serde_json::json!({
                    "column": a.column,
                    "groups": g.iter().map(|(k, v)| (k.clone(), serde_json::json!({
                        "size": v.size, "selection_rate": v.selection_rate, "true_positive_rate": v.true_positive_rate,
                        "counted": v.counted, "metric": group_metric[k],
                    }))).collect::<serde_json::Map<_, _>>(),
                    "demographic_parity_ratio": dpr,
                    "demographic_parity_ci": dpr_ci,
                    "equal_opportunity_ratio": eor,
                    "equal_opportunity_ci": eor_ci,
                    "violation": violation,
                }),
            );
            model_summary.insert(format!("{attr}_parity"), serde_json::json!(dpr));
        }
        doc.insert(m.clone(), serde_json::json!({ "task": task, "selection_threshold": threshold, "attributes": per_attr }));
        summary.insert(m.clone(), model_summary.into());
    }
    ctx.write_json(
        "fairness",
        "fairness.json",
        &serde_json::json!({ "threshold": cfg.threshold, "min_group_size": cfg.min_group_size, "bootstrap": cfg.bootstrap, "models": doc }),
    )
    .await?;
    Ok(StageDone {
        summary: serde_json::json!({ "parity": summary, "violations": violations }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int32Array};
    use std::sync::Arc;

    #[test]
    fn bands_label_like_the_peer() {
        let b = RecordBatch::try_from_iter(vec![(
            "age",
            Arc::new(Int32Array::from(vec![
                Some(18),
                Some(24),
                Some(25),
                Some(64),
                Some(65),
                None,
            ])) as ArrayRef,
        )])
        .unwrap();
        let a = Attribute {
            column: "age".into(),
            bands: Some(vec![25.0, 35.0, 45.0, 55.0, 65.0]),
        };
        assert_eq!(
            labels(&b, &a).unwrap(),
            ["<25", "<25", "25-34", "55-64", "65+", "(null)"]
        );
    }
}
