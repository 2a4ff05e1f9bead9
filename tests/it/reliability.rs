//! Running under a scheduler, and what a skeptical user tries: stop signals at several points
//! of a run (the run recorded, resumed to the uninterrupted result), two invocations of one run
//! at once, outputs changed after they were recorded, huge finite values, failures of the reuse
//! cache, usage mistakes, and the registry's rollback and re-evaluation.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::run::all_outputs;

/// A project on 200 000 generated customers: large enough for a signal to land inside a stage.
fn large_project() -> Project {
    let p = Project::new(false);
    p.ok(&[
        "generate", "--rows", "200000", "--seed", "42", "--out", "data",
    ]);
    p
}

/// `mlpipe run` started in the background, its output captured.
fn start(p: &Project, args: &[&str]) -> Child {
    std::process::Command::new(BIN)
        .current_dir(p.path(""))
        .arg("run")
        .args(args)
        .args(["--log-format", "pretty"])
        .env_remove("MLPIPE_FAULTS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sends a signal to a process this test started.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(r, 0, "cannot signal the run");
}

/// Waits until the run's manifest shows `stage` with `status` (or the process ends).
fn wait_for_stage(p: &Project, child: &mut Child, run: &str, stage: &str, status: &str) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(120) {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let path = p.path(&format!("runs/{run}/manifest.json"));
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(m) = serde_json::from_str::<serde_json::Value>(&text) {
                if m["stages"][stage]["status"] == status {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{stage} never became {status}");
}

#[test]
fn sigterm_mid_stage_is_recorded_and_the_resumed_run_equals_an_uninterrupted_one() {
    let reference = large_project();
    reference.ok(&["run", "--as-of", AS_OF, "--run-id", "s"]);
    let want = all_outputs(&reference, "s");

    let p = large_project();
    let mut stopped = 0;
    for stage in ["validate", "train_churn", "score"] {
        let mut child = start(
            &p,
            &[
                "--as-of",
                AS_OF,
                "--run-id",
                "s",
                "--set",
                "run.shutdown_grace=\"0s\"",
            ],
        );
        if !wait_for_stage(&p, &mut child, "s", stage, "running") {
            continue;
        }
        signal(&child, libc::SIGTERM);
        let o = child.wait_with_output().unwrap();
        let (out, err) = (stdout(&o), stderr(&o));
        assert_eq!(o.status.code(), Some(143), "{stage}: {err}");
        assert!(
            err.contains("resume it with `mlpipe run --run-id s`"),
            "{stage}: {err}"
        );
        let first = out.lines().next().unwrap_or_default();
        assert!(
            first.contains("INTERRUPTED") && first.contains("(exit 143)"),
            "{stage}: {out}"
        );
        let m = p.manifest("s");
        assert_eq!(m["status"], "interrupted", "{stage}");
        assert_eq!(m["stages"][stage]["status"], "interrupted", "{stage}: {m}");
        // Reported as a failed run is: metrics written, nothing half-written left.
        let prom = std::fs::read_to_string(p.path("runs/s/metrics.prom")).unwrap();
        assert!(prom.contains("pipeline_runs_total"), "{prom}");
        all_files_whole(&p).unwrap();
        stopped += 1;
    }
    assert!(stopped >= 2, "only {stopped} runs were stopped mid-stage");
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "s"]);
    assert_eq!(all_outputs(&p, "s"), want);
}

#[test]
fn within_the_grace_running_stages_finish_and_a_second_signal_exits_at_once() {
    let p = large_project();
    // The default grace (20 s): the fits running when SIGTERM arrives finish and are recorded;
    // nothing after them starts.
    let mut child = start(&p, &["--as-of", AS_OF, "--run-id", "g"]);
    assert!(wait_for_stage(
        &p,
        &mut child,
        "g",
        "train_churn",
        "running"
    ));
    signal(&child, libc::SIGTERM);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    let m = p.manifest("g");
    assert_eq!(m["stages"]["train_churn"]["status"], "succeeded", "{m}");
    for later in ["fairness", "register", "health"] {
        assert_ne!(
            m["stages"][later]["status"], "succeeded",
            "{later} started after SIGTERM"
        );
    }
    assert!(stderr(&o).contains("the running stages finished within the grace"));
    // A second signal does not wait for the grace.
    let mut child = start(
        &p,
        &[
            "--as-of",
            AS_OF,
            "--run-id",
            "g2",
            "--force",
            "--set",
            "run.shutdown_grace=\"10m\"",
        ],
    );
    assert!(wait_for_stage(
        &p,
        &mut child,
        "g2",
        "train_churn",
        "running"
    ));
    let t0 = Instant::now();
    signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(t0.elapsed() < Duration::from_secs(60));
    // Resumed, the run completes.
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "g"]);
}

