//! Production accuracy over time, on the story `mlpipe generate --months` tells: a model trained
//! in month 1, then each month the monitoring pipeline scores the new customers with the
//! production version, joins the outcomes of last month's with their scores, and checks health.
//! Realized metrics equal a join done here; the estimates track them under the covariate shift
//! and miss the concept change; health flags the degradation in the month it should, not before.

use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use serde_json::Value;

use crate::common::*;

/// Runs the story's month `m` (1: the training pipeline, then the monitoring one) with `extra`
/// arguments, as run `month-MM`; returns the run id and the output.
fn month(p: &Project, truth: &Value, m: usize, extra: &[&str]) -> (String, std::process::Output) {
    month_as(p, truth, m, &format!("month-{m:02}"), extra)
}

fn month_as(
    p: &Project,
    truth: &Value,
    m: usize,
    run_id: &str,
    extra: &[&str],
) -> (String, std::process::Output) {
    let mt = &truth["months"][m - 1];
    let as_of = mt["as_of"].as_str().unwrap();
    let run_id = run_id.to_string();
    let current = format!("current=story/{}", mt["current"].as_str().unwrap());
    let mut args: Vec<String> = vec!["run".into()];
    if m > 1 {
        args.push("pipelines/monitor.toml".into());
    }
    args.extend(
        [
            "--as-of",
            as_of,
            "--run-id",
            &run_id,
            "--set",
            "storage.data=story",
            "--input",
            &current,
        ]
        .map(String::from),
    );
    if let Some(o) = mt["outcomes"]["location"].as_str() {
        args.push("--input".into());
        args.push(format!("outcomes=story/{o}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    (run_id, p.mlpipe(&argv))
}

/// Runs the monitoring pipeline on month 3's customers with the outcomes in `outcomes`, as run
/// `run_id`, with `extra` arguments.
fn monitor_with_outcomes(
    p: &Project,
    as_of: &str,
    run_id: &str,
    outcomes: &Path,
    extra: &[&str],
) -> std::process::Output {
    let outcomes = format!("outcomes={}", outcomes.display());
    let mut args = vec![
        "run",
        "pipelines/monitor.toml",
        "--as-of",
        as_of,
        "--run-id",
        run_id,
        "--set",
        "storage.data=story",
        "--input",
        "current=story/month-03/current",
        "--input",
        &outcomes,
    ];
    args.extend(extra);
    p.mlpipe(&args)
}

/// The pseudonym `validate` gives a key without MLPIPE_PSEUDONYM_KEY: the first 32 hex digits of
/// its SHA-256.
fn pseudonym(id: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(id.as_bytes()))[..32].to_string()
}

/// Joins a month's outcomes with the scores of the cohort they belong to, here, and returns each
/// model's (targets, predictions) of the matched customers.
fn joined(outcomes_dir: &Path, scores: &Path) -> Vec<(String, Vec<f64>, Vec<f64>)> {
    let s = read_parquet(scores);
    let keys = s.column_by_name("customer_id").unwrap().as_string::<i32>();
    let index: std::collections::HashMap<&str, usize> =
        (0..s.num_rows()).map(|r| (keys.value(r), r)).collect();
    let o = read_parquet(&parquet_files(outcomes_dir)[0]);
    let ids = o.column_by_name("customer_id").unwrap().as_string::<i32>();
    let mut out = Vec::new();
    for (model, target) in [
        ("engagement", "engagement_score"),
        ("churn", "churned"),
        ("ltv", "ltv_12m"),
    ] {
        let pred = s
            .column_by_name(model)
            .unwrap()
            .as_primitive::<Float64Type>();
        let t = o.column_by_name(target).unwrap();
        let value = |r: usize| -> f64 {
            match t.data_type() {
                arrow::datatypes::DataType::Boolean => f64::from(u8::from(t.as_boolean().value(r))),
                _ => t.as_primitive::<Float64Type>().value(r),
            }
        };
        let (mut ys, mut ps) = (Vec::new(), Vec::new());
        for r in 0..o.num_rows() {
            if let Some(&i) = index.get(pseudonym(ids.value(r)).as_str()) {
                ys.push(value(r));
                ps.push(pred.value(i));
            }
        }
        out.push((model.to_string(), ys, ps));
    }
    out
}

#[test]
fn a_model_is_seen_to_degrade_at_the_concept_change_and_not_before() {
    let p = Project::new(false);
    p.ok(&[
        "generate",
        "--rows",
        "20000",
        "--months",
        "5",
        "--concept-change",
        "3",
        "--out",
        "story",
    ]);
    let truth: Value = p.json("story/truth.json");
    // Only accuracy decides here: the models would be over 90 days old by month 4.
    let settings = [
        "--set",
        "health.max_age_days=365",
        "--set",
        "health.evaluation_periods=2",
    ];
    let (_, o) = month(&p, &truth, 1, &settings);
    assert_eq!(o.status.code(), Some(0), "month 1: {}", stderr(&o));
    let h = p.json("runs/month-01/health/health.json");
    for m in h["models"].as_array().unwrap() {
        assert_eq!(
            m["accuracy"]["source"], "estimated",
            "before any outcome: {m}"
        );
    }
    let gates = [
        ("engagement", "r2", 0.75),
        ("churn", "auc", 0.75),
        ("ltv", "r2", 0.6),
    ];
    for m in 2..=5 {
        let (run, o) = month(&p, &truth, m, &settings);
        let mt = &truth["months"][m - 1];
        let out = &mt["outcomes"];
        let e = p.json(&format!("runs/{run}/evaluate/evaluate.json"));
        let h = p.json(&format!("runs/{run}/health/health.json"));
        // Counts: every observed customer of last month's cohort matched, every key never
        // scored counted, nothing else lost.
        let cohort_run = format!("month-{:02}", m - 1);
        let scores = p.path(&format!("runs/{cohort_run}/score/scores.parquet"));
        let mine = joined(
            &p.path(&format!("story/{}", out["location"].as_str().unwrap())),
            &scores,
        );
        for (model, ys, ps) in &mine {
            let ev = &e["models"][model];
            let c = &ev["counts"];
            assert_eq!(c["outcomes"], out["rows"], "month {m} {model}: {c}");
            assert_eq!(c["matched"], out["observed"], "month {m} {model}: {c}");
            assert_eq!(c["unscored"], out["unknown_keys"], "month {m} {model}: {c}");
            assert_eq!(c["before_history"], 0);
            assert_eq!(ys.len() as u64, out["observed"].as_u64().unwrap());
            let cohort = ev["cohorts"].as_array().unwrap().last().unwrap();
            assert_eq!(cohort["run_id"], cohort_run.as_str());
            assert_eq!(cohort["version"], format!("{model}_v1").as_str());
            // The realized metrics are those of the join done here.
            let task = if model == "churn" {
                mlpipe::model::Task::Binary
            } else {
                mlpipe::model::Task::Regression
            };
            let want = mlpipe::metrics::evaluate(task, ys, ps, 0.5).unwrap();
            for (metric, v) in want.iter() {
                let got = cohort["metrics"][metric.name()].as_f64().unwrap();
                assert!(
                    (got - v).abs() <= 1e-12 * v.abs().max(1.0),
                    "month {m} {model} {metric}: {got} vs {v}"
                );
            }
            if model == "churn" {
                let rate = cohort["mean_outcome"].as_f64().unwrap();
                assert!(
                    (rate - out["churn_rate"].as_f64().unwrap()).abs() < 1e-12,
                    "churn rate {rate} vs truth {}",
                    out["churn_rate"]
                );
            }
            // The estimate made when the cohort was scored tracks the realized value under the
            // covariate shift (months 1, 2), and misses the concept change (from month 3) for
            // the models it breaks.
            let changed = truth["months"][m - 2]["concept_changed"].as_bool().unwrap();
            let within = cohort["within_band"].as_object().unwrap();
            assert!(
                !within.is_empty(),
                "month {m} {model}: no estimate to compare"
            );
            let (_, gate_metric, gate) = gates.iter().find(|g| g.0 == model).unwrap();
            let realized = cohort["metrics"][gate_metric].as_f64().unwrap();
            if !changed {
                assert!(
                    within.values().all(|v| v == true),
                    "month {m} {model}: {cohort}"
                );
            } else if realized < *gate {
                assert!(
                    within.values().all(|v| v == false),
                    "month {m} {model}: the estimate should miss the concept change: {cohort}"
                );
            }
        }
        // Health: realized accuracy; below the gate in the months after the change, retraining
        // due at the second evaluation in a row — month 5 — and not before.
        for hm in h["models"].as_array().unwrap() {
            let model = hm["model"].as_str().unwrap();
            let acc = &hm["accuracy"];
            assert_eq!(acc["source"], "realized", "month {m} {model}: {acc}");
            let (_, metric, gate) = gates.iter().find(|g| g.0 == model).unwrap();
            let v = acc["metrics"][metric].as_f64().unwrap();
            let cohort_changed = truth["months"][m - 2]["concept_changed"].as_bool().unwrap();
            if !cohort_changed {
                assert!(v >= *gate, "month {m} {model}: {v}");
                assert_eq!(acc["below_gate_in_a_row"], 0);
            }
            let in_a_row = acc["below_gate_in_a_row"].as_u64().unwrap();
            assert_eq!(
                hm["checks"]["accuracy"]["passed"],
                in_a_row < 2,
                "month {m} {model}: {hm}"
            );
        }
        let degraded: Vec<&str> = h["models"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["healthy"] == false)
            .map(|x| x["model"].as_str().unwrap())
            .collect();
        match m {
            2..=4 => {
                assert!(
                    degraded.is_empty(),
                    "month {m}: {degraded:?}\n{}",
                    stdout(&o)
                );
                assert_eq!(o.status.code(), Some(0), "month {m}: {}", stderr(&o));
            }
            _ => {
                // Engagement and churn broke; LTV, whose gate is lower, still passes it.
                assert_eq!(degraded, ["engagement", "churn"], "month {m}");
                assert_eq!(o.status.code(), Some(1), "month {m}: {}", stderr(&o));
                let e = stderr(&o);
                assert!(e.contains("below a gate in 2 evaluations in a row"), "{e}");
            }
        }
        if m == 4 {
            // The first evaluation below the gate: reported, not yet a failure.
            let churn = h["models"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["model"] == "churn")
                .unwrap();
            assert_eq!(churn["accuracy"]["below_gate_in_a_row"], 1, "{churn}");
        }
    }
    // The metrics of the last month: realized per version, the evaluations below the gate.
    let prom = std::fs::read_to_string(p.path("runs/month-05/metrics.prom")).unwrap();
    let e5 = p.json("runs/month-05/evaluate/evaluate.json");
    let auc = e5["models"]["churn"]["cohorts"][0]["metrics"]["auc"].as_f64();
    use crate::telemetry::value;
    let churn_v1 = [
        ("model", "churn"),
        ("version", "churn_v1"),
        ("metric", "auc"),
    ];
    assert_eq!(
        value(&prom, "model_accuracy_realized", &churn_v1),
        auc,
        "{prom}"
    );
    let below = |m: &str| {
        value(
            &prom,
            "model_accuracy_below_gate_evaluations",
            &[("model", m)],
        )
    };
    assert_eq!((below("churn"), below("ltv")), (Some(2.0), Some(0.0)));
    let rate = e5["models"]["churn"]["cohorts"][0]["mean_outcome"].as_f64();
    assert_eq!(value(&prom, "realized_churn_rate", &[]), rate);
    let observed = [
        ("model", "churn"),
        ("metric", "auc"),
        ("source", "realized"),
    ];
    assert_eq!(value(&prom, "model_accuracy_observed", &observed), auc);
    // The history: one scoring per model and month, one reading per model and month.
    for model in ["engagement", "churn", "ltv"] {
        let scored = std::fs::read_dir(p.path(&format!("runs/_history/scores/{model}")))
            .unwrap()
            .count();
        let read = std::fs::read_dir(p.path(&format!("runs/_history/accuracy/{model}")))
            .unwrap()
            .count();
        assert_eq!((scored, read), (5, 5), "{model}");
    }
    // The report charts the readings across the runs.
    let html = std::fs::read_to_string(p.path("runs/month-05/report.html")).unwrap();
    assert!(
        html.contains("Production accuracy"),
        "report lacks the section"
    );
    assert!(
        html.contains("across 5 runs"),
        "report lacks the history chart"
    );
    assert!(html.contains("Registry versions"));
}

#[test]
fn outcomes_that_cannot_be_used_are_counted_or_refused_clearly() {
    let p = Project::new(false);
    p.ok(&[
        "generate", "--rows", "20000", "--months", "3", "--out", "story",
    ]);
    let truth: Value = p.json("story/truth.json");
    let settings = ["--set", "health.max_age_days=365"];
    let (_, o) = month(&p, &truth, 1, &settings);
    assert_eq!(o.status.code(), Some(0), "month 1: {}", stderr(&o));
    let (_, o) = month(&p, &truth, 2, &settings);
    assert_eq!(o.status.code(), Some(0), "month 2: {}", stderr(&o));

    // A model no longer declared, with scoring history; a cohort scored by a version the
    // registry does not know (its artifact hash changed); month 2's scores deleted.
    let hist = p.path("runs/_history/scores");
    let month1 = std::fs::read_dir(hist.join("churn"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    std::fs::create_dir_all(hist.join("retired")).unwrap();
    std::fs::copy(
        &month1,
        hist.join("retired").join(month1.file_name().unwrap()),
    )
    .unwrap();
    let month2 = std::fs::read_dir(hist.join("ltv"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&month2).unwrap()).unwrap();
    c["artifact_sha256"] = Value::from("0".repeat(64));
    std::fs::write(&month2, c.to_string()).unwrap();

    // Month 3's outcomes belong to month 2's cohort. Run once with the scores there ...
    let (_, o) = month(&p, &truth, 3, &settings);
    assert_eq!(o.status.code(), Some(0), "month 3: {}", stderr(&o));
    let e = p.json("runs/month-03/evaluate/evaluate.json");
    assert_eq!(
        e["not_evaluated"],
        serde_json::json!(["retired"]),
        "{}",
        e["not_evaluated"]
    );
    let ltv = &e["models"]["ltv"]["counts"];
    assert_eq!(ltv["unknown_version"], ltv["matched"], "{ltv}");
    let cohort = e["models"]["ltv"]["cohorts"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(cohort["version"], Value::Null, "{cohort}");
    let m = p.manifest("month-03");
    let warnings = m["stages"]["evaluate"]["warnings"].to_string();
    assert!(
        warnings.contains("`retired` has scoring history but is not evaluated"),
        "{warnings}"
    );
    assert!(
        warnings.contains("scored by a version the registry does not know"),
        "{warnings}"
    );
    assert!(
        warnings.contains("had no score in their cohort"),
        "{warnings}"
    );

    // ... and once with month 2's results table gone: its outcomes are counted as such, and no
    // metric is made from another cohort.
    std::fs::remove_file(p.path("runs/month-02/score/scores.parquet")).unwrap();
    let (_, o) = month_as(&p, &truth, 3, "month-03b", &settings);
    assert_eq!(o.status.code(), Some(0), "month 3 again: {}", stderr(&o));
    let e = p.json("runs/month-03b/evaluate/evaluate.json");
    let churn = &e["models"]["churn"];
    assert_eq!(
        churn["counts"]["missing_scores"], truth["months"][2]["outcomes"]["rows"],
        "{churn}"
    );
    assert_eq!(churn["counts"]["matched"], 0);
    assert!(churn["cohorts"].as_array().unwrap().is_empty());
    assert!(
        churn["problems"].to_string().contains("cannot be read"),
        "{churn}"
    );
    // Health falls back to the estimate when no outcome is usable.
    let h = p.json("runs/month-03b/health/health.json");
    assert_eq!(
        h["models"][1]["accuracy"]["source"], "estimated",
        "{}",
        h["models"][1]
    );

    // An outcomes file with no rows: zero outcomes, said so; nothing fails.
    let empty = p.path("empty-outcomes");
    std::fs::create_dir_all(&empty).unwrap();
    let o3 = read_parquet(&parquet_files(&p.path("story/month-03/outcomes"))[0]);
    write_parquet(&empty.join("part-0.parquet"), &o3.slice(0, 0), 1024);
    let as_of = truth["months"][2]["as_of"].as_str().unwrap();
    let o = monitor_with_outcomes(
        &p,
        as_of,
        "empty",
        &empty,
        &["--set", "health.max_age_days=365"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("0 of 0 outcomes matched"), "{out}");

    // Duplicate keys: the quality check's, reported with the rows in the QA table.
    let dup = p.path("dup-outcomes");
    std::fs::create_dir_all(&dup).unwrap();
    let twice = arrow::compute::concat_batches(&o3.schema(), [&o3, &o3.slice(0, 50)]).unwrap();
    write_parquet(&dup.join("part-0.parquet"), &twice, 1 << 20);
    let o = monitor_with_outcomes(
        &p,
        as_of,
        "dup",
        &dup,
        &["--set", "health.max_age_days=365"],
    );
    let q = p.json("runs/dup/validate/quality.json");
    assert_eq!(
        q["datasets"]["outcomes"]["checks"]["duplicates"]["value"],
        50.0,
        "{}",
        stderr(&o)
    );
    assert_eq!(q["datasets"]["outcomes"]["rejected_rows"], 50);

    // A target of the wrong type: refused when loading, naming the column (exit 3).
    let bad = p.path("bad-outcomes");
    std::fs::create_dir_all(&bad).unwrap();
    let i = o3.schema().index_of("churned").unwrap();
    let mut cols = o3.columns().to_vec();
    cols[i] = std::sync::Arc::new(arrow::array::StringArray::from(vec![
        "maybe";
        o3.num_rows()
    ]));
    let mut fields: Vec<arrow::datatypes::Field> = o3
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields[i] = arrow::datatypes::Field::new("churned", arrow::datatypes::DataType::Utf8, true);
    let b = arrow::record_batch::RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
        cols,
    )
    .unwrap();
    write_parquet(&bad.join("part-0.parquet"), &b, 1 << 20);
    let o = monitor_with_outcomes(&p, as_of, "bad", &bad, &[]);
    let e = stderr(&o);
    assert!(matches!(o.status.code(), Some(1) | Some(3)), "{e}");
    assert!(e.contains("churned"), "the error names the column: {e}");
    let _ = o.status.code().filter(|c| *c == 1).map(|_| {
        // A text column that does not parse as bool is a schema violation of every row.
        let q = p.json("runs/bad/validate/quality.json");
        assert!(
            q["datasets"]["outcomes"]["checks"]["schema_violations"]["value"]
                .as_f64()
                .unwrap()
                > 10.0
        );
    });
}
