//! The fitted feature transform a model carries: how each feature column becomes a number.
//! Numbers keep their value, with nulls (and NaN/∞) replaced by the training median; text
//! becomes the index of its category in the training data's sorted categories, with nulls and
//! categories never seen in training sharing one extra code; bools become 0/1.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

/// How one feature is encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Encoding {
    Numeric { impute: f64 },
    Categorical { categories: Vec<String> },
    Bool { impute: f64 },
}

/// One feature's encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    pub encoding: Encoding,
}

/// The fitted transform of a model's features, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transform {
    pub features: Vec<Feature>,
}

/// Features as columns of numbers (`x[feature][row]`), plus what the transform had to fill in.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub columns: Vec<Vec<f64>>,
    /// Per feature: values that were missing (imputed) and categories never seen in training.
    pub imputed: BTreeMap<String, u64>,
    pub unseen: BTreeMap<String, u64>,
}

impl Matrix {
    pub fn views(&self) -> Vec<&[f64]> {
        self.columns.iter().map(|c| c.as_slice()).collect()
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array, String> {
    batch
        .column_by_name(name)
        .map(|a| a.as_ref())
        .ok_or_else(|| format!("feature column `{name}` is missing from the data"))
}

fn as_f64(a: &dyn Array) -> Result<Vec<Option<f64>>, String> {
    let f = arrow::compute::cast(&arrow::array::make_array(a.to_data()), &DataType::Float64)
        .map_err(|e| format!("cannot read a number: {e}"))?;
    Ok(f.as_primitive::<Float64Type>()
        .iter()
        .map(|v| v.filter(|x| x.is_finite()))
        .collect())
}

impl Transform {
    /// Fits the transform on the rows `rows` of `batch`.
    pub fn fit(
        batch: &RecordBatch,
        features: &[String],
        rows: &[u32],
    ) -> Result<Transform, String> {
        let mut out = Vec::with_capacity(features.len());
        for name in features {
            let a = column(batch, name)?;
            let encoding = match a.data_type() {
                DataType::Utf8 => {
                    let s = a.as_string::<i32>();
                    let cats: BTreeSet<&str> = rows
                        .iter()
                        .filter_map(|&r| s.is_valid(r as usize).then(|| s.value(r as usize)))
                        .collect();
                    Encoding::Categorical {
                        categories: cats.into_iter().map(String::from).collect(),
                    }
                }
                DataType::Boolean => {
                    let b = a.as_boolean();
                    let trues = rows
                        .iter()
                        .filter(|&&r| b.is_valid(r as usize) && b.value(r as usize))
                        .count();
                    let valid = rows.iter().filter(|&&r| b.is_valid(r as usize)).count();
                    Encoding::Bool {
                        impute: if trues * 2 > valid { 1.0 } else { 0.0 },
                    }
                }
                t if t.is_numeric() => {
                    let v = as_f64(a)?;
                    let mut vals: Vec<f64> = rows.iter().filter_map(|&r| v[r as usize]).collect();
                    let impute = crate::stats::quantile(&mut vals, 0.5).unwrap_or(0.0);
                    Encoding::Numeric { impute }
                }
                t => {
                    return Err(format!(
                        "feature `{name}` has type {t}, which cannot be a model feature"
                    ))
                }
            };
            out.push(Feature {
                name: name.clone(),
                encoding,
            });
        }
        Ok(Transform { features: out })
    }

    /// Encodes every row of `batch`.
    pub fn apply(&self, batch: &RecordBatch) -> Result<Matrix, String> {
        let mut columns = Vec::with_capacity(self.features.len());
        let mut imputed = BTreeMap::new();
        let mut unseen = BTreeMap::new();
        for f in &self.features {
            let (col, n_imputed, n_unseen) = Self::encode(f, batch)?;
            if n_imputed > 0 {
                imputed.insert(f.name.clone(), n_imputed);
            }
            if n_unseen > 0 {
                unseen.insert(f.name.clone(), n_unseen);
            }
            columns.push(col);
        }
        Ok(Matrix {
            columns,
            imputed,
            unseen,
        })
    }

    /// Encodes the rows `a` and the rows `b` of `batch` (training and holdout), one feature at a
    /// time, so that no full-size matrix is ever in memory.
    pub fn apply_split(
        &self,
        batch: &RecordBatch,
        a: &[u32],
        b: &[u32],
    ) -> Result<(Vec<Vec<f64>>, Vec<Vec<f64>>), String> {
        let (mut xa, mut xb) = (Vec::new(), Vec::new());
        for f in &self.features {
            let col = Self::encode(f, batch)?.0;
            xa.push(a.iter().map(|&r| col[r as usize]).collect());
            xb.push(b.iter().map(|&r| col[r as usize]).collect());
        }
        Ok((xa, xb))
    }

    /// One feature of every row of `batch`, with the number of imputed values and of categories
    /// never seen in training.
    fn encode(f: &Feature, batch: &RecordBatch) -> Result<(Vec<f64>, u64, u64), String> {
        let a = column(batch, &f.name)?;
        Ok(match &f.encoding {
            Encoding::Numeric { impute } => {
                let f = arrow::compute::cast(
                    &arrow::array::make_array(a.to_data()),
                    &DataType::Float64,
                )
                .map_err(|e| format!("cannot read a number: {e}"))?;
                let mut n = 0u64;
                let col = f
                    .as_primitive::<Float64Type>()
                    .iter()
                    .map(|x| match x.filter(|x| x.is_finite()) {
                        Some(x) => x,
                        None => {
                            n += 1;
                            *impute
                        }
                    })
                    .collect::<Vec<f64>>();
                (col, n, 0)
            }
            Encoding::Bool { impute } => {
                if a.data_type() != &DataType::Boolean {
                    return Err(format!(
                        "feature `{}` was a bool in training, now {}",
                        f.name,
                        a.data_type()
                    ));
                }
                let b = a.as_boolean();
                let n = b.null_count() as u64;
                (
                    (0..b.len())
                        .map(|i| {
                            if b.is_valid(i) {
                                f64::from(u8::from(b.value(i)))
                            } else {
                                *impute
                            }
                        })
                        .collect(),
                    n,
                    0,
                )
            }
            Encoding::Categorical { categories } => {
                if a.data_type() != &DataType::Utf8 {
                    return Err(format!(
                        "feature `{}` was text in training, now {}",
                        f.name,
                        a.data_type()
                    ));
                }
                let s = a.as_string::<i32>();
                // Categories sorted with their codes: a binary search of a handful of short
                // strings is cheaper than hashing every row's value.
                let mut index: Vec<(&[u8], usize)> = categories
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.as_bytes(), i))
                    .collect();
                index.sort_unstable();
                let other = categories.len() as f64;
                let (mut n_null, mut n_unseen) = (0u64, 0u64);
                let col = s
                    .iter()
                    .map(|v| match v {
                        None => {
                            n_null += 1;
                            other
                        }
                        Some(t) => match index.binary_search_by(|(c, _)| (*c).cmp(t.as_bytes())) {
                            Ok(k) => index[k].1 as f64,
                            Err(_) => {
                                n_unseen += 1;
                                other
                            }
                        },
                    })
                    .collect();
                (col, n_null, n_unseen)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, BooleanArray, Float64Array, StringArray};
    use std::sync::Arc;

    fn batch(cat: Vec<Option<&str>>, num: Vec<Option<f64>>, b: Vec<Option<bool>>) -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            ("c", Arc::new(StringArray::from(cat)) as ArrayRef),
            ("x", Arc::new(Float64Array::from(num)) as ArrayRef),
            ("b", Arc::new(BooleanArray::from(b)) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn fit_on_training_rows_and_handle_unseen_values() {
        let train = batch(
            vec![Some("b"), Some("a"), None, Some("zz")],
            vec![Some(1.0), None, Some(3.0), Some(100.0)],
            vec![Some(true), Some(true), Some(false), None],
        );
        let names = vec!["c".to_string(), "x".to_string(), "b".to_string()];
        // Row 3 is held out: its category and value must not leak into the transform.
        let t = Transform::fit(&train, &names, &[0, 1, 2]).unwrap();
        assert_eq!(
            t.features[0].encoding,
            Encoding::Categorical {
                categories: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(t.features[1].encoding, Encoding::Numeric { impute: 2.0 });
        let m = t.apply(&train).unwrap();
        assert_eq!(m.columns[0], vec![1.0, 0.0, 2.0, 2.0]);
        assert_eq!(m.columns[1], vec![1.0, 2.0, 3.0, 100.0]);
        assert_eq!(m.columns[2], vec![1.0, 1.0, 0.0, 1.0]);
        assert_eq!(m.unseen["c"], 1);
        assert_eq!(m.imputed["x"], 1);
        let back: Transform = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }
}