/// Every output the manifest lists is the file it says: same size, same SHA-256.
fn manifest_matches_files(p: &Project, run: &str) -> usize {
    use sha2::{Digest, Sha256};
    let m = p.manifest(run);
    let mut checked = 0;
    for (stage, rec) in m["stages"].as_object().unwrap() {
        for o in rec["outputs"].as_array().into_iter().flatten() {
            let path = p.path(&format!("runs/{}", o["path"].as_str().unwrap()));
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len() as u64, o["bytes"].as_u64().unwrap(), "{stage}");
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                o["sha256"].as_str().unwrap(),
                "{stage}: {}",
                path.display()
            );
            checked += 1;
        }
    }
    checked
}

#[test]
fn two_invocations_of_one_run_never_execute_a_stage_twice_at_once() {
    let p = large_project();
    let args = ["--as-of", AS_OF, "--run-id", "twice", "--force"];
    let a = start(&p, &args);
    std::thread::sleep(Duration::from_millis(300));
    let b = start(&p, &args);
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(oa.status.code(), Some(0), "{}", stderr(&oa));
    assert_eq!(ob.status.code(), Some(0), "{}", stderr(&ob));
    let waited = format!("{}{}", stderr(&oa), stderr(&ob));
    assert!(
        waited.contains("being executed by another invocation of this run"),
        "neither invocation waited for the other: {waited}"
    );
    assert!(manifest_matches_files(&p, "twice") >= 15);
    assert_eq!(p.manifest("twice")["invocations"], 2);
}

#[test]
fn an_output_changed_after_it_was_recorded_is_detected_when_read() {
    let p = Project::new(true);
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "r1"]);
    let model = p.path("runs/r1/train_churn/model.json");
    let original = std::fs::read(&model).unwrap();
    // A hand edit that keeps the size and the JSON valid: one digit of a leaf value.
    let text = String::from_utf8(original.clone()).unwrap();
    let at = text.find("\"value\": [").unwrap() + 20;
    let digit = text[at..]
        .find(|c: char| c.is_ascii_digit() && c != '0')
        .unwrap()
        + at;
    let mut edited = text.into_bytes();
    edited[digit] = if edited[digit] == b'9' {
        b'8'
    } else {
        edited[digit] + 1
    };
    std::fs::write(&model, &edited).unwrap();

    // Taken from another run: an error naming the file, exit 3.
    let o = p.mlpipe(&["run", "--as-of", AS_OF, "--stage", "score", "--force"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("r1/train_churn/model.json") && e.contains("is not the file its stage wrote"),
        "{e}"
    );
    // In its own run: the stage that wrote it is recomputed, then the stage that read it.
    p.ok(&[
        "run", "--as-of", AS_OF, "--run-id", "r1", "--from", "score", "--force",
    ]);
    assert_eq!(std::fs::read(&model).unwrap(), original);
    let m = p.manifest("r1");
    let warnings = m["stages"]["train_churn"]["warnings"].to_string();
    assert!(warnings.contains("recomputed"), "{m}");
    manifest_matches_files(&p, "r1");
}

