//! Models: the gradient-boosted trees of [`gbdt`] (the default algorithm), the [`linear`] and
//! [`forest`] baselines, the fitted feature [`transform`] each model carries, and the
//! [`Artifact`] written by a train stage and loaded back for scoring.

pub mod calibration;
pub mod estimate;
pub mod forest;
pub mod gbdt;
pub mod linear;
pub mod transform;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

/// What a model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Regression,
    Binary,
}

/// A model's algorithm with its parameters: `algorithm` and `[models.*.params]` in the pipeline
/// file, the same two keys in `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "snake_case")]
pub enum Algorithm {
    /// Histogram gradient-boosted trees (the default).
    Gbdt { params: gbdt::Params },
    /// Least-squares linear regression (linfa), for regression models.
    Linear { params: linear::LinearParams },
    /// L2-regularised logistic regression (linfa), for binary models.
    Logistic { params: linear::LogisticParams },
    /// Random forest (smartcore), for either task.
    RandomForest { params: forest::ForestParams },
}

impl Algorithm {
    /// The names accepted as `algorithm` in the pipeline file.
    pub const NAMES: [&'static str; 4] = ["gbdt", "linear", "logistic", "random_forest"];

    /// The algorithm called `name`, with the parameters in `params` (a JSON or TOML table
    /// turned into a `serde_json::Value`).
    pub fn from_parts(
        name: &str,
        params: serde_json::Value,
    ) -> Result<Algorithm, serde_json::Error> {
        serde_json::from_value(serde_json::json!({ "algorithm": name, "params": params }))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Gbdt { .. } => "gbdt",
            Algorithm::Linear { .. } => "linear",
            Algorithm::Logistic { .. } => "logistic",
            Algorithm::RandomForest { .. } => "random_forest",
        }
    }

