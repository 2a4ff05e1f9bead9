//! `score`: applies every trained model to the validated rows of a dataset (the seeds' "results
//! table"). Writes `scores.parquet`: the key columns (personal-data keys as the pseudonyms
//! `validate` wrote, see [`crate::data::pseudonym`]), one prediction column per model
//! (probabilities for binary models), one version column per model, and `scored_at`. Categories
//! a model never saw in training are scored with the shared "other" code and counted.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;

use super::StageDone;
use crate::engine::context::StageCtx;
use crate::error::{Error, Result};
use crate::model::Artifact;

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
    let mut summary = serde_json::Map::new();
    for m in models {
        let stage = ctx.trained(m).map(|(s, r)| (s.clone(), r.clone()))?;
        let out = stage
            .1
            .output("model")
            .cloned()
            .ok_or_else(|| Error::Data(format!("stage `{}` has no model artifact", stage.0)))?;
        let artifact: Artifact = ctx.read_json(&out).await?;
        let t = table.clone();
        let a = artifact.clone();
        let span = tracing::info_span!("predict", model = %m, rows = t.num_rows());
        let (pred, matrix) = tokio::task::spawn_blocking(move || span.in_scope(|| a.predict(&t)))
            .await
            .map_err(|e| Error::Infra(format!("scoring panicked: {e}")))?
            .map_err(|e| Error::Data(format!("model `{m}` cannot score `{dataset}`: {e}")))?;
        let run = stage
            .1
            .reused_from
            .clone()
            .unwrap_or_else(|| ctx.shared.run_id.clone());
        let version = artifact_version(&run, &out.sha256);
        let mean = pred.iter().sum::<f64>() / pred.len().max(1) as f64;
        let mut s = serde_json::json!({
            "rows": pred.len(),
            "mean_prediction": mean,
            "version": version,
            "unseen_categories": matrix.unseen,
            "imputed_values": matrix.imputed,
        });
        let positive_rate = (artifact.task == crate::config::Task::Binary).then(|| {
            pred.iter().filter(|p| **p >= artifact.threshold).count() as f64
                / pred.len().max(1) as f64
        });
        if let Some(r) = positive_rate {
            s["positive_rate"] = serde_json::json!(r);
        }
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
        summary.insert(m.clone(), s);
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
    Ok(StageDone {
        summary: serde_json::json!({ "dataset": dataset, "rows": table.num_rows(), "models": summary }),
        ..Default::default()
    })
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
