//! Telemetry: the run's metrics (every catalogued name, HELP text, promtool-clean), the final
//! push to a real Pushgateway, metrics of reused stages, EMF lines, and the run's cost.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The series of `metrics.prom` of run `run`.
fn metrics_prom(p: &Project, run: &str) -> String {
    std::fs::read_to_string(p.path(&format!("runs/{run}/metrics.prom"))).unwrap()
}

/// Value of the series `name` whose labels include every pair of `labels`.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    mlpipe::telemetry::parse_text(text)
        .into_iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|x| x.2)
}

#[test]
fn a_run_writes_every_metric_with_help_text_and_promtool_accepts_it() {
    let p = Project::new(true);
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "t1"]);
    let text = metrics_prom(&p, "t1");
    // Every catalogued metric appears (stage failures only when a stage fails, realized
    // accuracy only when outcomes arrive: tests/it/story.rs; the sql stages' in
    // tests/it/sql.rs).
    for d in mlpipe::telemetry::CATALOGUE {
        if d.name.starts_with("sql_")
            || [
                "pipeline_stage_failures_total",
                "model_accuracy_realized",
                "model_outcomes_joined",
                "realized_churn_rate",
                "realized_retention_rate",
            ]
            .contains(&d.name)
        {
            continue;
        }
        assert!(
            text.contains(&format!("# HELP {} ", d.name))
                && text.contains(&format!("\n{}", d.name)),
            "`{}` missing from metrics.prom:\n{text}",
            d.name
        );
    }
    assert_eq!(
        value(&text, "pipeline_runs_total", &[("status", "succeeded")]),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "data_rows", &[("dataset", "customers")]),
        Some(20_000.0)
    );
    let m = p.json("runs/t1/train_churn/metrics.json");
    assert_eq!(
        value(
            &text,
            "model_accuracy",
            &[("model", "churn"), ("metric", "auc")]
        ),
        m["metrics"]["auc"].as_f64(),
        "the metric is the number the stage wrote"
    );
    let scored = value(&text, "model_predictions_total", &[("model", "ltv")]).unwrap();
    assert_eq!(
        value(
            &text,
            "model_score_distribution",
            &[("model", "ltv"), ("upper_bound", "+Inf")]
        ),
        Some(scored)
    );
    for stage in ["load", "validate", "train_churn", "register", "health"] {
        assert!(
            value(
                &text,
                "pipeline_stage_duration_seconds",
                &[("stage", stage), ("status", "succeeded")]
            )
            .is_some(),
            "{stage}"
        );
    }
    // The run's cost: in the manifest and as a metric, the same number.
    let cost = p.manifest("t1")["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0 && cost < 4.42, "{cost}");
    assert_eq!(value(&text, "pipeline_run_cost_usd", &[]), Some(cost));
    // No label carries a customer id.
    assert_eq!(
        IdSet::new(&customer_ids(&p)).found(&text),
        None,
        "a customer id in metrics.prom"
    );
    // promtool's linter accepts the exposition.
    need("promtool", "prometheus");
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool check metrics:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
}

