//! The fitted feature transform a model carries: how each feature column becomes a number.
//! Numbers keep their value, with nulls (and NaN/∞) replaced by the training median; text
//! becomes the index of its category in the training data's sorted categories, with nulls and
//! categories never seen in training sharing one extra code; bools become 0/1.

use std::collections::{BTreeMap, HashSet};

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
                    // Distinct values hashed, then sorted: sorting every row's value was most
                    // of the fit.
                    let cats: HashSet<&str, foldhash::fast::FixedState> = rows
                        .iter()
                        .filter_map(|&r| s.is_valid(r as usize).then(|| s.value(r as usize)))
                        .collect();
                    let mut categories: Vec<String> = cats.into_iter().map(String::from).collect();
                    categories.sort_unstable();
                    Encoding::Categorical { categories }
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
                let codes = Codes::new(categories);
                let other = categories.len() as f64;
                let (mut n_null, mut n_unseen) = (0u64, 0u64);
                let (data, offsets) = (s.value_data(), s.value_offsets());
                let col = (0..s.len())
                    .map(|i| {
                        if s.is_null(i) {
                            n_null += 1;
                            return other;
                        }
                        let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
                        match codes.find(data, start, end) {
                            Some(k) => k as f64,
                            None => {
                                n_unseen += 1;
                                other
                            }
                        }
                    })
                    .collect();
                (col, n_null, n_unseen)
            }
        })
    }
}

/// The code of a category value, found without comparing strings for values of at most 15
/// bytes: such a value and its length make one 128-bit number, looked up among the categories'
/// numbers. Longer values are looked up by their bytes. (A binary search of the sorted strings,
/// with a byte comparison call per step, was most of the encoding's time.)
struct Codes<'a> {
    short: Vec<(u128, usize)>,
    long: Vec<(&'a [u8], usize)>,
}

/// Bytes of a value of at most 15 bytes, with its length in the top byte.
fn short_key(bytes: &[u8]) -> Option<u128> {
    (bytes.len() <= 15).then(|| {
        let mut k = [0u8; 16];
        k[..bytes.len()].copy_from_slice(bytes);
        k[15] = bytes.len() as u8;
        u128::from_le_bytes(k)
    })
}

impl<'a> Codes<'a> {
    fn new(categories: &'a [String]) -> Codes<'a> {
        let (mut short, mut long) = (Vec::new(), Vec::new());
        for (i, c) in categories.iter().enumerate() {
            match short_key(c.as_bytes()) {
                Some(k) => short.push((k, i)),
                None => long.push((c.as_bytes(), i)),
            }
        }
        short.sort_unstable();
        long.sort_unstable();
        Codes { short, long }
    }

    /// The code of the value `data[start..end]`.
    #[inline]
    fn find(&self, data: &[u8], start: usize, end: usize) -> Option<usize> {
        let len = end - start;
        if len <= 15 {
            let key = match data.get(start..start + 16) {
                // Sixteen bytes read at once, the ones past the value masked off.
                Some(w) => {
                    let w = u128::from_le_bytes(w.try_into().expect("16 bytes"));
                    (w & ((1u128 << (8 * len)) - 1)) | (len as u128) << 120
                }
                None => short_key(&data[start..end]).expect("at most 15 bytes"),
            };
            let k = self.short.partition_point(|(c, _)| *c < key);
            self.short
                .get(k)
                .filter(|(c, _)| *c == key)
                .map(|(_, i)| *i)
        } else {
            let v = &data[start..end];
            self.long
                .binary_search_by(|(c, _)| (*c).cmp(v))
                .ok()
                .map(|k| self.long[k].1)
        }
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

    /// Values of every length around the 15-byte limit of the short keys, a prefix of another
    /// value, a NUL byte, and values at the very end of the string buffer all find their own
    /// code and nothing else.
    #[test]
    fn categories_find_their_codes_whatever_their_length() {
        let cats: Vec<String> = [
            "",
            "a",
            "ab",
            "a\0",
            "abcdefghijklmno",
            "abcdefghijklmnop",
            "abcdefghijklmn",
            "longer than sixteen bytes",
            "longer than sixteen bytez",
            "x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut sorted = cats.clone();
        sorted.sort();
        let t = Transform {
            features: vec![Feature {
                name: "c".into(),
                encoding: Encoding::Categorical {
                    categories: sorted.clone(),
                },
            }],
        };
        let mut values: Vec<Option<&str>> = cats.iter().map(|c| Some(c.as_str())).collect();
        values.extend([
            Some("abcdefghijklm"),
            Some("b"),
            None,
            Some("longer than sixteen"),
        ]);
        // The last values end the buffer, so their 16-byte reads fall back to copying.
        values.extend(cats.iter().rev().map(|c| Some(c.as_str())));
        let b = RecordBatch::try_from_iter(vec![(
            "c",
            Arc::new(StringArray::from(values.clone())) as ArrayRef,
        )])
        .unwrap();
        let m = t.apply(&b).unwrap();
        let other = sorted.len() as f64;
        for (v, got) in values.iter().zip(&m.columns[0]) {
            let want = v
                .and_then(|v| sorted.iter().position(|c| c == v))
                .map_or(other, |k| k as f64);
            assert_eq!(*got, want, "{v:?}");
        }
        assert_eq!(m.unseen["c"], 3);
        assert_eq!(m.imputed["c"], 1);
    }
}
