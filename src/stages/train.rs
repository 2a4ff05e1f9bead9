//! `train`: fits one declared model on the training side of the prepared rows, evaluates it on
//! the holdout side, and checks its gates. Writes `model.json` (the artifact, with its fitted
//! transform), `metrics.json`, and `holdout.parquet` (`_row` in the clean data, target,
//! prediction) for the fairness and drift stages.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, UInt64Array};
use arrow::record_batch::RecordBatch;
use indexmap::IndexMap;

use super::prepare::{split_buckets, Recipe};
use super::StageDone;
use crate::config::{Model, Task};
use crate::engine::context::StageCtx;
use crate::error::{Error, Result};
use crate::metrics::{self, Confusion};
use crate::model::transform::{Encoded, Transform};
use crate::model::Artifact;

/// The clean rows a holdout table refers to (its `_row` column), in holdout order.
pub fn holdout_rows(clean: &RecordBatch, holdout: &RecordBatch) -> Result<RecordBatch> {
    let idx = arrow::array::UInt32Array::from(holdout_row_numbers(holdout)?);
    arrow::compute::take_record_batch(clean, &idx)
        .map_err(|e| Error::Infra(format!("holdout rows: {e}")))
}

/// The row numbers in the clean table of a holdout table's rows (its `_row` column).
pub fn holdout_row_numbers(holdout: &RecordBatch) -> Result<Vec<u32>> {
    use arrow::array::AsArray;
    let stale = |what: &str| {
        Error::Data(format!(
            "the holdout table {what}; re-run its train stage with --force"
        ))
    };
    holdout
        .column_by_name("_row")
        .and_then(|c| c.as_primitive_opt::<arrow::datatypes::UInt64Type>())
        .ok_or_else(|| stale("has no `_row` column"))?
        .values()
        .iter()
        .map(|&r| u32::try_from(r).map_err(|_| stale(&format!("refers to row {r}"))))
        .collect()
}

/// A numeric column of a holdout table (`target` or `prediction`).
pub fn holdout_column(holdout: &RecordBatch, name: &str) -> Result<Vec<f64>> {
    use arrow::array::AsArray;
    holdout
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<arrow::datatypes::Float64Type>())
        .map(|c| c.values().to_vec())
        .ok_or_else(|| Error::Data(format!("the holdout table has no numeric `{name}` column; re-run its train stage with --force")))
}

/// Holdout metrics of a model.
pub fn evaluate(
    task: Task,
    y: &[f64],
    p: &[f64],
    threshold: f64,
) -> std::result::Result<IndexMap<String, f64>, metrics::MetricError> {
    let mut m = IndexMap::new();
    match task {
        Task::Regression => {
            m.insert("r2".into(), metrics::r2(y, p)?);
            m.insert("rmse".into(), metrics::rmse(y, p)?);
            m.insert("mae".into(), metrics::mae(y, p)?);
        }
        Task::Binary => {
            let yb: Vec<bool> = y.iter().map(|v| *v == 1.0).collect();
            m.insert("auc".into(), metrics::roc_auc(&yb, p)?);
            m.insert("log_loss".into(), metrics::log_loss(&yb, p)?);
            m.insert("brier".into(), metrics::brier(&yb, p)?);
            let c = Confusion::at(&yb, p, threshold)?;
            m.insert("precision".into(), c.precision());
            m.insert("recall".into(), c.recall());
            m.insert("f1".into(), c.f1());
            m.insert(
                "positive_rate".into(),
                p.iter().filter(|v| **v >= threshold).count() as f64 / p.len() as f64,
            );
        }
    }
    Ok(m)
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
    let seconds = started.elapsed().as_secs_f64();
    let Fitted {
        artifact,
        metrics,
        holdout,
        gates,
        rows,
        selection_threshold,
    } = fitted;

    let failed: Vec<String> = gates
        .iter()
        .filter(|g| !g.2)
        .map(|g| format!("{} (got {:.4})", g.0, g.1))
        .collect();
    for (k, v) in &metrics {
        ctx.emit(crate::telemetry::Event::ModelEvaluated {
            model: model_name,
            metric: k,
            value: *v,
        });
    }
    ctx.emit(crate::telemetry::Event::ModelTrained {
        model: model_name,
        algorithm: artifact.algorithm.name(),
        seconds,
        passed: failed.is_empty(),
        failed_gates: failed.join("; "),
    });
    ctx.write_json("model", "model.json", &artifact).await?;
    let doc = serde_json::json!({
        "model": model_name,
        "task": artifact.task,
        "algorithm": artifact.algorithm.name(),
        "rows": { "train": rows.0, "holdout": rows.1 },
        "metrics": metrics,
        "gates": gates.iter().map(|(g, v, ok)| serde_json::json!({ "gate": g, "value": v, "passed": ok })).collect::<Vec<_>>(),
        "passed": failed.is_empty(),
        "training_seconds": seconds,
        "feature_importance": importance(&artifact),
    });
    ctx.write_json("metrics", "metrics.json", &doc).await?;
    ctx.write_table("holdout", "holdout.parquet", holdout)
        .await?;
    Ok(StageDone {
        summary: serde_json::json!({
            "model": model_name,
            "metrics": metrics,
            "passed": failed.is_empty(),
            "gate_failures": failed,
            "training_seconds": seconds,
            "rows": { "train": rows.0, "holdout": rows.1 },
            "task": artifact.task,
            "selection_threshold": selection_threshold,
        }),
        gate_failures: failed
            .iter()
            .map(|f| format!("model `{model_name}` failed gate {f}; it will not be promoted (see its metrics.json, or change the gate)"))
            .collect(),
        ..Default::default()
    })
}

struct Fitted {
    artifact: Artifact,
    metrics: IndexMap<String, f64>,
    holdout: RecordBatch,
    gates: Vec<(String, f64, bool)>,
    rows: (usize, usize),
    /// What counts as "selected" for fairness: the decision threshold of a binary model, the
    /// training median of the target for a regression model.
    selection_threshold: f64,
}

fn fit(table: &RecordBatch, recipe: &Recipe, model: &Model) -> std::result::Result<Fitted, String> {
    let b = split_buckets(table, &recipe.dataset).map_err(|e| e.to_string())?;
    let cut = recipe.cut();
    let train_rows: Vec<u32> = (0..b.len() as u32)
        .filter(|&r| b[r as usize] < cut)
        .collect();
    let hold_rows: Vec<u32> = (0..b.len() as u32)
        .filter(|&r| b[r as usize] >= cut)
        .collect();
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
    let (ph, _) = tracing::info_span!("predict", model = %model.name, rows = hold_rows.len())
        .in_scope(|| artifact.predict_rows(table, Some(&hold_rows)))?;
    let yh: Vec<f64> = hold_rows.iter().map(|&r| y[r as usize]).collect();
    let metrics = evaluate(model.task, &yh, &ph, model.threshold)
        .map_err(|e| format!("holdout metrics: {e}"))?;
    let gates = model
        .gates
        .iter()
        .map(|g| {
            let v = metrics[g.metric.as_str()];
            (g.to_string(), v, g.passes(v))
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
        rows: (train_rows.len(), hold_rows.len()),
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
