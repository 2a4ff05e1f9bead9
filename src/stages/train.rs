//! `train`: fits one declared model on the training side of the prepared rows, evaluates it on
//! the holdout side, and checks its gates. Writes `model.json` (the artifact, with its fitted
//! transform), `metrics.json` ([`Report`]), and `holdout.parquet` (`_row` in the clean data,
//! target, prediction) for the fairness, drift and register stages.
//!
//! A binary model's probabilities are calibrated on a slice of the training side kept out of
//! the fit (the highest tenth of its buckets; never the holdout), and their calibration is
//! measured on the holdout ([`CalibrationReport`]). The artifact also carries what estimates
//! the model's performance before outcomes are known, fitted on the holdout: CBPE's reference
//! for a binary model, DLE's loss models for a regression one (see [`crate::model::estimate`]).

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, UInt64Array};
use arrow::record_batch::RecordBatch;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::context::StageCtx;
use super::prepare::Recipe;
use super::StageDone;
use crate::config::{Gate, Model};
use crate::data::split;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::calibration;
use crate::model::estimate::{cbpe, dle, Estimator};
use crate::model::transform::{Encoded, Transform};
use crate::model::{Artifact, Task};

/// Rows on each side of the split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rows {
    /// Training rows, the calibration slice included.
    pub train: usize,
    pub holdout: usize,
    /// Training rows set aside to calibrate a binary model's probabilities (not fitted on).
    #[serde(default)]
    pub calibration: usize,
}

/// How a binary model's probabilities were calibrated, and how calibrated they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    /// The calibrator the artifact applies: `none`, `isotonic` or `platt`.
    pub method: String,
    /// The model's `calibration`: `auto` chose the candidate with the lowest cross-fitted error.
    pub requested: calibration::Choice,
    /// `auto`: each candidate's Brier score (which decides) and expected calibration error,
    /// cross-fitted on the slice.
    pub candidates: Vec<calibration::Candidate>,
    /// The holdout's expected calibration error ([`calibration::BINS`] bins of equal count)
    /// before and after calibration.
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub holdout_ece_uncalibrated: f64,
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub holdout_ece: f64,
    /// The holdout's reliability curve ([`calibration::BINS`] equal-width bins), before and
    /// after calibration.
    pub reliability_uncalibrated: Vec<calibration::ReliabilityBin>,
    pub reliability: Vec<calibration::ReliabilityBin>,
    /// Why no calibrator was tried, when none was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A gate and how the model did against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateOutcome {
    pub gate: Gate,
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub value: f64,
    pub passed: bool,
}

impl std::fmt::Display for GateOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (got {:.4})", self.gate, self.value)
    }
}

/// `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub model: String,
    pub task: Task,
    pub algorithm: String,
    pub rows: Rows,
    pub metrics: Metrics,
    pub gates: Vec<GateOutcome>,
    pub passed: bool,
    pub training_seconds: f64,
    /// Each feature's share of the model's importance (absent for algorithms without one).
    pub feature_importance: Option<IndexMap<String, f64>>,
    /// Binary models: calibration on the holdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationReport>,
    /// How performance is estimated before outcomes: `cbpe` or `dle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimator: Option<String>,
}

/// What a train stage reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub model: String,
    pub task: Task,
    pub metrics: Metrics,
    pub gates: Vec<GateOutcome>,
    pub passed: bool,
    pub training_seconds: f64,
    pub rows: Rows,
    /// What counts as "selected" for fairness: the decision threshold of a binary model, the
    /// training median of the target for a regression model.
    pub selection_threshold: f64,
    /// Binary models: the calibrator kept and the holdout's calibration error after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ece: Option<f64>,
}

impl Summary {
    /// The gates the model failed.
    pub fn failed_gates(&self) -> impl Iterator<Item = &GateOutcome> {
        self.gates.iter().filter(|g| !g.passed)
    }
}

