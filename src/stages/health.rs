//! The daily model health check, shared by the `health` stage and `mlpipe health`: for each
//! model's production version, accuracy against its gates, drift (the latest drift stage), the
//! fairness parity recorded with the version, inference speed against a budget, and age. A
//! failed check makes the model unhealthy and retraining due, with the reasons.
//!
//! [`observe`] gathers what a run saw (its drift report and scoring speed) from its stage
//! records; [`run`] evaluates the production versions against it. The stage writes the
//! [`Report`] as `health.json` and ends the run with exit code 1 when a model is unhealthy; the
//! command writes it as `health/latest.json` under the artifacts root.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::context::StageCtx;
use super::{drift, StageDone, StageRecord};
use crate::config::{Pipeline, StageKind};
use crate::error::Result;
use crate::registry::{Registry, VersionDoc};
use crate::storage::Store;

/// Budgets of the health check.
#[derive(Debug, Clone, Serialize)]
pub struct Budgets {
    /// KS statistic above which a feature or a prediction has drifted.
    pub drift_ks: f64,
    /// Parity ratio below which a model is unfair (the four-fifths rule).
    pub parity: f64,
    /// Retrain at least this often.
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckOutcome {
    pub passed: bool,
    pub detail: String,
}

/// The health of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelHealth {
    pub model: String,
    pub production: Option<String>,
    pub healthy: bool,
    pub retrain_due: bool,
    pub reasons: Vec<String>,
    pub checks: BTreeMap<String, CheckOutcome>,
    /// When the production version was deployed (or trained), as Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployed_unix: Option<f64>,
}

/// The health check's document: `health.json` of the stage, `health/latest.json` of the command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub checked_at: String,
    pub healthy: bool,
    pub models: Vec<ModelHealth>,
}

impl Report {
    /// The unhealthy models, each with why retraining is due.
    pub fn failures(&self) -> Vec<String> {
        self.models
            .iter()
            .filter(|h| !h.healthy)
            .map(|h| {
                format!(
                    "model `{}` is unhealthy, retraining is due: {}",
                    h.model,
                    h.reasons.join("; ")
                )
            })
            .collect()
    }

    /// The event of each model's health (a log line and the `model_health` metrics).
    pub fn events(&self) -> impl Iterator<Item = crate::telemetry::Event<'_>> {
        self.models
            .iter()
            .map(|h| crate::telemetry::Event::ModelHealth {
                model: &h.model,
                version: h.production.as_deref(),
                healthy: h.healthy,
                updated: h.deployed_unix,
                reasons: h.reasons.join("; "),
            })
    }
}

/// What a health stage reports, per model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub healthy: bool,
    pub models: BTreeMap<String, ModelSummary>,
}

/// One model's health, in brief.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub healthy: bool,
    pub reasons: Vec<String>,
}

/// What a run observed: its drift report and scoring speed.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// `drift.json` of the run's drift stage.
    pub drift: Option<drift::Report>,
    /// Milliseconds per 1 000 rows scored, per model (only for scoring done in that run).
    pub inference_ms_per_1k: BTreeMap<String, f64>,
}

/// What the stages of a run observed, from their records (a run's manifest, or the stages
/// before a health stage) and the drift report in `artifacts`.
pub async fn observe<'a>(
    artifacts: &Store,
    records: impl IntoIterator<Item = &'a StageRecord>,
) -> Result<Observed> {
    let mut o = Observed::default();
    for rec in records {
        match rec.kind {
            StageKind::Drift if o.drift.is_none() && rec.status.is_done() => {
                if let Some(out) = rec.output("drift") {
                    let bytes = artifacts
                        .get_verified(&out.path, &out.sha256, out.bytes)
                        .await?;
                    o.drift = Some(serde_json::from_slice(&bytes)?);
                }
            }
            StageKind::Score if o.inference_ms_per_1k.is_empty() => {
                // A reused stage's time was not measured in that run.
                if let (Some(s), Some(secs), None) = (rec.score(), rec.duration_s, &rec.reused_from)
                {
                    o.inference_ms_per_1k = s.inference_ms_per_1k(secs);
                }
            }
            _ => {}
        }
    }
    Ok(o)
}

