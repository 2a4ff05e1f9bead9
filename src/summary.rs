//! What people read: the end-of-run summary and the plan table.

use std::fmt::Write;

use crate::config::Pipeline;
use crate::engine::manifest::{Manifest, RunStatus, StageRecord, StageStatus, Summary};
use crate::engine::{Action, Plan};
use crate::stages::validate::fmt_value;

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn secs(s: Option<f64>) -> String {
    match s {
        Some(s) if s < 10.0 => format!("{s:.2} s"),
        Some(s) => format!("{s:.1} s"),
        None => "—".into(),
    }
}

/// The end-of-run summary: each stage's status, time and figures, the quality checks, and where
/// the manifest and the report are.
/// The first line says what the exit code says.
pub fn run_summary(p: &Pipeline, m: &Manifest, artifacts_url: &str, exit_code: i32) -> String {
    let mut s = String::new();
    let t = secs(m.duration_s);
    let outcome = match (m.status, exit_code) {
        (RunStatus::Succeeded, 0) => format!("succeeded in {t}"),
        (RunStatus::Succeeded, 1) => format!("completed in {t}, but CHECKS FAILED (exit 1)"),
        (RunStatus::Interrupted, code) => format!("was INTERRUPTED after {t} (exit {code})"),
        (RunStatus::Running, _) => "is still running".to_string(),
        (_, code) => format!("FAILED in {t} (exit {code})"),
    };
    let _ = writeln!(s, "Run {} of pipeline `{}` {outcome}", m.run_id, p.name);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "  {:<20} {:<12} {:>8} {:>8}  notes",
        "stage", "status", "time", "attempts"
    );
    for (name, r) in &m.stages {
        if r.status == StageStatus::NotSelected {
            continue;
        }
        let note = match r.status {
            StageStatus::Reused => {
                format!("outputs of run {}", r.reused_from.as_deref().unwrap_or("?"))
            }
            StageStatus::Failed | StageStatus::Interrupted => r
                .error
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(90)
                .collect(),
            StageStatus::Skipped => "a stage it needs did not complete".into(),
            _ => stage_note(r),
        };
        let time = if r.status == StageStatus::Reused {
            "—".into()
        } else {
            secs(r.duration_s)
        };
        let attempts = if r.status == StageStatus::Reused {
            "—".into()
        } else {
            r.attempts.to_string()
        };
        let _ = writeln!(
            s,
            "  {:<20} {:<12} {:>8} {:>8}  {}",
            name,
            r.status.as_str(),
            time,
            attempts,
            note
        );
    }
    // Quality, from every validate stage that has results.
    let mut quality = String::new();
    for v in m.stages.values().filter_map(StageRecord::validate) {
        for (ds, q) in &v.0 {
            let checks = q
                .checks
                .iter()
                .map(|(k, c)| format!("{k} {} {}", c.status.as_str(), fmt_value(k, c.value)))
                .collect::<Vec<_>>()
                .join(" · ");
            let _ = writeln!(
                quality,
                "  {ds:<12} {} rows, {} rejected — {checks}",
                thousands(q.rows),
                thousands(q.rejected_rows)
            );
        }
    }
    if !quality.is_empty() {
        let _ = writeln!(s, "\nQuality (as of {})", m.as_of);
        s.push_str(&quality);
    }
    s.push_str(&accuracy_block(p, m));
    s.push_str(&business_block(p, m));
    let _ = writeln!(
        s,
        "\nManifest: {}/{}/manifest.json",
        artifacts_url, m.run_id
    );
    let _ = writeln!(s, "Report:   {}/{}/report.html", artifacts_url, m.run_id);
    s
}