    /// The parameters as JSON (for the registry).
    pub fn params_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v.get_mut("params").map(|p| p.take()).unwrap_or_default()
    }

    /// Roughly how much work fitting takes per training row, in passes over one feature of one
    /// row: an estimate for ordering fits (the engine starts the most expensive first when
    /// there are more fits than cores), not a prediction of seconds. A boosted tree reads each
    /// feature of its rows into histograms about once; the logistic loss costs about half as
    /// much again as squared error (its gradients, hessians and scores; docs/PERFORMANCE.md).
    pub fn work_per_row(&self, task: Task, features: usize) -> f64 {
        let f = features.max(1) as f64;
        match self {
            Algorithm::Gbdt { params } => {
                let objective = match task {
                    Task::Binary => 1.5,
                    Task::Regression => 1.0,
                };
                params.n_trees as f64 * (f + 2.0) * objective
            }
            // One pass forming XᵀX.
            Algorithm::Linear { .. } => f * f,
            Algorithm::Logistic { params } => params.max_iterations as f64 * f,
            // Each level of each tree sorts the features it tries.
            Algorithm::RandomForest { params } => {
                let tried = match (params.max_features, task) {
                    (0, Task::Binary) => f.sqrt().ceil(),
                    (0, Task::Regression) => f,
                    (m, _) => (m as f64).min(f),
                };
                let depth = if params.max_depth == 0 {
                    20.0
                } else {
                    params.max_depth as f64
                };
                params.n_trees as f64 * tried * depth * 4.0
            }
        }
    }

    /// Every problem with the parameters (`params: ...`) or with using this algorithm for
    /// `task` (`algorithm: ...`), relative to the model's section.
    pub fn check(&self, task: Task) -> Vec<String> {
        let params = match (self, task) {
            (Algorithm::Gbdt { params }, _) => params.problems(),
            (Algorithm::Linear { .. }, Task::Regression) => Vec::new(),
            (Algorithm::Logistic { params }, Task::Binary) => params.check(),
            (Algorithm::RandomForest { params }, _) => params.check(),
            (Algorithm::Linear { .. }, Task::Binary) => {
                return vec![
                    "algorithm: `linear` is for regression models; use `logistic` for a binary one"
                        .into(),
                ]
            }
            (Algorithm::Logistic { .. }, Task::Regression) => {
                return vec![
                    "algorithm: `logistic` is for binary models; use `linear` for a regression one"
                        .into(),
                ]
            }
        };
        params.into_iter().map(|e| format!("params: {e}")).collect()
    }

    /// [`Algorithm::fit`] on features read one at a time from `x`: the booster bins each as it
    /// comes, so the features are never all in memory as numbers; the other algorithms read
    /// them all first.
    pub fn fit_columns(
        &self,
        x: &dyn Columns,
        y: &[f64],
        task: Task,
        transform: &transform::Transform,
    ) -> Result<Fitted, String> {
        match self {
            Algorithm::Gbdt { params } => Ok(Fitted::Booster {
                booster: gbdt::train_columns(x, y, objective(task), &checked(params)?)?,
            }),
            _ => {
                let cols = (0..x.count())
                    .map(|f| {
                        let mut buf = Vec::new();
                        x.column(f, &mut buf).map(|c| c.to_vec())
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                let views: Vec<&[f64]> = cols.iter().map(|c| c.as_slice()).collect();
                self.fit(&views, y, task, transform)
            }
        }
    }

    pub fn fit(
        &self,
        x: &[&[f64]],
        y: &[f64],
        task: Task,
        transform: &transform::Transform,
    ) -> Result<Fitted, String> {
        Ok(match self {
            Algorithm::Gbdt { params } => Fitted::Booster {
                booster: gbdt::train(x, y, objective(task), &checked(params)?),
            },
            Algorithm::Linear { .. } => Fitted::Linear {
                linear: linear::Linear::fit_regression(x, y, transform)?,
            },
            Algorithm::Logistic { params } => Fitted::Linear {
                linear: linear::Linear::fit_logistic(x, y, transform, params)?,
            },
            Algorithm::RandomForest { params } => Fitted::Forest {
                forest: forest::Forest::fit(x, y, task == Task::Binary, params)?,
            },
        })
    }
}

/// The booster's parameters, checked (the pipeline file's compiler checked them already).
fn checked(p: &gbdt::Params) -> Result<gbdt::Checked, String> {
    p.check().map_err(|e| e.join("; "))
}

/// The booster's loss for a task.
fn objective(task: Task) -> gbdt::Objective {
    match task {
        Task::Regression => gbdt::Objective::SquaredError,
        Task::Binary => gbdt::Objective::Logistic,
    }
}

/// Features a model reads one at a time, `count()` of them: feature `f` as a slice, either
/// borrowed from `self` or written into `buf` (whose earlier contents it replaces).
pub trait Columns: Sync {
    fn count(&self) -> usize;
    fn column<'a>(&'a self, f: usize, buf: &'a mut Vec<f64>) -> Result<&'a [f64], String>;
}

impl Columns for &[&[f64]] {
    fn count(&self) -> usize {
        self.len()
    }
    fn column<'a>(&'a self, f: usize, _: &'a mut Vec<f64>) -> Result<&'a [f64], String> {
        Ok(self[f])
    }
}

impl Default for Algorithm {
    fn default() -> Self {
        Algorithm::Gbdt {
            params: Default::default(),
        }
    }
}

/// A fitted model of any algorithm. In `model.json` it is one key beside the others:
/// `booster`, `linear` or `forest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Fitted {
    Booster { booster: gbdt::Booster },
    Linear { linear: linear::Linear },
    Forest { forest: forest::Forest },
}

impl Fitted {
    /// Predictions for column-major features (probabilities for binary models).
    pub fn predict(&self, x: &[&[f64]]) -> Result<Vec<f64>, String> {
        match self {
            Fitted::Booster { booster } => Ok(booster.predict(x)),
            Fitted::Linear { linear } => Ok(linear.predict(x)),
            Fitted::Forest { forest } => forest.predict(x),
        }
    }

    /// A per-feature importance, where the algorithm has one: total split gain for boosted
    /// trees, summed absolute standardised coefficients for linear models.
    pub fn importance(&self) -> Option<Vec<f64>> {
        match self {
            Fitted::Booster { booster } => Some(booster.gain_importance.clone()),
            Fitted::Linear { linear } => Some(linear.importance()),
            Fitted::Forest { .. } => None,
        }
    }

