//! `validate` on `mlpipe generate --defects` output reports exactly what truth.json lists.

use arrow::array::{Array, AsArray};
use sha2::Digest;

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
    // The QA table keeps the row's columns, the customer id as its pseudonym (SHA-256 of the
    // id, 32 hex characters, no key set): the input's id at `_row`, never the id itself.
    let input = column_text(&p.path("data/customers"), "customer_id");
    let ids = qa.column_by_name("customer_id").unwrap().as_string::<i32>();
    for i in 0..qa.num_rows() {
        let raw = &input[rows.value(i) as usize];
        let want = sha2::Sha256::digest(raw.as_bytes());
        assert_eq!(
            ids.value(i),
            &hex::encode(want)[..32],
            "row {}",
            rows.value(i)
        );
    }

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

/// With `MLPIPE_PSEUDONYM_KEY` set, every table carries HMAC-SHA256 pseudonyms (Python:
/// `hmac.new(key, id.encode(), "sha256").hexdigest()[:32]`); the split, and so every metric, is
/// the same as without a key; a new key re-runs validate rather than reusing tables made with the
/// old one; a key too short to be secret is refused before anything runs.
#[test]
fn pseudonym_key_makes_keyed_pseudonyms_without_changing_the_split() {
    let p = Project::new(true);
    const KEY: &str = "an-example-key-of-32-characters!";
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "plain"]);
    let o = p.mlpipe_env(
        &["run", "--as-of", AS_OF, "--run-id", "keyed"],
        &[("MLPIPE_PSEUDONYM_KEY", KEY)],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        p.manifest("keyed")["stages"]["validate"]["status"],
        "succeeded"
    );
    assert!(p.manifest("keyed")["stages"]["validate"]["reused_from"].is_null());

    let raw = column_text(&p.path("data/current"), "customer_id");
    let mac = |id: &str| {
        // HMAC-SHA256 written out (RFC 2104), independent of the product's code.
        let mut k = [0u8; 64];
        k[..KEY.len()].copy_from_slice(KEY.as_bytes());
        let inner = sha2::Sha256::new()
            .chain_update(k.map(|b| b ^ 0x36))
            .chain_update(id.as_bytes())
            .finalize();
        let outer = sha2::Sha256::new()
            .chain_update(k.map(|b| b ^ 0x5c))
            .chain_update(inner)
            .finalize();
        hex::encode(outer)[..32].to_string()
    };
    let want: std::collections::HashSet<String> = raw.iter().map(|id| mac(id)).collect();
    let scores = read_parquet(&p.path("runs/keyed/score/scores.parquet"));
    let got = scores
        .column_by_name("customer_id")
        .unwrap()
        .as_string::<i32>();
    assert!(got.len() > 0);
    for k in got.iter().flatten() {
        assert!(
            want.contains(k),
            "{k} is not the keyed pseudonym of an input id"
        );
    }
    let plain = read_parquet(&p.path("runs/plain/score/scores.parquet"));
    assert_ne!(
        plain.column_by_name("customer_id"),
        scores.column_by_name("customer_id")
    );
    // Same split, same models: identical holdout metrics.
    for m in ["engagement", "churn", "ltv"] {
        let metrics = |run: &str| {
            let v = p.json(&format!("runs/{run}/train_{m}/metrics.json"));
            (v["rows"].clone(), v["metrics"].clone())
        };
        assert_eq!(metrics("plain"), metrics("keyed"), "{m}");
    }
    let o = p.mlpipe_env(
        &["run", "--as-of", AS_OF],
        &[("MLPIPE_PSEUDONYM_KEY", "short")],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("MLPIPE_PSEUDONYM_KEY"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("short\n") && !stderr(&o).contains("`short`"));
}
