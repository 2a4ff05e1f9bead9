//! `prepare`: fixes the train/holdout split of the validated rows. A row's side depends only on
//! its key (the first four bytes of SHA-256 of the key, big-endian, mod 100), so a customer never
//! changes side between runs, whatever else changes in the data. `validate` computes the bucket
//! from the raw key (the `_bucket` column of the clean rows) before it pseudonymises personal data,
//! so the split is the Python peer's whatever the pseudonym key. Writes `prepare.json`: the
//! clean data it refers to, the rule, and the row counts. Each model fits its own feature
//! transform on the training side (see the `train` stage).

use std::sync::Arc;

use arrow::array::{Array, AsArray, UInt8Array};
use arrow::datatypes::{DataType, Field, Schema, UInt8Type};
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StageDone;
use crate::engine::context::StageCtx;
use crate::engine::manifest::OutputRecord;
use crate::error::{Error, Result};

/// The recipe `prepare.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipe {
    pub dataset: String,
    /// The clean rows (the validate stage's output) the models train on.
    pub source: OutputRecord,
    pub key: Vec<String>,
    pub holdout: f64,
    pub rule: String,
    pub rows: u64,
    pub train_rows: u64,
    pub holdout_rows: u64,
}

impl Recipe {
    /// Bucket below this: training side.
    pub fn cut(&self) -> u8 {
        ((1.0 - self.holdout) * 100.0).round() as u8
    }
}

/// The column of the clean rows holding each row's split bucket.
pub const BUCKET: &str = "_bucket";

/// `batch` with a `_bucket` column: the buckets of the rows of `raw` (the same rows, with the key
/// in clear).
pub fn with_buckets(batch: &RecordBatch, raw: &RecordBatch, key: &[String]) -> Result<RecordBatch> {
    let b = buckets(raw, key)?;
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(BUCKET, DataType::UInt8, false));
    let mut cols = batch.columns().to_vec();
    cols.push(Arc::new(UInt8Array::from(b)));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
        .map_err(|e| Error::Infra(format!("adding split buckets: {e}")))
}

/// The split buckets of the clean rows (their `_bucket` column).
pub fn split_buckets(clean: &RecordBatch, dataset: &str) -> Result<Vec<u8>> {
    let a = clean.column_by_name(BUCKET).ok_or_else(|| {
        Error::Data(format!(
            "the clean rows of `{dataset}` have no `{BUCKET}` column (written by an older mlpipe); re-run its validate stage with --force"
        ))
    })?;
    a.as_primitive_opt::<UInt8Type>()
        .map(|p| p.values().to_vec())
        .ok_or_else(|| Error::Data(format!("`{BUCKET}` of `{dataset}` is not uint8")))
}

/// Each row's bucket in 0..100, from its key.
pub fn buckets(batch: &RecordBatch, key: &[String]) -> Result<Vec<u8>> {
    let cols: Vec<&dyn Array> = key
        .iter()
        .map(|k| {
            batch.column_by_name(k).map(|a| a.as_ref()).ok_or_else(|| {
                Error::Data(format!("key column `{k}` is missing from the clean data"))
            })
        })
        .collect::<Result<_>>()?;
    // Each key column as text (a text column as it is); a null is the empty string.
    let text: Vec<arrow::array::ArrayRef> = cols
        .iter()
        .map(|a| {
            arrow::compute::cast(
                &arrow::array::make_array(a.to_data()),
                &arrow::datatypes::DataType::Utf8,
            )
            .map_err(|e| Error::Data(format!("key column cannot be read as text: {e}")))
        })
        .collect::<Result<_>>()?;
    let text: Vec<&arrow::array::StringArray> = text.iter().map(|a| a.as_string()).collect();
    Ok((0..batch.num_rows())
        .into_par_iter()
        .map(|r| {
            let mut h = Sha256::new();
            for (i, c) in text.iter().enumerate() {
                if i > 0 {
                    h.update([0x1f]);
                }
                if c.is_valid(r) {
                    h.update(c.value(r).as_bytes());
                }
            }
            let d = h.finalize();
            (u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % 100) as u8
        })
        .collect())
}

pub async fn run(ctx: &StageCtx, dataset: &str, holdout: f64) -> Result<StageDone> {
    let name = format!("{dataset}.clean");
    let source = ctx.upstream_output(&name, "validate")?;
    let table = ctx.read_table(&source).await?;
    let key = ctx.pipeline().datasets[dataset].primary_key.clone();
    let b = split_buckets(&table, dataset)?;
    let mut recipe = Recipe {
        dataset: dataset.to_string(),
        source,
        key,
        holdout,
        rule: "bucket = first 4 bytes of SHA-256(raw key) (big-endian) mod 100, the clean rows' `_bucket`; training side when bucket < cut".into(),
        rows: table.num_rows() as u64,
        train_rows: 0,
        holdout_rows: 0,
    };
    let cut = recipe.cut();
    recipe.train_rows = b.iter().filter(|&&x| x < cut).count() as u64;
    recipe.holdout_rows = recipe.rows - recipe.train_rows;
    if recipe.train_rows == 0 || recipe.holdout_rows == 0 {
        return Err(Error::Data(format!(
            "dataset `{dataset}` has {} clean rows, too few to split into training and holdout sides",
            recipe.rows
        )));
    }
    ctx.write_json("prepare", "prepare.json", &recipe).await?;
    Ok(StageDone {
        summary: serde_json::json!({ "rows": recipe.rows, "train_rows": recipe.train_rows, "holdout_rows": recipe.holdout_rows }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, StringArray};
    use std::sync::Arc;

    // Python: int(hashlib.sha256(k.encode()).hexdigest()[:8], 16) % 100 — the peer's split.
    #[test]
    fn buckets_match_the_python_peer() {
        let keys = ["C0000000001", "alice", "customer-42"];
        let b = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(StringArray::from(keys.to_vec())) as ArrayRef,
        )])
        .unwrap();
        assert_eq!(buckets(&b, &["id".to_string()]).unwrap(), vec![53, 1, 55]);
    }

    // Python: the same of "a\x1f7", "\x1f7" and "": a compound key's parts are joined by
    // 0x1f, numbers are their text, and a null is the empty string.
    #[test]
    fn compound_keys_and_nulls_bucket_as_their_joined_text() {
        let b = RecordBatch::try_from_iter(vec![
            (
                "a",
                Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
            ),
            (
                "n",
                Arc::new(arrow::array::Int64Array::from(vec![7, 7])) as ArrayRef,
            ),
        ])
        .unwrap();
        let key = ["a".to_string(), "n".to_string()];
        assert_eq!(buckets(&b, &key).unwrap(), vec![4, 38]);
        let null = RecordBatch::try_from_iter(vec![(
            "a",
            Arc::new(StringArray::from(vec![None::<&str>])) as ArrayRef,
        )])
        .unwrap();
        assert_eq!(buckets(&null, &key[..1]).unwrap(), vec![10]);
    }
}
