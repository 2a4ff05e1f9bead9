//! Telemetry: the run's metrics and the events that produce them.
//!
//! Every figure a run reports goes through an [`Event`](events::Event): one call logs it (a
//! structured log line) and turns it into [`Sample`]s recorded through the `metrics` facade into
//! this run's Prometheus recorder — so a log line and its metric can never disagree. A stage's
//! samples are kept in its manifest record, so a stage reused from an earlier run reports the
//! same metrics again and the run's metric set is complete whatever was recomputed.
//!
//! At the end of a run the metrics are written to `runs/<id>/metrics.prom`, pushed to a
//! Pushgateway when `PROMETHEUS_PUSHGATEWAY_URL` is set (one final PUT, which replaces the
//! pipeline's group), optionally printed as CloudWatch Embedded Metric Format lines, and served
//! on `/metrics` while the run lasts when `--metrics-addr` is given.

pub mod events;
pub mod logs;

use std::sync::Arc;

use ::metrics::{Key, Label, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use serde::{Deserialize, Serialize};

pub use events::Event;

/// How a metric accumulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One metric the pipeline emits.
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn gauge(name: &'static str, help: &'static str) -> MetricDef {
    MetricDef {
        name,
        kind: Kind::Gauge,
        help,
    }
}
const fn counter(name: &'static str, help: &'static str) -> MetricDef {
    MetricDef {
        name,
        kind: Kind::Counter,
        help,
    }
}

/// Every metric, with its HELP text (units are in the names and the texts).
pub const CATALOGUE: &[MetricDef] = &[
    counter("pipeline_runs_total", "Runs of the pipeline by final status (succeeded, failed); a run counts once."),
    gauge("pipeline_run_duration_seconds", "Wall time of the run, in seconds."),
    gauge("pipeline_stage_duration_seconds", "Wall time of each stage of the run, in seconds (0 for a stage reused from an earlier run)."),
    counter("pipeline_stage_failures_total", "Failed stage attempts in the run, by stage (retried attempts included)."),
    gauge("pipeline_last_success_timestamp_seconds", "Unix time at which the pipeline last finished a run successfully, in seconds."),
    gauge("pipeline_run_cost_usd", "Estimated Fargate cost of the run (task vCPU and memory x duration x price), in US dollars."),
    gauge("data_rows", "Rows read, by dataset."),
    gauge("sql_rows_in", "Rows of the files a sql stage's query opened, per input table (from their footers), by stage and table."),
    gauge("sql_rows_read", "Rows the scans of a sql stage's query passed on, per input table (sql_rows_in less what the filters pushed into the scan dropped), by stage and table."),
    gauge("sql_bytes_scanned", "Bytes a sql stage's query read from each input table's files, by stage and table (Athena's \"data scanned\")."),
    gauge("sql_rows_written", "Rows of the table a sql stage's query produced, by stage."),
    gauge("data_quality_null_rate", "Share of null values (0-1), by dataset and column."),
    gauge("data_quality_schema_violations", "Records that violate the declared schema, by dataset."),
    gauge("data_quality_outlier_rate", "Share of values outside the 1.5 IQR fences (0-1), by dataset and numeric column."),
    gauge("data_quality_duplicate_records", "Records whose primary key repeats an earlier record's, by dataset."),
    gauge("data_freshness_seconds", "Age of the newest record relative to the run's as-of time, in seconds, by dataset (data_freshness_hours of the monitoring strategy, in Prometheus' base unit)."),
    gauge("model_accuracy", "Holdout metric of the model trained in the run, by model and metric (r2, rmse, mae, auc, log_loss, brier, precision, recall, f1)."),
    gauge("model_training_duration_seconds", "Time to fit the model, in seconds, by model."),
    gauge("model_fairness_parity", "Demographic parity ratio (lowest over highest group selection rate, 0-1), by model and sensitive attribute."),
    gauge("model_fairness_equal_opportunity", "Equal-opportunity ratio (lowest over highest group true-positive rate, 0-1), by binary model and sensitive attribute."),
    gauge("feature_drift_ks", "Two-sample Kolmogorov-Smirnov statistic between training and current data (0-1), by numeric feature."),
    gauge("feature_drift_p_value", "p-value of the drift test (scipy's ks_2samp for numeric features, chi-square for categorical ones), by feature."),
    gauge("feature_drift_psi", "Population stability index between training and current data, by feature."),
    gauge("prediction_drift_ks", "KS statistic between holdout predictions and current customers' scores (0-1), by model."),
    gauge("model_health", "1 when the production model is healthy, 0 when retraining is due, by model."),
    gauge("model_last_updated_timestamp", "Unix time at which the production model was registered, in seconds, by model."),
    counter("model_predictions_total", "Predictions written by the score stage, by model."),
    gauge("model_score_distribution", "Current customers whose score is at most `upper_bound`, by model (cumulative counts, like histogram buckets)."),
    gauge("model_calibration_error", "Expected calibration error of a binary model's probabilities on the holdout, after its calibrator (0-1), by model."),
    gauge("model_accuracy_estimated", "Performance estimated on the current customers before outcomes are known (CBPE for binary models, DLE for regression), by model and metric."),
    gauge("model_accuracy_estimated_lower", "Lower end of the estimate's band (three sampling errors), by model and metric."),
    gauge("model_accuracy_estimated_upper", "Upper end of the estimate's band (three sampling errors), by model and metric."),
    gauge("model_accuracy_realized", "Performance realized on the latest scored cohort with known outcomes, by model, registry version and metric."),
    gauge("model_outcomes_joined", "Known outcomes joined with scores in the evaluation, by model and registry version."),
    gauge("model_accuracy_observed", "The accuracy the health check used (realized, else estimated, else the training holdout; `source` says which), by model and metric."),
    gauge("model_accuracy_below_gate_evaluations", "Health evaluations in a row with accuracy below a gate, by model; retraining is due at evaluation_periods (3)."),
    gauge("predicted_churn_rate", "Mean churn probability of the current customers: the expected share that churns (0-1)."),
    gauge("predicted_retention_rate", "1 - predicted_churn_rate (0-1)."),
    gauge("realized_churn_rate", "Share of the latest evaluated cohort's customers who churned (0-1)."),
    gauge("realized_retention_rate", "1 - realized_churn_rate (0-1)."),
    gauge("average_predicted_ltv_dollars", "Mean predicted 12-month lifetime value of the current customers, in US dollars."),
    gauge("average_engagement_score", "Mean predicted engagement score of the current customers (0-1)."),
    counter("customer_segments_total", "Current customers scored in the run, by churn-risk segment (segments from [business] risk_segments)."),
    gauge("revenue_impact_dollars", "Revenue at risk: sum over current customers of predicted LTV x churn probability, in US dollars."),
];

fn def(name: &str) -> Option<&'static MetricDef> {
    CATALOGUE.iter().find(|d| d.name == name)
}

