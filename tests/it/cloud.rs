//! The cloud: the pipeline against a real S3-compatible server (`s3s-fs`, which checks SigV4
//! signatures and honours conditional writes) started on loopback, ECS container credentials,
//! concurrent registrations, and storage that fails part of the time. The Step Functions export
//! and the deployment files are in `deploy.rs`.

use std::path::PathBuf;
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
pub(crate) struct S3 {
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
    pub(crate) fn start_moto() -> S3 {
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
    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        if self.moto {
            let (status, body) = http(self.port, "GET", &format!("/{BUCKET}/{key}"), b"");
            (status == 200).then_some(body)
        } else {
            std::fs::read(self.object(key)).ok()
        }
    }

    pub(crate) fn json(&self, key: &str) -> serde_json::Value {
        serde_json::from_slice(&self.get(key).unwrap_or_else(|| panic!("no object {key}"))).unwrap()
    }

    pub(crate) fn start() -> S3 {
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

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment of a run whose three roots are in the bucket (`runs`/`models` under
    /// `prefix`), with the right credentials.
    pub(crate) fn env(&self, prefix: &str) -> Vec<(String, String)> {
        let mut e = self.aws_env();
        e.extend([
            ("AWS_ACCESS_KEY_ID".into(), KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET.into()),
        ]);
        e.extend(roots(prefix));
        e
    }

    /// Endpoint, region and plain HTTP, no credentials.
    pub(crate) fn aws_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    /// Where the server keeps an object (s3s-fs stores objects as files).
    pub(crate) fn object(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// Puts the project's fixtures under `data/` in the bucket.
    pub(crate) fn upload_fixtures(&self, p: &Project) {
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

pub(crate) fn roots(prefix: &str) -> Vec<(String, String)> {
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

pub(crate) fn run_env(
    p: &Project,
    args: &[&str],
    env: &[(String, String)],
) -> std::process::Output {
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
    // Two different sets of models (other seeds, other bins) to register, at the same time.
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
            .args(["engagement", "churn", "ltv"].iter().flat_map(|m| {
                [
                    "--set".to_string(),
                    format!(
                        "models.{m}.params.max_bins={}",
                        253 + seed.parse::<u32>().unwrap()
                    ),
                ]
            }))
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
