//! The daily model health check, shared by the `health` stage and `mlpipe health`: for each
//! model's production version, accuracy against its gates, drift (the latest drift stage), the
//! fairness parity recorded with the version, inference speed against a budget, and age. A
//! failed check makes the model unhealthy and retraining due, with the reasons.
//!
//! Accuracy is what is known of the production version now: realized on the latest cohort with
//! at least `min_outcomes` known outcomes (an `evaluate` stage), else estimated on the latest
//! scoring (CBPE, DLE), else the holdout at training; the check says which. One evaluation
//! below a gate is reported, not yet a failure: the check fails after `evaluation_periods` in a
//! row (the monitoring strategy's alarm: three daily evaluations), counted over the accuracy
//! readings earlier health stages left in the history ([`crate::history::Reading`]).
//!
//! [`observe`] gathers what a run saw (drift, scoring speed and estimates, realized accuracy)
//! from its stage records; [`run`] evaluates the production versions against it. The stage
//! writes the [`Report`] as `health.json`, adds each model's reading to the history, and ends
//! the run with exit code 1 when a model is unhealthy; the command writes the report as
//! `health/latest.json` under the artifacts root.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::context::StageCtx;
use super::{drift, evaluate, StageDone, StageRecord};
use crate::config::{Pipeline, StageKind};
use crate::error::Result;
use crate::history::{Reading, Source};
use crate::metrics::Metrics;
use crate::model::estimate::Estimates;
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
    /// Realized accuracy needs this many known outcomes in a cohort.
    pub min_outcomes: u64,
    /// Evaluations below a gate in a row that make retraining due.
    pub evaluation_periods: u32,
}

impl Budgets {
    pub fn of(p: &Pipeline) -> Budgets {
        let h = &p.health;
        Budgets {
            drift_ks: h.drift_ks,
            parity: p.fairness.threshold,
            max_age_days: h.max_age_days,
            inference_ms_per_1k: h.inference_ms_per_1k,
            min_outcomes: h.min_outcomes,
            evaluation_periods: h.evaluation_periods,
        }
    }
}

/// The accuracy the check used for a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub source: Source,
    /// The gates' metrics from that source.
    pub metrics: Metrics,
    /// Estimated: each metric's band.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated: Option<Estimates>,
    /// Realized: the known outcomes and the cohort's scoring time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<String>,
    /// Evaluations below a gate in a row, this one included, and how many make retraining due.
    pub below_gate_in_a_row: u32,
    pub evaluation_periods: u32,
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
    /// The accuracy the check used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<Accuracy>,
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
                accuracy: h.accuracy.as_ref(),
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

/// What a run observed: its drift report, scoring speed and estimates, realized accuracy.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// `drift.json` of the run's drift stage.
    pub drift: Option<drift::Report>,
    /// Milliseconds per 1 000 rows scored, per model (only for scoring done in that run).
    pub inference_ms_per_1k: BTreeMap<String, f64>,
    /// Per model, the version the run's scores carry and the performance estimated on them.
    pub estimated: BTreeMap<String, (String, Estimates)>,
    /// Per model, the latest cohort with outcomes (the run's evaluate stage).
    pub realized: BTreeMap<String, evaluate::Latest>,
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
            StageKind::Score if o.estimated.is_empty() => {
                let Some(s) = rec.score() else { continue };
                // A reused stage's time was not measured in that run.
                if let (Some(secs), None) = (rec.duration_s, &rec.reused_from) {
                    o.inference_ms_per_1k = s.inference_ms_per_1k(secs);
                }
                for (m, sc) in &s.models {
                    if let Some(e) = &sc.estimated {
                        o.estimated
                            .insert(m.clone(), (sc.version.clone(), e.clone()));
                    }
                }
            }
            StageKind::Evaluate if o.realized.is_empty() => {
                for (m, e) in rec.evaluate().map(|e| &e.models).into_iter().flatten() {
                    if let Some(l) = &e.latest {
                        o.realized.insert(m.clone(), l.clone());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(o)
}

/// Whether scores carrying `version` were made by the registry version `v`: its id (scored
/// with the production version), or `<run>:<its SHA-256 prefix>` (trained in a run).
fn scored_by(version: &str, v: &VersionDoc) -> bool {
    version == v.model_id
        || version
            .rsplit_once(':')
            .is_some_and(|(_, sha)| !sha.is_empty() && v.artifact_sha256.starts_with(sha))
}

/// What is known of the production version's accuracy now: realized, else estimated, else the
/// holdout.
fn current_accuracy(b: &Budgets, name: &str, v: &VersionDoc, o: &Observed) -> Accuracy {
    let base = Accuracy {
        source: Source::Holdout,
        metrics: v.metrics.holdout.clone(),
        estimated: None,
        outcomes: None,
        cohort: None,
        below_gate_in_a_row: 0,
        evaluation_periods: b.evaluation_periods,
    };
    if let Some(l) = o.realized.get(name) {
        if l.version.as_deref() == Some(&v.model_id)
            && l.outcomes >= b.min_outcomes
            && !l.metrics.is_empty()
        {
            return Accuracy {
                source: Source::Realized,
                metrics: l.metrics.clone(),
                outcomes: Some(l.outcomes),
                cohort: Some(l.scored_at.clone()),
                ..base
            };
        }
    }
    if let Some((version, e)) = o.estimated.get(name) {
        if scored_by(version, v) {
            return Accuracy {
                source: Source::Estimated,
                metrics: Metrics(e.iter().map(|(m, x)| (*m, x.value)).collect()),
                estimated: Some(e.clone()),
                ..base
            };
        }
    }
    base
}

/// Evaluates every declared model's production version as of `now`. With `history`, the
/// accuracy readings of earlier checks count towards `evaluation_periods` (and the caller may
/// add this check's, see [`Report::readings`]).
pub async fn run(
    p: &Pipeline,
    registry: &Registry,
    observed: &Observed,
    history: Option<(&Store, &str)>,
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
                accuracy: None,
            });
            continue;
        };
        let mut checks = Checks::default();
        let mut acc = current_accuracy(&b, name, v, observed);
        let below = below_gates(model, &acc.metrics);
        if !below.is_empty() {
            // This evaluation, and the earlier ones of this version below a gate in a row.
            // (A run checked again, when resumed, replaces its own reading.)
            let earlier = match history {
                Some((h, run_id)) => {
                    let n = b.evaluation_periods as usize;
                    let mut r = crate::history::readings(h, name, n).await?;
                    r.retain(|r| r.run_id != run_id);
                    r
                }
                None => Vec::new(),
            };
            let run_of = earlier
                .iter()
                .rev()
                .take_while(|r| r.version == v.model_id && r.below_gate)
                .count() as u32;
            acc.below_gate_in_a_row = 1 + run_of.min(b.evaluation_periods.saturating_sub(1));
        }
        checks.add("accuracy", accuracy(model, &acc, &below));
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
            accuracy: Some(acc),
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