pub async fn run(ctx: &StageCtx, model_name: &str) -> Result<StageDone> {
    let model: Model = ctx.pipeline().models[model_name].clone();
    let prep = ctx
        .upstream
        .values()
        .find_map(|r| r.output("prepare").cloned())
        .ok_or_else(|| {
            Error::Usage(format!(
                "stage `{}` needs a prepare stage in its `needs`",
                ctx.stage.name
            ))
        })?;
    let recipe: Recipe = ctx.read_json(&prep).await?;
    if recipe.dataset != model.dataset {
        return Err(Error::Usage(format!(
            "model `{model_name}` trains on `{}`, but the prepare stage prepared `{}`",
            model.dataset, recipe.dataset
        )));
    }
    let table = ctx.read_table(&recipe.source).await?;
    ctx.progress.set_message(format!(
        "fitting {model_name} on {} rows",
        recipe.train_rows
    ));
    let stage = ctx.stage.name.clone();
    let name = model_name.to_string();
    let started = Instant::now();
    let parent = tracing::Span::current();
    let fitted =
        tokio::task::spawn_blocking(move || parent.in_scope(|| fit(&table, &recipe, &model)))
            .await
            .map_err(|e| Error::Infra(format!("stage `{stage}`: training panicked: {e}")))?
            .map_err(|e| Error::Data(format!("model `{name}`: {e}")))?;
    let training_seconds = started.elapsed().as_secs_f64();
    let Fitted {
        artifact,
        metrics,
        holdout,
        gates,
        rows,
        selection_threshold,
        calibration,
    } = fitted;
    let summary = Summary {
        model: model_name.to_string(),
        task: artifact.task,
        metrics,
        passed: gates.iter().all(|g| g.passed),
        gates,
        training_seconds,
        rows,
        selection_threshold,
        calibration: calibration.as_ref().map(|c| c.method.clone()),
        ece: calibration.as_ref().map(|c| c.holdout_ece),
    };
    let failed: Vec<String> = summary.failed_gates().map(|g| g.to_string()).collect();
    for (k, v) in &summary.metrics {
        ctx.emit(crate::telemetry::Event::ModelEvaluated {
            model: model_name,
            metric: k.name(),
            value: *v,
        });
    }
    if let Some(c) = &calibration {
        ctx.emit(crate::telemetry::Event::ModelCalibrated {
            model: model_name,
            method: &c.method,
            ece: c.holdout_ece,
        });
    }
    ctx.emit(crate::telemetry::Event::ModelTrained {
        model: model_name,
        algorithm: artifact.algorithm.name(),
        seconds: training_seconds,
        passed: summary.passed,
        failed_gates: failed.join("; "),
    });
    ctx.write_json("model", "model.json", &artifact).await?;
    let report = Report {
        model: model_name.to_string(),
        task: artifact.task,
        algorithm: artifact.algorithm.name().to_string(),
        rows,
        metrics: summary.metrics.clone(),
        gates: summary.gates.clone(),
        passed: summary.passed,
        training_seconds,
        feature_importance: importance(&artifact),
        calibration,
        estimator: artifact.estimator.as_ref().map(|e| e.name().to_string()),
    };
    ctx.write_json("metrics", "metrics.json", &report).await?;
    ctx.write_table("holdout", "holdout.parquet", holdout)
        .await?;
    let mut done = StageDone::new(summary);
    done.check_failures = failed
        .iter()
        .map(|f| format!("model `{model_name}` failed gate {f}; it will not be promoted (see its metrics.json, or change the gate)"))
        .collect();
    Ok(done)
}

struct Fitted {
    artifact: Artifact,
    metrics: Metrics,
    holdout: RecordBatch,
    gates: Vec<GateOutcome>,
    rows: Rows,
    selection_threshold: f64,
    calibration: Option<CalibrationReport>,
}

