//! `runs/<id>/report.html`: one self-contained page a person reads after a run — the stage
//! timeline, the quality checks, each model's metrics against its gates and the registry's
//! decision, calibration, fairness per group with intervals, drift per feature, the score
//! distributions, production accuracy (estimated, realized, across runs; [`accuracy`]) and the
//! business figures.
//! Charts are inline SVG and styles inline CSS: the page loads nothing from anywhere.
//!
//! Everything comes from what the run recorded (manifest, stage outputs, metric samples), so a
//! report can be rebuilt from the artifacts alone.

use std::fmt::Write as _;

use serde_json::Value;

mod accuracy;

use crate::config::{Pipeline, StageKind};
use crate::engine::manifest::{Manifest, StageRecord};
use crate::stages::{drift, evaluate, fairness, register, train, validate};
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

/// An output document of a stage, read as its type (`None` if missing or not readable).
async fn output<T: serde::de::DeserializeOwned>(
    store: &Store,
    r: &StageRecord,
    name: &str,
) -> Option<T> {
    let out = r.output(name)?;
    store.get_json::<T>(&out.path).await.ok().flatten()
}

fn f(x: f64) -> String {
    num(&Value::from(x))
}

/// Builds the report of the run in `m` of pipeline `p`.
pub async fn build(m: &Manifest, artifacts: &Store, p: &Pipeline) -> String {
    let mut body = String::new();
    let by_kind = |kind: StageKind| -> Vec<(&String, &StageRecord)> {
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
            esc(r.kind.name()),
            status_class(st),
            esc(st),
            r.attempts,
            r.duration_s.map(|d| format!("{d:.2}")).unwrap_or_default(),
            esc(r.error.as_deref().unwrap_or(""))
        );
    }
    body.push_str("</table>");

    for (_, r) in by_kind(StageKind::Validate) {
        if let Some(q) = output::<validate::Report>(artifacts, r, "quality").await {
            quality_section(&mut body, &q);
        }
    }
    let register = match by_kind(StageKind::Register).first() {
        Some((_, r)) => output::<register::Report>(artifacts, r, "register").await,
        None => None,
    };
    let mut trained = Vec::new();
    for (_, r) in by_kind(StageKind::Train) {
        if let Some(t) = output::<train::Report>(artifacts, r, "metrics").await {
            trained.push(t);
        }
    }
    models_section(&mut body, &trained, register.as_ref());
    accuracy::calibration_section(&mut body, &trained);
    for (_, r) in by_kind(StageKind::Fairness) {
        if let Some(fr) = output::<fairness::Report>(artifacts, r, "fairness").await {
            fairness_section(&mut body, &fr);
        }
    }
    for (_, r) in by_kind(StageKind::Drift) {
        if let Some(d) = output::<drift::Report>(artifacts, r, "drift").await {
            drift_section(&mut body, &d);
        }
    }
    for (_, r) in by_kind(StageKind::Score) {
        scores_section(&mut body, r);
    }
    let evaluated = match by_kind(StageKind::Evaluate).first() {
        Some((_, r)) => output::<evaluate::Report>(artifacts, r, "evaluate").await,
        None => None,
    };
    let scored = m.stages.values().find_map(StageRecord::score);
    let known = known(p, artifacts).await;
    accuracy::accuracy_section(&mut body, &known, &trained, scored, evaluated.as_ref());
    if let Some(e) = &evaluated {
        accuracy::evaluation_section(&mut body, e);
    }
    if let Some(b) = scored.and_then(|s| s.business.as_ref()) {
        let churn = p.business.as_ref().and_then(|b| b.churn_model.as_ref());
        let realized = evaluated
            .as_ref()
            .and_then(|e| e.models.get(churn?)?.cohorts.last())
            .map(|c| c.mean_outcome);
        accuracy::business_section(&mut body, b, realized);
    }
    page(m, &body)
}

/// The registry's state and the accuracy history of each declared model (what cannot be read
/// is left out: the report is written whatever happened).
async fn known<'a>(p: &'a Pipeline, artifacts: &Store) -> accuracy::Known<'a> {
    let registry = crate::registry::Registry::open(&p.storage.registry).ok();
    let mut k = accuracy::Known {
        pipeline: p,
        registry: Vec::new(),
        readings: Vec::new(),
    };
    for name in p.models.keys() {
        if let Some(r) = &registry {
            if let Ok(st) = r.state(name).await {
                if !st.versions.is_empty() {
                    k.registry.push(st);
                }
            }
        }
        if let Ok(rs) = crate::history::all_readings(artifacts, name).await {
            k.readings.push((name.clone(), rs));
        }
    }
    k
}

fn quality_section(body: &mut String, q: &validate::Report) {
    body.push_str("<h2>Data quality</h2>");
    for (ds, d) in &q.datasets {
        let _ = write!(
            body,
            "<h3>{} <small>{} rows, {} rejected</small></h3><table><tr><th>check</th><th>value</th><th>warn above</th><th>fail above</th><th>status</th><th>worst</th></tr>",
            esc(ds),
            f(d.rows as f64),
            f(d.rejected_rows as f64)
        );
        for (check, c) in &d.checks {
            let status = c.status.as_str();
            let worst: Vec<String> = c
                .worst
                .iter()
                .take(3)
                .map(|(col, v)| format!("{col} {}", f(*v)))
                .collect();
            let _ = write!(
                body,
                r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="{}">{}</td><td>{}</td></tr>"#,
                esc(check),
                f(c.value),
                f(c.warn),
                f(c.fail),
                status_class(status),
                esc(status),
                esc(&worst.join(", "))
            );
        }
        body.push_str("</table>");
    }
}

