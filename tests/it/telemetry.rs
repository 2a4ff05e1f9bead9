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
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
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

fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: run scripts/test.sh (it installs it) or `apt-get install {package}`"
    );
}

#[test]
fn a_run_writes_every_metric_with_help_text_and_promtool_accepts_it() {
    let p = Project::new(true);
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "t1"]);
    let text = metrics_prom(&p, "t1");
    // Every catalogued metric appears (stage failures only when a stage fails).
    for d in mlpipe::telemetry::CATALOGUE {
        if d.name == "pipeline_stage_failures_total" {
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
    let clean = read_parquet(&p.path("runs/t1/validate/customers/clean.parquet"));
    let ids = clean
        .column_by_name("customer_id")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap()
        .clone();
    for id in ids.iter().flatten().take(2000) {
        assert!(!text.contains(id), "customer id {id} in metrics.prom");
    }
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    ];
    for file in [
        "monitoring/alert-rules.yml",
        "monitoring/alert-rules.test.yml",
        "monitoring/grafana/mlpipe.json",
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
        assert!(used > 10, "{file}: {used} metric references");
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
    ] {
        assert!(
            titles.contains(&widget),
            "dashboard lacks `{widget}`: {titles:?}"
        );
    }
}