/// One recorded value: a metric name from [`CATALOGUE`], its labels, and the value (set for a
/// gauge, added for a counter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn new(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }
}

/// The metrics of one run.
#[derive(Clone)]
pub struct Telemetry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    pub pipeline: String,
}

impl Telemetry {
    pub fn new(pipeline: &str) -> Telemetry {
        let recorder = PrometheusBuilder::new().build_recorder();
        for d in CATALOGUE {
            let name = ::metrics::KeyName::from_const_str(d.name);
            match d.kind {
                Kind::Counter => recorder.describe_counter(name, None, d.help.into()),
                Kind::Gauge => recorder.describe_gauge(name, None, d.help.into()),
            }
        }
        Telemetry {
            handle: recorder.handle(),
            recorder: Arc::new(recorder),
            pipeline: pipeline.to_string(),
        }
    }

    /// Records samples in this run's recorder. Names outside the catalogue are a programming
    /// error and are dropped (with a debug assertion).
    pub fn record(&self, samples: &[Sample]) {
        static META: ::metrics::Metadata<'static> =
            ::metrics::Metadata::new("mlpipe", ::metrics::Level::INFO, Some(module_path!()));
        for s in samples {
            let Some(d) = def(&s.name) else {
                debug_assert!(false, "metric `{}` is not in the catalogue", s.name);
                continue;
            };
            let labels: Vec<Label> = s
                .labels
                .iter()
                .map(|(k, v)| Label::new(k.clone(), v.clone()))
                .collect();
            let key = Key::from_parts(d.name, labels);
            match d.kind {
                Kind::Counter => self
                    .recorder
                    .register_counter(&key, &META)
                    .increment(s.value.max(0.0) as u64),
                Kind::Gauge => self.recorder.register_gauge(&key, &META).set(s.value),
            }
        }
    }

