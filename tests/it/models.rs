//! The prepare and train stages: artifacts that load back, determinism, gates, bad targets.

use arrow::array::AsArray;

use crate::common::*;

fn artifact(p: &Project, run: &str, model: &str) -> mlpipe::model::Artifact {
    let path = p.path(&format!("runs/{run}/train_{model}/model.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The artifact of `model` in run `run`, loaded from its file, reproduces the holdout
/// predictions exactly, and the holdout and training rows together are the clean rows.
fn assert_reloads_exactly(p: &Project, run: &str, model: &str) {
    let clean = read_parquet(&p.path(&format!("runs/{run}/validate/customers/clean.parquet")));
    let m = p.json(&format!("runs/{run}/train_{model}/metrics.json"));
    let a = artifact(p, run, model);
    let holdout = read_parquet(&p.path(&format!("runs/{run}/train_{model}/holdout.parquet")));
    let rows = holdout
        .column_by_name("_row")
        .unwrap()
        .as_primitive::<arrow::datatypes::UInt64Type>();
    let idx = arrow::array::UInt64Array::from(rows.values().to_vec());
    let subset = arrow::compute::take_record_batch(&clean, &idx).unwrap();
    let pred = a.predict(&subset).unwrap().values;
    let stored = holdout
        .column_by_name("prediction")
        .unwrap()
        .as_primitive::<arrow::datatypes::Float64Type>();
    assert!(
        pred == stored.values().to_vec(),
        "{model}: reloaded predictions differ"
    );
    assert_eq!(
        holdout.num_rows() as u64 + m["rows"]["train"].as_u64().unwrap(),
        clean.num_rows() as u64
    );
}

/// The three train stages of runs `a` and `b` wrote byte-identical artifacts.
fn assert_same_artifacts(p: &Project, a: &str, b: &str) {
    for s in ["train_engagement", "train_churn", "train_ltv"] {
        assert_eq!(
            p.outputs(a, s)
                .into_iter()
                .filter(|o| o.0 == "model")
                .collect::<Vec<_>>(),
            p.outputs(b, s)
                .into_iter()
                .filter(|o| o.0 == "model")
                .collect::<Vec<_>>(),
            "{s}"
        );
    }
}

#[test]
fn models_train_pass_their_gates_and_load_back_with_identical_predictions() {
    let p = Project::new(true);
    let out = p.ok(&["run", "--as-of", AS_OF, "--run-id", "m1"]);
    assert!(
        out.contains("train_churn") && out.matches("gates passed").count() == 3,
        "{out}"
    );
    for (model, metric, floor) in [
        ("engagement", "r2", 0.75),
        ("churn", "auc", 0.75),
        ("ltv", "r2", 0.6),
    ] {
        let m: serde_json::Value = p.json(&format!("runs/m1/train_{model}/metrics.json"));
        assert!(
            m["metrics"][metric].as_f64().unwrap() >= floor,
            "{model}: {}",
            m["metrics"]
        );
        assert_eq!(m["passed"], true);
        assert_reloads_exactly(&p, "m1", model);
    }
    // Training is deterministic: a forced re-run writes byte-identical artifacts.
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "m2", "--force"]);
    assert_same_artifacts(&p, "m1", "m2");
}

#[test]
fn baselines_are_selectable_in_the_pipeline_file() {
    let p = Project::new(true);
    let baselines = [
        "--set",
        "models.engagement.algorithm=\"linear\"",
        "--set",
        "models.engagement.params={}",
        "--set",
        "models.churn.algorithm=\"logistic\"",
        "--set",
        "models.churn.params={ alpha = 1.0 }",
        "--set",
        "models.ltv.algorithm=\"random_forest\"",
        "--set",
        "models.ltv.params={ n_trees = 20, min_samples_leaf = 5 }",
    ];
    let args = |run: &'static str| {
        let mut a = vec!["run", "--as-of", AS_OF, "--run-id", run, "--force"];
        a.extend(baselines);
        a
    };
    let o = p.mlpipe(&args("b1"));
    // Gates may pass or fail for a baseline (exit 0 or 1), but every stage runs.
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(&o));
    assert_eq!(p.manifest("b1")["status"], "succeeded");
    for (model, algorithm, metric, floor) in [
        ("engagement", "linear", "r2", 0.5),
        ("churn", "logistic", "auc", 0.7),
        ("ltv", "random_forest", "r2", 0.5),
    ] {
        let m = p.json(&format!("runs/b1/train_{model}/metrics.json"));
        assert_eq!(m["algorithm"], algorithm);
        let v = m["metrics"][metric].as_f64().unwrap();
        assert!(v >= floor, "{model} ({algorithm}): {metric} {v}");
        assert_eq!(
            m["feature_importance"].is_null(),
            algorithm == "random_forest",
            "{model}: {}",
            m["feature_importance"]
        );
        assert_reloads_exactly(&p, "b1", model);
        let a = artifact(&p, "b1", model);
        assert_eq!(a.algorithm.name(), algorithm);
        // The registry records the algorithm and its parameters.
        let v1 = p.json(&format!("models/{model}/v1.json"));
        assert_eq!(v1["algorithm"], algorithm, "{v1}");
        assert_eq!(v1["run_id"], "b1", "{v1}");
    }
    let ltv = p.json("runs/b1/train_ltv/model.json");
    assert_eq!(ltv["params"]["n_trees"], 20);
    assert_eq!(ltv["params"]["seed"], 42, "defaults are filled in");
    // Scoring uses the baselines too.
    assert_eq!(p.manifest("b1")["stages"]["score"]["status"], "succeeded");
    // Deterministic: a forced re-run writes byte-identical artifacts.
    let o = p.mlpipe(&args("b2"));
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(&o));
    assert_same_artifacts(&p, "b1", "b2");
}

