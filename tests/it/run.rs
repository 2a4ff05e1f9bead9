//! `mlpipe run` on the shipped fixtures: summary, reuse, --force, resume after a failure and
//! after a crash, retries, timeouts, partial runs.

use crate::common::*;

#[test]
fn readme_run_command_completes_then_reuses_then_force_recomputes() {
    let p = Project::new(true);
    let out = p.ok(&["run"]);
    assert!(out.contains("of pipeline `engagement` succeeded"), "{out}");
    assert!(
        out.contains("load") && out.contains("validate") && out.contains("Quality"),
        "{out}"
    );
    assert!(out.contains("customers    20,000 rows"), "{out}");
    let first = p.latest();
    let m = p.manifest(&first);
    assert_eq!(m["status"], "succeeded");
    for s in ["load", "validate"] {
        assert_eq!(m["stages"][s]["status"], "succeeded");
    }
    assert!(p
        .path(&format!("runs/{first}/validate/customers/clean.parquet"))
        .exists());
    assert!(p
        .path(&format!("runs/{first}/validate/customers/rejected.parquet"))
        .exists());
    assert!(
        m["inputs"]["customers"]["fingerprint"]
            .as_str()
            .unwrap()
            .len()
            == 64
    );

    // Unchanged inputs, configuration and code: every stage is reused.
    let out = p.ok(&["run"]);
    assert!(out.matches("reused").count() >= 2, "{out}");
    let second = p.latest();
    assert_ne!(first, second);
    let m2 = p.manifest(&second);
    for s in ["load", "validate"] {
        assert_eq!(m2["stages"][s]["status"], "reused");
        assert_eq!(m2["stages"][s]["reused_from"], first.as_str());
    }

    // --force recomputes, with identical outputs.
    p.ok(&["run", "--force"]);
    let third = p.latest();
    let m3 = p.manifest(&third);
    for s in ["load", "validate"] {
        assert_eq!(m3["stages"][s]["status"], "succeeded");
        assert_eq!(
            m3["stages"][s]["fingerprint"],
            m["stages"][s]["fingerprint"]
        );
    }
}

#[test]
fn changed_configuration_reruns_only_what_depends_on_it() {
    let p = Project::new(true);
    p.ok(&["run", "--as-of", AS_OF]);
    p.ok(&[
        "run",
        "--as-of",
        AS_OF,
        "--set",
        "quality.duplicates.fail=50",
    ]);
    let m = p.manifest(&p.latest());
    assert_eq!(m["stages"]["load"]["status"], "reused");
    assert_eq!(m["stages"]["validate"]["status"], "succeeded");
}

#[test]
fn failed_stage_resumes_from_the_first_incomplete_stage_with_identical_outputs() {
    // Reference: an uninterrupted run, in another folder so nothing can be reused from it.
    let reference = Project::new(true);
    reference.ok(&["run", "--as-of", AS_OF, "--run-id", "reference"]);
    let p = Project::new(true);

    // The validate stage fails (after writing a first output), with no retry left.
    let o = p.mlpipe_env(
        &[
            "run",
            "--as-of",
            AS_OF,
            "--run-id",
            "r1",
            "--set",
            "stages.validate.retries=0",
        ],
        &[("MLPIPE_FAULTS", "validate=fail")],
    );
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("stage `validate`"), "{}", stderr(&o));
    let m = p.manifest("r1");
    assert_eq!(m["status"], "failed");
    assert_eq!(m["stages"]["load"]["status"], "succeeded");
    assert_eq!(m["stages"]["validate"]["status"], "failed");
    let load_started = m["stages"]["load"]["started_at"].clone();

    // Same run id, fault gone: load is not run again, validate is, outputs match the reference.
    let out = p.ok(&[
        "run",
        "--as-of",
        AS_OF,
        "--run-id",
        "r1",
        "--set",
        "stages.validate.retries=0",
    ]);
    assert!(out.contains("succeeded"), "{out}");
    let m = p.manifest("r1");
    assert_eq!(m["invocations"], 2);
    assert_eq!(m["stages"]["validate"]["attempts"], 2);
    assert_eq!(m["stages"]["load"]["attempts"], 1);
    assert_eq!(m["stages"]["load"]["started_at"], load_started);
    assert_eq!(
        p.outputs("r1", "validate"),
        reference.outputs("reference", "validate")
    );
}