    /// The first parameter that is not a finite number, named, if any: a model with one would
    /// predict NaN or infinity (and JSON cannot hold it).
    pub fn non_finite_parameter(&self) -> Option<String> {
        let bad = |name: &str, v: f64| (!v.is_finite()).then(|| format!("{name} is {v}"));
        match self {
            Fitted::Booster { booster } => {
                bad("the initial score", booster.init_score).or_else(|| {
                    booster.trees.iter().enumerate().find_map(|(t, tree)| {
                        let leaf = tree.value.iter().find(|v| !v.is_finite());
                        leaf.map(|v| format!("a leaf value of tree {t} is {v}"))
                    })
                })
            }
            Fitted::Linear { linear } => bad("the intercept", linear.intercept).or_else(|| {
                linear
                    .coefficients
                    .iter()
                    .enumerate()
                    .find_map(|(i, c)| bad(&format!("coefficient {i}"), *c))
            }),
            Fitted::Forest { .. } => None,
        }
    }
}

/// Everything needed to score new rows, as written to `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub format_version: u32,
    pub name: String,
    pub task: Task,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive_label: Option<String>,
    /// `algorithm` and `params`.
    #[serde(flatten)]
    pub algorithm: Algorithm,
    /// Decision threshold (binary models).
    pub threshold: f64,
    pub transform: transform::Transform,
    /// `booster`, `linear` or `forest`.
    #[serde(flatten)]
    pub fitted: Fitted,
    /// Binary models: the calibration applied to the fitted model's probabilities (absent:
    /// none).
    #[serde(default, skip_serializing_if = "calibration::Calibrator::is_none")]
    pub calibrator: calibration::Calibrator,
    /// How the model's performance is estimated before outcomes are known (CBPE for binary
    /// models, DLE for regression), fitted on the holdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimator: Option<estimate::Estimator>,
    /// What counts as "selected" for fairness: the threshold of a binary model, the training
    /// median of a regression model's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection_threshold: Option<f64>,
}

/// A model's predictions of some rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// One per row (calibrated probabilities for binary models).
    pub values: Vec<f64>,
    /// What the transform had to impute or did not recognise.
    pub fills: transform::Fills,
    /// With a DLE estimator, when asked for: the rows' predicted absolute and squared errors,
    /// summed (see [`estimate::dle::Dle::loss_sums`]).
    pub loss_sums: Option<[f64; 2]>,
    /// With a calibrator and a CBPE estimator, when asked for: the model's own probabilities,
    /// which rank the rows for the estimated ROC AUC.
    pub uncalibrated: Option<Vec<f64>>,
    /// Seconds spent on what only the estimate needs (DLE's loss models, the copy above).
    pub estimate_seconds: f64,
}

/// Rows encoded and scored at a time: the features of a chunk are 30 MB of numbers, in buffers
/// reused from chunk to chunk (encoding all rows at once was 1.2 GB per model at 10 M rows,
/// all of it fresh pages).
const PREDICT_CHUNK: usize = 1 << 18;

impl Artifact {
    /// Predictions for every row of `batch` (calibrated probabilities for binary models), with
    /// what the transform had to impute or did not recognise.
    pub fn predict(&self, batch: &RecordBatch) -> Result<Predictions, String> {
        self.predict_chunked(batch, None, PREDICT_CHUNK, false)
    }

    /// [`Artifact::predict`] for the rows `rows` of `batch` (every row when `None`), in their
    /// order.
    pub fn predict_rows(
        &self,
        batch: &RecordBatch,
        rows: Option<&[u32]>,
    ) -> Result<Predictions, String> {
        self.predict_chunked(batch, rows, PREDICT_CHUNK, false)
    }

    /// The estimated performance on the rows of `p` (from [`Artifact::score_many`]); `None` for an
    /// artifact without an estimator (trained before estimation existed) or for no rows.
    pub fn estimate(&self, p: &Predictions) -> Option<estimate::Estimates> {
        if p.values.is_empty() {
            return None;
        }
        match self.estimator.as_ref()? {
            estimate::Estimator::Cbpe(r) => {
                Some(r.estimate(&p.values, p.uncalibrated.as_ref().unwrap_or(&p.values)))
            }
            estimate::Estimator::Dle(d) => Some(d.estimate_with_r2(p.loss_sums?, &p.values)),
        }
    }