fn models_section(
    body: &mut String,
    trained: &[train::Report],
    register: Option<&register::Report>,
) {
    if trained.is_empty() {
        return;
    }
    body.push_str("<h2>Models</h2><table><tr><th>model</th><th>holdout metrics</th><th>gates</th><th>registry</th></tr>");
    for mt in trained {
        let metrics: Vec<String> = mt
            .metrics
            .iter()
            .map(|(k, v)| format!("{k} {}", f(*v)))
            .collect();
        let gates: Vec<String> = mt
            .gates
            .iter()
            .map(|g| {
                format!(
                    r#"<span class="{}">{} ({})</span>"#,
                    if g.passed { "ok" } else { "bad" },
                    esc(&g.gate.to_string()),
                    f(g.value)
                )
            })
            .collect();
        let decision = register
            .and_then(|reg| reg.models.get(&mt.model))
            .map(|d| {
                let status = d.status.as_str();
                format!(
                    r#"<span class="{}">{} {}</span>{}{}"#,
                    status_class(status),
                    esc(&d.model_id),
                    esc(status),
                    d.production
                        .map(|v| format!("; production: v{v}"))
                        .unwrap_or_default(),
                    d.reason
                        .as_deref()
                        .map(|r| format!("<br><small>{}</small>", esc(r)))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_else(|| "not registered in this run".into());
        let _ = write!(
            body,
            "<tr><td><b>{}</b><br><small>{} · {:.2} s</small></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&mt.model),
            esc(&mt.algorithm),
            mt.training_seconds,
            esc(&metrics.join(" · ")),
            gates.join("<br>"),
            decision
        );
    }
    body.push_str("</table>");
}

fn fairness_section(body: &mut String, fr: &fairness::Report) {
    let threshold = fr.threshold;
    let _ = write!(
        body,
        "<h2>Fairness <small>threshold {threshold}, groups under {} rows not counted</small></h2>",
        f(fr.min_group_size as f64)
    );
    let ci = |c: Option<(f64, f64)>| {
        c.map(|(lo, hi)| format!(" [{}, {}]", f(lo), f(hi)))
            .unwrap_or_default()
    };
    for (model, md) in &fr.models {
        for (attr, a) in &md.attributes {
            let dpr = Some(a.demographic_parity_ratio).filter(|d| d.is_finite());
            let eor = a
                .equal_opportunity_ratio
                .map(|e| {
                    format!(
                        " · equal opportunity {}{}",
                        f(e),
                        ci(a.equal_opportunity_ci)
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
                dpr.map(f).unwrap_or("—".into()),
                ci(a.demographic_parity_ci),
                eor
            );
            let groups: Vec<(String, f64, bool)> = a
                .groups
                .iter()
                .map(|(g, v)| {
                    let label = format!(
                        "{g} (n={}{})",
                        f(v.size as f64),
                        if v.counted { "" } else { ", not counted" }
                    );
                    let rate = if v.selection_rate.is_finite() {
                        v.selection_rate
                    } else {
                        0.0
                    };
                    (label, rate, false)
                })
                .collect();
            let max = groups.iter().map(|g| g.1).fold(0.0, f64::max);
            body.push_str("<p class=\"cap\">selection rate per group</p>");
            body.push_str(&bars(&groups, max, None, ""));
        }
    }
}

fn drift_section(body: &mut String, d: &drift::Report) {
    let ks_t = d.ks_threshold;
    let _ = write!(
        body,
        "<h2>Drift <small>KS threshold {ks_t}, PSI threshold {}</small></h2>",
        f(d.psi_threshold)
    );
    let mut ks: Vec<(String, f64, bool)> = Vec::new();
    let mut psi: Vec<(String, f64, bool)> = Vec::new();
    for (name, v) in &d.features {
        match v {
            drift::FeatureDrift::Numeric(n) => {
                if let Some(k) = n.ks {
                    ks.push((name.clone(), k, n.drifted));
                }
            }
            drift::FeatureDrift::Categorical(c) if c.psi.is_finite() => {
                psi.push((name.clone(), c.psi, c.drifted))
            }
            drift::FeatureDrift::Categorical(_) => {}
        }
    }
    for (m, v) in &d.predictions {
        ks.push((format!("prediction: {m}"), v.ks, v.drifted));
    }
    let max = ks.iter().map(|x| x.1).fold(ks_t * 1.5, f64::max);
    body.push_str("<p class=\"cap\">KS statistic, numeric features and predictions</p>");
    body.push_str(&bars(&ks, max, Some(ks_t), ""));
    if !psi.is_empty() {
        let pt = d.psi_threshold;
        let max = psi.iter().map(|x| x.1).fold(pt * 1.5, f64::max);
        body.push_str("<p class=\"cap\">PSI, categorical features</p>");
        body.push_str(&bars(&psi, max, Some(pt), ""));
    }
}

/// Score distributions, from the score stage's samples (cumulative counts per bound).
fn scores_section(body: &mut String, r: &StageRecord) {
    let mut per_model: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for s in r
        .samples
        .iter()
        .filter(|s| s.name == "model_score_distribution")
    {
        let label = |k: &str| s.labels.iter().find(|l| l.0 == k).map(|l| l.1.clone());
        let (Some(model), Some(bound)) = (label("model"), label("upper_bound")) else {
            return;
        };
        let b = if bound == "+Inf" {
            f64::INFINITY
        } else {
            bound.parse().unwrap_or(f64::NAN)
        };
        per_model.entry(model).or_default().push((b, s.value));
    }
    if per_model.is_empty() {
        return;
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

/// The page around the sections.
fn page(m: &Manifest, body: &str) -> String {
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