    /// Logs an event and records its samples at once (for events of the run itself; a stage
    /// emits through `StageCtx::emit`, which keeps its samples for the manifest).
    pub fn emit(&self, e: Event) {
        e.log();
        self.record(&e.samples());
    }

    /// The metrics in the Prometheus text format (what `metrics.prom` holds).
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// The metrics as CloudWatch Embedded Metric Format lines: one JSON object per series, the
    /// labels as dimensions, in namespace `mlpipe`.
    pub fn emf_lines(&self, timestamp_ms: i64) -> Vec<String> {
        parse_text(&self.render())
            .into_iter()
            .map(|(name, labels, value)| {
                let mut o = serde_json::Map::new();
                let dims: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
                o.insert(
                    "_aws".into(),
                    serde_json::json!({
                        "Timestamp": timestamp_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": "mlpipe",
                            "Dimensions": [dims],
                            "Metrics": [{ "Name": name, "Unit": emf_unit(&name) }],
                        }],
                    }),
                );
                for (k, v) in &labels {
                    o.insert(k.clone(), serde_json::Value::String(v.clone()));
                }
                o.insert(name.clone(), serde_json::json!(value));
                serde_json::Value::Object(o).to_string()
            })
            .collect()
    }

    /// Pushes the metrics to a Pushgateway: one PUT to the group `job=mlpipe,
    /// pipeline=<name>`, which replaces what the previous run of the pipeline pushed. Retried
    /// three times; the error says where it failed.
    pub async fn push(&self, gateway: &str) -> std::result::Result<(), String> {
        let url = format!(
            "{}/metrics/job/mlpipe/pipeline/{}",
            gateway.trim_end_matches('/'),
            self.pipeline
        );
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let body = self.render();
        let mut last = String::new();
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
            }
            match client
                .put(&url)
                .header("content-type", "text/plain; version=0.0.4")
                .body(body.clone())
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => {
                    let status = r.status();
                    last = format!("{status}: {}", r.text().await.unwrap_or_default().trim());
                    if status.is_client_error() {
                        break;
                    }
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("pushing metrics to {url} failed: {last}"))
    }
}

fn emf_unit(name: &str) -> &'static str {
    if name.ends_with("_seconds") {
        "Seconds"
    } else if name.ends_with("_total")
        || name.ends_with("_records")
        || name.ends_with("_violations")
        || name == "data_rows"
        || name.starts_with("sql_rows")
    {
        "Count"
    } else if name.ends_with("_bytes_scanned") {
        "Bytes"
    } else {
        "None"
    }
}

/// The series of a Prometheus text exposition: name, labels, value.
pub fn parse_text(text: &str) -> Vec<(String, Vec<(String, String)>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((n, rest)) => {
                let body = rest.trim_end_matches('}');
                let mut labels = Vec::new();
                let mut rest = body;
                while let Some((k, v)) = rest.split_once("=\"") {
                    // Values are escaped: find the closing quote that is not escaped.
                    let mut end = 0;
                    let bytes = v.as_bytes();
                    while end < bytes.len()
                        && !(bytes[end] == b'"' && (end == 0 || bytes[end - 1] != b'\\'))
                    {
                        end += 1;
                    }
                    labels.push((
                        k.trim_start_matches(',').to_string(),
                        v[..end].replace("\\\"", "\"").replace("\\\\", "\\"),
                    ));
                    rest = v.get(end + 1..).unwrap_or("");
                }
                (n.to_string(), labels)
            }
        };
        out.push((name, labels, value));
    }
    out
}

