//! `fairness`: for each trained model and each sensitive attribute of `[fairness]`, the holdout
//! rows grouped by the attribute (numeric attributes cut into bands): per group the size,
//! selection rate, true-positive rate (binary models) and the model's metric; the demographic
//! parity ratio and, for binary models, the equal-opportunity ratio, each with a bootstrap
//! confidence interval. "Selected" is the decision at the threshold for a binary model and a
//! prediction above the training median of the target for a regression model. A ratio below the
//! threshold (0.8, the four-fifths rule) is a violation. Writes `fairness.json` ([`Report`]).

use std::collections::BTreeMap;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Float64Type};
use arrow::record_batch::RecordBatch;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::context::StageCtx;
use super::StageDone;
use crate::config::Attribute;
use crate::data::holdout;
use crate::error::{Error, Result};
use crate::fairness::{
    demographic_parity_ratio, equal_opportunity_ratio, groups_by_number, kinds, pack,
    ratios_of_counts, resample_counts,
};
use crate::generate::Rng;
use crate::model::Task;

/// `fairness.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub threshold: f64,
    pub min_group_size: u64,
    pub bootstrap: usize,
    pub models: IndexMap<String, ModelFairness>,
}

/// One model's fairness, per sensitive attribute.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelFairness {
    pub task: Task,
    pub selection_threshold: f64,
    pub attributes: IndexMap<String, AttributeFairness>,
}

/// One attribute of one model: its groups and ratios.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttributeFairness {
    pub column: String,
    pub groups: BTreeMap<String, GroupFairness>,
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub demographic_parity_ratio: f64,
    pub demographic_parity_ci: Option<(f64, f64)>,
    pub equal_opportunity_ratio: Option<f64>,
    pub equal_opportunity_ci: Option<(f64, f64)>,
    pub violation: bool,
}

/// One group of an attribute.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupFairness {
    pub size: u64,
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub selection_rate: f64,
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub true_positive_rate: f64,
    /// Whether the group is large enough to count in the ratios.
    pub counted: bool,
    /// The model's metric on the group (AUC or R²; absent where undefined).
    pub metric: Option<f64>,
}

/// A ratio below the threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub attribute: String,
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub parity: f64,
    pub equal_opportunity: Option<f64>,
}

/// Named ratios (NaN where undefined, written as null).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ratios(#[serde(deserialize_with = "crate::json::nan_map")] pub IndexMap<String, f64>);

/// What a fairness stage reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Per model, `<attribute>_parity` → the demographic parity ratio (the registry's names).
    pub parity: IndexMap<String, Ratios>,
    /// The violations, as people read them.
    pub violations: Vec<String>,
    /// The violations per model.
    #[serde(default)]
    pub violated: IndexMap<String, Vec<Violation>>,
}

/// The group label of every row for an attribute.
pub fn labels(batch: &RecordBatch, a: &Attribute) -> Result<Vec<String>> {
    let (names, ids) = label_numbers(batch, a)?;
    Ok(ids.iter().map(|&i| names[i as usize].clone()).collect())
}

