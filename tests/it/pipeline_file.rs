//! The pipeline file: every problem at once, exit code 2, and snapshots of `plan` and `graph`.

use crate::common::*;

#[test]
fn unknown_key_cycle_and_undefined_input_are_reported_together() {
    let p = Project::new(false);
    let text = std::fs::read_to_string(p.path("pipelines/engagement.toml")).unwrap();
    let bad = text
        // an unknown key
        .replace("stage_retries = 1", "stage_retries = 1\nstage_retires = 2")
        // a cycle: load now needs validate, which needs load
        .replace(
            "kind = \"load\"\n",
            "kind = \"load\"\nneeds = [\"validate\"]\n",
        )
        // an undefined input
        .replace(
            "datasets = [\"customers\", \"current\", \"outcomes\"]\n\n[stages.validate]",
            "datasets = [\"customers\", \"current\", \"outcomes\", \"orders\"]\n\n[stages.validate]",
        );
    std::fs::write(p.path("pipelines/bad.toml"), bad).unwrap();
    for cmd in ["validate", "run", "plan"] {
        let o = p.mlpipe(&[cmd, "pipelines/bad.toml"]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("has 3 problems"), "{e}");
        assert!(e.contains("run.stage_retires: unknown key"), "{e}");
        assert!(
            e.contains("stages: cycle load -> validate -> load")
                || e.contains("stages: cycle validate -> load -> validate"),
            "{e}"
        );
        assert!(
            e.contains("stages.load.datasets: unknown dataset `orders`"),
            "{e}"
        );
    }
    assert!(
        !p.path("runs").exists(),
        "a bad pipeline file must not start a run"
    );
}

#[test]
fn validate_accepts_the_default_pipeline() {
    let p = Project::new(false);
    let out = p.ok(&["validate"]);
    assert!(out.contains("is valid"), "{out}");
}

#[test]
fn a_missing_pipeline_file_is_a_usage_error() {
    let p = Project::new(false);
    let o = p.mlpipe(&["validate", "pipelines/nope.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read pipeline file pipelines/nope.toml"));
}

#[test]
fn plan_snapshot() {
    let p = Project::new(true);
    let out = p.ok(&["plan", "--run-id", "RUN"]);
    insta::assert_snapshot!("plan_default_pipeline", out);
    // After a run, the plan says what would be reused.
    p.ok(&["run", "--run-id", "first"]);
    let out = p.ok(&["plan", "--run-id", "RUN"]);
    assert!(out.contains("reuse outputs of run first"), "{out}");
}

#[test]
fn graph_snapshots() {
    let p = Project::new(false);
    insta::assert_snapshot!("graph_mermaid", p.ok(&["graph", "--format", "mermaid"]));
    insta::assert_snapshot!("graph_dot", p.ok(&["graph", "--format", "dot"]));
}