#[test]
fn reused_stages_report_their_metrics_again_and_emf_lines_parse() {
    let p = Project::new(true);
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "a"]);
    let o = p.mlpipe(&[
        "run",
        "--as-of",
        AS_OF,
        "--run-id",
        "b",
        "--emf",
        "--log-format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (a, b) = (metrics_prom(&p, "a"), metrics_prom(&p, "b"));
    assert_eq!(
        value(
            &b,
            "pipeline_stage_duration_seconds",
            &[("stage", "train_churn"), ("status", "reused")]
        ),
        Some(0.0)
    );
    for (name, labels) in [
        (
            "model_accuracy",
            vec![("model", "engagement"), ("metric", "r2")],
        ),
        ("feature_drift_ks", vec![("feature", "sessions_30d")]),
        (
            "data_quality_null_rate",
            vec![("dataset", "customers"), ("column", "email_open_rate")],
        ),
        (
            "model_fairness_parity",
            vec![("model", "churn"), ("attribute", "gender")],
        ),
    ] {
        assert!(value(&a, name, &labels).is_some(), "{name}");
        assert_eq!(value(&a, name, &labels), value(&b, name, &labels), "{name}");
    }
    // EMF: one JSON object per series with the CloudWatch envelope.
    let emf: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .filter(|l| l.contains("\"_aws\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let acc = emf
        .iter()
        .find(|e| e["model_accuracy"].is_number() && e["model"] == "churn" && e["metric"] == "auc")
        .expect("an EMF line for churn's AUC");
    assert_eq!(acc["_aws"]["CloudWatchMetrics"][0]["Namespace"], "mlpipe");
    assert_eq!(
        acc["model_accuracy"].as_f64(),
        value(
            &b,
            "model_accuracy",
            &[("model", "churn"), ("metric", "auc")]
        )
    );
}

/// A Pushgateway on a free loopback port, stopped when dropped.
struct Pushgateway {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `http://127.0.0.1:PORT/PATH` over a plain socket: the body of a 200 response.
fn http_get(url: &str) -> Option<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.") && head[8..].starts_with(" 200")).then(|| body.to_string())
}

fn start_pushgateway() -> Pushgateway {
    need("prometheus-pushgateway", "prometheus-pushgateway");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new("prometheus-pushgateway")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!(
            "--persistence.file={}",
            dir.path().join("pgw.db").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus-pushgateway");
    let url = format!("http://127.0.0.1:{port}");
    let pg = Pushgateway {
        child,
        url,
        _dir: dir,
    };
    let t0 = Instant::now();
    while http_get(&format!("{}/-/ready", pg.url)).is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the Pushgateway did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    pg
}

#[test]
fn metrics_reach_a_real_pushgateway_and_the_next_run_replaces_the_group() {
    let pg = start_pushgateway();
    let p = Project::new(true);
    let env = [("PROMETHEUS_PUSHGATEWAY_URL", pg.url.as_str())];
    let o = p.mlpipe_env(&["run", "--as-of", AS_OF, "--run-id", "p1"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got = http_get(&format!("{}/metrics", pg.url)).unwrap();
    let grouped = [("job", "mlpipe"), ("pipeline", "engagement")];
    let auc = value(
        &got,
        "model_accuracy",
        &[
            ("model", "churn"),
            ("metric", "auc"),
            grouped[0],
            grouped[1],
        ],
    );
    assert_eq!(
        auc,
        value(
            &metrics_prom(&p, "p1"),
            "model_accuracy",
            &[("model", "churn"), ("metric", "auc")]
        ),
        "the pushed value is the run's:\n{got}"
    );
    // A second run that only validates pushes a smaller set: the PUT replaces the whole group,
    // so the first run's model metrics are gone and the run counter is the new run's.
    let o = p.mlpipe_env(
        &[
            "run", "--as-of", AS_OF, "--run-id", "p2", "--stage", "load", "--stage", "validate",
        ],
        &env,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got = http_get(&format!("{}/metrics", pg.url)).unwrap();
    assert!(value(&got, "model_accuracy", &grouped).is_none(), "{got}");
    assert!(
        value(&got, "data_quality_schema_violations", &grouped).is_some(),
        "{got}"
    );
    assert_eq!(
        value(
            &got,
            "pipeline_runs_total",
            &[("status", "succeeded"), grouped[0]]
        ),
        Some(1.0)
    );
}

#[test]
fn a_pushgateway_that_is_down_does_not_fail_the_run() {
    let p = Project::new(true);
    let url = format!("http://127.0.0.1:{}", free_port());
    let o = p.mlpipe_env(
        &["run", "--as-of", AS_OF, "--run-id", "d", "--to", "validate"],
        &[("PROMETHEUS_PUSHGATEWAY_URL", url.as_str())],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("metrics were not pushed") && e.contains(&url),
        "{e}"
    );
    assert!(metrics_prom(&p, "d").contains("data_rows"));
}

#[tokio::test]
async fn metrics_are_served_over_http_while_a_run_lasts() {
    let t = mlpipe::telemetry::Telemetry::new("engagement");
    t.record(&[mlpipe::telemetry::Sample::new(
        "data_rows",
        &[("dataset", "customers")],
        7.0,
    )]);
    let (addr, task) = mlpipe::telemetry::serve("127.0.0.1:0", t.clone())
        .await
        .unwrap();
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    task.abort();
    assert_eq!(
        value(&body, "data_rows", &[("dataset", "customers")]),
        Some(7.0),
        "{body}"
    );
}

#[test]
fn dashboards_and_alerts_only_use_metrics_the_pipeline_emits() {
    let names: Vec<&str> = mlpipe::telemetry::CATALOGUE
        .iter()
        .map(|d| d.name)
        .collect();
    let prefixes = [
        "pipeline_",
        "data_",
        "model_",
        "feature_",
        "prediction_",
        "predicted_",
        "realized_",
        "average_",
        "customer_",
        "revenue_",
    ];
    for (file, least) in [
        ("monitoring/alert-rules.yml", 10),
        ("monitoring/alert-rules.test.yml", 10),
        ("monitoring/alert-rules.days.test.yml", 2),
        ("monitoring/grafana/mlpipe.json", 10),
    ] {
        let text = std::fs::read_to_string(std::path::Path::new(REPO).join(file)).unwrap();
        let mut used = 0;
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if prefixes.iter().any(|p| word.starts_with(p)) && !word.ends_with('_') {
                assert!(
                    names.contains(&word),
                    "{file} uses `{word}`, which mlpipe does not emit"
                );
                used += 1;
            }
        }
        assert!(used >= least, "{file}: {used} metric references");
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(std::path::Path::new(REPO).join("monitoring/grafana/mlpipe.json"))
            .unwrap(),
    )
    .unwrap();
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for widget in [
        "Model accuracy",
        "Fairness: demographic parity",
        "Prediction distribution",
        "Feature drift (KS statistic)",
        "Stage durations",
        "Production accuracy: churn AUC (realized, estimated, at training)",
        "Production accuracy: R² (realized, estimated, at training)",
        "Churn and retention: predicted and realized",
        "Customers by churn risk segment",
        "Revenue at risk",
    ] {
        assert!(
            titles.contains(&widget),
            "dashboard lacks `{widget}`: {titles:?}"
        );
    }
}

/// A set of ids to search texts for, as substrings.
struct IdSet {
    ids: std::collections::HashSet<Vec<u8>>,
    lens: std::collections::BTreeSet<usize>,
}

impl IdSet {
    fn new(ids: &[String]) -> Self {
        Self {
            ids: ids.iter().map(|s| s.as_bytes().to_vec()).collect(),
            lens: ids.iter().map(|s| s.len()).collect(),
        }
    }

    /// The first id that occurs anywhere in `text`.
    fn found(&self, text: &str) -> Option<String> {
        let t = text.as_bytes();
        for &n in &self.lens {
            for w in t.windows(n) {
                if self.ids.contains(w) {
                    return Some(String::from_utf8_lossy(w).into_owned());
                }
            }
        }
        None
    }
}

/// A Parquet table's values as text, one line per column value (columns that have no text form
/// are left out).
fn parquet_text(f: &std::path::Path) -> String {
    let b = read_parquet(f);
    let mut s = String::new();
    for c in b.columns() {
        if let Ok(t) = arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8) {
            let t = t
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            for v in t.iter().flatten() {
                s.push_str(v);
                s.push('\n');
            }
        }
    }
    s
}

/// Every customer id of the fixtures' input.
fn customer_ids(p: &Project) -> Vec<String> {
    let mut ids = column_text(&p.path("data"), "customer_id");
    ids.retain(|id| !id.is_empty());
    ids
}

#[test]
fn json_logs_carry_the_documented_fields_and_no_customer_id() {
    let p = Project::new(true);
    let o = p.mlpipe(&[
        "run",
        "--as-of",
        AS_OF,
        "--run-id",
        "j1",
        "--log-format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let mut traces = std::collections::BTreeSet::new();
    let mut functions = std::collections::BTreeSet::new();
    for line in out.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for k in [
            "timestamp",
            "level",
            "service",
            "function",
            "run_id",
            "trace_id",
            "span_id",
            "model_version",
        ] {
            assert!(v.get(k).is_some(), "`{k}` missing: {line}");
        }
        assert_eq!(v["service"], "mlpipe");
        functions.insert(v["function"].as_str().unwrap().to_string());
        // Every line of a stage is in the run's trace (the summary printed after the run is
        // outside it).
        if v["function"] != "mlpipe" {
            assert_eq!(v["run_id"], "j1", "{line}");
            traces.insert(
                v["trace_id"]
                    .as_str()
                    .expect("a trace id inside the run")
                    .to_string(),
            );
        }
    }
    assert_eq!(traces.len(), 1, "one trace for the run: {traces:?}");
    for stage in [
        "load",
        "validate",
        "train_churn",
        "score",
        "register",
        "health",
    ] {
        assert!(
            functions.contains(stage),
            "no log line from `{stage}`: {functions:?}"
        );
    }
    assert!(
        out.lines()
            .any(|l| l.contains("\"model_version\":\"churn_v1\"")),
        "register/health lines name the model version"
    );
    // No customer id anywhere in what the run printed or wrote: every file under runs/ (the
    // run, the stage cache) and models/ (the registry), Parquet tables decoded to text.
    let ids = customer_ids(&p);
    assert!(ids.len() >= 40_000, "{}", ids.len());
    let ids = IdSet::new(&ids);
    let printed = format!("{out}{}", stderr(&o));
    assert_eq!(
        ids.found(&printed),
        None,
        "a customer id in the run's output"
    );
    let mut files = 0;
    for dir in ["runs", "models"] {
        for f in files_under(&p.path(dir)) {
            let text = if f.extension().is_some_and(|x| x == "parquet") {
                parquet_text(&f)
            } else {
                String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned()
            };
            assert_eq!(ids.found(&text), None, "a customer id in {}", f.display());
            files += 1;
        }
    }
    assert!(files > 30, "searched only {files} files");
    // Control: with no column declared personal data, the search finds the ids in the tables.
    let o = p.mlpipe(&[
        "run",
        "--as-of",
        AS_OF,
        "--run-id",
        "clear",
        "--set",
        "datasets.customers.pii=[]",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let clean = p.path("runs/clear/validate/customers/clean.parquet");
    assert!(
        ids.found(&parquet_text(&clean)).is_some(),
        "the search misses ids in clear"
    );
    // The tables still identify customers: by pseudonym, the same one in every table.
    let scores = read_parquet(&p.path("runs/j1/score/scores.parquet"));
    let key = scores.column_by_name("customer_id").unwrap();
    let key = key
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    assert!(key
        .iter()
        .flatten()
        .all(|k| k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit())));
    let clean = read_parquet(&p.path("runs/j1/validate/current/clean.parquet"));
    assert_eq!(
        clean.column_by_name("customer_id").unwrap().as_ref(),
        key as &dyn arrow::array::Array
    );
}

/// An attribute of an exported span as text (the fake collector keeps the protobuf value's
/// Debug form, e.g. `Some(AnyValue { value: Some(StringValue("o1")) })`).
fn attr(s: &fake_opentelemetry_collector::ExportedSpan, key: &str) -> String {
    let raw = s
        .attributes
        .get(key)
        .unwrap_or_else(|| panic!("{}: no `{key}`", s.name));
    let inner = raw
        .split_once("Value(")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(v, _)| v)
        .unwrap_or(raw);
    inner.trim_matches('"').to_string()
}

/// Runs mlpipe on a blocking thread (the test's runtime keeps serving the collector).
async fn mlpipe_async(
    p: std::sync::Arc<Project>,
    args: Vec<String>,
    env: Vec<(String, String)>,
) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        p.mlpipe_env(&a, &e)
    })
    .await
    .unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_receiver_gets_one_span_per_stage_under_one_root_span() {
    let mut collector = fake_opentelemetry_collector::FakeCollectorServer::start()
        .await
        .unwrap();
    let p = std::sync::Arc::new(Project::new(true));
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            collector.endpoint(),
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL".to_string(),
            "grpc".to_string(),
        ),
    ];
    // A successful run.
    let o = mlpipe_async(
        p.clone(),
        strings(&["run", "--as-of", AS_OF, "--run-id", "o1"]),
        env.clone(),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let spans = collector
        .exported_spans(10_000, Duration::from_secs(3))
        .await;
    let roots: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(
        roots.len(),
        1,
        "one root: {:?}",
        roots.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let root = roots[0];
    assert_eq!(root.name, "run engagement");
    assert_eq!(attr(root, "run_id"), "o1");
    let stages: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id == root.span_id)
        .collect();
    let mut names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "drift",
            "evaluate",
            "fairness",
            "health",
            "load",
            "prepare",
            "register",
            "score",
            "train_churn",
            "train_engagement",
            "train_ltv",
            "validate"
        ],
        "one span per stage, children of the root"
    );
    for s in &stages {
        for k in [
            "pipeline", "run_id", "stage", "attempt", "rows_in", "rows_out", "status",
        ] {
            assert!(
                s.attributes.contains_key(k),
                "{}: no `{k}` in {:?}",
                s.name,
                s.attributes
            );
        }
        assert_eq!(attr(s, "status"), "succeeded");
        assert!(spans.iter().all(|x| x.trace_id == root.trace_id));
    }
    let span_of = |name: &str| stages.iter().find(|s| s.name == name).unwrap();
    assert_eq!(attr(span_of("load"), "rows_in"), "40000");
    let children = |parent: &str, name: &str| {
        let id = &span_of(parent).span_id;
        spans
            .iter()
            .filter(|s| &s.parent_span_id == id && s.name == name)
            .count()
    };
    assert_eq!(children("train_churn", "fit"), 1);
    assert!(children("score", "predict") >= 3);
    assert!(children("validate", "write") >= 3);
    assert!(children("validate", "load") >= 1);

    // A failing run: its spans arrive too, the failed stage and the root marked as errors.
    let mut env_fail = env.clone();
    env_fail.push(("MLPIPE_FAULTS".into(), "train_ltv=fail".into()));
    let o = mlpipe_async(
        p.clone(),
        strings(&["run", "--as-of", AS_OF, "--run-id", "o2", "--force"]),
        env_fail,
    )
    .await;
    assert_ne!(o.status.code(), Some(0));
    let spans = collector
        .exported_spans(10_000, Duration::from_secs(3))
        .await;
    let root = spans
        .iter()
        .find(|s| s.parent_span_id.is_empty())
        .expect("the failed run's root span");
    assert_eq!(attr(root, "run_id"), "o2");
    assert_eq!(
        root.status.as_ref().map(|s| s.code.as_str()),
        Some("STATUS_CODE_ERROR")
    );
    let failed = spans
        .iter()
        .find(|s| s.name == "train_ltv" && s.parent_span_id == root.span_id)
        .unwrap();
    assert_eq!(attr(failed, "status"), "failed");
    assert_eq!(
        failed.status.as_ref().map(|s| s.code.as_str()),
        Some("STATUS_CODE_ERROR")
    );
    assert!(spans
        .iter()
        .any(|s| s.name == "validate" && s.parent_span_id == root.span_id));
}

#[test]
fn spans_are_exported_over_otlp_http_too() {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(String, String, Vec<u8>)>();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut request_line = String::new();
            if r.read_line(&mut request_line).is_err() {
                continue;
            }
            let (mut len, mut ctype) = (0usize, String::new());
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                let lower = h.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if let Some(v) = lower.strip_prefix("content-type:") {
                    ctype = v.trim().to_string();
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send((request_line, ctype, body));
        }
    });
    let p = Project::new(true);
    let endpoint = format!("http://{addr}");
    let o = p.mlpipe_env(
        &[
            "run", "--as-of", AS_OF, "--run-id", "h1", "--to", "validate",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut got = Vec::new();
    while let Ok(r) = rx.recv_timeout(Duration::from_secs(3)) {
        got.push(r);
    }
    assert!(!got.is_empty(), "no OTLP/HTTP request arrived");
    let (line, ctype, _) = &got[0];
    assert!(line.starts_with("POST /v1/traces "), "{line}");
    assert_eq!(ctype, "application/x-protobuf");
    let all: Vec<u8> = got.iter().flat_map(|g| g.2.clone()).collect();
    let text = String::from_utf8_lossy(&all);
    for name in ["run engagement", "validate", "h1", "mlpipe"] {
        assert!(text.contains(name), "`{name}` not in the exported spans");
    }
}

#[test]
fn span_timings_are_logged_when_asked_for() {
    let p = Project::new(true);
    let run = |id: &str, env: &[(&str, &str)]| {
        let o = p.mlpipe_env(
            &[
                "run",
                "--as-of",
                AS_OF,
                "--run-id",
                id,
                "--to",
                "train_churn",
                "--force",
                "--log-format",
                "json",
            ],
            env,
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stdout(&o)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["message"] == "close")
            .collect::<Vec<_>>()
    };
    assert!(
        run("s0", &[]).is_empty(),
        "span lines without MLPIPE_LOG_SPANS"
    );
    let closed = run("s1", &[("MLPIPE_LOG_SPANS", "1")]);
    // The training stage's steps, each with its busy and idle time, in the stage's function.
    for step in ["fit", "predict", "estimator"] {
        let line = closed
            .iter()
            .find(|v| v["span"] == step && v["function"] == "train_churn")
            .unwrap_or_else(|| panic!("no closed `{step}` span of train_churn in {closed:?}"));
        assert_eq!(line["model"], "churn", "{line}");
        for t in ["time.busy", "time.idle"] {
            assert!(
                line[t].as_str().is_some_and(|s| s.ends_with('s')),
                "{t}: {line}"
            );
        }
    }
}