#[test]
fn huge_finite_values_are_standardised_or_refused_and_never_give_a_broken_model() {
    let p = Project::new(true);
    let file = p.path("data/customers/part-00000.parquet");
    let b = read_parquet(&file);
    let i = b.schema().index_of("monthly_spend").unwrap();
    let spend = b
        .column(i)
        .as_any()
        .downcast_ref::<arrow::array::Float64Array>()
        .unwrap();
    let huge: arrow::array::Float64Array = spend
        .iter()
        .enumerate()
        .map(|(r, v)| if r % 4000 == 7 { Some(1e308) } else { v })
        .collect();
    let mut cols = b.columns().to_vec();
    cols[i] = std::sync::Arc::new(huge);
    let b = arrow::record_batch::RecordBatch::try_new(b.schema(), cols).unwrap();
    write_parquet(&file, &b, 1 << 20);
    let o = p.mlpipe(&[
        "run",
        "--as-of",
        AS_OF,
        "--run-id",
        "huge",
        "--set",
        "models.ltv.algorithm=\"linear\"",
        "--set",
        "models.ltv.params={}",
        "--set",
        "models.churn.algorithm=\"logistic\"",
        "--set",
        "models.churn.params={}",
    ]);
    let m = p.manifest("huge");
    for (stage, metric) in [("train_ltv", "r2"), ("train_churn", "auc")] {
        let rec = &m["stages"][stage];
        match rec["status"].as_str().unwrap() {
            "succeeded" => {
                let v = &rec["summary"]["metrics"][metric];
                assert!(
                    v.as_f64().is_some_and(f64::is_finite),
                    "{stage}: {metric} {v}"
                );
                let model = p.json(&format!("runs/huge/{stage}/model.json"));
                assert!(
                    !model.to_string().contains("null,"),
                    "{stage}: a null parameter"
                );
            }
            "failed" => {
                let e = rec["error"].as_str().unwrap();
                assert!(
                    e.contains("monthly_spend") || e.contains("extreme values"),
                    "{e}"
                );
                assert_eq!(o.status.code(), Some(3));
            }
            s => panic!("{stage}: {s}"),
        }
    }
}

