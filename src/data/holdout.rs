//! Holdout tables: what a train stage writes about the rows it held out (`holdout.parquet`:
//! `_row`, the row's number in the clean data; `target`; `prediction`), and reading them back
//! for the fairness, drift and register stages.

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, UInt64Type};
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

/// The clean rows a holdout table refers to (its `_row` column), in holdout order.
pub fn rows_of(clean: &RecordBatch, holdout: &RecordBatch) -> Result<RecordBatch> {
    let idx = arrow::array::UInt32Array::from(row_numbers(holdout)?);
    arrow::compute::take_record_batch(clean, &idx)
        .map_err(|e| Error::Infra(format!("holdout rows: {e}")))
}

/// The row numbers in the clean table of a holdout table's rows (its `_row` column).
pub fn row_numbers(holdout: &RecordBatch) -> Result<Vec<u32>> {
    let stale = |what: &str| {
        Error::Data(format!(
            "the holdout table {what}; re-run its train stage with --force"
        ))
    };
    holdout
        .column_by_name("_row")
        .and_then(|c| c.as_primitive_opt::<UInt64Type>())
        .ok_or_else(|| stale("has no `_row` column"))?
        .values()
        .iter()
        .map(|&r| u32::try_from(r).map_err(|_| stale(&format!("refers to row {r}"))))
        .collect()
}

/// A numeric column of a holdout table (`target` or `prediction`).
pub fn column(holdout: &RecordBatch, name: &str) -> Result<Vec<f64>> {
    holdout
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<Float64Type>())
        .map(|c| c.values().to_vec())
        .ok_or_else(|| {
            Error::Data(format!(
                "the holdout table has no numeric `{name}` column; re-run its train stage with --force"
            ))
        })
}