    fn predict_chunked(
        &self,
        batch: &RecordBatch,
        rows: Option<&[u32]>,
        chunk: usize,
        estimate: bool,
    ) -> Result<Predictions, String> {
        let n = rows.map_or(batch.num_rows(), |r| r.len());
        let mut s = Scoring::new(self, n, estimate);
        let fills = encode_chunked(&self.transform, batch, rows, chunk, |views| s.chunk(views))?;
        Ok(s.finish(fills))
    }

    /// Each model's [`Artifact::predict`] of every row of `batch`, in their order, plus what its
    /// estimator needs of the rows (DLE's loss sums, the uncalibrated probabilities CBPE ranks
    /// by), from the same encoded chunks: for scoring, which estimates performance. Models
    /// whose transforms are equal (the same features, categories and filled-in values: models
    /// trained on the same rows) share each chunk's encoded features and score it side by side;
    /// encoding the default pipeline's features once instead of once a model saved two thirds
    /// of the encoding. Model `i`'s work runs in `spans[i]` when given.
    pub fn score_many(
        arts: &[&Artifact],
        batch: &RecordBatch,
        spans: &[tracing::Span],
    ) -> Vec<Result<Predictions, String>> {
        Self::score_many_chunked(arts, batch, spans, PREDICT_CHUNK)
    }

    fn score_many_chunked(
        arts: &[&Artifact],
        batch: &RecordBatch,
        spans: &[tracing::Span],
        chunk: usize,
    ) -> Vec<Result<Predictions, String>> {
        use rayon::prelude::*;
        let n = batch.num_rows();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, a) in arts.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|g| arts[g[0]].transform == a.transform)
            {
                Some(g) => g.push(i),
                None => groups.push(vec![i]),
            }
        }
        let mut out: Vec<Option<Result<Predictions, String>>> = arts.iter().map(|_| None).collect();
        for g in groups {
            let mut scorings: Vec<(usize, Scoring, Option<String>)> = g
                .iter()
                .map(|&i| (i, Scoring::new(arts[i], n, true), None))
                .collect();
            let encoded = encode_chunked(&arts[g[0]].transform, batch, None, chunk, |views| {
                // A model that fails stops; the others go on.
                scorings.par_iter_mut().for_each(|(i, s, failed)| {
                    if failed.is_none() {
                        let r = match spans.get(*i) {
                            Some(span) => span.in_scope(|| s.chunk(views)),
                            None => s.chunk(views),
                        };
                        *failed = r.err();
                    }
                });
                Ok(())
            });
            for (i, s, failed) in scorings {
                out[i] = Some(match (&encoded, failed) {
                    (Err(e), _) => Err(e.clone()),
                    (Ok(_), Some(e)) => Err(e),
                    (Ok(fills), None) => Ok(s.finish(fills.clone())),
                });
            }
        }
        out.into_iter()
            .map(|r| r.expect("every model is in a group"))
            .collect()
    }
}

/// Encodes the rows `rows` of `batch` (every row when `None`) with `transform`, `chunk` rows at
/// a time into buffers reused from chunk to chunk, and hands each chunk's features to `each`.
/// Returns what the transform had to fill in.
fn encode_chunked(
    transform: &transform::Transform,
    batch: &RecordBatch,
    rows: Option<&[u32]>,
    chunk: usize,
    mut each: impl FnMut(&[&[f64]]) -> Result<(), String>,
) -> Result<transform::Fills, String> {
    use rayon::prelude::*;
    let n = rows.map_or(batch.num_rows(), |r| r.len());
    let features = &transform.features;
    let mut cols: Vec<Vec<f64>> = vec![Vec::new(); features.len()];
    let mut fills = transform::Fills::default();
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let sliced;
        let (part, sub) = match rows {
            Some(r) => (batch, Some(&r[start..end])),
            None => {
                sliced = batch.slice(start, end - start);
                (&sliced, None)
            }
        };
        let filled = cols
            .par_iter_mut()
            .enumerate()
            .map(|(f, c)| transform.encode(f, part, sub, c))
            .collect::<Result<Vec<_>, String>>()?;
        for (f, k) in features.iter().zip(filled) {
            fills.add(&f.name, k);
        }
        let views: Vec<&[f64]> = cols.iter().map(|c| c.as_slice()).collect();
        each(&views)?;
    }
    Ok(fills)
}

