//! The registry: the registry document's fields, rejection, champion/challenger, rollback, concurrent runs,
//! and the health check.

use crate::common::*;

fn version(p: &Project, model: &str, v: u32) -> serde_json::Value {
    p.json(&format!("models/{model}/v{v}.json"))
}

fn state(p: &Project, model: &str) -> serde_json::Value {
    p.json(&format!("models/{model}/state.json"))
}

#[test]
fn the_default_run_registers_every_model_with_the_registry_documents_fields() {
    let p = Project::new(true);
    let out = p.ok(&["run", "--as-of", AS_OF, "--run-id", "r1"]);
    assert!(
        out.contains("engagement_v1 production") && out.contains("all production models healthy"),
        "{out}"
    );
    for m in ["engagement", "churn", "ltv"] {
        let v = version(&p, m, 1);
        for k in [
            "model_id",
            "training_date",
            "deployment_date",
            "status",
            "metrics",
            "data_version",
            "training_duration_min",
            "last_evaluated",
        ] {
            assert!(!v[k].is_null(), "{m}: registry field `{k}` missing: {v}");
        }
        for k in ["gender_parity", "age_parity", "location_parity"] {
            assert!(
                v["metrics"]["fairness"][k].as_f64().is_some(),
                "{m}: fairness.{k} missing"
            );
        }
        for k in [
            "model",
            "version",
            "run_id",
            "artifact_uri",
            "artifact_sha256",
            "algorithm",
            "params",
            "features",
            "training_data",
            "drift",
            "code_version",
        ] {
            assert!(!v[k].is_null(), "{m}: extension `{k}` missing");
        }
        assert_eq!(v["model_id"], format!("{m}_v1"));
        assert_eq!(v["status"], "production");
        assert_eq!(v["run_id"], "r1");
        // The artifact in the registry is the one the run trained.
        let uri = v["artifact_uri"]
            .as_str()
            .unwrap()
            .trim_start_matches("file://")
            .to_string();
        let bytes = std::fs::read(&uri).unwrap();
        let sha = p
            .outputs("r1", &format!("train_{m}"))
            .into_iter()
            .find(|o| o.0 == "model")
            .unwrap()
            .1;
        assert_eq!(v["artifact_sha256"], sha.as_str());
        assert!(!bytes.is_empty());
    }
    assert!(v_metric(&version(&p, "engagement", 1), "rmse") > 0.0);
    let list = p.ok(&["registry", "list"]);
    assert!(
        list.contains("engagement") && list.contains("v1 production"),
        "{list}"
    );
}

fn v_metric(v: &serde_json::Value, m: &str) -> f64 {
    v["metrics"][m].as_f64().unwrap()
}

