//! The daily model health check (SPEC §11): for each model's production version — accuracy
//! against its gates, drift (the latest drift stage), fairness parity, inference speed against
//! a budget, and age. A failed check makes the model unhealthy and retraining due, with the
//! reasons. Used by the `health` stage and by `mlpipe health`.

use serde::{Deserialize, Serialize};

use crate::config::Pipeline;
use crate::error::Result;
use crate::registry::Registry;

/// Budgets of the health check.
#[derive(Debug, Clone, Serialize)]
pub struct Budgets {
    pub drift_ks: f64,
    pub parity: f64,
    pub max_age_days: f64,
    /// Scoring time per 1 000 rows, milliseconds.
    pub inference_ms_per_1k: f64,
}

impl Budgets {
    pub fn of(p: &Pipeline) -> Budgets {
        Budgets {
            drift_ks: 0.1,
            parity: p.fairness.threshold,
            max_age_days: 90.0,
            inference_ms_per_1k: 100.0,
        }
    }
}

/// One check of one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckOutcome {
    pub passed: bool,
    pub detail: String,
}

/// The health of one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelHealth {
    pub model: String,
    pub production: Option<String>,
    pub healthy: bool,
    pub retrain_due: bool,
    pub reasons: Vec<String>,
    pub checks: std::collections::BTreeMap<String, CheckOutcome>,
    /// When the production version was deployed (or trained), as Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployed_unix: Option<f64>,
}

/// What the latest run observed: its drift summary and scoring speed.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// `drift.json` of the latest run with a drift stage.
    pub drift: Option<serde_json::Value>,
    /// Milliseconds per 1 000 rows scored, per model.
    pub inference_ms_per_1k: std::collections::BTreeMap<String, f64>,
}