/// One model's predictions built chunk by chunk from encoded features, with what its estimator
/// needs when asked for (see [`Predictions`]).
struct Scoring<'a> {
    art: &'a Artifact,
    dle: Option<&'a estimate::dle::Dle>,
    values: Vec<f64>,
    loss_sums: Option<[f64; 2]>,
    uncalibrated: Option<Vec<f64>>,
    estimate_seconds: f64,
}

impl<'a> Scoring<'a> {
    fn new(art: &'a Artifact, n: usize, estimate: bool) -> Self {
        let dle = match &art.estimator {
            Some(estimate::Estimator::Dle(d)) if estimate => Some(&**d),
            _ => None,
        };
        let keep_uncalibrated = estimate
            && !art.calibrator.is_none()
            && matches!(art.estimator, Some(estimate::Estimator::Cbpe(_)));
        Scoring {
            art,
            dle,
            values: Vec::with_capacity(n),
            loss_sums: dle.map(|_| [0.0; 2]),
            uncalibrated: keep_uncalibrated.then(|| Vec::with_capacity(n)),
            estimate_seconds: 0.0,
        }
    }

    /// Scores the next chunk of rows, given as its encoded features.
    fn chunk(&mut self, views: &[&[f64]]) -> Result<(), String> {
        let mut p = self.art.fitted.predict(views)?;
        let t = std::time::Instant::now();
        if let Some(u) = self.uncalibrated.as_mut() {
            u.extend_from_slice(&p);
        }
        self.estimate_seconds += t.elapsed().as_secs_f64();
        self.art.calibrator.apply_all(&mut p);
        let t = std::time::Instant::now();
        if let (Some(d), Some(sums)) = (self.dle, self.loss_sums.as_mut()) {
            let [a, b] = d.loss_sums(views, &p);
            sums[0] += a;
            sums[1] += b;
        }
        self.estimate_seconds += t.elapsed().as_secs_f64();
        self.values.extend(p);
        Ok(())
    }

    fn finish(self, fills: transform::Fills) -> Predictions {
        Predictions {
            values: self.values,
            fills,
            loss_sums: self.loss_sums,
            uncalibrated: self.uncalibrated,
            estimate_seconds: self.estimate_seconds,
        }
    }
}

