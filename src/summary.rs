//! What people read: the end-of-run summary and the plan table.

use std::fmt::Write;

use crate::config::Pipeline;
use crate::engine::manifest::{Manifest, RunStatus, StageStatus};
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

/// The end-of-run summary (SPEC §2).
pub fn run_summary(p: &Pipeline, m: &Manifest, artifacts_url: &str) -> String {
    let mut s = String::new();
    let status = match m.status {
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "FAILED",
        RunStatus::Running => "is still running",
    };
    let _ = writeln!(
        s,
        "Run {} of pipeline `{}` {} in {}",
        m.run_id,
        p.name,
        status,
        secs(m.duration_s)
    );
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
            StageStatus::Failed => r
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
    for r in m
        .stages
        .values()
        .filter(|r| r.kind == "validate" && r.status.is_done())
    {
        if let Some(obj) = r.summary.as_object() {
            for (ds, q) in obj {
                let rows = q["rows"].as_u64().unwrap_or(0);
                let rejected = q["rejected_rows"].as_u64().unwrap_or(0);
                let checks = q["checks"]
                    .as_object()
                    .map(|c| {
                        c.iter()
                            .map(|(k, v)| {
                                format!(
                                    "{k} {} {}",
                                    v["status"].as_str().unwrap_or("?"),
                                    fmt_value(k, v["value"].as_f64().unwrap_or(f64::NAN))
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(" · ")
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    quality,
                    "  {ds:<12} {} rows, {} rejected — {checks}",
                    thousands(rows),
                    thousands(rejected)
                );
            }
        }
    }
    if !quality.is_empty() {
        let _ = writeln!(s, "\nQuality (as of {})", m.as_of);
        s.push_str(&quality);
    }
    let _ = writeln!(
        s,
        "\nManifest: {}/{}/manifest.json",
        artifacts_url, m.run_id
    );
    let _ = writeln!(s, "Report:   {}/{}/report.html", artifacts_url, m.run_id);
    s
}

fn stage_note(r: &crate::engine::manifest::StageRecord) -> String {
    match r.kind.as_str() {
        "load" => r.summary["rows"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| format!("{k} {} rows", thousands(v.as_u64().unwrap_or(0))))
                    .collect::<Vec<_>>()
                    .join(" · ")
            })
            .unwrap_or_default(),
        "validate" => r
            .summary
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        format!(
                            "{k} {} ({} rejected)",
                            v["status"].as_str().unwrap_or("?"),
                            thousands(v["rejected_rows"].as_u64().unwrap_or(0))
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" · ")
            })
            .unwrap_or_default(),
        "train" => {
            let metrics = r.summary["metrics"].as_object();
            let mut parts: Vec<String> = metrics
                .map(|m| {
                    m.iter()
                        .take(3)
                        .map(|(k, v)| format!("{k} {:.4}", v.as_f64().unwrap_or(f64::NAN)))
                        .collect()
                })
                .unwrap_or_default();
            match r.summary["gate_failures"].as_array() {
                Some(f) if !f.is_empty() => parts.push(format!(
                    "GATE FAILED: {}",
                    f.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
                _ if r.summary["passed"] == serde_json::Value::Bool(true) => {
                    parts.push("gates passed".into())
                }
                _ => {}
            }
            parts.join(" · ")
        }
        "score" => format!(
            "{} rows scored{}",
            thousands(r.summary["rows"].as_u64().unwrap_or(0)),
            r.summary["models"]
                .as_object()
                .map(|m| m
                    .iter()
                    .filter_map(|(k, v)| v["positive_rate"]
                        .as_f64()
                        .map(|x| format!(" · {k} positive rate {:.1}%", x * 100.0)))
                    .collect::<String>())
                .unwrap_or_default()
        ),
        "drift" => {
            let list = |k: &str| {
                r.summary[k]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            };
            if r.summary["dataset_drift"] == serde_json::Value::Bool(true) {
                format!(
                    "DRIFT — features: {} · predictions: {}",
                    list("drifted_features"),
                    list("drifted_predictions")
                )
            } else {
                format!(
                    "no drift (max KS {:.3})",
                    r.summary["max_feature_ks"].as_f64().unwrap_or(0.0)
                )
            }
        }
        "register" => r.summary["models"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        format!(
                            "{} {}",
                            v["model_id"].as_str().unwrap_or(k),
                            v["status"].as_str().unwrap_or("?")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" · ")
            })
            .unwrap_or_default(),
        "health" => {
            if r.summary["healthy"] == serde_json::Value::Bool(true) {
                "all production models healthy".into()
            } else {
                let bad: Vec<String> = r.summary["models"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter(|(_, v)| v["healthy"] == false)
                            .map(|(k, _)| k.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                format!("RETRAINING DUE: {}", bad.join(", "))
            }
        }
        "fairness" => {
            let v = r.summary["violations"]
                .as_array()
                .map(|a| a.len())
                .unwrap_or(0);
            let worst = r.summary["parity"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|a| a.as_object())
                        .flat_map(|a| a.values().filter_map(|x| x.as_f64()))
                        .fold(f64::INFINITY, f64::min)
                })
                .unwrap_or(f64::NAN);
            if v == 0 {
                format!("no violation (lowest parity {worst:.3})")
            } else {
                format!("{v} VIOLATION(S) below the threshold (lowest parity {worst:.3})")
            }
        }
        "prepare" => format!(
            "{} training rows · {} holdout rows",
            thousands(r.summary["train_rows"].as_u64().unwrap_or(0)),
            thousands(r.summary["holdout_rows"].as_u64().unwrap_or(0))
        ),
        _ => String::new(),
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