#[test]
fn algorithm_choices_are_checked_with_the_pipeline_file() {
    let p = Project::new(false);
    let o = p.mlpipe(&[
        "validate",
        "--set",
        "models.engagement.algorithm=\"logistic\"",
        "--set",
        "models.engagement.params={}",
        "--set",
        "models.churn.algorithm=\"random_forrest\"",
        "--set",
        "models.ltv.algorithm=\"random_forest\"",
        "--set",
        "models.ltv.params={ n_trees = 0, learning_rate = 0.1 }",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("models.engagement.algorithm: `logistic` is for binary models; use `linear`"),
        "{e}"
    );
    assert!(
        e.contains("models.churn.algorithm: `random_forrest` is not an algorithm (did you mean `random_forest`?)"),
        "{e}"
    );
    assert!(
        e.contains("models.ltv.params: unknown field `learning_rate`"),
        "{e}"
    );
}

#[test]
fn unseen_categories_at_scoring_are_counted_not_fatal() {
    let p = Project::new(true);
    p.ok(&[
        "run",
        "--as-of",
        AS_OF,
        "--run-id",
        "u",
        "--to",
        "train_churn",
    ]);
    let a = artifact(&p, "u", "churn");
    let mut current = read_parquet(&p.path("data/current/part-00000.parquet"));
    let i = current.schema().index_of("plan").unwrap();
    let mut cols = current.columns().to_vec();
    let plans: Vec<Option<&str>> = (0..current.num_rows())
        .map(|r| Some(if r % 10 == 0 { "platinum" } else { "pro" }))
        .collect();
    cols[i] = std::sync::Arc::new(arrow::array::StringArray::from(plans));
    current = arrow::record_batch::RecordBatch::try_new(current.schema(), cols).unwrap();
    let scored = a.predict(&current).unwrap();
    let (pred, m) = (scored.values, scored.fills);
    assert_eq!(m.unseen["plan"], current.num_rows() as u64 / 10);
    assert!(pred.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn a_failed_gate_ends_the_run_with_exit_code_1() {
    let p = Project::new(true);
    let o = p.mlpipe(&[
        "run",
        "--as-of",
        AS_OF,
        "--run-id",
        "g",
        "--set",
        "models.engagement.gates=[\"r2 >= 0.999\"]",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("model `engagement` failed gate r2 >= 0.999"),
        "{e}"
    );
    assert!(stdout(&o).contains("GATE FAILED"), "{}", stdout(&o));
    let m = p.manifest("g");
    assert_eq!(m["status"], "succeeded");
    assert_eq!(m["stages"]["train_engagement"]["summary"]["passed"], false);
    assert_eq!(m["stages"]["train_churn"]["summary"]["passed"], true);
}

#[test]
fn a_binary_target_with_one_class_is_unusable_input() {
    let p = Project::new(true);
    let b = read_parquet(&p.path("data/customers/part-00000.parquet"));
    let i = b.schema().index_of("churned").unwrap();
    let mut cols = b.columns().to_vec();
    cols[i] = std::sync::Arc::new(arrow::array::BooleanArray::from(vec![false; b.num_rows()]));
    let b = arrow::record_batch::RecordBatch::try_new(b.schema(), cols).unwrap();
    write_parquet(&p.path("data/customers/part-00000.parquet"), &b, 1 << 20);
    let o = p.mlpipe(&["run", "--as-of", AS_OF]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("stage `train_churn`") && e.contains("only one class") && e.contains("churned"),
        "{e}"
    );
}

#[test]
fn model_declarations_are_checked_before_any_data_is_read() {
    let p = Project::new(false);
    let o = p.mlpipe(&[
        "validate",
        "--set",
        "models.churn.gates=[\"r2 >= 0.5\"]",
        "--set",
        "models.ltv.features=[\"age\", \"favourite_colour\"]",
        "--set",
        "stages.train_ltv.model=\"lvt\"",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("a binary model does not produce `r2`"), "{e}");
    assert!(
        e.contains("`favourite_colour` is not a declared column of `customers`"),
        "{e}"
    );
    assert!(
        e.contains("unknown model `lvt` (did you mean `ltv`?)"),
        "{e}"
    );
}
