//! The data-quality checks of SPEC §6 over a [`Table`] in its declared schema: null rates,
//! schema violations, outliers, duplicates and freshness, each with a `pass`/`warn`/`fail` status,
//! plus the split of rows into clean and rejected (with every reason a row was rejected).
//!
//! A row is rejected when it has a schema violation (a null in a non-nullable column, a value
//! that did not convert to the declared type, a value outside the declared domain, NaN or
//! infinity) or repeats an earlier row's key (or, with no key, an identical earlier row).
//! Outliers are counted and reported, not rejected: an extreme but valid value is data.

use std::collections::{BTreeMap, HashMap, HashSet};

use arrow::array::*;
use arrow::compute::SortOptions;
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{Check, ColumnType, Dataset, OnFail, Quality};
use crate::data::Table;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    /// At or below `warn` passes, above `fail` fails, in between warns.
    pub fn of(value: f64, check: &Check) -> Status {
        if value.is_nan() || value > check.fail {
            Status::Fail
        } else if value > check.warn {
            Status::Warn
        } else {
            Status::Pass
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's result as it appears in `quality.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    pub value: f64,
    pub warn: f64,
    pub fail: f64,
    pub status: Status,
    pub on_fail: String,
    /// The worst columns, worst first (column, value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worst: Vec<(String, f64)>,
    /// Check-specific figures (per-column counts, fences, the newest timestamp, ...).
    pub details: serde_json::Value,
}

impl CheckResult {
    fn new(
        value: f64,
        check: &Check,
        worst: Vec<(String, f64)>,
        details: serde_json::Value,
    ) -> Self {
        CheckResult {
            value,
            warn: check.warn,
            fail: check.fail,
            status: Status::of(value, check),
            on_fail: match check.on_fail {
                OnFail::Stop => "stop".into(),
                OnFail::Continue => "continue".into(),
            },
            worst,
            details,
        }
    }

    /// Whether this result stops the pipeline.
    pub fn stops(&self) -> bool {
        self.status == Status::Fail && self.on_fail == "stop"
    }
}

/// The quality report of one dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetReport {
    pub rows: u64,
    pub clean_rows: u64,
    pub rejected_rows: u64,
    pub status: Status,
    /// Check name → result, in the order of SPEC §6.
    pub checks: indexmap::IndexMap<String, CheckResult>,
}

/// The report plus the row split.
#[derive(Debug)]
pub struct Outcome {
    pub report: DatasetReport,
    /// Rejected row → its reasons (`null:COL`, `unparseable:COL`, `out_of_domain:COL`,
    /// `non_finite:COL`, `duplicate_key`, `duplicate_row`), in row order.
    pub rejected: BTreeMap<u32, Vec<String>>,
}

