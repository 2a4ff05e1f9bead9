//! The score and drift stages on generated data, with and without `--drift`.

use arrow::array::{Array, AsArray};

use crate::common::*;

fn drift_doc(p: &Project, run: &str) -> serde_json::Value {
    p.json(&format!("runs/{run}/drift/drift.json"))
}

#[test]
fn drift_is_flagged_on_shifted_features_and_predictions_only() {
    let p = Project::new(false);
    p.ok(&[
        "generate", "--rows", "20000", "--seed", "8", "--drift", "1", "--out", "data",
    ]);
    let truth: serde_json::Value = p.json("data/truth.json");
    // Drift makes the health check fail: the run completes and exits 1.
    let o = p.mlpipe(&["run", "--as-of", AS_OF, "--run-id", "d"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("DRIFT") && out.contains("RETRAINING DUE"),
        "{out}"
    );
    let d = drift_doc(&p, "d");
    let mut flagged: Vec<String> = d["drifted_features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut shifted: Vec<String> = truth["drifted_features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    flagged.sort();
    shifted.sort();
    assert_eq!(flagged, shifted, "{}", d["features"]);
    assert_eq!(d["dataset_drift"], true);
    assert!(
        !d["drifted_predictions"].as_array().unwrap().is_empty(),
        "{}",
        d["predictions"]
    );
    // Untouched numeric features stay far below the threshold; categorical ones have a tiny PSI.
    for (f, v) in d["features"].as_object().unwrap() {
        if !shifted.contains(f) {
            match v["type"].as_str().unwrap() {
                "numeric" => assert!(v["ks"].as_f64().unwrap() < 0.05, "{f}: {v}"),
                _ => assert!(
                    v["psi"].as_f64().unwrap() < 0.01 && v["p_value"].as_f64().unwrap() > 1e-4,
                    "{f}: {v}"
                ),
            }
        }
    }
}

#[test]
fn no_drift_on_the_fixtures_and_scores_cover_every_clean_current_row() {
    let p = Project::new(true);
    let out = p.ok(&["run", "--as-of", AS_OF, "--run-id", "s"]);
    assert!(out.contains("no drift"), "{out}");
    assert_eq!(drift_doc(&p, "s")["dataset_drift"], false);
    let scores = read_parquet(&p.path("runs/s/score/scores.parquet"));
    let clean = read_parquet(&p.path("runs/s/validate/current/clean.parquet"));
    assert_eq!(scores.num_rows(), clean.num_rows());
    let names: Vec<String> = scores
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        [
            "customer_id",
            // The fairness attributes' columns, for realized fairness once outcomes arrive.
            "gender",
            "age",
            "region",
            "engagement",
            "engagement_version",
            "churn",
            "churn_version",
            "ltv",
            "ltv_version",
            "scored_at"
        ]
    );
    let churn = scores
        .column_by_name("churn")
        .unwrap()
        .as_primitive::<arrow::datatypes::Float64Type>();
    assert!(churn.values().iter().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(churn.null_count(), 0);
    let v = scores
        .column_by_name("churn_version")
        .unwrap()
        .as_string::<i32>()
        .value(0)
        .to_string();
    assert!(v.starts_with("s:") && v.len() == 2 + 12, "{v}");
}