/// Evaluates every declared model's production version.
pub async fn evaluate(
    p: &Pipeline,
    registry: &Registry,
    observed: &Observed,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<ModelHealth>> {
    let b = Budgets::of(p);
    let mut out = Vec::new();
    for (name, model) in &p.models {
        let st = registry.state(name).await?;
        let mut checks = std::collections::BTreeMap::new();
        let mut reasons = Vec::new();
        let Some(v) = st.production.and_then(|v| st.versions.get(&v)) else {
            reasons.push("no production version".to_string());
            out.push(ModelHealth {
                model: name.clone(),
                production: None,
                healthy: false,
                retrain_due: true,
                reasons,
                checks,
                deployed_unix: None,
            });
            continue;
        };
        let mut check = |name: &str, passed: bool, detail: String, reasons: &mut Vec<String>| {
            if !passed {
                reasons.push(format!("{name}: {detail}"));
            }
            checks.insert(name.to_string(), CheckOutcome { passed, detail });
        };
        // Accuracy against the gates.
        let failing: Vec<String> = model
            .gates
            .iter()
            .filter_map(|g| {
                let val = v.metrics[&g.metric].as_f64()?;
                (!g.passes(val)).then(|| format!("{} is {val:.4}, gate {g}", g.metric))
            })
            .collect();
        let acc_detail = if failing.is_empty() {
            model
                .gates
                .iter()
                .filter_map(|g| {
                    v.metrics[&g.metric]
                        .as_f64()
                        .map(|x| format!("{} {x:.4} (gate {g})", g.metric))
                })
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            failing.join("; ")
        };
        check("accuracy", failing.is_empty(), acc_detail, &mut reasons);
        // Drift, from the latest drift stage.
        match &observed.drift {
            Some(d) => {
                let max = d["max_feature_ks"].as_f64().unwrap_or(0.0);
                let pred = d["predictions"][name]["ks"].as_f64();
                let drifted: Vec<String> = d["drifted_features"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let pred_drift = pred.is_some_and(|k| k > b.drift_ks);
                let passed = max <= b.drift_ks && !pred_drift && drifted.is_empty();
                let detail = if passed {
                    format!(
                        "max feature KS {max:.3}{} (threshold {})",
                        pred.map(|k| format!(", prediction KS {k:.3}"))
                            .unwrap_or_default(),
                        b.drift_ks
                    )
                } else {
                    format!(
                        "drift above {}: features [{}]{}",
                        b.drift_ks,
                        drifted.join(", "),
                        pred.filter(|k| *k > b.drift_ks)
                            .map(|k| format!(", predictions KS {k:.3}"))
                            .unwrap_or_default()
                    )
                };
                check("drift", passed, detail, &mut reasons);
            }
            None => check("drift", true, "no drift measured yet".into(), &mut reasons),
        }
        // Fairness parity recorded with the version.
        let low: Vec<String> = v.metrics["fairness"]
            .as_object()
            .map(|f| {
                f.iter()
                    .filter_map(|(k, x)| {
                        x.as_f64()
                            .filter(|x| *x < b.parity)
                            .map(|x| format!("{k} {x:.3}"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        check(
            "fairness",
            low.is_empty(),
            if low.is_empty() {
                format!("every parity ≥ {}", b.parity)
            } else {
                format!("parity below {}: {}", b.parity, low.join(", "))
            },
            &mut reasons,
        );
        // Inference speed.
        match observed.inference_ms_per_1k.get(name) {
            Some(ms) => check(
                "inference",
                *ms <= b.inference_ms_per_1k,
                format!(
                    "{ms:.2} ms per 1 000 rows (budget {})",
                    b.inference_ms_per_1k
                ),
                &mut reasons,
            ),
            None => check("inference", true, "not scored yet".into(), &mut reasons),
        }
        // Age.
        let born = v.deployment_date.as_deref().unwrap_or(&v.training_date);
        let born_at = crate::config::compile::parse_timestamp(born);
        let age = born_at
            .map(|t| (now - t).num_hours() as f64 / 24.0)
            .unwrap_or(0.0);
        check(
            "age",
            age <= b.max_age_days,
            format!(
                "{age:.0} days since {born} (retrain every {} days)",
                b.max_age_days
            ),
            &mut reasons,
        );
        let healthy = reasons.is_empty();
        out.push(ModelHealth {
            model: name.clone(),
            production: Some(v.model_id.clone()),
            healthy,
            retrain_due: !healthy,
            reasons,
            checks,
            deployed_unix: born_at.map(|t| t.timestamp() as f64),
        });
    }
    Ok(out)
}

/// What the latest run in `artifacts` observed.
pub async fn observed_from_latest(artifacts: &crate::storage::Store) -> Result<Observed> {
    let mut o = Observed::default();
    let Some(id) = crate::engine::latest_run(artifacts).await? else {
        return Ok(o);
    };
    let Some(m) = crate::engine::load_manifest(artifacts, &id).await? else {
        return Ok(o);
    };
    if let Some(rec) = m
        .stages
        .values()
        .find(|r| r.kind == "drift" && r.status.is_done())
    {
        if let Some(out) = rec.output("drift") {
            o.drift = artifacts.get_json(&out.path).await?;
        }
    }
    if let Some(rec) = m
        .stages
        .values()
        .find(|r| r.kind == "score" && r.status.is_done())
    {
        o.inference_ms_per_1k = inference_speed(rec);
    }
    Ok(o)
}

/// Scoring time per 1 000 rows and model, from a score stage's record (empty when it was reused:
/// its time was not measured in that run).
pub fn inference_speed(
    rec: &crate::engine::manifest::StageRecord,
) -> std::collections::BTreeMap<String, f64> {
    let rows = rec.summary["rows"].as_f64().unwrap_or(0.0);
    match (rec.duration_s, rec.summary["models"].as_object()) {
        (Some(secs), Some(models)) if rows > 0.0 && rec.reused_from.is_none() => models
            .keys()
            .map(|name| (name.clone(), secs * 1e6 / rows / models.len() as f64))
            .collect(),
        _ => Default::default(),
    }
}
