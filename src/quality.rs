//! The data-quality checks over a [`Table`] in its declared schema: null rates,
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
use rayon::prelude::*;
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
    pub on_fail: OnFail,
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
            on_fail: check.on_fail,
            worst,
            details,
        }
    }

    /// Whether this result stops the pipeline.
    pub fn stops(&self) -> bool {
        self.status == Status::Fail && self.on_fail == OnFail::Stop
    }
}

/// The quality report of one dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetReport {
    pub rows: u64,
    pub clean_rows: u64,
    pub rejected_rows: u64,
    pub status: Status,
    /// Check name → result: null rate, schema violations, outliers, duplicates, freshness.
    pub checks: indexmap::IndexMap<String, CheckResult>,
}

/// The report plus the row split.
#[derive(Debug)]
pub struct Outcome {
    pub report: DatasetReport,
    /// Rejected row → its reasons (`null:COL`, `unparseable:COL`, `out_of_range:COL=VALUE`,
    /// `out_of_domain:COL`,
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
    let out_of_range: HashMap<(&str, u32), &str> = table
        .out_of_range
        .iter()
        .flat_map(|(c, rows)| {
            rows.iter()
                .map(move |(r, v)| ((c.as_str(), *r), v.as_str()))
        })
        .collect();

    // Schema violations and null counts.
    let mut null_counts: Vec<(String, u64)> = Vec::new();
    let mut violations_by_column: BTreeMap<String, u64> = BTreeMap::new();
    // The duplicate search and the outlier fences run beside the schema checks: each reads the
    // whole table, and the duplicate search is mostly one thread's work.
    let ((dups, outlier_rates), ()) = rayon::join(
        || {
            rayon::join(
                || duplicates(ds, batch),
                || q.outliers.check.enabled.then(|| outliers(ds, batch, q)),
            )
        },
        || {
            for col in &ds.columns {
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
                    // A whole number beyond the declared type keeps its value in the reason: the
                    // column itself can only hold a null there.
                    match out_of_range.get(&(col.name.as_str(), r)) {
                        Some(v) => flag(r, format!("out_of_range:{}={v}", col.name)),
                        None => flag(r, format!("unparseable:{}", col.name)),
                    }
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
                domain_violations(array, col, &mut flag);
            }
        },
    );
    let schema_violation_rows = rejected.len() as u64;
    let (mut dup_keys, mut dup_rows) = (0u64, 0u64);
    for (r, identical) in dups {
        let reason = if identical {
            dup_rows += 1;
            "duplicate_row"
        } else {
            dup_keys += 1;
            "duplicate_key"
        };
        rejected.entry(r).or_default().push(reason.to_string());
    }

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
    if let Some((rates, details)) = outlier_rates {
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
    // No rows (an optional dataset not there yet) have no age.
    if q.freshness.enabled && rows > 0 {
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

/// Rows per shard of the duplicate search, roughly: each shard's hash table then fits the
/// second-level cache.
const DUPLICATE_SHARD_ROWS: usize = 128 * 1024;

/// Rows repeating an earlier row's key (with no key, an earlier row's values), in row order, each
/// with whether it is identical to the first row of that key.
///
/// Each row's key is hashed column by column from the Arrow arrays, then the rows are split into
/// shards by the hash's top bits (equal keys always share a shard) and each shard is searched in
/// row order with a table of row numbers, the shards in parallel. A 10 M-entry map of row-format
/// keys took 512 MB of buckets plus the encoded keys, and a cache miss per row.
fn duplicates(ds: &Dataset, batch: &arrow::record_batch::RecordBatch) -> Vec<(u32, bool)> {
    let keyed = !ds.primary_key.is_empty();
    let key_cols: Vec<&ArrayRef> = if keyed {
        ds.primary_key
            .iter()
            .filter_map(|k| batch.column_by_name(k))
            .collect()
    } else {
        batch.columns().iter().collect()
    };
    let n = batch.num_rows();
    if key_cols.is_empty() || n == 0 {
        return Vec::new();
    }
    let state = foldhash::fast::RandomState::default();
    let hashes = key_hashes(&key_cols, n, &state);
    let comparators = |cols: &[&ArrayRef]| -> Vec<DynComparator> {
        cols.iter()
            .map(|a| make_comparator(a, a, SortOptions::default()).expect("comparable"))
            .collect()
    };
    let same_key = comparators(&key_cols);
    let same_row = comparators(&batch.columns().iter().collect::<Vec<_>>());

    // Rows by shard, each shard in row order. Rows with a null key are schema violations
    // already; they are not duplicates.
    let bits = (n / DUPLICATE_SHARD_ROWS).max(1).ilog2().min(16);
    let shard_of = |h: u64| {
        if bits == 0 {
            0
        } else {
            (h >> (64 - bits)) as usize
        }
    };
    let counted = |r: usize| !keyed || key_cols.iter().all(|a| a.is_valid(r));
    let mut starts = vec![0usize; (1 << bits) + 1];
    for (r, &h) in hashes.iter().enumerate() {
        if counted(r) {
            starts[shard_of(h) + 1] += 1;
        }
    }
    for s in 1..starts.len() {
        starts[s] += starts[s - 1];
    }
    // Each shard's rows with their hashes beside them: the search then reads both in order (the
    // hashes looked up by row were a cache miss a row at 10 M). The table takes a slot from a
    // hash's low bits and a 7-bit tag from its top ones, which the shard fixes: rotated, the tag
    // comes from bits the shard leaves free (with them fixed nearly every probe compared keys).
    let hash = |r: usize| hashes[r].rotate_left(32);
    let mut order = vec![(0u32, 0u64); starts[1 << bits]];
    let mut next = starts.clone();
    for (r, &h) in hashes.iter().enumerate() {
        if counted(r) {
            let s = shard_of(h);
            order[next[s]] = (r as u32, hash(r));
            next[s] += 1;
        }
    }
    let mut found: Vec<(u32, bool)> = starts
        .par_windows(2)
        .flat_map_iter(|w| {
            let rows = &order[w[0]..w[1]];
            let mut first = hashbrown::HashTable::<u32>::with_capacity(rows.len());
            let mut found = Vec::new();
            for &(r, h) in rows {
                let r = r as usize;
                let entry = first.entry(
                    h,
                    |&f| same_key.iter().all(|c| c(f as usize, r).is_eq()),
                    |&f| hash(f as usize),
                );
                match entry {
                    hashbrown::hash_table::Entry::Vacant(v) => {
                        v.insert(r as u32);
                    }
                    hashbrown::hash_table::Entry::Occupied(o) => {
                        let f = *o.get() as usize;
                        found.push((r as u32, same_row.iter().all(|c| c(f, r).is_eq())));
                    }
                }
            }
            found
        })
        .collect();
    found.sort_unstable_by_key(|d| d.0);
    found
}

/// Each row's hash of its values in `cols`: equal when the values are equal as
/// [`make_comparator`] sees them (nulls equal each other; floats by their bits, as its total
/// order compares them).
fn key_hashes(cols: &[&ArrayRef], n: usize, state: &foldhash::fast::RandomState) -> Vec<u64> {
    use std::hash::BuildHasher;
    const CHUNK: usize = 64 * 1024;
    let mut hashes = vec![0u64; n];
    for a in cols {
        let mix = |h: &mut u64, r: usize, value: &[u8]| {
            *h = if a.is_null(r) {
                state.hash_one((*h, 0u8))
            } else {
                state.hash_one((*h, 1u8, value))
            };
        };
        let mut each = |f: &(dyn Fn(&mut u64, usize) + Sync)| {
            hashes
                .par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(k, hs)| {
                    for (j, h) in hs.iter_mut().enumerate() {
                        f(h, k * CHUNK + j);
                    }
                });
        };
        if let Some(values) = crate::data::ValueBytes::of(a.as_ref()) {
            each(&|h, r| mix(h, r, values.get(r)));
        } else {
            // Any other type through the row format, one column at a time.
            let conv = RowConverter::new(vec![SortField::new(a.data_type().clone())])
                .expect("row format supports the canonical types");
            let rows = conv
                .convert_columns(&[(*a).clone()])
                .expect("row conversion of canonical types");
            each(&|h, r| mix(h, r, rows.row(r).as_ref()));
        }
    }
    hashes
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
    // Column by column in parallel, each column's finite values copied once into a buffer the
    // thread reuses: the fences come from a selection over the copy, which reorders it, and the
    // outliers are counted over the same copy.
    let per_column: Vec<Option<(String, f64, serde_json::Value)>> = cols
        .par_iter()
        .map_init(Vec::new, |work: &mut Vec<f64>, c| {
            let a = batch.column_by_name(&c.name)?;
            work.clear();
            crate::data::extend_numbers(a.as_ref(), f64::is_finite, work)
                .expect("numeric casts to float");
            let (lo, hi) = crate::stats::iqr_fences(work, q.outliers.k)?;
            let count = work.iter().filter(|&&x| x < lo || x > hi).count();
            let rate = count as f64 / rows;
            Some((
                c.name.clone(),
                rate,
                serde_json::json!({ "count": count, "rate": rate, "lower": lo, "upper": hi }),
            ))
        })
        .collect();
    let mut rates = Vec::new();
    let mut details = serde_json::Map::new();
    for (name, rate, detail) in per_column.into_iter().flatten() {
        rates.push((name.clone(), rate));
        details.insert(name, detail);
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
            out_of_range: vec![],
            files: vec![],
        }
    }

    #[test]
    fn a_whole_number_beyond_its_type_keeps_its_value_in_the_reason() {
        let p = pipeline();
        let mut t = table(vec![("n".into(), vec![5])]);
        t.out_of_range = vec![("n".into(), vec![(5, "3000000000".into())])];
        let as_of = DateTime::<Utc>::from_timestamp(30 * 3600, 0).unwrap();
        let o = check(&p.datasets["d"], &t, &p.quality, as_of);
        assert_eq!(o.rejected[&5], ["null:id", "out_of_range:n=3000000000"]);
        assert_eq!(o.report.checks["schema_violations"].value, 4.0);
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

    /// The sharded duplicate search against a plain map of each row's values, over enough rows
    /// for several shards: a string and integer key, a float key (NaN, -0.0 and 0.0 among its
    /// values) and no key (every column, nulls included).
    #[test]
    fn duplicate_search_agrees_with_a_plain_map() {
        let n = 600_000;
        let mut rng = crate::generate::Rng::new(9);
        let id: Vec<Option<String>> = (0..n)
            .map(|_| (rng.below(50) > 0).then(|| format!("c{}", rng.below(400_000))))
            .collect();
        let k: Vec<Option<i64>> = (0..n)
            .map(|_| (rng.below(50) > 0).then(|| rng.below(3) as i64))
            .collect();
        let x: Vec<Option<f64>> = (0..n)
            .map(|_| match rng.below(6) {
                0 => None,
                1 => Some(f64::NAN),
                2 => Some(-0.0),
                3 => Some(0.0),
                _ => Some(rng.below(4) as f64),
            })
            .collect();
        let batch = arrow::record_batch::RecordBatch::try_from_iter(vec![
            ("id", Arc::new(StringArray::from(id.clone())) as ArrayRef),
            ("k", Arc::new(Int64Array::from(k.clone())) as ArrayRef),
            ("x", Arc::new(Float64Array::from(x.clone())) as ArrayRef),
        ])
        .unwrap();
        // Floats are the same value when their bits are, as the comparators' total order has it.
        let value = |c: &str, r: usize| match c {
            "id" => id[r].as_ref().map(|v| v.clone()),
            "k" => k[r].map(|v| v.to_string()),
            _ => x[r].map(|v| v.to_bits().to_string()),
        };
        let mut ds = pipeline().datasets["d"].clone();
        for key in [vec!["id", "k"], vec!["x"], vec![]] {
            ds.primary_key = key.iter().map(|c| c.to_string()).collect();
            let cols = if key.is_empty() {
                vec!["id", "k", "x"]
            } else {
                key.clone()
            };
            let mut first: HashMap<Vec<Option<String>>, usize> = HashMap::new();
            let mut expected = Vec::new();
            for r in 0..n {
                let values: Vec<Option<String>> = cols.iter().map(|c| value(c, r)).collect();
                if !key.is_empty() && values.iter().any(Option::is_none) {
                    continue;
                }
                match first.entry(values) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(r);
                    }
                    std::collections::hash_map::Entry::Occupied(o) => {
                        let f = *o.get();
                        let identical = ["id", "k", "x"].iter().all(|c| value(c, f) == value(c, r));
                        expected.push((r as u32, identical));
                    }
                }
            }
            assert!(expected.iter().any(|d| d.1), "{key:?}: some identical rows");
            if !key.is_empty() {
                assert!(expected.iter().any(|d| !d.1), "{key:?}: some repeated keys");
            }
            assert_eq!(duplicates(&ds, &batch), expected, "key {key:?}");
        }
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
