//! The train/holdout split by key. A row's side depends only on its key: the first four bytes of
//! SHA-256 of the key (big-endian) mod 100 give its bucket, and buckets below the cut train. A
//! customer never changes side between runs, whatever else changes in the data, and the split is
//! the Python peer's (`int(sha256(key).hexdigest()[:8], 16) % 100`).
//!
//! `validate` computes each clean row's bucket from the raw key, before personal data is
//! pseudonymised, and stores it as the [`BUCKET`] column; `prepare` and `train` read that
//! column and never see a raw key.

use std::sync::Arc;

use arrow::array::{Array, AsArray, UInt8Array};
use arrow::datatypes::{DataType, Field, Schema, UInt8Type};
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The column of the clean rows holding each row's split bucket.
pub const BUCKET: &str = "_bucket";

/// The rule, as `prepare.json` states it.
pub const RULE: &str = "bucket = first 4 bytes of SHA-256(raw key) (big-endian) mod 100, the clean rows' `_bucket`; training side when bucket < cut";

/// The bucket below which a row trains, for a holdout share.
pub fn cut(holdout: f64) -> u8 {
    ((1.0 - holdout) * 100.0).round() as u8
}

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

/// The row numbers of each side of the split: (training rows, holdout rows), in row order.
pub fn sides(buckets: &[u8], cut: u8) -> (Vec<u32>, Vec<u32>) {
    (0..buckets.len() as u32).partition(|&r| buckets[r as usize] < cut)
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
            arrow::compute::cast(&arrow::array::make_array(a.to_data()), &DataType::Utf8)
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, StringArray};

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

    #[test]
    fn sides_split_rows_by_bucket_in_row_order() {
        let (train, hold) = sides(&[0, 90, 79, 80, 5], cut(0.2));
        assert_eq!(train, [0, 2, 4]);
        assert_eq!(hold, [1, 3]);
    }
}
