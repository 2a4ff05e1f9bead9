//! Models: the gradient-boosted trees of [`gbdt`] (the default algorithm), the [`linear`] and
//! [`forest`] baselines, the fitted feature [`transform`] each model carries, and the
//! [`Artifact`] written by a train stage and loaded back for scoring.

pub mod forest;
pub mod gbdt;
pub mod linear;
pub mod transform;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::config::Task;

/// A model's algorithm with its parameters: `algorithm` and `[models.*.params]` in the pipeline
/// file, the same two keys in `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "snake_case")]
pub enum Algorithm {
    /// Histogram gradient-boosted trees (the default).
    Gbdt { params: gbdt::Params },
    /// Least-squares linear regression (linfa), for regression models.
    Linear { params: linear::LinearParams },
    /// L2-regularised logistic regression (linfa), for binary models.
    Logistic { params: linear::LogisticParams },
    /// Random forest (smartcore), for either task.
    RandomForest { params: forest::ForestParams },
}

impl Algorithm {
    /// The names accepted as `algorithm` in the pipeline file.
    pub const NAMES: [&'static str; 4] = ["gbdt", "linear", "logistic", "random_forest"];

    /// The algorithm called `name`, with the parameters in `params` (a JSON or TOML table
    /// turned into a `serde_json::Value`).
    pub fn from_parts(
        name: &str,
        params: serde_json::Value,
    ) -> Result<Algorithm, serde_json::Error> {
        serde_json::from_value(serde_json::json!({ "algorithm": name, "params": params }))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Gbdt { .. } => "gbdt",
            Algorithm::Linear { .. } => "linear",
            Algorithm::Logistic { .. } => "logistic",
            Algorithm::RandomForest { .. } => "random_forest",
        }
    }

    /// The parameters as JSON (for the registry).
    pub fn params_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v.get_mut("params").map(|p| p.take()).unwrap_or_default()
    }

    /// Every problem with the parameters (`params: ...`) or with using this algorithm for
    /// `task` (`algorithm: ...`), relative to the model's section.
    pub fn check(&self, task: Task) -> Vec<String> {
        let params = match (self, task) {
            (Algorithm::Gbdt { params }, _) => params.check(),
            (Algorithm::Linear { .. }, Task::Regression) => Vec::new(),
            (Algorithm::Logistic { params }, Task::Binary) => params.check(),
            (Algorithm::RandomForest { params }, _) => params.check(),
            (Algorithm::Linear { .. }, Task::Binary) => {
                return vec![
                    "algorithm: `linear` is for regression models; use `logistic` for a binary one"
                        .into(),
                ]
            }
            (Algorithm::Logistic { .. }, Task::Regression) => {
                return vec![
                    "algorithm: `logistic` is for binary models; use `linear` for a regression one"
                        .into(),
                ]
            }
        };
        params.into_iter().map(|e| format!("params: {e}")).collect()
    }

    /// Fits on the training columns `x` (through `transform`) and target `y` (0/1 for binary).
    /// [`Algorithm::fit`] on features it owns, so that the booster can free them once it has
    /// bucketed them.
    pub fn fit_owned(
        &self,
        x: Vec<Vec<f64>>,
        y: &[f64],
        task: Task,
        transform: &transform::Transform,
    ) -> Result<Fitted, String> {
        match self {
            Algorithm::Gbdt { params } => {
                let objective = match task {
                    Task::Regression => gbdt::Objective::SquaredError,
                    Task::Binary => gbdt::Objective::Logistic,
                };
                Ok(Fitted::Booster {
                    booster: gbdt::train_owned(x, y, objective, params),
                })
            }
            _ => {
                let views: Vec<&[f64]> = x.iter().map(|c| c.as_slice()).collect();
                self.fit(&views, y, task, transform)
            }
        }
    }

    pub fn fit(
        &self,
        x: &[&[f64]],
        y: &[f64],
        task: Task,
        transform: &transform::Transform,
    ) -> Result<Fitted, String> {
        Ok(match self {
            Algorithm::Gbdt { params } => {
                let objective = match task {
                    Task::Regression => gbdt::Objective::SquaredError,
                    Task::Binary => gbdt::Objective::Logistic,
                };
                Fitted::Booster {
                    booster: gbdt::train(x, y, objective, params),
                }
            }
            Algorithm::Linear { .. } => Fitted::Linear {
                linear: linear::Linear::fit_regression(x, y, transform)?,
            },
            Algorithm::Logistic { params } => Fitted::Linear {
                linear: linear::Linear::fit_logistic(x, y, transform, params)?,
            },
            Algorithm::RandomForest { params } => Fitted::Forest {
                forest: forest::Forest::fit(x, y, task == Task::Binary, params)?,
            },
        })
    }
}

impl Default for Algorithm {
    fn default() -> Self {
        Algorithm::Gbdt {
            params: Default::default(),
        }
    }
}

/// A fitted model of any algorithm. In `model.json` it is one key beside the others:
/// `booster`, `linear` or `forest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Fitted {
    Booster { booster: gbdt::Booster },
    Linear { linear: linear::Linear },
    Forest { forest: forest::Forest },
}

impl Fitted {
    /// Predictions for column-major features (probabilities for binary models).
    pub fn predict(&self, x: &[&[f64]]) -> Result<Vec<f64>, String> {
        match self {
            Fitted::Booster { booster } => Ok(booster.predict(x)),
            Fitted::Linear { linear } => Ok(linear.predict(x)),
            Fitted::Forest { forest } => forest.predict(x),
        }
    }

    /// A per-feature importance, where the algorithm has one: total split gain for boosted
    /// trees, summed absolute standardised coefficients for linear models.
    pub fn importance(&self) -> Option<Vec<f64>> {
        match self {
            Fitted::Booster { booster } => Some(booster.gain_importance.clone()),
            Fitted::Linear { linear } => Some(linear.importance()),
            Fitted::Forest { .. } => None,
        }
    }
}

/// Everything needed to score new rows, as written to `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub format_version: u32,
    pub name: String,
    pub task: Task,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive_label: Option<String>,
    /// `algorithm` and `params`.
    #[serde(flatten)]
    pub algorithm: Algorithm,
    /// Decision threshold (binary models).
    pub threshold: f64,
    pub transform: transform::Transform,
    /// `booster`, `linear` or `forest`.
    #[serde(flatten)]
    pub fitted: Fitted,
}

impl Artifact {
    /// Predictions for every row of `batch` (probabilities for binary models), with what the
    /// transform had to impute or did not recognise.
    pub fn predict(&self, batch: &RecordBatch) -> Result<(Vec<f64>, transform::Matrix), String> {
        let m = self.transform.apply(batch)?;
        let p = self.fitted.predict(&m.views())?;
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