#[test]
fn a_reuse_cache_that_cannot_be_written_is_a_warning_of_each_stage() {
    let p = Project::new(true);
    std::fs::create_dir_all(p.path("runs")).unwrap();
    // A file where the cache's folder should be: nothing can be written under it.
    std::fs::write(p.path("runs/_cache"), "not a folder").unwrap();
    let o = p.mlpipe(&["run", "--as-of", AS_OF, "--run-id", "nc"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = p.manifest("nc");
    for (stage, rec) in m["stages"].as_object().unwrap() {
        assert_eq!(rec["status"], "succeeded", "{stage}");
        // Health checks and evaluations look at what other runs change: never reused, no cache.
        if stage != "health" && stage != "evaluate" {
            let w = rec["warnings"].to_string();
            assert!(
                w.contains("reuse cache") && w.contains("_cache/"),
                "{stage}: {w}"
            );
        }
    }
}

#[test]
fn usage_mistakes_are_exit_2_and_say_everything_at_once() {
    let p = Project::new(true);
    // Zero timeouts.
    for key in ["run.stage_timeout=0", "stages.load.timeout=\"0s\""] {
        let o = p.mlpipe(&["validate", "--set", key]);
        assert_eq!(o.status.code(), Some(2), "{key}");
        assert!(stderr(&o).contains("a timeout of zero"), "{}", stderr(&o));
    }
    // Every missing upstream stage named.
    let o = p.mlpipe(&["run", "--stage", "drift"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    for s in [
        "`load`",
        "`validate`",
        "`prepare`",
        "`train_churn`",
        "`score`",
    ] {
        assert!(e.contains(s), "{s} missing from: {e}");
    }
    assert!(e.contains("mlpipe run --to drift"), "{e}");
    // One field of an inherited column: merged with the inherited declaration.
    let o = p.mlpipe(&["validate", "--set", "datasets.current.columns.age.max=120"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // An unknown model.
    let o = p.mlpipe(&["registry", "promote", "nosuch", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no model named `nosuch`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_symbolic_link_loop_names_the_dataset() {
    let p = Project::new(true);
    std::os::unix::fs::symlink(p.path("data"), p.path("data/customers/loop")).unwrap();
    let o = p.mlpipe(&["run", "--as-of", AS_OF]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("dataset `customers`") && e.contains("loops back"),
        "{e}"
    );
}

#[test]
fn a_whole_number_beyond_int32_keeps_its_value_in_the_qa_table() {
    let p = Project::new(true);
    let file = p.path("data/customers/part-00000.parquet");
    let b = read_parquet(&file);
    let i = b.schema().index_of("age").unwrap();
    let age = arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Int64).unwrap();
    let age = age
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap();
    let wide: arrow::array::Int64Array = age
        .iter()
        .enumerate()
        .map(|(r, v)| if r == 3 { Some(3_000_000_000) } else { v })
        .collect();
    let mut fields: Vec<arrow::datatypes::Field> = b
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields[i] = arrow::datatypes::Field::new("age", arrow::datatypes::DataType::Int64, true);
    let mut cols = b.columns().to_vec();
    cols[i] = std::sync::Arc::new(wide);
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
    let b = arrow::record_batch::RecordBatch::try_new(schema, cols).unwrap();
    write_parquet(&file, &b, 1 << 20);
    p.ok(&[
        "run", "--as-of", AS_OF, "--run-id", "wide", "--to", "validate",
    ]);
    let qa = read_parquet(&p.path("runs/wide/validate/customers/rejected.parquet"));
    let reasons = qa
        .column_by_name("_reasons")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap()
        .iter()
        .flatten()
        .map(String::from)
        .collect::<Vec<_>>();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("out_of_range:age=3000000000")),
        "{reasons:?}"
    );
}

#[test]
fn rollback_walks_back_and_an_identical_artifact_is_re_evaluated_not_registered_again() {
    let p = Project::new(true);
    let state = |m: &str| p.json(&format!("models/{m}/state.json"));
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "a"]);
    // The same data and code again: no new version, the run records a re-evaluation.
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "b", "--force"]);
    let st = state("engagement");
    assert_eq!(st["versions"].as_object().unwrap().len(), 1, "{st}");
    let last = st["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "evaluated", "{st}");
    let reg = p.manifest("b")["stages"]["register"]["summary"]["models"]["engagement"].clone();
    assert_eq!(reg["reevaluated"], true, "{reg}");
    // Two more versions, worse than v1 (fewer trees, a lower gate): candidates, each then made
    // production by hand.
    for (run, trees) in [("c", "10"), ("d", "5")] {
        p.ok(&[
            "run",
            "--as-of",
            AS_OF,
            "--run-id",
            run,
            "--force",
            "--set",
            &format!("models.engagement.params.n_trees={trees}"),
            "--set",
            "models.engagement.gates=[\"r2 >= 0.1\"]",
        ]);
    }
    let st = state("engagement");
    assert_eq!(st["versions"].as_object().unwrap().len(), 3, "{st}");
    p.ok(&["registry", "promote", "engagement", "2"]);
    p.ok(&["registry", "promote", "engagement", "3"]);
    // Two rollbacks go two versions back; a third has nowhere to go.
    assert!(p
        .ok(&["registry", "rollback", "engagement"])
        .contains("production is v2"));
    assert!(p
        .ok(&["registry", "rollback", "engagement"])
        .contains("production is v1"));
    let o = p.mlpipe(&["registry", "rollback", "engagement"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no earlier production version"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_summary_says_what_the_exit_code_says() {
    let p = Project::new(true);
    let o = p.mlpipe(&[
        "run",
        "--as-of",
        AS_OF,
        "--set",
        "models.engagement.gates=[\"r2 >= 0.999\"]",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let first = stdout(&o).lines().next().unwrap_or_default().to_string();
    assert!(first.contains("CHECKS FAILED (exit 1)"), "{first}");
}