/// Runs every enabled check on `table`.
pub fn check(ds: &Dataset, table: &Table, q: &Quality, as_of: DateTime<Utc>) -> Outcome {
    let batch = &table.batch;
    let rows = batch.num_rows();
    let mut rejected: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let unparseable: HashMap<&str, &Vec<u32>> = table
        .unparseable
        .iter()
        .map(|(c, r)| (c.as_str(), r))
        .collect();

    // Schema violations and null counts.
    let mut null_counts: Vec<(String, u64)> = Vec::new();
    let mut violations_by_column: BTreeMap<String, u64> = BTreeMap::new();
    for (ci, col) in ds.columns.iter().enumerate() {
        let Some(array) = batch.column_by_name(&col.name) else {
            continue;
        };
        let bad: HashSet<u32> = unparseable
            .get(col.name.as_str())
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default();
        let mut flag = |row: u32, reason: String| {
            *violations_by_column.entry(col.name.clone()).or_default() += 1;
            rejected.entry(row).or_default().push(reason);
        };
        for &r in unparseable
            .get(col.name.as_str())
            .into_iter()
            .flat_map(|v| v.iter())
        {
            flag(r, format!("unparseable:{}", col.name));
        }
        let nulls = array.null_count() - bad.len();
        null_counts.push((col.name.clone(), nulls as u64));
        if !col.nullable && nulls > 0 {
            for r in 0..rows {
                if array.is_null(r) && !bad.contains(&(r as u32)) {
                    flag(r as u32, format!("null:{}", col.name));
                }
            }
        }
        let _ = ci;
        domain_violations(array, col, &mut flag);
    }
    let schema_violation_rows = rejected.len() as u64;

    // Duplicates: a repeated key, or an identical row when there is no key.
    let (dup_keys, dup_rows) = duplicates(ds, batch, &mut rejected);

    let mut checks = indexmap::IndexMap::new();
    if q.null_rate.enabled {
        let total: u64 = null_counts.iter().map(|(_, n)| n).sum();
        let cells = (rows * ds.columns.len()).max(1) as f64;
        let rates: Vec<(String, f64)> = null_counts
            .iter()
            .map(|(c, n)| (c.clone(), *n as f64 / rows.max(1) as f64))
            .collect();
        let worst = worst(&rates);
        let value = worst.first().map(|w| w.1).unwrap_or(0.0);
        checks.insert(
            "null_rate".into(),
            CheckResult::new(
                value,
                &q.null_rate,
                worst,
                serde_json::json!({
                    "overall": total as f64 / cells,
                    "columns": rates.iter().map(|(c, r)| (c.clone(), serde_json::json!(r))).collect::<serde_json::Map<_,_>>(),
                    "counts": null_counts.iter().map(|(c, n)| (c.clone(), serde_json::json!(n))).collect::<serde_json::Map<_,_>>(),
                }),
            ),
        );
    }
    if q.schema_violations.enabled {
        let worst: Vec<(String, f64)> = {
            let mut v: Vec<(String, f64)> = violations_by_column
                .iter()
                .map(|(c, n)| (c.clone(), *n as f64))
                .collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            v.truncate(5);
            v
        };
        checks.insert(
            "schema_violations".into(),
            CheckResult::new(
                schema_violation_rows as f64,
                &q.schema_violations,
                worst,
                serde_json::json!({ "records": schema_violation_rows, "by_column": violations_by_column }),
            ),
        );
    }
    if q.outliers.check.enabled {
        let (rates, details) = outliers(ds, batch, q);
        let worst = worst(&rates);
        let value = worst.first().map(|w| w.1).unwrap_or(0.0);
        checks.insert(
            "outliers".into(),
            CheckResult::new(value, &q.outliers.check, worst, details),
        );
    }
    if q.duplicates.enabled {
        checks.insert(
            "duplicates".into(),
            CheckResult::new(
                (dup_keys + dup_rows) as f64,
                &q.duplicates,
                Vec::new(),
                serde_json::json!({ "duplicate_keys": dup_keys, "identical_rows": dup_rows, "key": ds.primary_key }),
            ),
        );
    }
    if q.freshness.enabled {
        if let Some(ts) = &ds.timestamp {
            if let Some(a) = batch.column_by_name(ts) {
                let newest = newest_micros(a);
                let hours = newest
                    .map(|n| (as_of.timestamp_micros() - n) as f64 / 3.6e9)
                    .unwrap_or(f64::INFINITY);
                let newest_s = newest
                    .and_then(DateTime::<Utc>::from_timestamp_micros)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                let mut r = CheckResult::new(
                    hours,
                    &q.freshness,
                    Vec::new(),
                    serde_json::json!({ "column": ts, "newest": newest_s, "as_of": as_of.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "unit": "hours" }),
                );
                if !hours.is_finite() {
                    r.value = f64::MAX;
                    r.status = Status::Fail;
                }
                checks.insert("freshness".into(), r);
            }
        }
    }

    let status = checks
        .values()
        .map(|c| c.status)
        .max()
        .unwrap_or(Status::Pass);
    let rejected_rows = rejected.len() as u64;
    Outcome {
        report: DatasetReport {
            rows: rows as u64,
            clean_rows: rows as u64 - rejected_rows,
            rejected_rows,
            status,
            checks,
        },
        rejected,
    }
}

fn worst(rates: &[(String, f64)]) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = rates.iter().filter(|(_, r)| *r > 0.0).cloned().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(5);
    v
}