#[test]
fn killed_process_resumes_with_identical_outputs() {
    let reference = Project::new(true);
    reference.ok(&["run", "--as-of", AS_OF, "--run-id", "reference"]);
    let p = Project::new(true);
    let o = p.mlpipe_env(
        &["run", "--as-of", AS_OF, "--run-id", "k1"],
        &[("MLPIPE_FAULTS", "validate=crash")],
    );
    assert_ne!(o.status.code(), Some(0));
    // The crash left the stage marked running, with an output written but not committed.
    let m = p.manifest("k1");
    assert_eq!(m["stages"]["validate"]["status"], "running");
    assert!(m["stages"]["validate"]["outputs"]
        .as_array()
        .unwrap()
        .is_empty());
    // A later run does not trust it: nothing was cached for validate.
    assert!(!p.path("runs/_cache/validate").exists());

    let out = p.ok(&["run", "--as-of", AS_OF, "--run-id", "k1"]);
    assert!(out.contains("succeeded"), "{out}");
    let m = p.manifest("k1");
    assert_eq!(m["stages"]["load"]["attempts"], 1);
    assert_eq!(m["stages"]["validate"]["status"], "succeeded");
    assert_eq!(
        p.outputs("k1", "validate"),
        reference.outputs("reference", "validate")
    );
}

#[test]
fn resume_without_force_reuses_the_identical_result_of_another_run() {
    let p = Project::new(true);
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "a"]);
    let o = p.mlpipe_env(
        &[
            "run",
            "--as-of",
            AS_OF,
            "--run-id",
            "b",
            "--force",
            "--set",
            "stages.validate.retries=0",
        ],
        &[("MLPIPE_FAULTS", "validate=fail")],
    );
    assert_eq!(o.status.code(), Some(4));
    p.ok(&[
        "run",
        "--as-of",
        AS_OF,
        "--run-id",
        "b",
        "--set",
        "stages.validate.retries=0",
    ]);
    let m = p.manifest("b");
    assert_eq!(m["status"], "succeeded");
    assert_eq!(m["stages"]["validate"]["status"], "reused");
    assert_eq!(m["stages"]["validate"]["reused_from"], "a");
}