/// Each model's primary gate metric as the run knows it: on the holdout, estimated on the
/// scored customers (with its band), realized on the latest cohort with outcomes.
fn accuracy_block(p: &Pipeline, m: &Manifest) -> String {
    let mut out = String::new();
    let train: Vec<_> = m.stages.values().filter_map(StageRecord::train).collect();
    let score = m.stages.values().find_map(StageRecord::score);
    let evaluate = m.stages.values().find_map(StageRecord::evaluate);
    for (name, model) in &p.models {
        let metric = model
            .gates
            .first()
            .map(|g| g.metric)
            .unwrap_or_else(|| crate::metrics::Metric::primary(model.task));
        let mut parts = Vec::new();
        if let Some(v) = train
            .iter()
            .find(|t| &t.model == name)
            .and_then(|t| t.metrics.get(&metric))
        {
            parts.push(format!("holdout {v:.4}"));
        }
        if let Some(e) = score
            .and_then(|s| s.models.get(name))
            .and_then(|x| x.estimated.as_ref())
            .and_then(|e| e.get(&metric))
        {
            parts.push(format!(
                "estimated {:.4} [{:.4}, {:.4}]",
                e.value, e.lower, e.upper
            ));
        }
        if let Some(l) = evaluate
            .and_then(|e| e.models.get(name))
            .and_then(|x| x.latest.as_ref())
        {
            if let Some(v) = l.metrics.get(&metric) {
                parts.push(format!(
                    "realized {v:.4} on {} outcomes ({}, scored {})",
                    thousands(l.outcomes),
                    l.version.as_deref().unwrap_or("unknown version"),
                    &l.scored_at[..10.min(l.scored_at.len())]
                ));
            }
        }
        if !parts.is_empty() {
            let _ = writeln!(out, "  {name:<12} {metric}: {}", parts.join(" · "));
        }
    }
    if out.is_empty() {
        return out;
    }
    format!("\nAccuracy\n{out}")
}