/// Serves the run's metrics on `http://ADDR/metrics` (any path) until the returned task is
/// aborted. A minimal HTTP/1.1 responder: one response per connection.
pub async fn serve(
    addr: &str,
    telemetry: Telemetry,
) -> std::result::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics-addr {addr}: cannot listen: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let t = telemetry.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let body = t.render();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok((local, task))
}

/// The estimated Fargate cost of a run of `seconds` (billed per second, one-minute minimum).
/// Task size and prices come from `MLPIPE_TASK_VCPU` (default 2), `MLPIPE_TASK_MEMORY_GB`
/// (default 8), `MLPIPE_FARGATE_VCPU_HOUR_USD` (default 0.04048) and
/// `MLPIPE_FARGATE_GB_HOUR_USD` (default 0.004445): Linux/x86 on-demand in us-east-1.
pub fn fargate_cost_usd(seconds: f64) -> f64 {
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .unwrap_or(d)
    };
    let vcpu = env("MLPIPE_TASK_VCPU", 2.0);
    let mem = env("MLPIPE_TASK_MEMORY_GB", 8.0);
    let hours = seconds.max(60.0) / 3600.0;
    hours
        * (vcpu * env("MLPIPE_FARGATE_VCPU_HOUR_USD", 0.04048)
            + mem * env("MLPIPE_FARGATE_GB_HOUR_USD", 0.004445))
}

/// `mask_pii` of the monitoring strategy's logging: the first 12 hex characters of the SHA-256
/// of the value.
pub fn mask_pii(value: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(value.as_bytes()))[..12].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_render_with_help_and_parse_back() {
        let t = Telemetry::new("engagement");
        t.record(&[
            Sample::new(
                "model_accuracy",
                &[("model", "churn"), ("metric", "auc")],
                0.87,
            ),
            Sample::new(
                "pipeline_runs_total",
                &[("pipeline", "engagement"), ("status", "succeeded")],
                1.0,
            ),
            Sample::new("data_rows", &[("dataset", "a \"quoted\" name")], 20_000.0),
        ]);
        let text = t.render();
        assert!(
            text.contains("# HELP model_accuracy Holdout metric"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE pipeline_runs_total counter"),
            "{text}"
        );
        let parsed = parse_text(&text);
        assert!(parsed.contains(&(
            "model_accuracy".into(),
            vec![
                ("model".into(), "churn".into()),
                ("metric".into(), "auc".into())
            ],
            0.87
        )));
        assert!(parsed.contains(&(
            "data_rows".into(),
            vec![("dataset".into(), "a \"quoted\" name".into())],
            20_000.0
        )));
        let emf = t.emf_lines(1_700_000_000_000);
        let line: serde_json::Value =
            serde_json::from_str(emf.iter().find(|l| l.contains("model_accuracy")).unwrap())
                .unwrap();
        assert_eq!(line["model_accuracy"], 0.87);
        assert_eq!(line["model"], "churn");
        assert_eq!(
            line["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][1],
            "metric"
        );
    }

    #[test]
    fn mask_pii_is_the_first_12_hex_characters_of_sha256() {
        // Python: hashlib.sha256(b"CUST-000001").hexdigest()[:12]
        assert_eq!(mask_pii("CUST-000001"), "c516218ff77d");
    }

    #[test]
    fn fargate_cost_bills_a_minute_at_least() {
        let one_minute = fargate_cost_usd(1.0);
        assert!((one_minute - fargate_cost_usd(60.0)).abs() < 1e-15);
        // 2 vCPU and 8 GB for an hour at the default prices.
        assert!((fargate_cost_usd(3600.0) - (2.0 * 0.04048 + 8.0 * 0.004445)).abs() < 1e-12);
    }
}
