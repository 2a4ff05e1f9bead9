//! The report's sections on production accuracy: each binary model's calibration (a reliability
//! diagram before and after its calibrator), accuracy as known now (at training, estimated on the
//! current customers, realized on outcomes) with its history across runs as a chart and each
//! registry version's figures, the evaluation's counts and realized fairness, and the business
//! figures.

use std::fmt::Write as _;

use super::{esc, f};
use crate::config::Pipeline;
use crate::history::{Reading, Source};
use crate::metrics::Metric;
use crate::model::calibration::ReliabilityBin;
use crate::registry::State;
use crate::stages::{evaluate, score, train};

/// A reliability diagram: mean predicted probability against the share positive per bin, before
/// (grey) and after (blue) calibration, with the diagonal of perfect calibration.
fn reliability(before: &[ReliabilityBin], after: &[ReliabilityBin]) -> String {
    let (size, pad) = (240.0, 30.0);
    let at = |v: f64| pad + v.clamp(0.0, 1.0) * size;
    let up = |v: f64| pad + size - v.clamp(0.0, 1.0) * size;
    let total = size + 2.0 * pad;
    let mut s = format!(
        r##"<svg class="chart" width="{total}" height="{total}" viewBox="0 0 {total} {total}" role="img"><rect x="{pad}" y="{pad}" width="{size}" height="{size}" fill="none" stroke="#ccc"/><line x1="{pad}" y1="{}" x2="{}" y2="{pad}" stroke="#999" stroke-dasharray="4 3"/>"##,
        pad + size,
        pad + size
    );
    for (bins, color) in [(before, "#aaa"), (after, "#4a7fb5")] {
        let pts: Vec<String> = bins
            .iter()
            .map(|b| format!("{:.1},{:.1}", at(b.mean_predicted), up(b.share_positive)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            pts.join(" ")
        );
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
        }
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">predicted probability</text><text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">share positive</text></svg>"#,
        pad + size / 2.0,
        total - 6.0,
        pad + size / 2.0,
        pad + size / 2.0
    );
    s
}

pub(super) fn calibration_section(body: &mut String, trained: &[train::Report]) {
    let calibrated: Vec<_> = trained
        .iter()
        .filter_map(|t| Some((t, t.calibration.as_ref()?)))
        .collect();
    if calibrated.is_empty() {
        return;
    }
    body.push_str("<h2>Calibration <small>holdout; grey before the calibrator, blue after; dashed: perfect</small></h2>");
    for (t, c) in calibrated {
        let candidates: Vec<String> = c
            .candidates
            .iter()
            .map(|k| {
                format!(
                    "{} Brier {} (lower by {} ± {}) · ECE {}",
                    k.method,
                    f(k.brier),
                    f(k.improvement),
                    f(k.standard_error),
                    f(k.ece)
                )
            })
            .collect();
        let _ = write!(
            body,
            "<h3>{} <small>calibrator: {} ({}); holdout ECE {} before, {} after</small></h3>",
            esc(&t.model),
            esc(&c.method),
            esc(&format!("{:?}", c.requested).to_lowercase()),
            f(c.holdout_ece_uncalibrated),
            f(c.holdout_ece)
        );
        if let Some(n) = &c.note {
            let _ = write!(body, "<p class=\"cap\">{}</p>", esc(n));
        }
        if !candidates.is_empty() {
            let _ = write!(
                body,
                "<p class=\"cap\">Cross-fitted on the calibration slice ({} training rows kept out of the fit): {}</p>",
                f(t.rows.calibration as f64),
                esc(&candidates.join(" · "))
            );
        }
        body.push_str(&reliability(&c.reliability_uncalibrated, &c.reliability));
    }
}

