//! `score`: applies each model to the validated rows of a dataset (the "results table" of the
//! platform this pipeline replaces): the models this run trained, or with `models_from =
//! "registry"` each model's production version. Writes `scores.parquet`: the key columns
//! (personal-data keys as the pseudonyms `validate` wrote, see [`crate::data::pseudonym`]), the
//! fairness attributes' columns, one prediction column per model (calibrated probabilities for
//! binary models), one version column per model, and `scored_at`. Categories a model never saw
//! in training are scored with the shared "other" code and counted.
//!
//! Each model's performance on these rows is estimated as they are scored (CBPE, DLE; see
//! [`crate::model::estimate`]), the business figures are computed ([`crate::business`]), and
//! each model's scoring is added to the history ([`crate::history::Cohort`]) for the `evaluate`
//! stages of later runs.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::context::StageCtx;
use super::StageDone;
use crate::config::ModelSource;
use crate::error::{Error, Result};
use crate::history::Cohort;
use crate::model::estimate::Estimates;
use crate::model::{Artifact, Task};

/// What a score stage reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub dataset: String,
    pub rows: u64,
    pub models: IndexMap<String, Scored>,
    /// The business figures (with a `[business]` section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business: Option<crate::business::Figures>,
}

/// One model's scores of the dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub rows: u64,
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub mean_prediction: f64,
    /// The version the scores carry: the registry's id for a production version, else
    /// [`artifact_version`].
    pub version: String,
    /// Per feature, categories never seen in training (scored as "other").
    pub unseen_categories: std::collections::BTreeMap<String, u64>,
    /// Per feature, missing values filled in by the transform.
    pub imputed_values: std::collections::BTreeMap<String, u64>,
    /// Binary models: the share predicted positive at the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive_rate: Option<f64>,
    /// The performance estimated on these rows, with its bands (absent for a model trained
    /// before estimation existed), and the seconds the estimate added to scoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated: Option<Estimates>,
    #[serde(default)]
    pub estimate_seconds: f64,
}

impl Summary {
    /// Milliseconds per 1 000 rows and model, when the stage ran in its run (`seconds`; not
    /// for a stage reused from an earlier run, whose time was not measured there).
    pub fn inference_ms_per_1k(&self, seconds: f64) -> std::collections::BTreeMap<String, f64> {
        if self.rows == 0 || self.models.is_empty() {
            return Default::default();
        }
        let each = seconds * 1e6 / self.rows as f64 / self.models.len() as f64;
        self.models.keys().map(|m| (m.clone(), each)).collect()
    }
}

/// The version recorded for a model until the registry assigns one: the training run and the
/// first 12 hex characters of the artifact's SHA-256.
pub fn artifact_version(run: &str, sha256: &str) -> String {
    format!("{run}:{}", &sha256[..12.min(sha256.len())])
}

/// `n` copies of `value` as a string column, built straight into its two buffers (at 10 M rows a
/// list of `n` string slices first was 160 MB more per model).
fn repeated(value: &str, n: usize) -> StringArray {
    let offsets = arrow::buffer::OffsetBuffer::from_lengths(std::iter::repeat_n(value.len(), n));
    let values = arrow::buffer::Buffer::from(value.as_bytes().repeat(n));
    StringArray::new(offsets, values, None)
}

/// A model to score with, and the version its scores carry.
struct Scorer {
    artifact: Artifact,
    version: String,
    sha256: String,
}