/// The training side's calibration slice: its highest tenth of buckets (at least one), for a
/// binary model that calibrates; the rest of the training side fits the model. With `auto`, a
/// slice of fewer than [`calibration::MIN_AUTO_ROWS`] rows is not taken (a note says why): on
/// so few rows no calibrator can be shown to help, and the rows are worth more to the fit.
fn calibration_slice(
    buckets: &[u8],
    train_rows: &[u32],
    cut: u8,
    model: &Model,
) -> (Vec<u32>, Vec<u32>, Option<String>) {
    if model.task != Task::Binary || model.calibration == calibration::Choice::None {
        return (train_rows.to_vec(), Vec::new(), None);
    }
    let from = cut - cut.div_ceil(10).max(1);
    let (fit, slice): (Vec<u32>, Vec<u32>) = train_rows
        .iter()
        .partition(|&&r| buckets[r as usize] < from);
    if model.calibration == calibration::Choice::Auto && slice.len() < calibration::MIN_AUTO_ROWS {
        let note = format!(
            "the calibration slice would hold {} training rows, fewer than {}: no calibrator was tried, and every training row fits the model (set calibration = \"isotonic\" or \"platt\" to calibrate anyway)",
            slice.len(),
            calibration::MIN_AUTO_ROWS
        );
        return (train_rows.to_vec(), Vec::new(), Some(note));
    }
    (fit, slice, None)
}