/// The groups of an attribute's rows: the labels that occur, sorted (the order of
/// [`crate::fairness::groups`]' map), and each row's number in them. A numeric attribute's bands are named
/// once each; a text attribute's values are numbered as they are first met.
pub fn label_numbers(batch: &RecordBatch, a: &Attribute) -> Result<(Vec<String>, Vec<u32>)> {
    const NULL: &str = "(null)";
    let col = batch
        .column_by_name(&a.column)
        .ok_or_else(|| Error::Data(format!("attribute column `{}` is missing", a.column)))?;
    let (all, raw): (Vec<String>, Vec<u32>) = match &a.bands {
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
            let mut names: Vec<String> = (0..=edges.len())
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
            names.push(NULL.into());
            let null = edges.len() as u32 + 1;
            let raw = f
                .as_primitive::<Float64Type>()
                .iter()
                .map(|v| match v {
                    Some(x) => edges.partition_point(|e| *e <= x) as u32,
                    None => null,
                })
                .collect();
            (names, raw)
        }
        None => {
            let s = arrow::compute::cast(col, &DataType::Utf8)
                .map_err(|e| Error::Data(e.to_string()))?;
            let mut number: std::collections::HashMap<&str, u32> = Default::default();
            let mut names = Vec::new();
            let mut raw = Vec::with_capacity(s.len());
            for v in s.as_string::<i32>().iter() {
                let v = v.unwrap_or(NULL);
                let next = number.len() as u32;
                let id = *number.entry(v).or_insert_with(|| {
                    names.push(v.to_string());
                    next
                });
                raw.push(id);
            }
            (names, raw)
        }
    };
    // Only the labels with rows, renumbered in sorted order.
    let mut used = vec![false; all.len()];
    for &r in &raw {
        used[r as usize] = true;
    }
    let mut order: Vec<usize> = (0..all.len()).filter(|&i| used[i]).collect();
    order.sort_by(|&x, &y| all[x].cmp(&all[y]));
    let mut renumber = vec![u32::MAX; all.len()];
    for (new, &old) in order.iter().enumerate() {
        renumber[old] = new as u32;
    }
    let names = order.iter().map(|&i| all[i].clone()).collect();
    Ok((names, raw.iter().map(|&r| renumber[r as usize]).collect()))
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
    let mut report = Report {
        threshold: cfg.threshold,
        min_group_size: cfg.min_group_size,
        bootstrap: cfg.bootstrap,
        models: IndexMap::new(),
    };
    let mut summary = Summary {
        parity: IndexMap::new(),
        violations: Vec::new(),
        violated: IndexMap::new(),
    };
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
        let trained = ctx.trained(m)?;
        let (task, threshold) = (trained.summary.task, trained.summary.selection_threshold);
        let table = ctx.read_table(trained.output("holdout")?).await?;
        let rows = Holdout {
            subset: holdout::rows_of(&clean, &table)?,
            y: holdout::column(&table, "target")?,
            p: holdout::column(&table, "prediction")?,
            task,
            threshold,
        };
        let mut attributes = IndexMap::new();
        let mut parity = Ratios::default();
        let mut violated = Vec::new();
        for (attr, a) in &cfg.attributes {
            let f = measure(ctx, m, attr, a, &rows)?;
            if f.violation {
                let v = Violation {
                    attribute: attr.clone(),
                    parity: f.demographic_parity_ratio,
                    equal_opportunity: f.equal_opportunity_ratio,
                };
                summary.violations.push(violation_text(m, &v));
                violated.push(v);
            }
            parity
                .0
                .insert(format!("{attr}_parity"), f.demographic_parity_ratio);
            attributes.insert(attr.clone(), f);
        }
        report.models.insert(
            m.clone(),
            ModelFairness {
                task,
                selection_threshold: threshold,
                attributes,
            },
        );
        summary.parity.insert(m.clone(), parity);
        if !violated.is_empty() {
            summary.violated.insert(m.clone(), violated);
        }
    }
    ctx.write_json("fairness", "fairness.json", &report).await?;
    Ok(StageDone::new(summary))
}

/// A violation as people read it.
pub fn violation_text(model: &str, v: &Violation) -> String {
    format!(
        "model `{model}`, {}: parity {:.3}{}",
        v.attribute,
        v.parity,
        v.equal_opportunity
            .map(|e| format!(", equal opportunity {e:.3}"))
            .unwrap_or_default()
    )
}

/// A model's holdout rows: their attribute columns, truth and predictions.
struct Holdout {
    subset: RecordBatch,
    y: Vec<f64>,
    p: Vec<f64>,
    task: Task,
    threshold: f64,
}

impl Holdout {
    /// Whether each row is selected, and whether it is truly positive: the decision at the
    /// threshold for a binary model, a value above it (the training median) for a regression.
    fn selected_and_truth(&self) -> (Vec<bool>, Vec<bool>) {
        let above = |v: f64| match self.task {
            Task::Binary => v >= self.threshold,
            Task::Regression => v > self.threshold,
        };
        let truth = |v: f64| match self.task {
            Task::Binary => v == 1.0,
            Task::Regression => v > self.threshold,
        };
        (
            self.p.iter().map(|v| above(*v)).collect(),
            self.y.iter().map(|v| truth(*v)).collect(),
        )
    }
}