/// The target column as numbers: the value for regression, 0/1 for binary (a bool, a 0/1
/// integer, or text equal to `positive_label`). `Err` names the first row that has no usable
/// target.
pub fn target(
    batch: &RecordBatch,
    name: &str,
    task: Task,
    positive_label: Option<&str>,
) -> Result<Vec<f64>, String> {
    let a = batch
        .column_by_name(name)
        .ok_or_else(|| format!("target column `{name}` is missing"))?;
    if let Some(r) = (0..a.len()).find(|&r| a.is_null(r)) {
        return Err(format!("target `{name}` is null in row {r}"));
    }
    let y: Vec<f64> = match (task, a.data_type()) {
        (Task::Binary, DataType::Boolean) => a
            .as_boolean()
            .iter()
            .map(|v| f64::from(u8::from(v.unwrap_or(false))))
            .collect(),
        (Task::Binary, DataType::Utf8) => {
            let pos = positive_label
                .ok_or_else(|| format!("target `{name}` is text and no positive_label is set"))?;
            a.as_string::<i32>()
                .iter()
                .map(|v| f64::from(u8::from(v == Some(pos))))
                .collect()
        }
        (_, t) if t.is_numeric() => {
            let f = arrow::compute::cast(a, &DataType::Float64).map_err(|e| e.to_string())?;
            f.as_primitive::<arrow::datatypes::Float64Type>()
                .values()
                .to_vec()
        }
        (_, t) => return Err(format!("target `{name}` has type {t}")),
    };
    if let Some(r) = y.iter().position(|v| !v.is_finite()) {
        return Err(format!("target `{name}` is not finite in row {r}"));
    }
    if task == Task::Binary {
        if let Some(r) = y.iter().position(|v| *v != 0.0 && *v != 1.0) {
            return Err(format!("binary target `{name}` is {} in row {r}; use 0/1, a bool, or text with positive_label", y[r]));
        }
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use std::sync::Arc;

    /// Scoring in chunks, of all rows or of some, gives what encoding every row at once and
    /// predicting gives, and counts what it filled in the same.
    #[test]
    fn chunked_prediction_equals_predicting_every_row_at_once() {
        let n = 5_000;
        let mut rng = crate::generate::Rng::new(11);
        let a: Vec<Option<f64>> = (0..n)
            .map(|i| (i % 13 != 0).then(|| rng.uniform() * 10.0))
            .collect();
        let b: Vec<Option<i64>> = (0..n)
            .map(|i| (i % 17 != 0).then(|| (rng.uniform() * 50.0) as i64))
            .collect();
        let c: Vec<Option<&str>> = (0..n)
            .map(|i| match i % 5 {
                0 => None,
                1 => Some("north"),
                2 => Some("south"),
                _ => Some(if i < 4_000 { "east" } else { "west" }),
            })
            .collect();
        let batch = RecordBatch::try_from_iter(vec![
            ("a", Arc::new(Float64Array::from(a)) as ArrayRef),
            ("b", Arc::new(Int64Array::from(b)) as ArrayRef),
            ("c", Arc::new(StringArray::from(c)) as ArrayRef),
        ])
        .unwrap();
        let names = ["a", "b", "c"].map(String::from);
        let train_rows: Vec<u32> = (0..4_000).collect();
        let transform = transform::Transform::fit(&batch, &names, &train_rows).unwrap();
        let m = transform.apply(&batch).unwrap();
        let y: Vec<f64> = (0..n)
            .map(|i| m.columns[0][i] * m.columns[1][i] + m.columns[2][i])
            .collect();
        let x = transform::Encoded {
            transform: &transform,
            batch: &batch,
            rows: Some(&train_rows),
        };
        let yt = &y[..4_000];
        let algorithm = Algorithm::Gbdt {
            params: gbdt::Params {
                n_trees: 20,
                ..Default::default()
            },
        };
        let fitted = algorithm
            .fit_columns(&x, yt, Task::Regression, &transform)
            .unwrap();
        // Fitting on columns read one at a time is fitting on the encoded matrix.
        let views: Vec<&[f64]> = m.columns.iter().map(|c| &c[..4_000]).collect();
        assert_eq!(
            fitted,
            algorithm
                .fit(&views, yt, Task::Regression, &transform)
                .unwrap()
        );
        let artifact = regression_artifact(algorithm, transform, fitted);
        let all = artifact.fitted.predict(&m.views()).unwrap();
        for chunk in [1, 999, 1_000, 5_000, 1 << 18] {
            let Predictions {
                values: p, fills, ..
            } = artifact
                .predict_chunked(&batch, None, chunk, false)
                .unwrap();
            assert_eq!(p, all, "chunk {chunk}");
            assert_eq!(fills, m.fills);
            let some: Vec<u32> = (0..n as u32).filter(|r| r % 3 != 1).collect();
            let Predictions {
                values: p, fills, ..
            } = artifact
                .predict_chunked(&batch, Some(&some), chunk, false)
                .unwrap();
            let want: Vec<f64> = some.iter().map(|&r| all[r as usize]).collect();
            assert_eq!(p, want, "chunk {chunk}, some rows");
            // Rows 4000.. hold "west", never seen in training: 1 of every 5 of them, less the
            // rows left out.
            let west = some.iter().filter(|&&r| r >= 4_000 && r % 5 >= 3).count();
            assert_eq!(fills.unseen["c"], west as u64);
        }
    }

    /// A regression model's artifact without calibrator or estimator.
    fn regression_artifact(
        algorithm: Algorithm,
        transform: transform::Transform,
        fitted: Fitted,
    ) -> Artifact {
        Artifact {
            format_version: 1,
            name: "m".into(),
            task: Task::Regression,
            target: "y".into(),
            positive_label: None,
            algorithm,
            threshold: 0.5,
            transform,
            fitted,
            calibrator: Default::default(),
            estimator: None,
            selection_threshold: None,
        }
    }

    /// A booster on features `names` of `batch`, fitted on `rows` to `y`.
    fn fitted_on(batch: &RecordBatch, names: &[&str], rows: &[u32], y: &[f64]) -> Artifact {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let transform = transform::Transform::fit(batch, &names, rows).unwrap();
        let x = transform::Encoded {
            transform: &transform,
            batch,
            rows: Some(rows),
        };
        let yt: Vec<f64> = rows.iter().map(|&r| y[r as usize]).collect();
        let algorithm = Algorithm::Gbdt {
            params: gbdt::Params {
                n_trees: 15,
                ..Default::default()
            },
        };
        let fitted = algorithm
            .fit_columns(&x, &yt, Task::Regression, &transform)
            .unwrap();
        regression_artifact(algorithm, transform, fitted)
    }

    /// Models scored together (those with equal transforms sharing each chunk's encoded
    /// features) give what each gives scored alone, bit for bit; a model whose features cannot be
    /// encoded fails alone with its group, the others scored.
    #[test]
    fn models_scored_together_equal_each_scored_alone() {
        let n = 3_000;
        let mut rng = crate::generate::Rng::new(12);
        let a: Vec<Option<f64>> = (0..n)
            .map(|i| (i % 11 != 0).then(|| rng.uniform() * 10.0))
            .collect();
        let c: Vec<Option<&str>> = (0..n)
            .map(|i| match i % 4 {
                0 => None,
                1 => Some("north"),
                _ => Some(if i < 2_000 { "east" } else { "west" }),
            })
            .collect();
        let batch = RecordBatch::try_from_iter(vec![
            ("a", Arc::new(Float64Array::from(a.clone())) as ArrayRef),
            ("c", Arc::new(StringArray::from(c)) as ArrayRef),
        ])
        .unwrap();
        let y1: Vec<f64> = a.iter().map(|v| v.unwrap_or(3.0).sin()).collect();
        let y2: Vec<f64> = (0..n).map(|i| (i % 4) as f64 + y1[i]).collect();
        let rows: Vec<u32> = (0..2_000).collect();
        let fewer: Vec<u32> = (0..1_000).collect();
        // Two models on the same transform, one on another (fitted on other rows), one on a
        // column the rows do not have.
        let same_a = fitted_on(&batch, &["a", "c"], &rows, &y1);
        let same_b = fitted_on(&batch, &["a", "c"], &rows, &y2);
        let other = fitted_on(&batch, &["a", "c"], &fewer, &y2);
        assert_eq!(same_a.transform, same_b.transform);
        assert_ne!(same_a.transform, other.transform);
        let mut missing = fitted_on(&batch, &["a", "c"], &rows, &y1);
        missing.transform.features[1].name = "gone".into();
        let arts = [&same_a, &missing, &other, &same_b];
        for chunk in [1_000, 1 << 18] {
            let together = Artifact::score_many_chunked(&arts, &batch, &[], chunk);
            assert_eq!(together.len(), 4);
            for (k, a) in [(0, &same_a), (2, &other), (3, &same_b)] {
                let alone = a.predict_chunked(&batch, None, chunk, true).unwrap();
                let got = together[k].as_ref().unwrap();
                // Everything but the time taken.
                assert!(got.values == alone.values, "model {k}, chunk {chunk}");
                assert_eq!(got.fills, alone.fills);
                assert_eq!(
                    (&got.loss_sums, &got.uncalibrated),
                    (&alone.loss_sums, &alone.uncalibrated)
                );
            }
            let e = together[1].as_ref().unwrap_err();
            assert!(e.contains("gone"), "{e}");
        }
    }
}
