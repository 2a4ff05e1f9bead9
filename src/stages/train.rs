//! `train`: fits one declared model on the training side of the prepared rows, evaluates it on
//! the holdout side, and checks its gates. Writes `model.json` (the artifact, with its fitted
//! transform), `metrics.json` ([`Report`]), and `holdout.parquet` (`_row` in the clean data,
//! target, prediction) for the fairness, drift and register stages.

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
use crate::model::transform::{Encoded, Transform};
use crate::model::{Artifact, Task};

/// Rows on each side of the split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rows {
    pub train: usize,
    pub holdout: usize,
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
    };
    let failed: Vec<String> = summary.failed_gates().map(|g| g.to_string()).collect();
    for (k, v) in &summary.metrics {
        ctx.emit(crate::telemetry::Event::ModelEvaluated {
            model: model_name,
            metric: k.name(),
            value: *v,
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
}

fn fit(table: &RecordBatch, recipe: &Recipe, model: &Model) -> std::result::Result<Fitted, String> {
    let b = split::split_buckets(table, &recipe.dataset).map_err(|e| e.to_string())?;
    let (train_rows, hold_rows) = split::sides(&b, recipe.cut());
    let y = crate::model::target(
        table,
        &model.target,
        model.task,
        model.positive_label.as_deref(),
    )?;
    let transform = Transform::fit(table, &model.features, &train_rows)?;
    let yt: Vec<f64> = train_rows.iter().map(|&r| y[r as usize]).collect();
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
        rows: Some(&train_rows),
    };
    let fitted = tracing::info_span!("fit", model = %model.name, algorithm = model.algorithm.name(), rows = yt.len())
        .in_scope(|| model.algorithm.fit_columns(&xt, &yt, model.task, &transform))?;
    let artifact = Artifact {
        format_version: 1,
        name: model.name.clone(),
        task: model.task,
        target: model.target.clone(),
        positive_label: model.positive_label.clone(),
        algorithm: model.algorithm.clone(),
        threshold: model.threshold,
        transform,
        fitted,
    };
    if let Some(what) = artifact.fitted.non_finite_parameter() {
        return Err(format!(
            "the fitted {} model is not usable: {what}; look for extreme values in its features (or use algorithm `gbdt`, which bins them)",
            model.algorithm.name()
        ));
    }
    let (ph, _) = tracing::info_span!("predict", model = %model.name, rows = hold_rows.len())
        .in_scope(|| artifact.predict_rows(table, Some(&hold_rows)))?;
    if let Some(r) = ph.iter().position(|p| !p.is_finite()) {
        return Err(format!(
            "the fitted {} model predicts {} for holdout row {}; look for extreme values in its features (or use algorithm `gbdt`, which bins them)",
            model.algorithm.name(),
            ph[r],
            hold_rows[r]
        ));
    }
    let yh: Vec<f64> = hold_rows.iter().map(|&r| y[r as usize]).collect();
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
        Task::Regression => crate::stats::quantile(&mut yt.clone(), 0.5).unwrap_or(0.0),
    };
    Ok(Fitted {
        artifact,
        metrics,
        holdout,
        gates,
        rows: Rows {
            train: train_rows.len(),
            holdout: hold_rows.len(),
        },
        selection_threshold,
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