/// Evaluates every declared model's production version as of `now`.
pub async fn run(
    p: &Pipeline,
    registry: &Registry,
    observed: &Observed,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Report> {
    let b = Budgets::of(p);
    let mut models = Vec::new();
    for (name, model) in &p.models {
        let st = registry.state(name).await?;
        let Some(v) = st.production.and_then(|v| st.versions.get(&v)) else {
            models.push(ModelHealth {
                model: name.clone(),
                production: None,
                healthy: false,
                retrain_due: true,
                reasons: vec!["no production version".to_string()],
                checks: BTreeMap::new(),
                deployed_unix: None,
            });
            continue;
        };
        let mut checks = Checks::default();
        checks.add("accuracy", accuracy(model, v));
        checks.add("drift", drift_check(&b, observed.drift.as_ref(), name));
        checks.add("fairness", fairness(&b, v));
        checks.add(
            "inference",
            match observed.inference_ms_per_1k.get(name) {
                Some(ms) => CheckOutcome {
                    passed: *ms <= b.inference_ms_per_1k,
                    detail: format!(
                        "{ms:.2} ms per 1 000 rows (budget {})",
                        b.inference_ms_per_1k
                    ),
                },
                None => CheckOutcome {
                    passed: true,
                    detail: "not scored yet".into(),
                },
            },
        );
        let born = v.deployment_date.as_deref().unwrap_or(&v.training_date);
        let born_at = crate::time::parse_timestamp(born);
        let age = born_at
            .map(|t| (now - t).num_hours() as f64 / 24.0)
            .unwrap_or(0.0);
        checks.add(
            "age",
            CheckOutcome {
                passed: age <= b.max_age_days,
                detail: format!(
                    "{age:.0} days since {born} (retrain every {} days)",
                    b.max_age_days
                ),
            },
        );
        let healthy = checks.reasons.is_empty();
        models.push(ModelHealth {
            model: name.clone(),
            production: Some(v.model_id.clone()),
            healthy,
            retrain_due: !healthy,
            reasons: checks.reasons,
            checks: checks.outcomes,
            deployed_unix: born_at.map(|t| t.timestamp() as f64),
        });
    }
    Ok(Report {
        checked_at: now.to_rfc3339(),
        healthy: models.iter().all(|h| h.healthy),
        models,
    })
}

/// The checks of one model, and the reasons of those that failed.
#[derive(Default)]
struct Checks {
    outcomes: BTreeMap<String, CheckOutcome>,
    reasons: Vec<String>,
}

impl Checks {
    fn add(&mut self, name: &str, c: CheckOutcome) {
        if !c.passed {
            self.reasons.push(format!("{name}: {}", c.detail));
        }
        self.outcomes.insert(name.to_string(), c);
    }
}

/// The version's holdout metrics against the model's gates.
fn accuracy(model: &crate::config::Model, v: &VersionDoc) -> CheckOutcome {
    let value = |g: &crate::config::Gate| v.metrics.holdout.get(&g.metric).copied();
    let failing: Vec<String> = model
        .gates
        .iter()
        .filter_map(|g| {
            let val = value(g)?;
            (!g.passes(val)).then(|| format!("{} is {val:.4}, gate {g}", g.metric))
        })
        .collect();
    let detail = if failing.is_empty() {
        model
            .gates
            .iter()
            .filter_map(|g| value(g).map(|x| format!("{} {x:.4} (gate {g})", g.metric)))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        failing.join("; ")
    };
    CheckOutcome {
        passed: failing.is_empty(),
        detail,
    }
}

/// Features and the model's predictions against the drift budget.
fn drift_check(b: &Budgets, d: Option<&drift::Report>, model: &str) -> CheckOutcome {
    let Some(d) = d else {
        return CheckOutcome {
            passed: true,
            detail: "no drift measured yet".into(),
        };
    };
    let max = d.max_feature_ks;
    let pred = d.predictions.get(model).map(|p| p.ks);
    let pred_drift = pred.is_some_and(|k| k > b.drift_ks);
    let passed = max <= b.drift_ks && !pred_drift && d.drifted_features.is_empty();
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
            d.drifted_features.join(", "),
            pred.filter(|k| *k > b.drift_ks)
                .map(|k| format!(", predictions KS {k:.3}"))
                .unwrap_or_default()
        )
    };
    CheckOutcome { passed, detail }
}

/// The parity ratios recorded with the version.
fn fairness(b: &Budgets, v: &VersionDoc) -> CheckOutcome {
    let low: Vec<String> = v
        .metrics
        .fairness
        .iter()
        .filter(|(_, x)| **x < b.parity)
        .map(|(k, x)| format!("{k} {x:.3}"))
        .collect();
    CheckOutcome {
        passed: low.is_empty(),
        detail: if low.is_empty() {
            format!("every parity ≥ {}", b.parity)
        } else {
            format!("parity below {}: {}", b.parity, low.join(", "))
        },
    }
}

/// The `health` stage: the check with what this run observed; an unhealthy model does not stop
/// the run, but the run ends with exit code 1.
pub async fn run_stage(ctx: &StageCtx) -> Result<StageDone> {
    let observed = observe(&ctx.shared.artifacts, ctx.upstream.values()).await?;
    let report = run(
        ctx.pipeline(),
        &ctx.shared.registry,
        &observed,
        ctx.shared.as_of,
    )
    .await?;
    for e in report.events() {
        ctx.emit(e);
    }
    ctx.write_json("health", "health.json", &report).await?;
    let mut done = StageDone::new(Summary {
        healthy: report.healthy,
        models: report
            .models
            .iter()
            .map(|h| {
                let s = ModelSummary {
                    healthy: h.healthy,
                    reasons: h.reasons.clone(),
                };
                (h.model.clone(), s)
            })
            .collect(),
    });
    done.check_failures = report.failures();
    Ok(done)
}
