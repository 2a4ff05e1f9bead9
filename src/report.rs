//! `runs/<id>/report.html`: one self-contained page a person reads after a run — the stage
//! timeline, the quality checks, each model's metrics against its gates and the registry's
//! decision, fairness per group with intervals, drift per feature and the score distributions.
//! Charts are inline SVG and styles inline CSS: the page loads nothing from anywhere.
//!
//! Everything comes from what the run recorded (manifest, stage outputs, metric samples), so a
//! report can be rebuilt from the artifacts alone.

use std::fmt::Write as _;

use serde_json::Value;

use crate::engine::manifest::{Manifest, StageRecord};
use crate::storage::Store;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        None => "—".into(),
        Some(x) if x != 0.0 && x.abs() < 1e-3 => format!("{x:.2e}"),
        Some(x) if x.fract() == 0.0 && x.abs() < 1e12 => format!("{x:.0}"),
        Some(x) => format!("{x:.4}"),
    }
}

/// A horizontal bar chart: one row per item, an optional threshold line.
fn bars(items: &[(String, f64, bool)], max: f64, threshold: Option<f64>, unit: &str) -> String {
    let (w, label_w, row) = (640.0, 190.0, 22.0);
    let h = row * items.len() as f64 + 10.0;
    let max = if max > 0.0 { max } else { 1.0 };
    let scale = (w - label_w - 70.0) / max;
    let mut s =
        format!(r#"<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">"#);
    for (i, (label, v, bad)) in items.iter().enumerate() {
        let y = i as f64 * row + 4.0;
        let len = (v.max(0.0) * scale).max(1.0);
        let color = if *bad { "#d9534f" } else { "#4a7fb5" };
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{label_w}" y="{y}" width="{len:.1}" height="{}" fill="{color}"/><text x="{:.1}" y="{}">{}{unit}</text>"#,
            label_w - 6.0,
            y + 13.0,
            esc(label),
            row - 6.0,
            label_w + len + 4.0,
            y + 13.0,
            num(&Value::from(*v)),
        );
    }
    if let Some(t) = threshold {
        let x = label_w + t * scale;
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="0" x2="{x:.1}" y2="{h}" stroke="#333" stroke-dasharray="4 3"/>"##
        );
    }
    s.push_str("</svg>");
    s
}

/// A status enum as its serialised text (`succeeded`, `failed`, ...).
fn status_text<T: serde::Serialize>(status: T) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn status_class(s: &str) -> &'static str {
    match s {
        "pass" | "succeeded" | "production" | "true" => "ok",
        "warn" | "candidate" | "reused" | "done" => "warn",
        "fail" | "failed" | "rejected" | "false" => "bad",
        _ => "",
    }
}

/// The stage timeline as SVG: one bar per stage from its start to its end.
fn timeline(m: &Manifest) -> String {
    let parse = |s: &Option<String>| {
        s.as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis() as f64 / 1000.0)
    };
    let spans: Vec<(&String, &StageRecord, Option<(f64, f64)>)> = m
        .stages
        .iter()
        .map(|(n, r)| (n, r, parse(&r.started_at).zip(parse(&r.finished_at))))
        .collect();
    let t0 = spans
        .iter()
        .filter_map(|s| s.2.map(|x| x.0))
        .fold(f64::INFINITY, f64::min);
    let t1 = spans
        .iter()
        .filter_map(|s| s.2.map(|x| x.1))
        .fold(f64::NEG_INFINITY, f64::max);
    let total = if t1 > t0 { t1 - t0 } else { 1.0 };
    let (w, label_w, row) = (640.0, 150.0, 22.0);
    let h = row * spans.len() as f64 + 10.0;
    let scale = (w - label_w - 80.0) / total;
    let mut s =
        format!(r#"<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">"#);
    for (i, (name, r, t)) in spans.iter().enumerate() {
        let y = i as f64 * row + 4.0;
        let status = &status_text(r.status);
        let color = match status_class(status) {
            "ok" => "#5cb85c",
            "bad" => "#d9534f",
            _ => "#aaa",
        };
        let (x, len) = match t {
            Some((a, b)) => (label_w + (a - t0) * scale, ((b - a) * scale).max(2.0)),
            None => (label_w, 2.0),
        };
        let note = match (t, r.reused_from.as_deref()) {
            (_, Some(from)) => format!("reused from {from}"),
            (Some((a, b)), _) => format!("{:.2} s", b - a),
            (None, _) => status.to_string(),
        };
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{x:.1}" y="{y}" width="{len:.1}" height="{}" fill="{color}"/><text x="{:.1}" y="{}">{}</text>"#,
            label_w - 6.0,
            y + 13.0,
            esc(name),
            row - 6.0,
            x + len + 4.0,
            y + 13.0,
            esc(&note),
        );
    }
    s.push_str("</svg>");
    s
}