/// The model `m` as the stage applies it: trained in this run (or reused), or the registry's
/// production version.
async fn scorer(ctx: &StageCtx, m: &str, from: ModelSource) -> Result<Scorer> {
    match from {
        ModelSource::Run => {
            let trained = ctx.trained(m)?;
            let out = trained.output("model")?.clone();
            let run = trained.run_id(&ctx.shared.run_id).to_string();
            Ok(Scorer {
                artifact: ctx.read_json(&out).await?,
                version: artifact_version(&run, &out.sha256),
                sha256: out.sha256,
            })
        }
        ModelSource::Registry => {
            let registry = &ctx.shared.registry;
            let st = registry.state(m).await?;
            let doc = st.production.and_then(|v| st.versions.get(&v)).ok_or_else(|| {
                Error::Data(format!(
                    "stage `{}`: model `{m}` has no production version in the registry at {}; run the training pipeline first, or `mlpipe registry promote {m} VERSION`",
                    ctx.stage.name,
                    registry.store().url()
                ))
            })?;
            Ok(Scorer {
                artifact: registry.artifact(doc).await?,
                version: doc.model_id.clone(),
                sha256: doc.artifact_sha256.clone(),
            })
        }
    }
}

pub async fn run(
    ctx: &StageCtx,
    dataset: &str,
    models: &[String],
    from: ModelSource,
) -> Result<StageDone> {
    let name = format!("{dataset}.clean");
    let source = ctx.upstream_output(&name, "validate")?;
    let table = ctx.read_table(&source).await?;
    let p = ctx.pipeline();
    let keys = p.datasets[dataset].primary_key.clone();
    let mut fields: Vec<Field> = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    let take = |c: &str, fields: &mut Vec<Field>, cols: &mut Vec<ArrayRef>| -> bool {
        match table.column_by_name(c) {
            Some(a) if !fields.iter().any(|f| f.name() == c) => {
                fields.push(Field::new(c, a.data_type().clone(), true));
                cols.push(a.clone());
                true
            }
            _ => false,
        }
    };
    for k in &keys {
        if !take(k, &mut fields, &mut cols) {
            return Err(Error::Data(format!("key `{k}` missing from `{dataset}`")));
        }
    }
    // The fairness attributes, so that realized fairness can be measured when outcomes arrive.
    let mut attributes = Vec::new();
    for a in p.fairness.attributes.values() {
        if take(&a.column, &mut fields, &mut cols) || keys.contains(&a.column) {
            attributes.push(a.column.clone());
        }
    }
    let mut summary = Summary {
        dataset: dataset.to_string(),
        rows: table.num_rows() as u64,
        models: IndexMap::new(),
        business: None,
    };
    let mut predictions: IndexMap<String, Arc<Float64Array>> = IndexMap::new();
    let mut cohorts = Vec::new();
    let scored_at = ctx
        .shared
        .as_of
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut scorers = Vec::with_capacity(models.len());
    for m in models {
        scorers.push(scorer(ctx, m, from).await?);
    }
    // The models score together: those with the same transform share each chunk's encoded
    // features and score it side by side (`Artifact::score_many`); then their estimates are
    // made side by side, each in its model's span.
    let spans: Vec<tracing::Span> = models
        .iter()
        .map(|m| tracing::info_span!("predict", model = %m, rows = table.num_rows()))
        .collect();
    let arts: Vec<Artifact> = scorers.iter().map(|s| s.artifact.clone()).collect();
    let t = table.clone();
    let results = tokio::task::spawn_blocking(move || {
        use rayon::prelude::*;
        let arts: Vec<&Artifact> = arts.iter().collect();
        let scored = Artifact::score_many(&arts, &t, &spans);
        scored
            .into_par_iter()
            .zip(arts.par_iter().zip(spans.par_iter()))
            .map(|(p, (a, span))| {
                span.in_scope(|| {
                    let mut p = p?;
                    let started = std::time::Instant::now();
                    let e = a.estimate(&p);
                    p.estimate_seconds += started.elapsed().as_secs_f64();
                    Ok::<_, String>((p, e))
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| Error::Infra(format!("scoring panicked: {e}")))?;
    for ((m, scorer), scored) in models.iter().zip(scorers).zip(results) {
        let Scorer {
            artifact,
            version,
            sha256,
        } = scorer;
        let scored = scored
            .map_err(|e| Error::Data(format!("model `{m}` cannot score `{dataset}`: {e}")))?;
        let (pred, estimated) = scored;
        let values = &pred.values;
        let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
        let positive_rate = (artifact.task == Task::Binary).then(|| {
            values.iter().filter(|p| **p >= artifact.threshold).count() as f64
                / values.len().max(1) as f64
        });
        let bounds = crate::telemetry::events::score_bounds(values);
        ctx.emit(crate::telemetry::Event::ModelScored {
            model: m,
            version: &version,
            rows: values.len(),
            distribution: crate::telemetry::events::distribution(values, &bounds),
            positive_rate,
        });
        for (metric, e) in estimated.iter().flatten() {
            ctx.emit(crate::telemetry::Event::PerformanceEstimated {
                model: m,
                metric: metric.name(),
                estimate: *e,
            });
        }
        if !pred.fills.unseen.is_empty() {
            tracing::warn!(stage = %ctx.stage.name, model = %m, unseen = ?pred.fills.unseen, "categories never seen in training were scored as 'other'");
        }
        summary.models.insert(
            m.clone(),
            Scored {
                rows: values.len() as u64,
                mean_prediction: mean,
                version: version.clone(),
                unseen_categories: pred.fills.unseen,
                imputed_values: pred.fills.imputed,
                positive_rate,
                estimated: estimated.clone(),
                estimate_seconds: pred.estimate_seconds,
            },
        );
        cohorts.push(Cohort {
            model: m.clone(),
            task: artifact.task,
            scored_at: scored_at.clone(),
            run_id: ctx.shared.run_id.clone(),
            dataset: dataset.to_string(),
            version: version.clone(),
            artifact_sha256: sha256,
            threshold: artifact.threshold,
            selection_threshold: artifact.selection_threshold.unwrap_or(artifact.threshold),
            rows: values.len() as u64,
            key: keys.clone(),
            pii_keys: keys
                .iter()
                .map(|k| p.datasets[dataset].pii.contains(k))
                .collect(),
            pseudonyms: p.pseudonyms.scheme(),
            // Filled in once the table is written.
            scores: Default::default(),
            column: m.clone(),
            attributes: attributes.clone(),
            estimated,
        });
        let column = Arc::new(Float64Array::from(pred.values));
        predictions.insert(m.clone(), column.clone());
        fields.push(Field::new(m, DataType::Float64, false));
        cols.push(column);
        fields.push(Field::new(format!("{m}_version"), DataType::Utf8, false));
        cols.push(Arc::new(repeated(&version, table.num_rows())));
    }
    if let Some(b) = &p.business {
        let of = |m: &Option<String>| {
            m.as_ref()
                .and_then(|m| predictions.get(m))
                .map(|a| a.values().as_ref())
        };
        let f = crate::business::figures(
            b,
            table.num_rows(),
            of(&b.churn_model),
            of(&b.ltv_model),
            of(&b.engagement_model),
        );
        ctx.emit(crate::telemetry::Event::BusinessFigures { figures: &f });
        summary.business = Some(f);
    }
    let at = ctx.shared.as_of.timestamp_micros();
    fields.push(Field::new(
        "scored_at",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    ));
    cols.push(Arc::new(
        TimestampMicrosecondArray::from(vec![at; table.num_rows()]).with_timezone("UTC"),
    ));
    let scores = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
        .map_err(|e| Error::Infra(format!("scores table: {e}")))?;
    let out = ctx.write_table("scores", "scores.parquet", scores).await?;
    for mut c in cohorts {
        c.scores = out.clone();
        ctx.shared.artifacts.put_json(&c.path(), &c).await?;
    }
    Ok(StageDone::new(summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_string_column_equals_one_built_value_by_value() {
        for (value, n) in [("run:0123456789ab", 5), ("", 3), ("x", 0)] {
            assert_eq!(repeated(value, n), StringArray::from(vec![value; n]));
        }
    }
}