/// A line chart of readings over runs: one point per reading, coloured by where the value came
/// from, the gate as a dashed line.
fn history_chart(readings: &[Reading], metric: Metric, gate: Option<f64>) -> String {
    let pts: Vec<(usize, f64, Source, &str)> = readings
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i, *r.metrics.get(&metric)?, r.source, r.checked_at.as_str())))
        .collect();
    if pts.is_empty() {
        return String::new();
    }
    let (w, h, pad) = (640.0, 220.0, 40.0);
    let mut lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let mut hi = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    if let Some(g) = gate {
        lo = lo.min(g);
        hi = hi.max(g);
    }
    let span = (hi - lo).max(1e-6);
    let (lo, hi) = (lo - 0.1 * span, hi + 0.1 * span);
    let n = pts.len().max(2) as f64 - 1.0;
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / n;
    let y = |v: f64| h - pad - (h - 2.0 * pad) * (v - lo) / (hi - lo);
    let mut s = format!(
        r##"<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"><line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="#ccc"/>"##,
        h - pad,
        w - pad,
        h - pad
    );
    let line: Vec<String> = pts
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
        .collect();
    let _ = write!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#bbb"/>"##,
        line.join(" ")
    );
    for (i, v, source, at) in &pts {
        let color = match source {
            Source::Realized => "#2e7d32",
            Source::Estimated => "#4a7fb5",
            Source::Holdout => "#999",
        };
        let _ = write!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{color}"><title>{} {}: {} ({})</title></circle>"#,
            x(*i),
            y(*v),
            esc(&at[..10.min(at.len())]),
            metric,
            f(*v),
            source.as_str()
        );
    }
    if let Some(g) = gate {
        let _ = write!(
            s,
            r##"<line x1="{pad}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#c62828" stroke-dasharray="4 3"/><text x="{}" y="{:.1}" text-anchor="end">gate {}</text>"##,
            y(g),
            w - pad,
            y(g),
            w - pad,
            y(g) - 4.0,
            f(g)
        );
    }
    for (i, _, _, at) in pts.iter().step_by((pts.len() / 8).max(1)) {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(*i),
            h - pad + 16.0,
            esc(&at[..10.min(at.len())])
        );
    }
    let _ = write!(
        s,
        r##"<text x="{pad}" y="14">{metric} {}–{}</text><text x="{}" y="14" text-anchor="end"><tspan fill="#2e7d32">● realized</tspan> <tspan fill="#4a7fb5">● estimated</tspan> <tspan fill="#999">● holdout</tspan></text></svg>"##,
        f(lo),
        f(hi),
        w - pad
    );
    s
}

/// What the accuracy section reads besides the run's stage outputs.
pub(super) struct Known<'a> {
    pub pipeline: &'a Pipeline,
    /// Per model: its registry state and accuracy readings across runs.
    pub registry: Vec<State>,
    pub readings: Vec<(String, Vec<Reading>)>,
}

pub(super) fn accuracy_section(
    body: &mut String,
    known: &Known,
    trained: &[train::Report],
    scored: Option<&score::Summary>,
    evaluated: Option<&evaluate::Report>,
) {
    let p = known.pipeline;
    if scored.is_none() && evaluated.is_none() && known.readings.iter().all(|r| r.1.is_empty()) {
        return;
    }
    body.push_str("<h2>Production accuracy <small>at training, estimated on the current customers, realized on outcomes</small></h2>");
    body.push_str("<table><tr><th>model</th><th>metric</th><th>holdout</th><th>estimated (band)</th><th>realized (latest cohort)</th></tr>");
    for (name, model) in &p.models {
        let metric = model
            .gates
            .first()
            .map(|g| g.metric)
            .unwrap_or_else(|| Metric::primary(model.task));
        let holdout = trained
            .iter()
            .find(|t| &t.model == name)
            .and_then(|t| t.metrics.get(&metric).copied());
        let est = scored
            .and_then(|s| s.models.get(name))
            .and_then(|m| m.estimated.as_ref()?.get(&metric).copied());
        let realized = evaluated
            .and_then(|e| e.models.get(name))
            .and_then(|m| m.cohorts.last());
        let _ = write!(
            body,
            "<tr><td><b>{}</b></td><td>{metric}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            holdout.map(f).unwrap_or_else(|| "—".into()),
            est.map(|e| format!("{} ({} – {})", f(e.value), f(e.lower), f(e.upper)))
                .unwrap_or_else(|| "—".into()),
            realized
                .and_then(|c| Some((c, *c.metrics.get(&metric)?)))
                .map(|(c, v)| format!(
                    "{} on {} outcomes, {} scored {}{}",
                    f(v),
                    f(c.outcomes as f64),
                    esc(c.version.as_deref().unwrap_or("unknown version")),
                    esc(&c.scored_at[..10.min(c.scored_at.len())]),
                    match c.within_band.get(&metric) {
                        Some(true) => ", consistent with its estimate",
                        Some(false) => ", <span class=\"bad\">outside its estimate</span>",
                        None => "",
                    }
                ))
                .unwrap_or_else(|| "—".into())
        );
    }
    body.push_str("</table>");
    for (name, readings) in &known.readings {
        let Some(model) = p.models.get(name) else {
            continue;
        };
        let gate = model.gates.first();
        let metric = gate
            .map(|g| g.metric)
            .unwrap_or_else(|| Metric::primary(model.task));
        let chart = history_chart(readings, metric, gate.map(|g| g.value));
        if chart.is_empty() {
            continue;
        }
        let _ = write!(
            body,
            "<h3>{} <small>the accuracy each health check used, across {} runs</small></h3>{chart}",
            esc(name),
            readings.len()
        );
    }
    // Each version the registry knows: its holdout metric and what was realized.
    let mut rows = String::new();
    for st in &known.registry {
        let Some(model) = p.models.get(&st.model) else {
            continue;
        };
        let metric = model
            .gates
            .first()
            .map(|g| g.metric)
            .unwrap_or_else(|| Metric::primary(model.task));
        let versions = evaluated
            .and_then(|e| e.models.get(&st.model))
            .map(|m| &m.versions);
        for v in st.versions.values() {
            let realized = versions
                .and_then(|vs| vs.get(&v.model_id))
                .and_then(|r| Some((r, *r.metrics.get(&metric)?)));
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&v.model_id),
                esc(v.status.as_str()),
                v.metrics
                    .holdout
                    .get(&metric)
                    .map(|x| f(*x))
                    .unwrap_or_else(|| "—".into()),
                realized
                    .map(|(r, x)| format!(
                        "{} on {} outcomes in {} cohorts",
                        f(x),
                        f(r.outcomes as f64),
                        r.cohorts
                    ))
                    .unwrap_or_else(|| "—".into()),
                esc(&v.last_evaluated)
            );
        }
    }
    if !rows.is_empty() {
        body.push_str("<h3>Registry versions</h3><table><tr><th>version</th><th>status</th><th>holdout (gate metric)</th><th>realized in this evaluation</th><th>last evaluated</th></tr>");
        body.push_str(&rows);
        body.push_str("</table>");
    }
}