async fn output_json(store: &Store, r: &StageRecord, name: &str) -> Option<Value> {
    let out = r.output(name)?;
    store.get_json::<Value>(&out.path).await.ok().flatten()
}

/// Builds the report of the run in `m`.
pub async fn build(m: &Manifest, artifacts: &Store) -> String {
    let mut body = String::new();
    let by_kind = |kind: &str| -> Vec<(&String, &StageRecord)> {
        m.stages
            .iter()
            .filter(|(_, r)| r.kind == kind && r.status.is_done())
            .collect()
    };

    // Stages.
    let _ = write!(body, "<h2>Stages</h2>{}", timeline(m));
    body.push_str("<table><tr><th>stage</th><th>kind</th><th>status</th><th>attempts</th><th>seconds</th><th>error</th></tr>");
    for (n, r) in &m.stages {
        let st = &status_text(r.status);
        let _ = write!(
            body,
            r#"<tr><td>{}</td><td>{}</td><td class="{}">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(n),
            esc(&r.kind),
            status_class(st),
            esc(st),
            r.attempts,
            r.duration_s.map(|d| format!("{d:.2}")).unwrap_or_default(),
            esc(r.error.as_deref().unwrap_or(""))
        );
    }
    body.push_str("</table>");

    // Quality.
    for (_, r) in by_kind("validate") {
        let Some(q) = output_json(artifacts, r, "quality").await else {
            continue;
        };
        body.push_str("<h2>Data quality</h2>");
        for (ds, d) in q["datasets"].as_object().into_iter().flatten() {
            let _ = write!(
                body,
                "<h3>{} <small>{} rows, {} rejected</small></h3><table><tr><th>check</th><th>value</th><th>warn above</th><th>fail above</th><th>status</th><th>worst</th></tr>",
                esc(ds),
                num(&d["rows"]),
                num(&d["rejected_rows"])
            );
            for (check, c) in d["checks"].as_object().into_iter().flatten() {
                let status = c["status"].as_str().unwrap_or("");
                let worst: Vec<String> = c["worst"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .take(3)
                    .map(|w| format!("{} {}", w[0].as_str().unwrap_or(""), num(&w[1])))
                    .collect();
                let _ = write!(
                    body,
                    r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="{}">{}</td><td>{}</td></tr>"#,
                    esc(check),
                    num(&c["value"]),
                    num(&c["warn"]),
                    num(&c["fail"]),
                    status_class(status),
                    esc(status),
                    esc(&worst.join(", "))
                );
            }
            body.push_str("</table>");
        }
    }

    // Models.
    let register = match by_kind("register").first() {
        Some((_, r)) => output_json(artifacts, r, "register").await,
        None => None,
    };
    let trains = by_kind("train");
    if !trains.is_empty() {
        body.push_str("<h2>Models</h2><table><tr><th>model</th><th>holdout metrics</th><th>gates</th><th>registry</th></tr>");
        for (_, r) in trains {
            let Some(mt) = output_json(artifacts, r, "metrics").await else {
                continue;
            };
            let model = mt["model"].as_str().unwrap_or("");
            let metrics: Vec<String> = mt["metrics"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k} {}", num(v)))
                .collect();
            let gates: Vec<String> = mt["gates"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|g| {
                    let ok = g["passed"].as_bool().unwrap_or(false);
                    format!(
                        r#"<span class="{}">{} ({})</span>"#,
                        if ok { "ok" } else { "bad" },
                        esc(g["gate"].as_str().unwrap_or("")),
                        num(&g["value"])
                    )
                })
                .collect();
            let decision = register
                .as_ref()
                .map(|reg| &reg["models"][model])
                .filter(|d| !d.is_null())
                .map(|d| {
                    let status = d["status"].as_str().unwrap_or("");
                    format!(
                        r#"<span class="{}">{} {}</span>{}{}"#,
                        status_class(status),
                        esc(d["model_id"].as_str().unwrap_or("")),
                        esc(status),
                        d["production"]
                            .as_u64()
                            .map(|v| format!("; production: v{v}"))
                            .unwrap_or_default(),
                        d["reason"]
                            .as_str()
                            .map(|r| format!("<br><small>{}</small>", esc(r)))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "not registered in this run".into());
            let _ = write!(
                body,
                "<tr><td><b>{}</b><br><small>{} · {:.2} s</small></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(model),
                esc(mt["algorithm"].as_str().unwrap_or("")),
                mt["training_seconds"].as_f64().unwrap_or(0.0),
                esc(&metrics.join(" · ")),
                gates.join("<br>"),
                decision
            );
        }
        body.push_str("</table>");
    }

    // Fairness.
    for (_, r) in by_kind("fairness") {
        let Some(f) = output_json(artifacts, r, "fairness").await else {
            continue;
        };
        let threshold = f["threshold"].as_f64().unwrap_or(0.8);
        let _ = write!(
            body,
            "<h2>Fairness <small>threshold {threshold}, groups under {} rows not counted</small></h2>",
            num(&f["min_group_size"])
        );
        for (model, md) in f["models"].as_object().into_iter().flatten() {
            for (attr, a) in md["attributes"].as_object().into_iter().flatten() {
                let dpr = a["demographic_parity_ratio"].as_f64();
                let ci = |k: &str| {
                    a[k].as_array()
                        .filter(|c| c.len() == 2)
                        .map(|c| format!(" [{}, {}]", num(&c[0]), num(&c[1])))
                        .unwrap_or_default()
                };
                let eor = a["equal_opportunity_ratio"]
                    .as_f64()
                    .map(|e| {
                        format!(
                            " · equal opportunity {}{}",
                            num(&Value::from(e)),
                            ci("equal_opportunity_ci")
                        )
                    })
                    .unwrap_or_default();
                let bad = dpr.is_some_and(|d| d < threshold);
                let _ = write!(
                    body,
                    r#"<h3>{} · {} <small class="{}">parity {}{}{}</small></h3>"#,
                    esc(model),
                    esc(attr),
                    if bad { "bad" } else { "ok" },
                    dpr.map(|d| num(&Value::from(d))).unwrap_or("—".into()),
                    ci("demographic_parity_ci"),
                    eor
                );
                let groups: Vec<(String, f64, bool)> = a["groups"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(g, v)| {
                        (
                            format!(
                                "{g} (n={}{})",
                                num(&v["size"]),
                                if v["counted"].as_bool() == Some(false) {
                                    ", not counted"
                                } else {
                                    ""
                                }
                            ),
                            v["selection_rate"].as_f64().unwrap_or(0.0),
                            false,
                        )
                    })
                    .collect();
                let max = groups.iter().map(|g| g.1).fold(0.0, f64::max);
                body.push_str("<p class=\"cap\">selection rate per group</p>");
                body.push_str(&bars(&groups, max, None, ""));
            }
        }
    }

    // Drift.
    for (_, r) in by_kind("drift") {
        let Some(d) = output_json(artifacts, r, "drift").await else {
            continue;
        };
        let ks_t = d["ks_threshold"].as_f64().unwrap_or(0.1);
        let _ = write!(
            body,
            "<h2>Drift <small>KS threshold {ks_t}, PSI threshold {}</small></h2>",
            num(&d["psi_threshold"])
        );
        let mut ks: Vec<(String, f64, bool)> = Vec::new();
        let mut psi: Vec<(String, f64, bool)> = Vec::new();
        for (f, v) in d["features"].as_object().into_iter().flatten() {
            let drifted = v["drifted"].as_bool().unwrap_or(false);
            if let Some(k) = v["ks"].as_f64() {
                ks.push((f.clone(), k, drifted));
            } else if let Some(p) = v["psi"].as_f64() {
                psi.push((f.clone(), p, drifted));
            }
        }
        for (m, v) in d["predictions"].as_object().into_iter().flatten() {
            if let Some(k) = v["ks"].as_f64() {
                ks.push((
                    format!("prediction: {m}"),
                    k,
                    v["drifted"].as_bool().unwrap_or(false),
                ));
            }
        }
        let max = ks.iter().map(|x| x.1).fold(ks_t * 1.5, f64::max);
        body.push_str("<p class=\"cap\">KS statistic, numeric features and predictions</p>");
        body.push_str(&bars(&ks, max, Some(ks_t), ""));
        if !psi.is_empty() {
            let pt = d["psi_threshold"].as_f64().unwrap_or(0.1);
            let max = psi.iter().map(|x| x.1).fold(pt * 1.5, f64::max);
            body.push_str("<p class=\"cap\">PSI, categorical features</p>");
            body.push_str(&bars(&psi, max, Some(pt), ""));
        }
    }

    // Score distributions, from the score stage's samples (cumulative counts per bound).
    for (_, r) in by_kind("score") {
        let mut per_model: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
        for s in r
            .samples
            .iter()
            .filter(|s| s.name == "model_score_distribution")
        {
            let label = |k: &str| s.labels.iter().find(|l| l.0 == k).map(|l| l.1.clone());
            let (Some(model), Some(bound)) = (label("model"), label("upper_bound")) else {
                continue;
            };
            let b = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().unwrap_or(f64::NAN)
            };
            per_model.entry(model).or_default().push((b, s.value));
        }
        if per_model.is_empty() {
            continue;
        }
        body.push_str("<h2>Scores of the current customers</h2>");
        for (model, mut cum) in per_model {
            cum.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut prev_b = f64::NEG_INFINITY;
            let mut prev_n = 0.0;
            let mut rows = Vec::new();
            for (b, n) in cum {
                let label = match (prev_b.is_finite(), b.is_finite()) {
                    (false, true) => format!("≤ {}", num(&Value::from(b))),
                    (true, true) => {
                        format!("{} – {}", num(&Value::from(prev_b)), num(&Value::from(b)))
                    }
                    _ => format!("> {}", num(&Value::from(prev_b))),
                };
                if n - prev_n > 0.0 || b.is_finite() {
                    rows.push((label, n - prev_n, false));
                }
                prev_b = b;
                prev_n = n;
            }
            let max = rows.iter().map(|r| r.1).fold(0.0, f64::max);
            let _ = write!(body, "<h3>{}</h3>", esc(&model));
            body.push_str(&bars(&rows, max, None, ""));
        }
    }

    let status = &status_text(m.status);
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>mlpipe run {run}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 980px; color: #222; background: #fff; }}
h1 {{ font-size: 22px; margin-bottom: 4px; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }}
h3 {{ font-size: 15px; margin: 18px 0 6px; }} small {{ color: #666; font-weight: normal; }}
table {{ border-collapse: collapse; margin: 8px 0; }} td, th {{ border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f4f4f4; }} .ok {{ color: #2e7d32; }} .warn {{ color: #b26a00; }} .bad {{ color: #c62828; font-weight: bold; }}
svg.chart text {{ font-size: 12px; fill: #333; }} .cap {{ color: #555; margin: 4px 0; }}
</style></head><body>
<h1>Run {run} <span class="{cls}">{status}</span></h1>
<p>pipeline <b>{pipeline}</b> · as of {as_of} · started {started} · {duration} · estimated cost ${cost} · mlpipe {code}</p>
{body}
</body></html>
"#,
        run = esc(&m.run_id),
        cls = status_class(status),
        status = esc(status),
        pipeline = esc(&m.pipeline),
        as_of = esc(&m.as_of),
        started = esc(&m.started_at),
        duration = m
            .duration_s
            .map(|d| format!("{d:.2} s"))
            .unwrap_or_default(),
        cost = m
            .cost_usd
            .map(|c| format!("{c:.4}"))
            .unwrap_or_else(|| "—".into()),
        code = esc(&m.code_version),
    )
}