fn domain_violations(
    array: &ArrayRef,
    col: &crate::config::Column,
    flag: &mut impl FnMut(u32, String),
) {
    let range = |x: f64| col.min.is_some_and(|lo| x < lo) || col.max.is_some_and(|hi| x > hi);
    match col.ty {
        ColumnType::String => {
            if let Some(values) = &col.values {
                // A declared list is short: comparing bytes beats hashing every row.
                let allowed: Vec<&[u8]> = values.iter().map(|s| s.as_bytes()).collect();
                let a = array.as_string::<i32>();
                for (r, v) in a.iter().enumerate() {
                    if v.is_some_and(|v| !allowed.contains(&v.as_bytes())) {
                        flag(r as u32, format!("out_of_domain:{}", col.name));
                    }
                }
            }
        }
        ColumnType::Int32 | ColumnType::Int64 if col.min.is_some() || col.max.is_some() => {
            let f = arrow::compute::cast(array, &DataType::Float64).expect("ints cast to float");
            for (r, v) in f
                .as_primitive::<arrow::datatypes::Float64Type>()
                .iter()
                .enumerate()
            {
                if v.is_some_and(range) {
                    flag(r as u32, format!("out_of_domain:{}", col.name));
                }
            }
        }
        ColumnType::Float64 => {
            for (r, v) in array
                .as_primitive::<arrow::datatypes::Float64Type>()
                .iter()
                .enumerate()
            {
                match v {
                    Some(x) if !x.is_finite() => flag(r as u32, format!("non_finite:{}", col.name)),
                    Some(x) if range(x) => flag(r as u32, format!("out_of_domain:{}", col.name)),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// Marks repeated rows; returns (rows repeating an earlier key with other values, rows
/// identical to an earlier row).
fn duplicates(
    ds: &Dataset,
    batch: &arrow::record_batch::RecordBatch,
    rejected: &mut BTreeMap<u32, Vec<String>>,
) -> (u64, u64) {
    let key_cols: Vec<ArrayRef> = if ds.primary_key.is_empty() {
        batch.columns().to_vec()
    } else {
        ds.primary_key
            .iter()
            .filter_map(|k| batch.column_by_name(k).cloned())
            .collect()
    };
    if key_cols.is_empty() || batch.num_rows() == 0 {
        return (0, 0);
    }
    let fields = key_cols
        .iter()
        .map(|a| SortField::new(a.data_type().clone()))
        .collect();
    let conv = RowConverter::new(fields).expect("row format supports the canonical types");
    let keys = conv
        .convert_columns(&key_cols)
        .expect("row conversion of canonical types");
    let mut first: HashMap<arrow::row::Row<'_>, u32, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(batch.num_rows(), Default::default());
    let comparators: Vec<DynComparator> = batch
        .columns()
        .iter()
        .map(|a| {
            make_comparator(a.as_ref(), a.as_ref(), SortOptions::default()).expect("comparable")
        })
        .collect();
    let (mut dup_keys, mut dup_rows) = (0, 0);
    for (r, key) in keys.iter().enumerate() {
        // Rows with a null key are schema violations already; they are not duplicates.
        if !ds.primary_key.is_empty() && key_cols.iter().any(|a| a.is_null(r)) {
            continue;
        }
        match first.entry(key) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(r as u32);
            }
            std::collections::hash_map::Entry::Occupied(o) => {
                let f = *o.get();
                let identical = comparators.iter().all(|c| c(f as usize, r).is_eq());
                let reason = if identical {
                    dup_rows += 1;
                    "duplicate_row"
                } else {
                    dup_keys += 1;
                    "duplicate_key"
                };
                rejected
                    .entry(r as u32)
                    .or_default()
                    .push(reason.to_string());
            }
        }
    }
    (dup_keys, dup_rows)
}

fn outliers(
    ds: &Dataset,
    batch: &arrow::record_batch::RecordBatch,
    q: &Quality,
) -> (Vec<(String, f64)>, serde_json::Value) {
    let rows = batch.num_rows().max(1) as f64;
    let cols: Vec<&crate::config::Column> = ds
        .columns
        .iter()
        .filter(|c| c.ty.is_numeric() && !ds.primary_key.contains(&c.name))
        .filter(|c| {
            q.outliers
                .columns
                .as_ref()
                .is_none_or(|l| l.contains(&c.name))
        })
        .collect();
    let mut rates = Vec::new();
    let mut details = serde_json::Map::new();
    for c in cols {
        let Some(a) = batch.column_by_name(&c.name) else {
            continue;
        };
        let f = arrow::compute::cast(a, &DataType::Float64).expect("numeric casts to float");
        let values: Vec<f64> = f
            .as_primitive::<arrow::datatypes::Float64Type>()
            .iter()
            .flatten()
            .filter(|x| x.is_finite())
            .collect();
        let mut work = values.clone();
        let Some((lo, hi)) = crate::stats::iqr_fences(&mut work, q.outliers.k) else {
            continue;
        };
        let count = values.iter().filter(|&&x| x < lo || x > hi).count();
        let rate = count as f64 / rows;
        rates.push((c.name.clone(), rate));
        details.insert(
            c.name.clone(),
            serde_json::json!({ "count": count, "rate": rate, "lower": lo, "upper": hi }),
        );
    }
    (
        rates,
        serde_json::json!({ "method": "iqr", "k": q.outliers.k, "columns": details }),
    )
}

fn newest_micros(a: &ArrayRef) -> Option<i64> {
    match a.data_type() {
        DataType::Timestamp(_, _) => a
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
            .iter()
            .flatten()
            .max(),
        DataType::Date32 => a
            .as_primitive::<arrow::datatypes::Date32Type>()
            .iter()
            .flatten()
            .max()
            .map(|d| d as i64 * 86_400_000_000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::compile::{compile_str, Overrides};
    use std::sync::Arc;

    fn pipeline() -> crate::config::Pipeline {
        compile_str(
            r#"
[pipeline]
name = "t"
[quality]
freshness = { warn = 24, fail = 48 }
[datasets.d]
location = "d"
primary_key = "id"
timestamp = "ts"
columns.id = { type = "string" }
columns.ts = { type = "timestamp" }
columns.kind = { type = "string", values = ["a", "b"] }
columns.x = { type = "float64", min = 0, max = 100, nullable = true }
columns.n = { type = "int32", min = 0 }
[stages.load]
kind = "load"
datasets = ["d"]
"#,
            "t.toml",
            &Overrides::default(),
        )
        .unwrap()
    }

    fn table(unparseable: Vec<(String, Vec<u32>)>) -> Table {
        let ts = TimestampMicrosecondArray::from(vec![Some(0i64); 6]).with_timezone("UTC");
        let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("b"),
                    Some("c"),
                    Some("b"),
                    Some("c"),
                    None,
                ])) as ArrayRef,
            ),
            ("ts", Arc::new(ts) as ArrayRef),
            (
                "kind",
                Arc::new(StringArray::from(vec!["a", "b", "z", "a", "z", "a"])) as ArrayRef,
            ),
            (
                "x",
                Arc::new(Float64Array::from(vec![
                    Some(1.0),
                    None,
                    Some(f64::NAN),
                    Some(2.0),
                    Some(f64::NAN),
                    Some(3.0),
                ])) as ArrayRef,
            ),
            (
                "n",
                Arc::new(Int32Array::from(vec![
                    Some(1),
                    Some(-1),
                    Some(2),
                    Some(3),
                    Some(2),
                    None,
                ])) as ArrayRef,
            ),
        ])
        .unwrap();
        Table {
            batch,
            unparseable,
            files: vec![],
        }
    }

    #[test]
    fn rows_are_rejected_with_every_reason() {
        let p = pipeline();
        let t = table(vec![("n".into(), vec![5])]);
        let as_of = DateTime::<Utc>::from_timestamp(30 * 3600, 0).unwrap();
        let o = check(&p.datasets["d"], &t, &p.quality, as_of);
        let reasons: Vec<(u32, String)> =
            o.rejected.iter().map(|(r, v)| (*r, v.join(","))).collect();
        assert_eq!(
            reasons,
            vec![
                (1, "out_of_domain:n".into()),
                (2, "out_of_domain:kind,non_finite:x".into()),
                // row 3 repeats key "b" with other values; row 4 is identical to row 2
                (3, "duplicate_key".into()),
                (4, "out_of_domain:kind,non_finite:x,duplicate_row".into()),
                (5, "null:id,unparseable:n".into()),
            ]
        );
        let c = &o.report.checks;
        assert_eq!(c["schema_violations"].value, 4.0); // rows 1, 2, 4, 5
        assert_eq!(c["duplicates"].value, 2.0);
        assert_eq!(c["null_rate"].details["counts"]["x"], 1); // NaN is a value, the unparseable n is not a null
        assert_eq!(c["null_rate"].details["counts"]["n"], 0);
        assert_eq!(c["freshness"].value, 30.0);
        assert_eq!(c["freshness"].status, Status::Warn);
        assert_eq!(o.report.clean_rows, 1);
        assert_eq!(o.report.status, Status::Fail); // 1 null in 6 rows is above 5 %
    }

    #[test]
    fn status_thresholds() {
        let c = Check {
            enabled: true,
            warn: 0.0,
            fail: 10.0,
            on_fail: OnFail::Stop,
        };
        assert_eq!(Status::of(0.0, &c), Status::Pass);
        assert_eq!(Status::of(10.0, &c), Status::Warn);
        assert_eq!(Status::of(11.0, &c), Status::Fail);
    }
}
