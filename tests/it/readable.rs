//! Snapshots (insta) of what a person reads: the run summary, `plan` (in pipeline_file.rs),
//! `registry show`, `health`, and `validate`'s list of problems. Times, run ids, paths and
//! durations are redacted; everything else — metrics, decisions, SHA-256 of the artifacts — is
//! deterministic and compared as it is.

use crate::common::*;

/// Snapshot settings that mask what changes from run to run or machine to machine.
fn redacted(p: &Project) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    let dir = p.dir.path().to_str().unwrap().to_string();
    s.add_filter(&regex_escape(&dir), "[PROJECT]");
    // RFC 3339 times and dates.
    s.add_filter(
        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})",
        "[TIME]",
    );
    s.add_filter(r"\d{4}-\d{2}-\d{2}", "[DATE]");
    // Run ids made from the clock.
    s.add_filter(r"\d{8}T\d{6}Z-[0-9a-f]{4}", "[RUN]");
    // Durations, and the training time in minutes the registry records.
    s.add_filter(r"\d+\.\d+ s\b", "[SECS]");
    s.add_filter(
        r#""training_duration_min": [0-9.e-]+"#,
        r#""training_duration_min": [MIN]"#,
    );
    s.add_filter(r"-?\d+ days since", "[DAYS] days since");
    s.add_filter(r"[0-9.]+ ms per 1 000 rows", "[MS] ms per 1 000 rows");
    s
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '_' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

#[test]
fn the_run_summary_registry_and_health_read_as_before() {
    let p = Project::new(true);
    let summary = p.ok(&["run", "--as-of", AS_OF, "--run-id", "snap"]);
    let show = p.ok(&["registry", "show", "churn@1"]);
    let list = p.ok(&["registry", "list"]);
    let health = p.ok(&["health", "--as-of", AS_OF]);
    redacted(&p).bind(|| {
        insta::assert_snapshot!("run_summary", summary);
        insta::assert_snapshot!("registry_show_version", show);
        insta::assert_snapshot!("registry_list", list);
        insta::assert_snapshot!("health", health);
    });
}

#[test]
fn validate_lists_every_problem_of_a_pipeline_file() {
    let p = Project::new(false);
    let text = std::fs::read_to_string(p.path("pipelines/engagement.toml")).unwrap();
    let bad = text
        .replace("stage_retries = 1", "stage_retries = 1\nstage_retires = 2")
        .replace("\"r2 >= 0.75\"", "\"r2 >= 0.75\", \"auc >= 0.9\"")
        .replace("kind = \"drift\"", "kind = \"drfit\"");
    std::fs::write(p.path("pipelines/bad.toml"), bad).unwrap();
    let o = p.mlpipe(&["validate", "pipelines/bad.toml"]);
    assert_eq!(o.status.code(), Some(2));
    redacted(&p).bind(|| insta::assert_snapshot!("validate_problems", stderr(&o)));
}
