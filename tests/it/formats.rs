//! Parquet as real writers produce it loads the same as the canonical files (README, "Pointing
//! it at your own data").

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::common::*;

/// Replaces columns of a batch by casting them to other physical types.
fn recast(b: &RecordBatch, to: &[(&str, DataType)]) -> RecordBatch {
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (f, c) in b.schema().fields().iter().zip(b.columns()) {
        match to.iter().find(|(n, _)| n == f.name()) {
            Some((_, t)) => {
                cols.push(arrow::compute::cast(c, t).unwrap());
                fields.push(Field::new(f.name(), t.clone(), true));
            }
            None => {
                cols.push(c.clone());
                fields.push(f.as_ref().clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

#[test]
fn physical_variants_load_the_same_as_canonical_files() {
    let p = Project::new(true);
    let canonical = read_parquet(&p.path("data/customers/part-00000.parquet"));
    let variant = recast(
        &canonical,
        &[
            ("customer_id", DataType::LargeUtf8),
            (
                "gender",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            ),
            ("region", DataType::Utf8View),
            (
                "plan",
                DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::LargeUtf8)),
            ),
            ("age", DataType::Int64),
            ("tenure_months", DataType::Int64),
            (
                "updated_at",
                DataType::Timestamp(TimeUnit::Millisecond, None),
            ),
            ("snapshot_date", DataType::Date64),
        ],
    );
    // Three files under one prefix (one in a sub-folder), row groups of odd sizes.
    let n = variant.num_rows();
    write_parquet(
        &p.path("variant/customers/a.parquet"),
        &variant.slice(0, 7000),
        999,
    );
    write_parquet(
        &p.path("variant/customers/b.parquet"),
        &variant.slice(7000, 7000),
        7000,
    );
    write_parquet(
        &p.path("variant/customers/more/c.parquet"),
        &variant.slice(14000, n - 14000),
        4096,
    );
    std::fs::write(p.path("variant/customers/_SUCCESS"), b"").unwrap();
    copy_dir(&p.path("data/current"), &p.path("variant/current"));

    p.ok(&["run", "--as-of", AS_OF, "--run-id", "canonical"]);
    p.ok(&[
        "run",
        "--as-of",
        AS_OF,
        "--run-id",
        "variant",
        "--set",
        "storage.data=\"variant\"",
    ]);
    let a = read_parquet(&p.path("runs/canonical/validate/customers/clean.parquet"));
    let b = read_parquet(&p.path("runs/variant/validate/customers/clean.parquet"));
    assert_eq!(a.num_rows(), 20000);
    assert_eq!(
        a, b,
        "clean data differs between canonical and variant inputs"
    );
    let qa = std::fs::read_to_string(p.path("runs/canonical/validate/quality.json")).unwrap();
    let qb = std::fs::read_to_string(p.path("runs/variant/validate/quality.json")).unwrap();
    assert_eq!(qa, qb);
    assert_eq!(p.manifest("variant")["inputs"]["customers"]["files"], 3);
}

#[test]
fn numbers_written_as_text_are_parsed_and_bad_ones_are_violations() {
    let p = Project::new(true);
    let canonical = read_parquet(&p.path("data/customers/part-00000.parquet"));
    let mut b = recast(
        &canonical,
        &[
            ("monthly_spend", DataType::Utf8),
            ("tenure_months", DataType::Utf8),
        ],
    );
    // Three values that do not parse.
    let idx = b.schema().index_of("tenure_months").unwrap();
    let mut text: Vec<Option<String>> = b
        .column(idx)
        .as_string::<i32>()
        .iter()
        .map(|v| v.map(String::from))
        .collect();
    text[5] = Some("n/a".into());
    text[6] = Some("".into());
    text[7] = Some("  ".into());
    let mut cols = b.columns().to_vec();
    cols[idx] = Arc::new(StringArray::from(text));
    b = RecordBatch::try_new(b.schema(), cols).unwrap();
    write_parquet(&p.path("data/customers/part-00000.parquet"), &b, 1 << 20);

    p.ok(&["run", "--as-of", AS_OF, "--run-id", "text"]);
    let q: serde_json::Value = p.json("runs/text/validate/quality.json");
    let c = &q["datasets"]["customers"]["checks"];
    assert_eq!(c["schema_violations"]["value"], 3.0);
    assert_eq!(c["schema_violations"]["status"], "warn");
    assert_eq!(
        c["null_rate"]["details"]["counts"]["tenure_months"], 0,
        "unparseable is not null"
    );
    let qa = read_parquet(&p.path("runs/text/validate/customers/rejected.parquet"));
    let reasons: Vec<&str> = qa
        .column_by_name("_reasons")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    assert_eq!(reasons, ["unparseable:tenure_months"; 3]);
    let clean = read_parquet(&p.path("runs/text/validate/customers/clean.parquet"));
    assert_eq!(
        clean.column_by_name("tenure_months").unwrap().data_type(),
        &DataType::Int32
    );
    assert_eq!(
        clean.column_by_name("monthly_spend").unwrap().data_type(),
        &DataType::Float64
    );
    let _ = clean
        .column_by_name("tenure_months")
        .unwrap()
        .as_primitive::<Int32Type>();
}

#[test]
fn a_missing_column_or_an_incompatible_type_is_unusable_input() {
    let p = Project::new(true);
    let canonical = read_parquet(&p.path("data/current/part-00000.parquet"));
    let without = canonical
        .project(
            &(0..canonical.num_columns())
                .filter(|&i| canonical.schema().field(i).name() != "plan")
                .collect::<Vec<_>>(),
        )
        .unwrap();
    write_parquet(
        &p.path("data/current/part-00000.parquet"),
        &without,
        1 << 20,
    );
    let o = p.mlpipe(&["run"]);
    assert_eq!(o.status.code(), Some(3));
    let e = stderr(&o);
    assert!(
        e.contains("stage `load`")
            && e.contains("no column `plan`")
            && e.contains("current/part-00000.parquet"),
        "{e}"
    );

    // A bool column where a timestamp is declared.
    let idx = canonical.schema().index_of("updated_at").unwrap();
    let mut fields: Vec<Field> = canonical
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields[idx] = Field::new("updated_at", DataType::Boolean, true);
    let mut cols = canonical.columns().to_vec();
    cols[idx] = Arc::new(arrow::array::BooleanArray::from(vec![
        true;
        canonical.num_rows()
    ]));
    let bad = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    write_parquet(&p.path("data/current/part-00000.parquet"), &bad, 1 << 20);
    let o = p.mlpipe(&["run"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("column `updated_at`") && stderr(&o).contains("timestamp"),
        "{}",
        stderr(&o)
    );

    std::fs::write(
        p.path("data/current/part-00000.parquet"),
        b"not parquet at all",
    )
    .unwrap();
    let o = p.mlpipe(&["run"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("is not a readable Parquet file"),
        "{}",
        stderr(&o)
    );
}