/// One attribute of one model: groups, ratios, their bootstrap intervals; emits the metrics.
fn measure(
    ctx: &StageCtx,
    m: &str,
    attr: &str,
    a: &Attribute,
    h: &Holdout,
) -> Result<AttributeFairness> {
    let cfg = &ctx.pipeline().fairness;
    let (selected, truth) = h.selected_and_truth();
    let (names, gid) = label_numbers(&h.subset, a)?;
    let g = groups_by_number(&names, &gid, &selected, Some(&truth), cfg.min_group_size);
    let dpr = demographic_parity_ratio(&g);
    let eor = (h.task == Task::Binary).then(|| equal_opportunity_ratio(&g));
    // Per-group metric of the model: each group's rows in one pass, in row order.
    let mut parts = vec![(Vec::new(), Vec::new()); names.len()];
    for (&k, (&truth_k, &pred_k)) in gid.iter().zip(h.y.iter().zip(&h.p)) {
        parts[k as usize].0.push(truth_k);
        parts[k as usize].1.push(pred_k);
    }
    let mut group_metric = BTreeMap::new();
    for (name, (gy, gp)) in names.iter().zip(parts) {
        let v = match h.task {
            Task::Binary => {
                crate::metrics::roc_auc(&gy.iter().map(|v| *v == 1.0).collect::<Vec<_>>(), &gp).ok()
            }
            Task::Regression => crate::metrics::r2(&gy, &gp).ok(),
        };
        group_metric.insert(name.clone(), v);
    }
    // Bootstrap: resample holdout rows with replacement, recompute the ratios. A resample only
    // needs how many rows of each kind (group, selected, positive) it drew.
    let k = kinds(
        gid.iter()
            .zip(selected.iter().zip(&truth))
            .map(|(g, (s, t))| pack(*g as usize, *s, *t)),
        names.len(),
    );
    let seed = ctx.pipeline().seed;
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
        violation_text(
            m,
            &Violation {
                attribute: attr.to_string(),
                parity: dpr,
                equal_opportunity: eor,
            },
        )
    });
    ctx.emit(crate::telemetry::Event::FairnessMeasured {
        model: m,
        attribute: attr,
        parity: Some(dpr).filter(|v| v.is_finite()),
        equal_opportunity: eor.filter(|v| v.is_finite()),
        violation: text,
    });
    Ok(AttributeFairness {
        column: a.column.clone(),
        groups: g
            .iter()
            .map(|(k, v)| {
                let gf = GroupFairness {
                    size: v.size,
                    selection_rate: v.selection_rate,
                    true_positive_rate: v.true_positive_rate,
                    counted: v.counted,
                    metric: group_metric[k],
                };
                (k.clone(), gf)
            })
            .collect(),
        demographic_parity_ratio: dpr,
        demographic_parity_ci: dpr_ci,
        equal_opportunity_ratio: eor,
        equal_opportunity_ci: eor_ci,
        violation,
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

    #[test]
    fn label_numbers_are_the_sorted_labels_that_occur() {
        // Text: nulls and a literal "(null)" are one group, as their labels are equal.
        let b = RecordBatch::try_from_iter(vec![(
            "region",
            Arc::new(arrow::array::StringArray::from(vec![
                Some("west"),
                None,
                Some("east"),
                Some("(null)"),
                Some("west"),
            ])) as ArrayRef,
        )])
        .unwrap();
        let a = Attribute {
            column: "region".into(),
            bands: None,
        };
        let (names, ids) = label_numbers(&b, &a).unwrap();
        assert_eq!(names, ["(null)", "east", "west"]);
        assert_eq!(ids, [2, 0, 1, 0, 2]);
        // Bands: only those with rows, in the labels' byte order ("<25" after the digits).
        let b = RecordBatch::try_from_iter(vec![(
            "age",
            Arc::new(Int32Array::from(vec![Some(70), Some(18), None, Some(30)])) as ArrayRef,
        )])
        .unwrap();
        let a = Attribute {
            column: "age".into(),
            bands: Some(vec![25.0, 35.0, 45.0, 55.0, 65.0]),
        };
        let (names, ids) = label_numbers(&b, &a).unwrap();
        assert_eq!(names, ["(null)", "25-34", "65+", "<25"]);
        assert_eq!(ids, [2, 3, 0, 1]);
        // The same groups as counting the labels themselves.
        let sel = [true, false, true, true];
        let lab = labels(&b, &a).unwrap();
        let lr: Vec<&str> = lab.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            crate::fairness::groups(&lr, &sel, None, 1),
            groups_by_number(&names, &ids, &sel, None, 1)
        );
    }
}
