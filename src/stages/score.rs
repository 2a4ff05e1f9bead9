//! `score`: applies every trained model to the validated rows of a dataset (the "results
//! table" of the platform this pipeline replaces). Writes `scores.parquet`: the key columns (personal-data keys as the pseudonyms
//! `validate` wrote, see [`crate::data::pseudonym`]), one prediction column per model
//! (probabilities for binary models), one version column per model, and `scored_at`. Categories
//! a model never saw in training are scored with the shared "other" code and counted.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::context::StageCtx;
use super::StageDone;
use crate::error::{Error, Result};
use crate::model::{Artifact, Task};

/// What a score stage reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub dataset: String,
    pub rows: u64,
    pub models: IndexMap<String, Scored>,
}

/// One model's scores of the dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub rows: u64,
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub mean_prediction: f64,
    /// The artifact version the scores carry (see [`artifact_version`]).
    pub version: String,
    /// Per feature, categories never seen in training (scored as "other").
    pub unseen_categories: std::collections::BTreeMap<String, u64>,
    /// Per feature, missing values filled in by the transform.
    pub imputed_values: std::collections::BTreeMap<String, u64>,
    /// Binary models: the share predicted positive at the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive_rate: Option<f64>,
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

pub async fn run(ctx: &StageCtx, dataset: &str, models: &[String]) -> Result<StageDone> {
    let name = format!("{dataset}.clean");
    let source = ctx.upstream_output(&name, "validate")?;
    let table = ctx.read_table(&source).await?;
    let keys = ctx.pipeline().datasets[dataset].primary_key.clone();
    let mut fields: Vec<Field> = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for k in &keys {
        let c = table
            .column_by_name(k)
            .ok_or_else(|| Error::Data(format!("key `{k}` missing from `{dataset}`")))?;
        fields.push(Field::new(k, c.data_type().clone(), true));
        cols.push(c.clone());
    }
    let mut summary = Summary {
        dataset: dataset.to_string(),
        rows: table.num_rows() as u64,
        models: IndexMap::new(),
    };
    for m in models {
        let trained = ctx.trained(m)?;
        let out = trained.output("model")?.clone();
        let run = trained.run_id(&ctx.shared.run_id).to_string();
        let artifact: Artifact = ctx.read_json(&out).await?;
        let t = table.clone();
        let a = artifact.clone();
        let span = tracing::info_span!("predict", model = %m, rows = t.num_rows());
        let (pred, matrix) = tokio::task::spawn_blocking(move || span.in_scope(|| a.predict(&t)))
            .await
            .map_err(|e| Error::Infra(format!("scoring panicked: {e}")))?
            .map_err(|e| Error::Data(format!("model `{m}` cannot score `{dataset}`: {e}")))?;
        let version = artifact_version(&run, &out.sha256);
        let mean = pred.iter().sum::<f64>() / pred.len().max(1) as f64;
        let positive_rate = (artifact.task == Task::Binary).then(|| {
            pred.iter().filter(|p| **p >= artifact.threshold).count() as f64
                / pred.len().max(1) as f64
        });
        let bounds = crate::telemetry::events::score_bounds(&pred);
        ctx.emit(crate::telemetry::Event::ModelScored {
            model: m,
            version: &version,
            rows: pred.len(),
            distribution: crate::telemetry::events::distribution(&pred, &bounds),
            positive_rate,
        });
        if !matrix.unseen.is_empty() {
            tracing::warn!(stage = %ctx.stage.name, model = %m, unseen = ?matrix.unseen, "categories never seen in training were scored as 'other'");
        }
        summary.models.insert(
            m.clone(),
            Scored {
                rows: pred.len() as u64,
                mean_prediction: mean,
                version: version.clone(),
                unseen_categories: matrix.unseen,
                imputed_values: matrix.imputed,
                positive_rate,
            },
        );
        fields.push(Field::new(m, DataType::Float64, false));
        cols.push(Arc::new(Float64Array::from(pred)));
        fields.push(Field::new(format!("{m}_version"), DataType::Utf8, false));
        cols.push(Arc::new(repeated(&version, table.num_rows())));
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
    ctx.write_table("scores", "scores.parquet", scores).await?;
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