#[test]
fn a_transient_failure_is_retried() {
    let p = Project::new(true);
    let o = p.mlpipe_env(
        &[
            "run",
            "--as-of",
            AS_OF,
            "--run-id",
            "retry",
            "--set",
            "stages.validate.retry_backoff=\"10ms\"",
        ],
        &[("MLPIPE_FAULTS", "validate=fail_once")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = p.manifest("retry");
    assert_eq!(m["stages"]["validate"]["attempts"], 2);
    assert_eq!(m["stages"]["validate"]["status"], "succeeded");
}

#[test]
fn a_hanging_stage_times_out() {
    let p = Project::new(true);
    let o = p.mlpipe_env(
        &[
            "run",
            "--run-id",
            "slow",
            "--set",
            "stages.validate.timeout=\"300ms\"",
            "--set",
            "stages.validate.retries=0",
        ],
        &[("MLPIPE_FAULTS", "validate=hang")],
    );
    assert_eq!(o.status.code(), Some(4));
    assert!(stderr(&o).contains("timed out"), "{}", stderr(&o));
    assert_eq!(p.manifest("slow")["stages"]["validate"]["status"], "failed");
}

#[test]
fn single_stage_takes_upstream_outputs_from_the_named_run() {
    let p = Project::new(true);
    p.ok(&["run", "--as-of", AS_OF, "--to", "load", "--run-id", "base"]);
    let m = p.manifest("base");
    assert_eq!(m["stages"]["validate"]["status"], "not_selected");
    p.ok(&[
        "run", "--as-of", AS_OF, "--stage", "validate", "--run-id", "base",
    ]);
    let m = p.manifest("base");
    assert_eq!(m["stages"]["load"]["attempts"], 1);
    assert_eq!(m["stages"]["validate"]["status"], "succeeded");
    // From another run: the upstream record is copied with its origin.
    p.ok(&["run", "--as-of", AS_OF, "--stage", "validate", "--force"]);
    let m = p.manifest(&p.latest());
    assert_eq!(m["stages"]["load"]["status"], "reused");
    assert_eq!(m["stages"]["load"]["reused_from"], "base");
}

#[test]
fn a_missing_upstream_output_names_the_stage_that_makes_it() {
    let p = Project::new(true);
    // A usage mistake (exit 2): the stage that makes the outputs, and how to run it.
    let o = p.mlpipe(&["run", "--stage", "validate"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("`load`") && e.contains("--to validate"), "{e}");
    p.ok(&["run", "--to", "load", "--run-id", "onlyload"]);
    let o = p.mlpipe(&["run", "--stage", "validate", "--run-id", "other-run"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "the latest run has load: {}",
        stderr(&o)
    );
}

#[test]
fn input_override_reads_another_location() {
    let p = Project::new(true);
    std::fs::rename(p.path("data/current"), p.path("elsewhere")).unwrap();
    let o = p.mlpipe(&["run"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("dataset `current`"), "{}", stderr(&o));
    let elsewhere = p.path("elsewhere");
    p.ok(&[
        "run",
        "--input",
        &format!("current={}", elsewhere.display()),
    ]);
    let m = p.manifest(&p.latest());
    assert!(
        m["inputs"]["current"]["url"]
            .as_str()
            .unwrap()
            .trim_end_matches('/')
            .ends_with("/elsewhere"),
        "{}",
        m["inputs"]
    );
}

#[test]
fn unknown_stage_and_bad_run_id_are_usage_errors() {
    let p = Project::new(true);
    let o = p.mlpipe(&["run", "--stage", "trian"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no such stage"), "{}", stderr(&o));
    let o = p.mlpipe(&["run", "--run-id", "../escape"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn json_logs_are_json_lines() {
    let p = Project::new(true);
    let o = p.mlpipe(&["run", "--log-format", "json"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    let mut n = 0;
    for line in out.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        n += 1;
    }
    assert!(n >= 4, "{out}");
    assert!(out.contains("\"run summary\""), "{out}");
}

/// The engine through the library, with artifacts in a `memory://` store: nothing touches disk
/// but the input files.
#[tokio::test]
async fn memory_store_runs_the_pipeline_in_process() {
    use mlpipe::config::{compile_file, Overrides};
    use mlpipe::engine::{self, manifest::StageStatus, RunOptions};
    use mlpipe::storage::Store;
    let data = format!("{REPO}/data");
    let ov = Overrides {
        set: vec![
            ("storage.data".into(), format!("\"{data}\"")),
            (
                "storage.artifacts".into(),
                "\"memory://it-memory/runs\"".into(),
            ),
            (
                "storage.registry".into(),
                "\"memory://it-memory/models\"".into(),
            ),
        ],
        as_of: Some(AS_OF.into()),
        ..Default::default()
    };
    let p = std::sync::Arc::new(
        compile_file(&format!("{REPO}/pipelines/engagement.toml"), &ov).unwrap(),
    );
    let opts = RunOptions {
        run_id: Some("mem".into()),
        ..Default::default()
    };
    let plan = engine::plan(&p, &opts).await.unwrap();
    let out = engine::execute(p.clone(), plan, &opts).await.unwrap();
    assert!(out.error.is_none());
    assert!(out
        .manifest
        .stages
        .values()
        .all(|r| r.status == StageStatus::Succeeded));
    let store = Store::open("memory://it-memory/runs").unwrap();
    let q: serde_json::Value = store
        .get_json("mem/validate/quality.json")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(q["datasets"]["customers"]["rows"], 20000);
    assert!(store.head("mem/manifest.json").await.unwrap().is_some());
    // A second plan in the same process sees the first run's results.
    let again = engine::plan(&p, &RunOptions::default()).await.unwrap();
    // Everything is reused but the kinds that run every time: the health check, which looks at
    // the registry, and the evaluation, which reads the history other runs add to.
    assert!(again
        .stages
        .iter()
        .filter(|s| s.kind.reusable())
        .all(|s| matches!(s.action, engine::Action::Reuse { .. })));
    assert!(again
        .stages
        .iter()
        .any(|s| s.kind == "evaluate" && matches!(s.action, engine::Action::Run)));
}

const STAGES: [&str; 11] = [
    "load",
    "validate",
    "prepare",
    "train_engagement",
    "train_churn",
    "train_ltv",
    "fairness",
    "score",
    "drift",
    "register",
    "health",
];

/// The committed outputs (name, SHA-256) of the stages whose outputs are data: not those that
/// record where and when (load's input fingerprints hold file paths and times, drift's report
/// names its inputs' URLs, register and health record times), nor a train stage's
/// `metrics.json`, which holds its training seconds.
pub fn all_outputs(p: &Project, run: &str) -> Vec<(String, Vec<(String, String)>)> {
    STAGES
        .iter()
        .filter(|s| !["load", "drift", "register", "health"].contains(s))
        .map(|s| {
            let mut o = p.outputs(run, s);
            o.retain(|(name, _)| !(s.starts_with("train_") && name == "metrics"));
            (s.to_string(), o)
        })
        .collect()
}

#[test]
fn killed_at_every_stage_and_at_random_moments_resumes_to_the_uninterrupted_result() {
    let reference = Project::new(true);
    let started = std::time::Instant::now();
    reference.ok(&["run", "--as-of", AS_OF, "--run-id", "k"]);
    let full = started.elapsed();
    let want = all_outputs(&reference, "k");
    let want_registry =
        registry_result(|m| std::fs::read(reference.path(&format!("models/{m}/state.json"))).ok());

    // 1. A crash inside each stage in turn (after its first output is written, before it is
    //    committed), each resumed by the next invocation of the same run.
    let p = Project::new(true);
    let mut crashes = 0;
    for stage in STAGES {
        // Stages run concurrently: one may have finished before another's crash stopped the
        // process. A finished stage is not run again, so it cannot crash.
        if p.path("runs/k/manifest.json").exists()
            && p.manifest("k")["stages"][stage]["status"] == "succeeded"
        {
            continue;
        }
        crashes += 1;
        let o = p.mlpipe_env(
            &["run", "--as-of", AS_OF, "--run-id", "k"],
            &[("MLPIPE_FAULTS", &format!("{stage}=crash"))],
        );
        assert_ne!(
            o.status.code(),
            Some(0),
            "{stage}: the crash did not happen"
        );
        assert_eq!(
            p.manifest("k")["stages"][stage]["status"],
            "running",
            "{stage}: a crash leaves the stage marked running"
        );
        all_files_whole(&p).unwrap_or_else(|e| panic!("after {stage}: {e}"));
    }
    assert!(
        crashes >= 8,
        "only {crashes} of {} stages crashed",
        STAGES.len()
    );
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "k"]);
    let got = registry_result(|m| std::fs::read(p.path(&format!("models/{m}/state.json"))).ok());
    assert_eq!(
        got, want_registry,
        "crash at every stage: the registry differs"
    );
    assert_eq!(all_outputs(&p, "k"), want, "crash at every stage");

    // 2. SIGKILL from outside at moments spread over a run, resumed until one invocation
    //    completes. The moments are fractions of the uninterrupted run's time (5 %, 10 %, ...),
    //    so they fall inside runs however fast this machine is at the moment.
    let p = Project::new(true);
    let mut kills = 0;
    for step in 1..=20u32 {
        let delay_ms = (full.as_millis() as u64) * u64::from(step) / 20;
        let mut child = std::process::Command::new(BIN)
            .current_dir(p.path(""))
            .args([
                "run",
                "--as-of",
                AS_OF,
                "--run-id",
                "k",
                "--log-format",
                "json",
            ])
            .env_remove("MLPIPE_FAULTS")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let killed = child.try_wait().unwrap().is_none();
        if killed {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        all_files_whole(&p).unwrap_or_else(|e| panic!("after {delay_ms} ms: {e}"));
        if !killed {
            break;
        }
    }
    assert!(kills >= 3, "only {kills} runs were still going when killed");
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "k"]);
    let got = registry_result(|m| std::fs::read(p.path(&format!("models/{m}/state.json"))).ok());
    assert_eq!(
        got, want_registry,
        "killed at random moments: the registry differs"
    );
    assert_eq!(all_outputs(&p, "k"), want, "killed at random moments");
}

#[test]
fn fits_beyond_max_concurrent_fits_wait_and_the_most_expensive_starts_first() {
    let p = Project::new(true);
    // ltv gets more trees than engagement; churn (logistic loss, 200 trees) costs most.
    let trees = "models.ltv.params.n_trees=250";
    let o = p.mlpipe(&[
        "run",
        "--as-of",
        AS_OF,
        "--log-format",
        "json",
        "--set",
        "run.max_concurrent_fits=1",
        "--set",
        trees,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The two cheaper fits say why they wait.
    let log = stdout(&o);
    let waiting: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("waits for a running fit to finish"))
        .collect();
    assert_eq!(waiting.len(), 2, "{log}");
    for s in ["train_ltv", "train_engagement"] {
        assert!(waiting.iter().any(|w| w.contains(s)), "{s}: {waiting:?}");
    }
    let one = p.latest();
    let m = p.manifest(&one);
    let at = |s: &str, k: &str| m["stages"][s][k].as_str().unwrap().to_string();
    let order = ["train_churn", "train_ltv", "train_engagement"];
    for w in order.windows(2) {
        // RFC 3339 in UTC with milliseconds: text order is time order.
        assert!(
            at(w[1], "started_at") >= at(w[0], "finished_at"),
            "{} started at {} before {} finished at {}",
            w[1],
            at(w[1], "started_at"),
            w[0],
            at(w[0], "finished_at")
        );
    }

    // The schedule changes when fits run, never what they produce.
    p.ok(&["run", "--as-of", AS_OF, "--force", "--set", trees]);
    let all = p.latest();
    for s in order {
        let model = |run: &str| {
            p.outputs(run, s)
                .into_iter()
                .find(|(n, _)| n == "model")
                .unwrap_or_else(|| panic!("{s} has no model output"))
        };
        assert_eq!(model(&one), model(&all), "{s}");
    }
}
