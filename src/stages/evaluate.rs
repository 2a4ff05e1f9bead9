//! `evaluate`: the realized performance of the models in production. Outcomes (a validated
//! dataset: the key, the observed targets, when they were observed) are joined with the scores
//! earlier runs wrote for the same customers, found through the scoring history
//! ([`crate::history::Cohort`]): each outcome with the customer's score from the latest cohort
//! scored before it was observed (at least `horizon` before). Keys are compared as the results
//! tables hold them: pseudonyms where the datasets declare personal data, made the same way.
//!
//! Per model, per scoring cohort and per registry version it writes (`evaluate.json`,
//! [`Report`]): how many customers were scored, how many have a known outcome, the realized
//! metrics (the training holdout's definitions), the estimate made when the cohort was scored
//! and whether the realized value fell in its band, and realized fairness per attribute and
//! group (equal opportunity needs outcomes). Outcomes that cannot be used are counted, never
//! dropped silently: a customer absent from the cohort (an unknown key, or not scored then), an
//! outcome observed before any scoring, a cohort whose results table is gone, a cohort scored by
//! a version the registry does not know.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, AsArray, UInt32Array};
use arrow::datatypes::{DataType, Float64Type, TimestampMicrosecondType};
use arrow::record_batch::RecordBatch;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::context::StageCtx;
use super::StageDone;
use crate::error::{Error, Result};
use crate::history::{self, Cohort};
use crate::metrics::{Metric, Metrics};
use crate::model::estimate::Estimates;
use crate::model::Task;

/// `evaluate.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub as_of: String,
    pub outcomes: OutcomesRead,
    pub horizon_seconds: f64,
    pub models: IndexMap<String, ModelEvaluation>,
    /// Models with scoring history that this stage does not evaluate (no longer declared, or
    /// not among its `models`).
    pub not_evaluated: Vec<String>,
}

/// The outcomes dataset as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomesRead {
    pub dataset: String,
    /// Its validated rows.
    pub rows: u64,
    /// The earliest and latest observation.
    pub observed_from: Option<String>,
    pub observed_to: Option<String>,
}

/// What became of one model's outcomes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Rows with the model's target observed.
    pub outcomes: u64,
    /// Of them, joined with the customer's score.
    pub matched: u64,
    /// Not in the cohort they belong to: an unknown key, or a customer not scored then.
    pub unscored: u64,
    /// Observed before any cohort was scored (or within `horizon` of the first).
    pub before_history: u64,
    /// Belonging to a cohort whose results table no longer exists.
    pub missing_scores: u64,
    /// Matched, in cohorts scored by a version the registry does not know.
    pub unknown_version: u64,
}

/// One model's realized performance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelEvaluation {
    pub task: Task,
    pub target: String,
    pub counts: Counts,
    /// Each cohort with outcomes, oldest first.
    pub cohorts: Vec<CohortEvaluation>,
    /// Per registry version (the carried version when the registry does not know it), over
    /// all its cohorts.
    pub versions: IndexMap<String, VersionEvaluation>,
    /// Why cohorts could not be read.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// One scoring cohort with its outcomes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CohortEvaluation {
    pub scored_at: String,
    pub run_id: String,
    /// The version the scores carry.
    pub scored_version: String,
    /// The registry's id of that version, if the registry knows it.
    pub version: Option<String>,
    /// Customers scored, and of them with a known outcome.
    pub scored: u64,
    pub outcomes: u64,
    /// The realized metrics on those customers (empty when undefined, see `note`).
    pub metrics: Metrics,
    /// The mean outcome (the realized churn rate of a churn model) and the mean prediction of
    /// the same customers.
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub mean_outcome: f64,
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub mean_prediction: f64,
    /// The estimate made when the cohort was scored, and per metric whether the realized
    /// value is inside its band.
    pub estimated: Option<Estimates>,
    pub within_band: IndexMap<Metric, bool>,
    pub fairness: IndexMap<String, RealizedFairness>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Realized fairness of one attribute in one cohort.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RealizedFairness {
    pub column: String,
    pub groups: BTreeMap<String, crate::fairness::Group>,
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub demographic_parity_ratio: f64,
    pub equal_opportunity_ratio: Option<f64>,
}

