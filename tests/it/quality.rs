//! `validate` on `mlpipe generate --defects` output reports exactly what truth.json lists.

use arrow::array::{Array, AsArray};

use crate::common::*;

fn generate_defects(p: &Project) -> serde_json::Value {
    p.ok(&[
        "generate",
        "--rows",
        "20000",
        "--seed",
        "11",
        "--out",
        "data",
        "--defects",
    ]);
    p.json("data/truth.json")
}

#[test]
fn validate_reports_exactly_the_injected_defects() {
    let p = Project::new(false);
    let truth = generate_defects(&p);
    let t = &truth["customers"];

    // The default thresholds stop the pipeline (35 violating records > 10): exit 1, report kept.
    let o = p.mlpipe(&["run", "--as-of", AS_OF, "--run-id", "stop"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("stage `validate`") && e.contains("dataset `customers`: schema_violations"),
        "{e}"
    );
    assert!(e.contains("on_fail"), "the message says what to do: {e}");
    assert!(p.path("runs/stop/validate/quality.json").exists());
    assert!(p
        .path("runs/stop/validate/customers/rejected.parquet")
        .exists());
    assert!(
        !p.path("runs/stop/validate/customers/clean.parquet")
            .exists(),
        "no clean data when stopping"
    );

    // With `continue`, the run goes on with the clean rows.
    p.ok(&[
        "run",
        "--as-of",
        AS_OF,
        "--run-id",
        "go",
        "--set",
        "quality.on_fail=\"continue\"",
    ]);
    let q: serde_json::Value = p.json("runs/go/validate/quality.json");
    let c = &q["datasets"]["customers"];
    let checks = &c["checks"];
    assert_eq!(c["rows"], t["rows"]);
    for (col, n) in t["nulls"].as_object().unwrap() {
        assert_eq!(
            &checks["null_rate"]["details"]["counts"][col], n,
            "nulls in {col}"
        );
    }
    assert_eq!(
        checks["schema_violations"]["value"].as_f64().unwrap() as u64,
        t["schema_violations"].as_u64().unwrap()
    );
    assert_eq!(checks["schema_violations"]["status"], "fail");
    assert_eq!(
        checks["duplicates"]["value"].as_f64().unwrap() as u64,
        t["duplicates"].as_u64().unwrap()
    );
    assert_eq!(
        checks["duplicates"]["details"]["duplicate_keys"],
        t["duplicate_keys"]
    );
    assert_eq!(
        checks["duplicates"]["details"]["identical_rows"],
        t["identical_rows"]
    );
    let outliers = checks["outliers"]["details"]["columns"]
        .as_object()
        .unwrap();
    assert!(outliers.len() >= 8);
    for (col, d) in outliers {
        assert_eq!(d["count"], t["outliers"][col], "outliers in {col}");
    }
    assert_eq!(
        c["rejected_rows"].as_u64().unwrap(),
        t["rejected"].as_array().unwrap().len() as u64
    );

    // The QA table holds exactly the rejected rows, with their reasons.
    let qa = read_parquet(&p.path("runs/go/validate/customers/rejected.parquet"));
    let rows = qa
        .column_by_name("_row")
        .unwrap()
        .as_primitive::<arrow::datatypes::UInt64Type>();
    let reasons = qa.column_by_name("_reasons").unwrap().as_string::<i32>();
    let got: Vec<(u64, String)> = (0..qa.num_rows())
        .map(|i| (rows.value(i), reasons.value(i).to_string()))
        .collect();
    let want: Vec<(u64, String)> = t["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let why: Vec<&str> = r[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap())
                .collect();
            (r[0].as_u64().unwrap(), why.join(","))
        })
        .collect();
    assert_eq!(got, want);
    assert!(
        qa.column_by_name("customer_id").is_some(),
        "the QA table keeps the row's columns"
    );

    // Clean data downstream: every row but the rejected ones.
    let clean = read_parquet(&p.path("runs/go/validate/customers/clean.parquet"));
    assert_eq!(
        clean.num_rows() as u64,
        t["rows"].as_u64().unwrap() - want.len() as u64
    );
    let ages = clean
        .column_by_name("age")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int32Type>();
    assert_eq!(ages.null_count(), 0);
    assert!(ages.iter().flatten().all(|a| (18..=100).contains(&a)));
}

#[test]
fn freshness_is_measured_against_as_of() {
    let p = Project::new(true);
    // The fixtures' newest update is 2026-11-20T06:00Z minus a few seconds.
    p.ok(&["run", "--as-of", "2026-11-21T05:00:00Z", "--run-id", "day1"]);
    let q: serde_json::Value = p.json("runs/day1/validate/quality.json");
    let f = &q["datasets"]["customers"]["checks"]["freshness"];
    assert_eq!(f["status"], "pass");
    assert!((f["value"].as_f64().unwrap() - 23.0).abs() < 0.01, "{f}");
    // Past the fail threshold the default pipeline records the failure and continues.
    let out = p.ok(&["run", "--as-of", "2026-11-23T06:00:00Z", "--run-id", "day3"]);
    assert!(out.contains("freshness fail 72.0 h"), "{out}");
    // A production setting stops instead.
    let o = p.mlpipe(&[
        "run",
        "--as-of",
        "2026-11-23T06:00:00Z",
        "--set",
        "quality.freshness.on_fail=\"stop\"",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("freshness is 72.0 h (fail above 48.0 h)"),
        "{}",
        stderr(&o)
    );
}