/// The business figures of the run's scoring.
fn business_block(p: &Pipeline, m: &Manifest) -> String {
    let Some(f) = m
        .stages
        .values()
        .find_map(StageRecord::score)
        .and_then(|s| s.business.as_ref())
    else {
        return String::new();
    };
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    let mut parts = Vec::new();
    if let Some(r) = f.predicted_churn_rate {
        parts.push(format!("churn rate {} predicted", pct(r)));
    }
    if let Some(r) = f.predicted_retention_rate {
        parts.push(format!("retention {}", pct(r)));
    }
    let churn = p.business.as_ref().and_then(|b| b.churn_model.as_ref());
    if let Some(l) = m
        .stages
        .values()
        .find_map(StageRecord::evaluate)
        .and_then(|e| e.models.get(churn?)?.latest.as_ref())
    {
        parts.push(format!(
            "churn rate {} realized (cohort scored {})",
            pct(l.mean_outcome),
            &l.scored_at[..10.min(l.scored_at.len())]
        ));
    }
    if let Some(v) = f.average_predicted_ltv {
        parts.push(format!("average LTV ${v:.2}"));
    }
    if let Some(v) = f.average_engagement_score {
        parts.push(format!("average engagement {v:.3}"));
    }
    if let Some(v) = f.revenue_at_risk {
        parts.push(format!("revenue at risk ${}", thousands(v.round() as u64)));
    }
    let segments = f
        .segments
        .iter()
        .map(|(k, v)| format!("{k} {}", thousands(*v)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut s = format!(
        "\nBusiness ({} customers)\n  {}\n",
        thousands(f.customers),
        parts.join(" · ")
    );
    if !segments.is_empty() {
        let _ = writeln!(s, "  churn risk segments: {segments}");
    }
    s
}

/// What a stage's figures say, on one line.
fn stage_note(r: &StageRecord) -> String {
    let join = |parts: Vec<String>| parts.join(" · ");
    match &r.summary {
        None => String::new(),
        Some(Summary::Load(l)) => join(
            l.rows
                .iter()
                .map(|(k, v)| format!("{k} {} rows", thousands(*v)))
                .collect(),
        ),
        Some(Summary::Validate(v)) => join(
            v.0.iter()
                .map(|(k, d)| {
                    format!(
                        "{k} {} ({} rejected)",
                        d.status.as_str(),
                        thousands(d.rejected_rows)
                    )
                })
                .collect(),
        ),
        Some(Summary::Prepare(p)) => format!(
            "{} training rows · {} holdout rows",
            thousands(p.train_rows),
            thousands(p.holdout_rows)
        ),
        Some(Summary::Train(t)) => {
            let mut parts: Vec<String> = t
                .metrics
                .iter()
                .take(3)
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect();
            let failed: Vec<String> = t.failed_gates().map(|g| g.to_string()).collect();
            if !failed.is_empty() {
                parts.push(format!("GATE FAILED: {}", failed.join("; ")));
            } else if t.passed {
                parts.push("gates passed".into());
            }
            join(parts)
        }
        Some(Summary::Score(s)) => format!(
            "{} rows scored{}",
            thousands(s.rows),
            s.models
                .iter()
                .filter_map(|(k, v)| v
                    .positive_rate
                    .map(|x| format!(" · {k} positive rate {:.1}%", x * 100.0)))
                .collect::<String>()
        ),
        Some(Summary::Drift(d)) => {
            if d.dataset_drift {
                format!(
                    "DRIFT — features: {} · predictions: {}",
                    d.drifted_features.join(", "),
                    d.drifted_predictions.join(", ")
                )
            } else {
                format!("no drift (max KS {:.3})", d.max_feature_ks)
            }
        }
        Some(Summary::Register(reg)) => join(
            reg.models
                .values()
                .map(|d| format!("{} {}", d.model_id, d.status.as_str()))
                .collect(),
        ),
        Some(Summary::Health(h)) => {
            if h.healthy {
                "all production models healthy".into()
            } else {
                let bad: Vec<&str> = h
                    .models
                    .iter()
                    .filter(|(_, v)| !v.healthy)
                    .map(|(k, _)| k.as_str())
                    .collect();
                format!("RETRAINING DUE: {}", bad.join(", "))
            }
        }
        Some(Summary::Evaluate(e)) => {
            if e.models.is_empty() {
                return format!("{} outcomes, no model evaluated", thousands(e.outcomes));
            }
            join(
                e.models
                    .iter()
                    .map(|(m, x)| {
                        format!(
                            "{m} {} of {} outcomes matched",
                            thousands(x.counts.matched),
                            thousands(x.counts.outcomes)
                        )
                    })
                    .collect(),
            )
        }
        Some(Summary::Sql(q)) => {
            let read = q
                .inputs
                .iter()
                .map(|(t, r)| match r.rows_in.saturating_sub(r.rows_read) {
                    0 => format!("{t} {}", thousands(r.rows_in)),
                    f => format!(
                        "{t} {} ({} filtered in the scan)",
                        thousands(r.rows_in),
                        thousands(f)
                    ),
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "{} {} rows · read {read} · {:.1} MB scanned",
                q.output,
                thousands(q.rows_out),
                q.bytes_scanned() as f64 / 1e6
            )
        }
        Some(Summary::Fairness(f)) => {
            let worst = f
                .parity
                .values()
                .flat_map(|a| a.0.values().copied())
                .fold(f64::INFINITY, f64::min);
            match f.violations.len() {
                0 => format!("no violation (lowest parity {worst:.3})"),
                v => format!("{v} VIOLATION(S) below the threshold (lowest parity {worst:.3})"),
            }
        }
    }
}

/// The plan as a table.
pub fn plan_table(p: &Pipeline, plan: &Plan) -> String {
    let mut s = String::new();
    let how = if plan.resumed {
        "resumes an existing run"
    } else {
        "new run"
    };
    let _ = writeln!(
        s,
        "Pipeline `{}` ({}) — run {} ({how})",
        p.name, p.file, plan.run_id
    );
    let _ = writeln!(s);
    let needs_of = |st: &crate::engine::PlannedStage| {
        if st.needs.is_empty() {
            "—".to_string()
        } else {
            st.needs.join(", ")
        }
    };
    // Columns as wide as their widest entry.
    let nw = plan
        .stages
        .iter()
        .map(|st| needs_of(st).chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    let sw = plan
        .stages
        .iter()
        .map(|st| st.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    let _ = writeln!(
        s,
        "  {:<3} {:<sw$} {:<10} {:<nw$} action",
        "#", "stage", "kind", "needs"
    );
    for (i, st) in plan.stages.iter().enumerate() {
        let action = match &st.action {
            Action::Run => "run".to_string(),
            Action::Reuse { from_run } => format!("reuse outputs of run {from_run}"),
            Action::Done => "done in this run".to_string(),
            Action::Upstream { from_run } => format!("take outputs of run {from_run}"),
            Action::Skip => "not selected".to_string(),
        };
        let _ = writeln!(
            s,
            "  {:<3} {:<sw$} {:<10} {:<nw$} {action}",
            i + 1,
            st.name,
            st.kind,
            needs_of(st)
        );
    }
    s
}