/// The gates `metrics` fails, as people read them.
fn below_gates(model: &crate::config::Model, metrics: &Metrics) -> Vec<String> {
    model
        .gates
        .iter()
        .filter_map(|g| {
            let val = *metrics.get(&g.metric)?;
            (!g.passes(val)).then(|| format!("{} is {val:.4}, gate {g}", g.metric))
        })
        .collect()
}

/// The accuracy against the model's gates: it fails once `evaluation_periods` evaluations in a
/// row were below a gate.
fn accuracy(model: &crate::config::Model, acc: &Accuracy, below: &[String]) -> CheckOutcome {
    let source = match acc.source {
        Source::Realized => format!(
            "realized on {} outcomes of the cohort scored {}",
            acc.outcomes.unwrap_or(0),
            acc.cohort.as_deref().unwrap_or("?")
        ),
        Source::Estimated => "estimated on the latest scoring".to_string(),
        Source::Holdout => "the holdout at training (nothing newer is known)".to_string(),
    };
    let detail = if below.is_empty() {
        let values = model
            .gates
            .iter()
            .filter_map(|g| {
                acc.metrics
                    .get(&g.metric)
                    .map(|x| format!("{} {x:.4} (gate {g})", g.metric))
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!("{values}; {source}")
    } else {
        format!(
            "{}; {source}; below a gate in {} evaluation{} in a row (retraining after {})",
            below.join("; "),
            acc.below_gate_in_a_row,
            if acc.below_gate_in_a_row == 1 {
                ""
            } else {
                "s"
            },
            acc.evaluation_periods
        )
    };
    CheckOutcome {
        passed: acc.below_gate_in_a_row < acc.evaluation_periods,
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

impl Report {
    /// Each model's accuracy reading of this check, for the history.
    pub fn readings(&self, run_id: &str) -> Vec<Reading> {
        self.models
            .iter()
            .filter_map(|h| {
                let a = h.accuracy.as_ref()?;
                Some(Reading {
                    model: h.model.clone(),
                    version: h.production.clone()?,
                    checked_at: self.checked_at.clone(),
                    run_id: run_id.to_string(),
                    source: a.source,
                    metrics: a.metrics.clone(),
                    outcomes: a.outcomes,
                    cohort: a.cohort.clone(),
                    below_gate: a.below_gate_in_a_row > 0,
                })
            })
            .collect()
    }
}

/// The `health` stage: the check with what this run observed; an unhealthy model does not stop
/// the run, but the run ends with exit code 1. Each model's accuracy reading joins the history.
pub async fn run_stage(ctx: &StageCtx) -> Result<StageDone> {
    let store = &ctx.shared.artifacts;
    let observed = observe(store, ctx.upstream.values()).await?;
    let report = run(
        ctx.pipeline(),
        &ctx.shared.registry,
        &observed,
        Some((store, &ctx.shared.run_id)),
        ctx.shared.as_of,
    )
    .await?;
    for e in report.events() {
        ctx.emit(e);
    }
    ctx.write_json("health", "health.json", &report).await?;
    for r in report.readings(&ctx.shared.run_id) {
        store.put_json(&r.path(), &r).await?;
    }
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