/// One version over its cohorts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionEvaluation {
    pub cohorts: usize,
    pub scored: u64,
    pub outcomes: u64,
    pub metrics: Metrics,
}

/// What an evaluate stage reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub outcomes: u64,
    pub models: IndexMap<String, ModelSummary>,
}

/// One model, in brief: the counts and its latest cohort with outcomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub counts: Counts,
    pub latest: Option<Latest>,
}

/// The latest cohort with outcomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latest {
    pub scored_at: String,
    pub version: Option<String>,
    pub outcomes: u64,
    pub metrics: Metrics,
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub mean_outcome: f64,
}

/// The outcome rows of one model whose target is known: their row in the outcomes table, when
/// they were observed (µs) and the target.
struct Outcomes<'a> {
    keys: &'a Keys,
    rows: Vec<u32>,
    observed: Vec<i64>,
    target: Vec<f64>,
}

/// A table's keys as text: a single text key column as it is (no copy), a compound key's parts
/// (as text) joined by 0x1f.
enum Keys {
    One(arrow::array::StringArray),
    Joined(Vec<String>),
}

impl Keys {
    fn of(batch: &RecordBatch, key: &[String], what: &str) -> Result<Keys> {
        let cols = key
            .iter()
            .map(|k| {
                let c = batch
                    .column_by_name(k)
                    .ok_or_else(|| Error::Data(format!("{what} has no key column `{k}`")))?;
                arrow::compute::cast(c, &DataType::Utf8).map_err(|e| {
                    Error::Data(format!("{what}: key `{k}` cannot be read as text: {e}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let text: Vec<&arrow::array::StringArray> = cols.iter().map(|c| c.as_string()).collect();
        if let [one] = text.as_slice() {
            return Ok(Keys::One((*one).clone()));
        }
        Ok(Keys::Joined(
            (0..batch.num_rows())
                .map(|r| {
                    let parts: Vec<&str> = text
                        .iter()
                        .map(|c| if c.is_valid(r) { c.value(r) } else { "" })
                        .collect();
                    parts.join("\u{1f}")
                })
                .collect(),
        ))
    }

    fn get(&self, r: usize) -> &str {
        match self {
            Keys::One(a) if a.is_valid(r) => a.value(r),
            Keys::One(_) => "",
            Keys::Joined(v) => &v[r],
        }
    }

    fn len(&self) -> usize {
        match self {
            Keys::One(a) => a.len(),
            Keys::Joined(v) => v.len(),
        }
    }
}

/// A results table's keys and a hash table from each key to its row (the last row, for a key
/// that repeats), holding row numbers rather than keys.
struct KeyIndex {
    keys: Keys,
    rows: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// Each outcome row's row here ([`NO_ROW`] for none): the stage's outcomes are one table,
    /// probed once for all models.
    matches: std::sync::OnceLock<Vec<u32>>,
}

/// No row matches.
const NO_ROW: u32 = u32::MAX;

impl KeyIndex {
    fn new(keys: Keys) -> KeyIndex {
        use std::hash::BuildHasher;
        let hasher = foldhash::fast::RandomState::default();
        let mut rows = hashbrown::HashTable::with_capacity(keys.len());
        for i in 0..keys.len() {
            let k = keys.get(i);
            let at = |r: &u32| hasher.hash_one(keys.get(*r as usize));
            match rows.entry(hasher.hash_one(k), |&r: &u32| keys.get(r as usize) == k, at) {
                hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = i as u32,
                hashbrown::hash_table::Entry::Vacant(e) => {
                    e.insert(i as u32);
                }
            }
        }
        KeyIndex {
            keys,
            rows,
            hasher,
            matches: Default::default(),
        }
    }

    /// The row of every key of `outcomes` (the stage's one outcomes table), probed on all cores
    /// the first time.
    fn matches(&self, outcomes: &Keys) -> &[u32] {
        use rayon::prelude::*;
        self.matches.get_or_init(|| {
            (0..outcomes.len())
                .into_par_iter()
                .map(|r| self.get(outcomes.get(r)).unwrap_or(NO_ROW))
                .collect()
        })
    }

    fn get(&self, key: &str) -> Option<u32> {
        use std::hash::BuildHasher;
        self.rows
            .find(self.hasher.hash_one(key), |&r| {
                self.keys.get(r as usize) == key
            })
            .copied()
    }
}

/// The target column as numbers (0/1 for binary), with which rows have one.
fn targets(
    batch: &RecordBatch,
    name: &str,
    task: Task,
    positive: Option<&str>,
) -> Result<Vec<Option<f64>>> {
    let a = batch
        .column_by_name(name)
        .ok_or_else(|| Error::Data(format!("the outcomes have no column `{name}`")))?;
    let valid = |r: usize| a.is_valid(r);
    Ok(match (task, a.data_type()) {
        (Task::Binary, DataType::Boolean) => {
            let b = a.as_boolean();
            (0..a.len())
                .map(|r| valid(r).then(|| f64::from(u8::from(b.value(r)))))
                .collect()
        }
        (Task::Binary, DataType::Utf8) => {
            let pos = positive.ok_or_else(|| {
                Error::Data(format!(
                    "outcome `{name}` is text and the model has no positive_label"
                ))
            })?;
            let s = a.as_string::<i32>();
            (0..a.len())
                .map(|r| valid(r).then(|| f64::from(u8::from(s.value(r) == pos))))
                .collect()
        }
        (_, t) if t.is_numeric() => {
            let f = arrow::compute::cast(a, &DataType::Float64)
                .map_err(|e| Error::Data(e.to_string()))?;
            let f = f.as_primitive::<Float64Type>();
            (0..a.len())
                .map(|r| (valid(r) && f.value(r).is_finite()).then(|| f.value(r)))
                .collect()
        }
        (_, t) => {
            return Err(Error::Data(format!(
                "outcome `{name}` has type {t}, which is not a {task:?} target"
            )))
        }
    })
}

pub async fn run(
    ctx: &StageCtx,
    dataset: &str,
    models: &[String],
    horizon: std::time::Duration,
) -> Result<StageDone> {
    let p = ctx.pipeline();
    let ds = &p.datasets[dataset];
    let source = ctx.upstream_output(&format!("{dataset}.clean"), "validate")?;
    let table = ctx.read_table(&source).await?;
    let ts_col = ds.timestamp.clone().expect("checked when compiling");
    let observed_all: Vec<Option<i64>> = {
        let a = table
            .column_by_name(&ts_col)
            .ok_or_else(|| Error::Data(format!("the outcomes have no column `{ts_col}`")))?;
        let t = a
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| Error::Data(format!("outcome column `{ts_col}` is not a timestamp")))?;
        (0..t.len())
            .map(|r| t.is_valid(r).then(|| t.value(r)))
            .collect()
    };
    let keys_all = Keys::of(&table, &ds.primary_key, &format!("dataset `{dataset}`"))?;
    let outcome_pii: Vec<bool> = ds.primary_key.iter().map(|k| ds.pii.contains(k)).collect();
    let fmt = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    };
    let mut report = Report {
        as_of: ctx
            .shared
            .as_of
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        outcomes: OutcomesRead {
            dataset: dataset.to_string(),
            rows: table.num_rows() as u64,
            observed_from: observed_all.iter().flatten().min().and_then(|t| fmt(*t)),
            observed_to: observed_all.iter().flatten().max().and_then(|t| fmt(*t)),
        },
        horizon_seconds: horizon.as_secs_f64(),
        models: IndexMap::new(),
        not_evaluated: history::scored_models(&ctx.shared.artifacts)
            .await?
            .into_iter()
            .filter(|m| !models.contains(m))
            .collect(),
    };
    let mut summary = Summary {
        outcomes: table.num_rows() as u64,
        models: IndexMap::new(),
    };
    let mut warnings = Vec::new();
    let mut indexes = HashMap::new();
    for m in &report.not_evaluated {
        warnings.push(format!(
            "model `{m}` has scoring history but is not evaluated by this stage (not declared, or not among its models)"
        ));
    }
    for m in models {
        let model = &p.models[m];
        let t = targets(
            &table,
            &model.target,
            model.task,
            model.positive_label.as_deref(),
        )?;
        let mut o = Outcomes {
            keys: &keys_all,
            rows: Vec::new(),
            observed: Vec::new(),
            target: Vec::new(),
        };
        for (r, y) in t.iter().enumerate() {
            if let (Some(y), Some(at)) = (y, observed_all[r]) {
                o.rows.push(r as u32);
                o.observed.push(at);
                o.target.push(*y);
            }
        }
        let ev = evaluate_model(ctx, m, model, o, &outcome_pii, horizon, &mut indexes).await?;
        for c in &ev.cohorts {
            if let Some(n) = c.note.as_ref() {
                warnings.push(format!("model `{m}`, cohort scored {}: {n}", c.scored_at));
            }
        }
        let c = &ev.counts;
        if c.unscored + c.before_history + c.missing_scores > 0 {
            warnings.push(format!(
                "model `{m}`: of {} outcomes, {} matched a score; {} had no score in their cohort (unknown key or not scored), {} were observed before any scoring, {} belong to cohorts whose scores are gone",
                c.outcomes, c.matched, c.unscored, c.before_history, c.missing_scores
            ));
        }
        if c.unknown_version > 0 {
            warnings.push(format!(
                "model `{m}`: {} matched outcomes were scored by a version the registry does not know",
                c.unknown_version
            ));
        }
        warnings.extend(ev.problems.iter().map(|x| format!("model `{m}`: {x}")));
        for (version, v) in &ev.versions {
            // The version's latest cohort: what it does now.
            let latest = ev
                .cohorts
                .iter()
                .rev()
                .find(|c| c.version.as_deref().unwrap_or(&c.scored_version) == version);
            if let Some(latest) = latest {
                for (metric, value) in &latest.metrics {
                    ctx.emit(crate::telemetry::Event::AccuracyRealized {
                        model: m,
                        version,
                        metric: metric.name(),
                        value: *value,
                    });
                }
            }
            ctx.emit(crate::telemetry::Event::OutcomesJoined {
                model: m,
                version,
                outcomes: v.outcomes,
            });
        }
        let latest = ev.cohorts.last().map(|c| Latest {
            scored_at: c.scored_at.clone(),
            version: c.version.clone(),
            outcomes: c.outcomes,
            metrics: c.metrics.clone(),
            mean_outcome: c.mean_outcome,
        });
        if let (Some(l), Some(b)) = (&latest, &p.business) {
            if b.churn_model.as_deref() == Some(m.as_str()) {
                ctx.emit(crate::telemetry::Event::ChurnRealized {
                    rate: l.mean_outcome,
                });
            }
        }
        summary.models.insert(
            m.clone(),
            ModelSummary {
                counts: ev.counts.clone(),
                latest,
            },
        );
        report.models.insert(m.clone(), ev);
    }
    ctx.write_json("evaluate", "evaluate.json", &report).await?;
    let mut done = StageDone::new(summary);
    done.warnings = warnings;
    Ok(done)
}

/// One model's outcomes against its scoring history.
async fn evaluate_model(
    ctx: &StageCtx,
    m: &str,
    model: &crate::config::Model,
    o: Outcomes<'_>,
    outcome_pii: &[bool],
    horizon: std::time::Duration,
    indexes: &mut HashMap<(String, Vec<String>), Arc<KeyIndex>>,
) -> Result<ModelEvaluation> {
    let (task, target) = (model.task, model.target.as_str());
    let mut cohorts = history::cohorts(&ctx.shared.artifacts, m).await?;
    cohorts.sort_by_key(|c| c.at());
    let at_us: Vec<i64> = cohorts.iter().map(|c| c.at().timestamp_micros()).collect();
    let horizon_us = horizon.as_micros() as i64;
    // Each outcome's cohort: the latest scored at least `horizon` and strictly before it.
    let mut rows_of: Vec<Vec<usize>> = vec![Vec::new(); cohorts.len()];
    let mut counts = Counts {
        outcomes: o.rows.len() as u64,
        ..Default::default()
    };
    for (r, &seen) in o.observed.iter().enumerate() {
        let k = at_us.partition_point(|&a| a + horizon_us <= seen && a < seen);
        match k.checked_sub(1) {
            Some(c) => rows_of[c].push(r),
            None => counts.before_history += 1,
        }
    }
    let state = ctx.shared.registry.state(m).await?;
    let registry_id = |sha: &str| {
        state
            .versions
            .values()
            .find(|v| v.artifact_sha256 == sha)
            .map(|v| v.model_id.clone())
    };
    let scheme = ctx.pipeline().pseudonyms.scheme();
    let mut evaluated = Vec::new();
    let mut problems = Vec::new();
    let mut per_version: IndexMap<String, (usize, u64, Vec<f64>, Vec<f64>, f64)> = IndexMap::new();
    for (c, rows) in cohorts.iter().zip(rows_of) {
        if rows.is_empty() {
            continue;
        }
        if c.pseudonyms != scheme || c.pii_keys != outcome_pii {
            return Err(Error::Data(format!(
                "stage `{}`: the scores of `{m}` from {} were keyed {} ({}), the outcomes {} ({}); keys made differently never match — declare the key's `pii` alike in both datasets and keep MLPIPE_PSEUDONYM_KEY",
                ctx.stage.name,
                c.scored_at,
                describe_keys(&c.pii_keys),
                c.pseudonyms,
                describe_keys(outcome_pii),
                scheme
            )));
        }
        let scores = match read_scores(ctx, c).await {
            Ok(t) => t,
            Err(e) => {
                counts.missing_scores += rows.len() as u64;
                problems.push(format!(
                    "the scores of the cohort scored {} cannot be read: {e}",
                    c.scored_at
                ));
                continue;
            }
        };
        // The models scored in one stage share its results table: its keys are indexed once.
        let index = match indexes.get(&(c.scores.path.clone(), c.key.clone())) {
            Some(i) => i.clone(),
            None => {
                let what = format!("the scores of `{}` from {}", c.model, c.scored_at);
                let i = Arc::new(KeyIndex::new(Keys::of(&scores, &c.key, &what)?));
                indexes.insert((c.scores.path.clone(), c.key.clone()), i.clone());
                i
            }
        };
        let e = cohort(ctx, c, &scores, &index, &o, &rows, task)?;
        counts.matched += e.outcomes;
        counts.unscored += rows.len() as u64 - e.outcomes;
        let version = registry_id(&c.artifact_sha256);
        if version.is_none() {
            counts.unknown_version += e.outcomes;
        }
        let key = version.clone().unwrap_or_else(|| c.version.clone());
        let (ys, ps) = e.matched;
        let entry = per_version
            .entry(key)
            .or_insert((0, 0, Vec::new(), Vec::new(), c.threshold));
        entry.0 += 1;
        entry.1 += c.rows;
        entry.2.extend(&ys);
        entry.3.extend(&ps);
        let mut ce = e.evaluation;
        ce.version = version;
        evaluated.push(ce);
    }
    let versions = per_version
        .into_iter()
        .map(|(v, (n, scored, ys, ps, threshold))| {
            let metrics = crate::metrics::evaluate(task, &ys, &ps, threshold).unwrap_or_default();
            let e = VersionEvaluation {
                cohorts: n,
                scored,
                outcomes: ys.len() as u64,
                metrics,
            };
            (v, e)
        })
        .collect();
    Ok(ModelEvaluation {
        task,
        target: target.to_string(),
        counts,
        cohorts: evaluated,
        versions,
        problems,
    })
}

fn describe_keys(pii: &[bool]) -> &'static str {
    if pii.iter().all(|x| *x) {
        "as pseudonyms"
    } else if pii.iter().any(|x| *x) {
        "partly as pseudonyms"
    } else {
        "in clear"
    }
}

/// A cohort's results table, checked against the SHA-256 its scoring recorded.
async fn read_scores(ctx: &StageCtx, c: &Cohort) -> Result<Arc<RecordBatch>> {
    ctx.read_table(&c.scores).await
}

/// A cohort evaluated, with its matched targets and predictions (for the version's figures).
struct Evaluated {
    evaluation: CohortEvaluation,
    outcomes: u64,
    matched: (Vec<f64>, Vec<f64>),
}

/// Joins the outcome rows `rows` of `o` with the cohort's scores and measures them.
fn cohort(
    ctx: &StageCtx,
    c: &Cohort,
    scores: &RecordBatch,
    index: &KeyIndex,
    o: &Outcomes,
    rows: &[usize],
    task: Task,
) -> Result<Evaluated> {
    let what = format!("the scores of `{}` from {}", c.model, c.scored_at);
    let matches = index.matches(o.keys);
    let pred = scores
        .column_by_name(&c.column)
        .and_then(|a| a.as_primitive_opt::<Float64Type>())
        .ok_or_else(|| Error::Data(format!("{what} have no prediction column `{}`", c.column)))?;
    let mut score_rows: Vec<u32> = Vec::with_capacity(rows.len());
    let (mut ys, mut ps) = (
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
    );
    for &r in rows {
        let i = matches[o.rows[r] as usize];
        if i != NO_ROW {
            score_rows.push(i);
            ys.push(o.target[r]);
            ps.push(pred.value(i as usize));
        }
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let (metrics, note) = if ys.is_empty() {
        (
            Metrics::default(),
            Some("no outcome matched a scored customer".to_string()),
        )
    } else {
        match crate::metrics::evaluate(task, &ys, &ps, c.threshold) {
            Ok(m) => (m, None),
            Err(e) => (
                Metrics::default(),
                Some(format!("the realized metrics are undefined: {e}")),
            ),
        }
    };
    let within_band = c
        .estimated
        .iter()
        .flatten()
        .filter_map(|(metric, e)| Some((*metric, e.covers(*metrics.get(metric)?))))
        .collect();
    // Realized fairness: the matched customers' attribute columns, as the fairness stage groups them.
    let mut fairness = IndexMap::new();
    if !ys.is_empty() {
        let idx = UInt32Array::from(score_rows);
        let cfg = &ctx.pipeline().fairness;
        let (selected, truth): (Vec<bool>, Vec<bool>) = ys
            .iter()
            .zip(&ps)
            .map(|(y, p)| match task {
                Task::Binary => (*p >= c.threshold, *y == 1.0),
                Task::Regression => (*p > c.selection_threshold, *y > c.selection_threshold),
            })
            .unzip();
        for (name, a) in &cfg.attributes {
            let Some(col) = scores.column_by_name(&a.column) else {
                continue;
            };
            let taken = arrow::compute::take(col.as_ref(), &idx, None)
                .map_err(|e| Error::Infra(format!("attribute rows: {e}")))?;
            let sub = RecordBatch::try_from_iter(vec![(a.column.as_str(), taken)])
                .map_err(|e| Error::Infra(e.to_string()))?;
            let (names, gid) = super::fairness::label_numbers(&sub, a)?;
            let g = crate::fairness::groups_by_number(
                &names,
                &gid,
                &selected,
                Some(&truth),
                cfg.min_group_size,
            );
            fairness.insert(
                name.clone(),
                RealizedFairness {
                    column: a.column.clone(),
                    demographic_parity_ratio: crate::fairness::demographic_parity_ratio(&g),
                    equal_opportunity_ratio: (task == Task::Binary)
                        .then(|| crate::fairness::equal_opportunity_ratio(&g)),
                    groups: g,
                },
            );
        }
    }
    let n = ys.len() as u64;
    Ok(Evaluated {
        evaluation: CohortEvaluation {
            scored_at: c.scored_at.clone(),
            run_id: c.run_id.clone(),
            scored_version: c.version.clone(),
            version: None,
            scored: c.rows,
            outcomes: n,
            metrics,
            mean_outcome: mean(&ys),
            mean_prediction: mean(&ps),
            estimated: c.estimated.clone(),
            within_band,
            fairness,
            note,
        },
        outcomes: n,
        matched: (ys, ps),
    })
}
