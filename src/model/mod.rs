//! Models: the gradient-boosted trees of [`gbdt`] (the default algorithm), the fitted feature
//! [`transform`] each model carries, and the [`Artifact`] written by a train stage and loaded
//! back for scoring.

pub mod gbdt;
pub mod transform;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::config::Task;

/// Everything needed to score new rows, as written to `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub format_version: u32,
    pub name: String,
    pub task: Task,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive_label: Option<String>,
    pub algorithm: String,
    pub params: gbdt::Params,
    /// Decision threshold (binary models).
    pub threshold: f64,
    pub transform: transform::Transform,
    pub booster: gbdt::Booster,
}

impl Artifact {
    /// Predictions for every row of `batch` (probabilities for binary models), with what the
    /// transform had to impute or did not recognise.
    pub fn predict(&self, batch: &RecordBatch) -> Result<(Vec<f64>, transform::Matrix), String> {
        let m = self.transform.apply(batch)?;
        let p = self.booster.predict(&m.views());
        Ok((p, m))
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