#[test]
fn a_rejected_model_leaves_production_unchanged_and_rollback_restores_the_previous_version() {
    let p = Project::new(true);
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "a"]);
    // v2 fails its gate: rejected with the reason, production stays v1, exit code 1.
    let o = p.mlpipe(&[
        "run",
        "--as-of",
        AS_OF,
        "--run-id",
        "b",
        "--force",
        "--set",
        "models.engagement.gates=[\"r2 >= 0.999\"]",
        // Another artifact than v1's (its unused decision threshold differs).
        "--set",
        "models.engagement.threshold=0.7",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v2 = version(&p, "engagement", 2);
    assert_eq!(v2["status"], "rejected");
    assert!(
        v2["reason"]
            .as_str()
            .unwrap()
            .contains("failed gate r2 >= 0.999"),
        "{v2}"
    );
    assert_eq!(state(&p, "engagement")["production"], 1);
    // The same data and code again train v1's artifact: no new version, v1 re-evaluated.
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "c0", "--force"]);
    assert_eq!(
        state(&p, "engagement")["versions"]
            .as_object()
            .unwrap()
            .len(),
        2
    );
    // v3, another artifact (its unused decision threshold differs) with v1's predictions, is as
    // good as v1 on the same holdout: it becomes production, v1 is archived.
    p.ok(&[
        "run",
        "--as-of",
        AS_OF,
        "--run-id",
        "c",
        "--force",
        "--set",
        "models.engagement.threshold=0.6",
    ]);
    let st = state(&p, "engagement");
    assert_eq!(st["production"], 3);
    assert_eq!(version(&p, "engagement", 1)["status"], "archived");
    // Rollback puts v1 back; the history shows every move.
    let out = p.ok(&["registry", "rollback", "engagement"]);
    assert!(out.contains("production is v1"), "{out}");
    let st = state(&p, "engagement");
    assert_eq!(st["production"], 1);
    let moves: Vec<(serde_json::Value, u64)> = st["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] != "evaluated")
        .map(|m| (m["from"].clone(), m["to"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        moves,
        vec![
            (serde_json::Value::Null, 1),
            (serde_json::json!(1), 3),
            (serde_json::json!(3), 1)
        ]
    );
    assert_eq!(version(&p, "engagement", 3)["status"], "archived");
    // Promote by hand, refuse a rejected version.
    p.ok(&["registry", "promote", "engagement", "3"]);
    assert_eq!(state(&p, "engagement")["production"], 3);
    let o = p.mlpipe(&["registry", "promote", "engagement", "2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("rejected"), "{}", stderr(&o));
    let shown = p.ok(&["registry", "show", "engagement@2"]);
    assert!(shown.contains("\"status\": \"rejected\""), "{shown}");
}

#[test]
fn two_runs_registering_at_the_same_time_both_land() {
    let p = Project::new(true);
    let spawn = |artifacts: &str| {
        std::process::Command::new(BIN)
            .current_dir(p.dir.path())
            .args([
                "run",
                "--log-format",
                "json",
                "--as-of",
                AS_OF,
                "--set",
                &format!("storage.artifacts=\"{artifacts}\""),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("runs-a"), spawn("runs-b"));
    for c in [a, b] {
        let o = c.wait_with_output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for m in ["engagement", "churn", "ltv"] {
        let st = state(&p, m);
        let versions = st["versions"].as_object().unwrap();
        // The same data and code trained the same artifact twice: one version, and the other
        // run's re-evaluation of it; both commits land.
        assert_eq!(versions.len(), 1, "{m}: one version for one artifact");
        let history = st["history"].as_array().unwrap();
        assert!(
            history.iter().any(|h| h["kind"] == "evaluated"),
            "{m}: the second registration is a re-evaluation: {st}"
        );
        assert_eq!(
            versions
                .values()
                .filter(|v| v["status"] == "production")
                .count(),
            1,
            "{m}"
        );
        let log = std::fs::read_dir(p.path(&format!("models/{m}/log")))
            .unwrap()
            .count();
        assert_eq!(log, 2, "{m}: one log entry per registration");
    }
}

#[test]
fn health_says_retraining_is_due_because_of_drift() {
    let p = Project::new(false);
    p.ok(&[
        "generate", "--rows", "20000", "--seed", "42", "--out", "data",
    ]);
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "clean"]);
    assert_eq!(
        p.mlpipe(&["health", "--as-of", AS_OF]).status.code(),
        Some(0)
    );
    // The next snapshot drifts: the run still registers, but health fails and says why.
    p.ok(&[
        "generate", "--rows", "20000", "--seed", "42", "--drift", "1", "--out", "drifted",
    ]);
    let o = p.mlpipe(&[
        "run",
        "--as-of",
        AS_OF,
        "--run-id",
        "drifted",
        "--input",
        "current=drifted/current",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("retraining is due") && stderr(&o).contains("drift"),
        "{}",
        stderr(&o)
    );
    let o = p.mlpipe(&["health", "--as-of", AS_OF]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("UNHEALTHY — retraining is due") && out.contains("drift above 0.1"),
        "{out}"
    );
    let h: serde_json::Value = p.json("runs/health/latest.json");
    assert_eq!(h["healthy"], false);
}