pub(super) fn evaluation_section(body: &mut String, e: &evaluate::Report) {
    let _ = write!(
        body,
        "<h2>Outcomes <small>{} rows of `{}`, observed {} to {}</small></h2>",
        f(e.outcomes.rows as f64),
        esc(&e.outcomes.dataset),
        esc(e.outcomes.observed_from.as_deref().unwrap_or("—")),
        esc(e.outcomes.observed_to.as_deref().unwrap_or("—"))
    );
    body.push_str("<table><tr><th>model</th><th>outcomes</th><th>matched</th><th>no score in their cohort</th><th>before any scoring</th><th>scores gone</th><th>unknown version</th></tr>");
    for (m, ev) in &e.models {
        let c = &ev.counts;
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(m),
            f(c.outcomes as f64),
            f(c.matched as f64),
            f(c.unscored as f64),
            f(c.before_history as f64),
            f(c.missing_scores as f64),
            f(c.unknown_version as f64)
        );
    }
    body.push_str("</table>");
    for (m, ev) in &e.models {
        let Some(c) = ev.cohorts.last() else { continue };
        let rows: Vec<String> = c
            .fairness
            .iter()
            .map(|(a, r)| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(a),
                    f(r.demographic_parity_ratio),
                    r.equal_opportunity_ratio
                        .map(f)
                        .unwrap_or_else(|| "—".into()),
                    esc(&r
                        .groups
                        .iter()
                        .map(|(g, x)| format!("{g} {} (n {})", f(x.selection_rate), x.size))
                        .collect::<Vec<_>>()
                        .join(" · "))
                )
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = write!(
            body,
            "<h3>{} <small>realized fairness, cohort scored {}</small></h3><table><tr><th>attribute</th><th>demographic parity</th><th>equal opportunity</th><th>selection rate by group</th></tr>{}</table>",
            esc(m),
            esc(&c.scored_at[..10.min(c.scored_at.len())]),
            rows.join("")
        );
    }
}

pub(super) fn business_section(
    body: &mut String,
    b: &crate::business::Figures,
    realized_churn: Option<f64>,
) {
    let pct = |x: f64| format!("{:.1} %", 100.0 * x);
    let mut items = Vec::new();
    if let Some(r) = b.predicted_churn_rate {
        items.push(format!(
            "predicted churn rate <b>{}</b> (retention {})",
            pct(r),
            pct(1.0 - r)
        ));
    }
    if let Some(r) = realized_churn {
        items.push(format!(
            "realized churn rate of the latest evaluated cohort <b>{}</b>",
            pct(r)
        ));
    }
    if let Some(v) = b.average_predicted_ltv {
        items.push(format!("average predicted LTV <b>${v:.2}</b>"));
    }
    if let Some(v) = b.average_engagement_score {
        items.push(format!("average engagement score <b>{v:.3}</b>"));
    }
    if let Some(v) = b.revenue_at_risk {
        items.push(format!("revenue at risk <b>${}</b>", f(v.round())));
    }
    let _ = write!(
        body,
        "<h2>Business figures <small>{} current customers</small></h2><p>{}</p>",
        f(b.customers as f64),
        items.join(" · ")
    );
    if !b.segments.is_empty() {
        let rows: Vec<(String, f64, bool)> = b
            .segments
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64, false))
            .collect();
        let max = rows.iter().map(|r| r.1).fold(0.0, f64::max);
        body.push_str("<p class=\"cap\">Customers by churn risk segment</p>");
        body.push_str(&super::bars(&rows, max, None, ""));
    }
}