fn fit(table: &RecordBatch, recipe: &Recipe, model: &Model) -> std::result::Result<Fitted, String> {
    let b = split::split_buckets(table, &recipe.dataset).map_err(|e| e.to_string())?;
    let (train_rows, hold_rows) = split::sides(&b, recipe.cut());
    let (fit_rows, slice_rows, calibration_note) =
        calibration_slice(&b, &train_rows, recipe.cut(), model);
    let y = crate::model::target(
        table,
        &model.target,
        model.task,
        model.positive_label.as_deref(),
    )?;
    let transform = Transform::fit(table, &model.features, &train_rows)?;
    let pick = |rows: &[u32]| -> Vec<f64> { rows.iter().map(|&r| y[r as usize]).collect() };
    let yt = pick(&fit_rows);
    if model.task == Task::Binary && (yt.iter().all(|v| *v == 0.0) || yt.iter().all(|v| *v == 1.0))
    {
        return Err(format!(
            "the target `{}` has only one class in the {} training rows; a binary model needs both",
            model.target,
            yt.len()
        ));
    }
    let xt = Encoded {
        transform: &transform,
        batch: table,
        rows: Some(&fit_rows),
    };
    let fitted = tracing::info_span!("fit", model = %model.name, algorithm = model.algorithm.name(), rows = yt.len())
        .in_scope(|| model.algorithm.fit_columns(&xt, &yt, model.task, &transform))?;
    let mut artifact = Artifact {
        format_version: 1,
        name: model.name.clone(),
        task: model.task,
        target: model.target.clone(),
        positive_label: model.positive_label.clone(),
        algorithm: model.algorithm.clone(),
        threshold: model.threshold,
        transform,
        fitted,
        calibrator: Default::default(),
        estimator: None,
        selection_threshold: None,
    };
    if let Some(what) = artifact.fitted.non_finite_parameter() {
        return Err(format!(
            "the fitted {} model is not usable: {what}; look for extreme values in its features (or use algorithm `gbdt`, which bins them)",
            model.algorithm.name()
        ));
    }
    // The calibrator, from the slice's uncalibrated probabilities.
    let mut candidates = Vec::new();
    if !slice_rows.is_empty() {
        let ys = pick(&slice_rows);
        let ps = tracing::info_span!("predict", model = %model.name, rows = slice_rows.len())
            .in_scope(|| artifact.predict_rows(table, Some(&slice_rows)))?
            .values;
        (artifact.calibrator, candidates) = calibration::choose(model.calibration, &ps, &ys);
    }
    let raw = tracing::info_span!("predict", model = %model.name, rows = hold_rows.len())
        .in_scope(|| {
            let calibrator = std::mem::take(&mut artifact.calibrator);
            let p = artifact.predict_rows(table, Some(&hold_rows));
            artifact.calibrator = calibrator;
            p
        })?;
    let ph_raw = raw.values;
    if let Some(r) = ph_raw.iter().position(|p| !p.is_finite()) {
        return Err(format!(
            "the fitted {} model predicts {} for holdout row {}; look for extreme values in its features (or use algorithm `gbdt`, which bins them)",
            model.algorithm.name(),
            ph_raw[r],
            hold_rows[r]
        ));
    }
    let mut ph = ph_raw.clone();
    artifact.calibrator.apply_all(&mut ph);
    let yh = pick(&hold_rows);
    let metrics = crate::metrics::evaluate(model.task, &yh, &ph, model.threshold)
        .map_err(|e| format!("holdout metrics: {e}"))?;
    let gates = model
        .gates
        .iter()
        .map(|g| {
            let value = metrics[&g.metric];
            GateOutcome {
                gate: g.clone(),
                value,
                passed: g.passes(value),
            }
        })
        .collect();
    let calibration = (model.task == Task::Binary).then(|| CalibrationReport {
        method: artifact.calibrator.name().to_string(),
        requested: model.calibration,
        candidates,
        holdout_ece_uncalibrated: calibration::expected_calibration_error(
            &yh,
            &ph_raw,
            calibration::BINS,
        ),
        holdout_ece: calibration::expected_calibration_error(&yh, &ph, calibration::BINS),
        reliability_uncalibrated: calibration::reliability_curve(&yh, &ph_raw, calibration::BINS),
        reliability: calibration::reliability_curve(&yh, &ph, calibration::BINS),
        note: calibration_note,
    });
    artifact.estimator = Some(
        tracing::info_span!("estimator", model = %model.name, rows = hold_rows.len())
            .in_scope(|| estimator(&artifact, table, &hold_rows, &yh, &ph))?,
    );
    let holdout = RecordBatch::try_from_iter(vec![
        (
            "_row",
            Arc::new(UInt64Array::from(
                hold_rows.iter().map(|&r| r as u64).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        ("target", Arc::new(Float64Array::from(yh)) as ArrayRef),
        ("prediction", Arc::new(Float64Array::from(ph)) as ArrayRef),
    ])
    .map_err(|e| e.to_string())?;
    let selection_threshold = match model.task {
        Task::Binary => model.threshold,
        Task::Regression => {
            let mut all = pick(&train_rows);
            crate::stats::quantile(&mut all, 0.5).unwrap_or(0.0)
        }
    };
    artifact.selection_threshold = Some(selection_threshold);
    Ok(Fitted {
        artifact,
        metrics,
        holdout,
        gates,
        rows: Rows {
            train: train_rows.len(),
            holdout: hold_rows.len(),
            calibration: slice_rows.len(),
        },
        selection_threshold,
        calibration,
    })
}

/// What estimates the model's performance before outcomes, fitted on the holdout (targets `y`,
/// the model's final predictions `p`): CBPE's reference for a binary model, DLE's loss models on
/// the encoded features and the prediction for a regression one.
fn estimator(
    a: &Artifact,
    table: &RecordBatch,
    hold_rows: &[u32],
    y: &[f64],
    p: &[f64],
) -> std::result::Result<Estimator, String> {
    Ok(match a.task {
        Task::Binary => {
            let yb: Vec<bool> = y.iter().map(|v| *v == 1.0).collect();
            Estimator::Cbpe(cbpe::Reference::fit(&yb, p, a.threshold))
        }
        Task::Regression => {
            let cols = (0..a.transform.features.len())
                .map(|f| {
                    let mut c = Vec::new();
                    a.transform.encode(f, table, Some(hold_rows), &mut c)?;
                    Ok(c)
                })
                .collect::<std::result::Result<Vec<_>, String>>()?;
            let views: Vec<&[f64]> = cols.iter().map(|c| c.as_slice()).collect();
            Estimator::Dle(Box::new(dle::Dle::fit(&views, y, p)))
        }
    })
}

/// Each feature's share of the model's importance (null for algorithms without one).
fn importance(a: &Artifact) -> Option<IndexMap<String, f64>> {
    let imp = a.fitted.importance()?;
    let total: f64 = imp.iter().sum();
    Some(
        a.transform
            .features
            .iter()
            .zip(&imp)
            .map(|(f, g)| (f.name.clone(), if total > 0.0 { g / total } else { 0.0 }))
            .collect(),
    )
}
