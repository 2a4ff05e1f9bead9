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
    pub fills: Fills,
}

impl Matrix {
    pub fn views(&self) -> Vec<&[f64]> {
        self.columns.iter().map(|c| c.as_slice()).collect()
    }
}

/// Per feature, what encoding filled in over many rows: values that were missing (imputed) and
/// categories never seen in training. Features with none are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fills {
    pub imputed: BTreeMap<String, u64>,
    pub unseen: BTreeMap<String, u64>,
}

impl Fills {
    pub fn add(&mut self, feature: &str, f: Filled) {
        for (map, n) in [(&mut self.imputed, f.imputed), (&mut self.unseen, f.unseen)] {
            if n > 0 {
                *map.entry(feature.to_string()).or_default() += n;
            }
        }
    }
}

/// The features of the rows `rows` of `batch` (every row when `None`), encoded one at a time as
/// a model reads them.
pub struct Encoded<'a> {
    pub transform: &'a Transform,
    pub batch: &'a RecordBatch,
    pub rows: Option<&'a [u32]>,
}

impl crate::model::Columns for Encoded<'_> {
    fn count(&self) -> usize {
        self.transform.features.len()
    }

    fn column<'a>(&'a self, f: usize, buf: &'a mut Vec<f64>) -> Result<&'a [f64], String> {
        self.transform.encode(f, self.batch, self.rows, buf)?;
        Ok(buf)
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array, String> {
    batch
        .column_by_name(name)
        .map(|a| a.as_ref())
        .ok_or_else(|| format!("feature column `{name}` is missing from the data"))
}

/// Rows converted to numbers at a time when a numeric column is not `Float64`: a chunk's
/// conversion is a small buffer the allocator reuses, where converting the whole column was a
/// fresh 80 MB at 10 M rows, for every feature of every model.
const CAST_CHUNK: usize = 1 << 16;

/// Calls `emit` with the value of each row of `rows` (every row when `None`; row numbers below
/// the column's length) of the numeric column `a`: `Some` when it is there and finite.
fn each_number(
    a: &dyn Array,
    rows: Option<&[u32]>,
    mut emit: impl FnMut(Option<f64>),
) -> Result<(), String> {
    let number = |f: &arrow::array::Float64Array, i: usize| {
        Some(f.value(i)).filter(|x| f.is_valid(i) && x.is_finite())
    };
    let cast = |a: &dyn Array| {
        arrow::compute::cast(a, &DataType::Float64)
            .map_err(|e| format!("cannot read a number: {e}"))
    };
    if a.data_type() == &DataType::Float64 || rows.is_some_and(|r| !r.is_sorted()) {
        // The whole column at once: it is already numbers, or the rows jump about.
        let whole = cast(a)?;
        let f = whole.as_primitive::<Float64Type>();
        match rows {
            None => (0..f.len()).for_each(|i| emit(number(f, i))),
            Some(r) => r.iter().for_each(|&r| emit(number(f, r as usize))),
        }
        return Ok(());
    }
    let mut next = 0usize;
    for start in (0..a.len()).step_by(CAST_CHUNK) {
        let end = (start + CAST_CHUNK).min(a.len());
        let wanted = match rows {
            None => None,
            Some(r) => {
                let stop = next + r[next..].partition_point(|&x| (x as usize) < end);
                let w = &r[next..stop];
                next = stop;
                if w.is_empty() {
                    continue;
                }
                Some(w)
            }
        };
        let chunk = cast(a.slice(start, end - start).as_ref())?;
        let f = chunk.as_primitive::<Float64Type>();
        match wanted {
            None => (0..end - start).for_each(|i| emit(number(f, i))),
            Some(w) => w.iter().for_each(|&r| emit(number(f, r as usize - start))),
        }
    }
    Ok(())
}

/// What encoding filled in: values that were missing (imputed) and categories never seen in
/// training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filled {
    pub imputed: u64,
    pub unseen: u64,
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
                    let mut vals: Vec<f64> = Vec::with_capacity(rows.len());
                    each_number(a, Some(rows), |v| vals.extend(v))?;
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
        let mut fills = Fills::default();
        for (k, f) in self.features.iter().enumerate() {
            let mut col = Vec::new();
            fills.add(&f.name, self.encode(k, batch, None, &mut col)?);
            columns.push(col);
        }
        Ok(Matrix { columns, fills })
    }

    /// Feature `k` of the rows `rows` of `batch` (every row when `None`; increasing row
    /// numbers are the fast case), written to `out` in place of what it held. Returns what had to be
    /// filled in. Reading the rows straight from the Arrow column, with `out` reused, keeps
    /// full-size temporaries out of training and scoring.
    pub fn encode(
        &self,
        k: usize,
        batch: &RecordBatch,
        rows: Option<&[u32]>,
        out: &mut Vec<f64>,
    ) -> Result<Filled, String> {
        let f = &self.features[k];
        let a = column(batch, &f.name)?;
        if let Some(&last) = rows.and_then(|r| r.iter().max()) {
            if last as usize >= a.len() {
                return Err(format!(
                    "row {last} is past the end of the data ({} rows)",
                    a.len()
                ));
            }
        }
        let count = rows.map_or(a.len(), |r| r.len());
        let row = |i: usize| rows.map_or(i, |r| r[i] as usize);
        out.clear();
        out.reserve(count);
        let mut filled = Filled::default();
        match &f.encoding {
            Encoding::Numeric { impute } => {
                each_number(a, rows, |v| {
                    out.push(v.unwrap_or_else(|| {
                        filled.imputed += 1;
                        *impute
                    }))
                })?;
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
                out.extend((0..count).map(|i| {
                    let r = row(i);
                    if b.is_valid(r) {
                        f64::from(u8::from(b.value(r)))
                    } else {
                        filled.imputed += 1;
                        *impute
                    }
                }));
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
                let (data, offsets) = (s.value_data(), s.value_offsets());
                out.extend((0..count).map(|i| {
                    let r = row(i);
                    if s.is_null(r) {
                        filled.imputed += 1;
                        return other;
                    }
                    let (start, end) = (offsets[r] as usize, offsets[r + 1] as usize);
                    match codes.find(data, start, end) {
                        Some(k) => k as f64,
                        None => {
                            filled.unseen += 1;
                            other
                        }
                    }
                }));
            }
        }
        Ok(filled)
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

/// Up to this many short categories are looked up by comparing every one.
const LINEAR_CODES: usize = 16;

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
            if self.short.len() <= LINEAR_CODES {
                // Every key compared, none branched on: which category a row holds is random, and
                // a binary search's mispredicted branches were a third of the encoding's time.
                let mut found = usize::MAX;
                for (c, i) in &self.short {
                    found = if *c == key { *i } else { found };
                }
                return (found != usize::MAX).then_some(found);
            }
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
        assert_eq!(m.fills.unseen["c"], 1);
        assert_eq!(m.fills.imputed["x"], 1);
        let back: Transform = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }

    /// Values of every length around the 15-byte limit of the short keys, a prefix of another
    /// value, a NUL byte, and values at the very end of the string buffer all find their own
    /// code and nothing else, whether the short categories are few (compared one by one) or
    /// many (searched).
    #[test]
    fn categories_find_their_codes_whatever_their_length() {
        for extra in [0, LINEAR_CODES] {
            find_codes(extra);
        }
    }

    fn find_codes(extra: usize) {
        let mut cats: Vec<String> = [
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
        cats.extend((0..extra).map(|i| format!("c{i:02}")));
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
        assert!(
            (sorted.iter().filter(|c| c.len() <= 15).count() > LINEAR_CODES) == (extra > 0),
            "both lookups are tested"
        );
        assert_eq!(m.fills.unseen["c"], 3);
        assert_eq!(m.fills.imputed["c"], 1);
    }

    /// Reading some rows of a column gives those rows of the whole column, whatever the
    /// column's type, across the chunks in which non-`Float64` numbers are converted.
    #[test]
    fn encoding_some_rows_is_those_rows_of_every_row() {
        use arrow::array::{Float32Array, Int64Array};
        let n = 3 * CAST_CHUNK + 123;
        let ints: Vec<Option<i64>> = (0..n as i64).map(|i| (i % 7 != 0).then_some(i)).collect();
        let floats: Vec<Option<f32>> = (0..n)
            .map(|i| match i % 11 {
                0 => None,
                1 => Some(f32::NAN),
                2 => Some(f32::INFINITY),
                _ => Some(i as f32 / 2.0),
            })
            .collect();
        let b = RecordBatch::try_from_iter(vec![
            ("i", Arc::new(Int64Array::from(ints)) as ArrayRef),
            ("f", Arc::new(Float32Array::from(floats)) as ArrayRef),
        ])
        .unwrap();
        let names = vec!["i".to_string(), "f".to_string()];
        let every: Vec<u32> = (0..n as u32).collect();
        let t = Transform::fit(&b, &names, &every).unwrap();
        // The median of the values present: 0..n without multiples of 7, and i/2 for the rows
        // that are not 0, 1, 2 mod 11.
        let mut want: Vec<f64> = (0..n).filter(|i| i % 7 != 0).map(|i| i as f64).collect();
        let median = crate::stats::quantile(&mut want, 0.5).unwrap();
        assert_eq!(t.features[0].encoding, Encoding::Numeric { impute: median });
        let m = t.apply(&b).unwrap();
        assert_eq!(m.fills.imputed["i"], n.div_ceil(7) as u64);
        assert_eq!(
            m.fills.imputed["f"],
            (0..n).filter(|i| i % 11 < 3).count() as u64
        );
        // Rows clustered in one chunk, none in the next, and the last row.
        let mut rows: Vec<u32> = (0..n as u32)
            .filter(|r| (*r as usize) < CAST_CHUNK || (*r as usize) >= 2 * CAST_CHUNK && r % 5 == 0)
            .collect();
        rows.push(n as u32 - 1);
        for k in 0..2 {
            let mut out = vec![99.0; 3];
            let filled = t.encode(k, &b, Some(&rows), &mut out).unwrap();
            let want: Vec<f64> = rows.iter().map(|&r| m.columns[k][r as usize]).collect();
            assert_eq!(out, want);
            let missing = |r: u32| if k == 0 { r % 7 == 0 } else { r % 11 < 3 };
            let imputed = rows.iter().filter(|&&r| missing(r)).count() as u64;
            assert_eq!(filled, Filled { imputed, unseen: 0 });
            // Rows in any order: the whole column is converted once.
            let backwards: Vec<u32> = rows.iter().rev().copied().collect();
            t.encode(k, &b, Some(&backwards), &mut out).unwrap();
            assert!(out.iter().rev().eq(&want));
        }
        let past = [n as u32];
        let err = t.encode(0, &b, Some(&past), &mut Vec::new()).unwrap_err();
        assert!(err.contains("past the end"), "{err}");
    }
}
