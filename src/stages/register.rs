//! `register`: records every trained model in the registry and decides promotion.
//! A version that fails a gate or the fairness threshold is `rejected`, with the reason. One that
//! passes becomes `production` if there is none yet, or if it is at least as good as the current
//! production version measured on this run's holdout rows (champion/challenger); otherwise it
//! stays a `candidate`. Writes `register.json`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::context::StageCtx;
use super::StageDone;
use crate::config::StageKind;
use crate::data::holdout;
use crate::error::{Error, Result};
use crate::metrics::Metric;
use crate::model::{Artifact, Task};
use crate::registry::{Change, State, Status, VersionDoc, VersionMetrics};

/// The registry's decision on one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub model_id: String,
    pub version: u32,
    pub status: Status,
    pub reason: Option<String>,
    /// The production version after the decision.
    pub production: Option<u32>,
    /// The version's document in the registry.
    pub registry: String,
    /// The trained artifact was identical to this existing version's: no new version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reevaluated: bool,
}

/// `register.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub registry: String,
    pub models: IndexMap<String, Decision>,
}

/// What a register stage reports: the decision per model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub models: IndexMap<String, Decision>,
}

pub async fn run(ctx: &StageCtx, models: &[String]) -> Result<StageDone> {
    let p = ctx.pipeline();
    let registry = &ctx.shared.registry;
    let prep = ctx
        .upstream_of(StageKind::Prepare)
        .into_iter()
        .find_map(|(_, r)| r.output("prepare").cloned())
        .ok_or_else(|| {
            Error::Usage(format!(
                "stage `{}` needs a prepare stage before it",
                ctx.stage.name
            ))
        })?;
    let recipe: super::prepare::Recipe = ctx.read_json(&prep).await?;
    let clean = ctx.read_table(&recipe.source).await?;
    let fairness = ctx
        .upstream_of(StageKind::Fairness)
        .into_iter()
        .find_map(|(_, r)| r.fairness().cloned());
    let drift = ctx
        .upstream_of(StageKind::Drift)
        .into_iter()
        .find_map(|(_, r)| r.drift())
        .map(serde_json::to_value)
        .transpose()?
        .unwrap_or(serde_json::Value::Null);
    let run_id = ctx.shared.run_id.clone();
    let today = ctx.shared.as_of.format("%Y-%m-%d").to_string();
    let mut decisions = IndexMap::new();
    for m in models {
        let model = p.models[m].clone();
        let trained = ctx.trained(m)?;
        let art_out = trained.output("model")?.clone();
        let bytes = ctx.read_bytes(&art_out).await?;
        let artifact: Artifact = serde_json::from_slice(&bytes)?;
        let art_rel = registry.put_artifact(m, &art_out.sha256, bytes).await?;
        let holdout = ctx.read_table(trained.output("holdout")?).await?;
        let t = trained.summary;
        let primary = model
            .gates
            .first()
            .map(|g| g.metric)
            .unwrap_or_else(|| Metric::primary(model.task));
        let ours = t.metrics.get(&primary).copied().unwrap_or(f64::NAN);
        let mut reject: Vec<String> = t
            .failed_gates()
            .map(|g| format!("failed gate {g}"))
            .collect();
        if let Some(f) = &fairness {
            reject.extend(f.violated.get(m).into_iter().flatten().map(|v| {
                format!(
                    "fairness below {}: {}",
                    p.fairness.threshold,
                    super::fairness::violation_text(m, v)
                )
            }));
        }
        let base = VersionDoc {
            model_id: String::new(),
            training_date: today.clone(),
            deployment_date: None,
            status: Status::Candidate,
            metrics: VersionMetrics {
                holdout: t.metrics.clone(),
                fairness: fairness
                    .as_ref()
                    .and_then(|f| f.parity.get(m))
                    .map(|r| r.0.clone())
                    .unwrap_or_default(),
            },
            data_version: recipe.source.sha256[..16].to_string(),
            training_duration_min: t.training_seconds / 60.0,
            last_evaluated: ctx
                .shared
                .as_of
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            model: m.clone(),
            version: 0,
            run_id: trained.run_id(&run_id).to_string(),
            artifact_uri: registry.store().url_of(&art_rel),
            artifact_sha256: art_out.sha256.clone(),
            algorithm: artifact.algorithm.name().to_string(),
            params: artifact.algorithm.params_json(),
            features: model.features.clone(),
            training_data: ctx.shared.artifacts.url_of(&recipe.source.path),
            drift: drift.clone(),
            code_version: crate::CODE_VERSION.to_string(),
            reason: None,
        };
        let decision = register_model(
            ctx,
            m,
            &base,
            &reject,
            Challenger {
                clean: &clean,
                holdout: &holdout,
                task: model.task,
                threshold: model.threshold,
                primary,
                ours,
            },
        )
        .await?;
        ctx.emit(crate::telemetry::Event::ModelRegistered {
            model: m,
            version: decision.version,
            model_id: &decision.model_id,
            status: decision.status.as_str(),
            reason: decision.reason.as_deref(),
        });
        decisions.insert(m.clone(), decision);
    }
    let report = Report {
        registry: p.storage.registry.clone(),
        models: decisions,
    };
    ctx.write_json("register", "register.json", &report).await?;
    Ok(StageDone::new(Summary {
        models: report.models,
    }))
}

/// What the champion/challenger comparison needs: this run's holdout rows and the challenger's
/// value of the primary metric on them.
struct Challenger<'a> {
    clean: &'a arrow::record_batch::RecordBatch,
    holdout: &'a arrow::record_batch::RecordBatch,
    task: Task,
    threshold: f64,
    primary: Metric,
    ours: f64,
}

/// Registers one trained model: scores the production version on this run's holdout rows
/// (champion/challenger), decides, and commits; if production moves meanwhile, decides again.
async fn register_model(
    ctx: &StageCtx,
    m: &str,
    base: &VersionDoc,
    reject: &[String],
    c: Challenger<'_>,
) -> Result<Decision> {
    let registry = &ctx.shared.registry;
    for _ in 0..5 {
        let st = registry.state(m).await?;
        let champion = match st.production.filter(|_| reject.is_empty()) {
            None => None,
            Some(v) => {
                let doc = &st.versions[&v];
                let rel = format!("{m}/artifacts/{}.json", doc.artifact_sha256);
                let champ: Artifact = serde_json::from_slice(&registry.store().get(&rel).await?)?;
                let value =
                    score_on_holdout(&champ, c.clean, c.holdout, c.task, c.threshold, c.primary)?;
                Some((v, value))
            }
        };
        let seen = st.production;
        let stale = Arc::new(AtomicBool::new(false));
        let stale2 = stale.clone();
        let evaluated_at = ctx
            .shared
            .as_of
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let measured = Measured {
            seen,
            champion,
            primary: c.primary,
            ours: c.ours,
        };
        let (state, changes) = registry
            .commit(m, &ctx.shared.run_id, move |st| {
                Ok(match decide(st, base, reject, &measured, &evaluated_at) {
                    Decided::Changes(ch) => ch,
                    Decided::Stale => {
                        stale2.store(true, Ordering::SeqCst);
                        Vec::new()
                    }
                })
            })
            .await?;
        if stale.load(Ordering::SeqCst) {
            continue;
        }
        return decision(registry, m, base, reject, &state, &changes);
    }
    Err(Error::storage(format!(
        "registry for `{m}`: production kept moving during registration; run `register` again"
    )))
}

/// What the champion/challenger comparison measured: the production version when it was
/// scored, its value and this model's of the primary metric on this run's holdout rows.
struct Measured {
    seen: Option<u32>,
    champion: Option<(u32, f64)>,
    primary: Metric,
    ours: f64,
}

/// What registering a model decides.
#[derive(Debug, PartialEq)]
enum Decided {
    Changes(Vec<Change>),
    /// Production moved since the champion was scored: score again and decide again.
    Stale,
}

/// The changes registering `base` makes to a model's state. An artifact this run already
/// registered (a resumed run) changes nothing; one identical to an existing version's (the same
/// SHA-256: the same data and code) creates no new version but records that version's
/// re-evaluation. Otherwise a new version: rejected (a failed gate or fairness), production
/// (the first that passes, or at least as good as production on the same holdout), or a
/// candidate.
fn decide(
    st: &State,
    base: &VersionDoc,
    reject: &[String],
    m: &Measured,
    evaluated_at: &str,
) -> Decided {
    if let Some(v) = st.with_artifact(&base.artifact_sha256) {
        if v.run_id == base.run_id {
            return Decided::Changes(Vec::new());
        }
        return Decided::Changes(vec![Change::Evaluated {
            version: v.version,
            reason: format!(
                "run {} trained an artifact identical to {} (SHA-256 {}): no new version",
                base.run_id,
                v.model_id,
                &base.artifact_sha256[..12.min(base.artifact_sha256.len())]
            ),
            evaluated_at: evaluated_at.to_string(),
        }]);
    }
    if st.production != m.seen {
        return Decided::Stale;
    }
    let (primary, ours) = (m.primary, m.ours);
    let version = st.next_version();
    let mut doc = base.clone();
    doc.version = version;
    doc.model_id = format!("{}_v{version}", doc.model);
    if !reject.is_empty() {
        doc.status = Status::Rejected;
        doc.reason = Some(reject.join("; "));
        return Decided::Changes(vec![Change::Registered { doc: Box::new(doc) }]);
    }
    let promote = match m.champion {
        None => Some("first version to pass its gates and fairness".to_string()),
        Some((v, theirs)) if primary.at_least_as_good(ours, theirs) => Some(format!(
            "{primary} {ours:.4} on this holdout, production v{v} {theirs:.4}"
        )),
        Some((v, theirs)) => {
            doc.reason = Some(format!(
                "not better than production v{v}: {primary} {ours:.4} vs {theirs:.4} on the same holdout"
            ));
            None
        }
    };
    // The run's as-of date (the training date): a backfill's model is as old as its data.
    let doc_date = doc.training_date.clone();
    let mut changes = vec![Change::Registered { doc: Box::new(doc) }];
    if let Some(reason) = promote {
        changes.push(Change::Promoted {
            version,
            reason,
            rollback: false,
            deployed_on: Some(doc_date.clone()),
        });
    }
    Decided::Changes(changes)
}

/// The decision as `register.json` records it, from the state after the commit.
fn decision(
    registry: &crate::registry::Registry,
    m: &str,
    base: &VersionDoc,
    reject: &[String],
    state: &State,
    changes: &[Change],
) -> Result<Decision> {
    let (version, reevaluated) = changes
        .iter()
        .find_map(|c| match c {
            Change::Registered { doc } => Some((doc.version, false)),
            Change::Evaluated { version, .. } => Some((*version, true)),
            Change::Promoted { .. } => None,
        })
        .or_else(|| {
            state
                .with_artifact(&base.artifact_sha256)
                .map(|v| (v.version, false))
        })
        .ok_or_else(|| {
            Error::Infra(format!(
                "registry for `{m}`: the registration was not recorded"
            ))
        })?;
    let doc = &state.versions[&version];
    // A re-evaluation that fails a gate or fairness rejects this run's model (the existing
    // version keeps its status; the health check judges production).
    let (status, reason) = match changes.iter().find_map(|c| match c {
        Change::Evaluated { reason, .. } => Some(reason.clone()),
        _ => None,
    }) {
        Some(evaluated) if !reject.is_empty() => (
            Status::Rejected,
            Some(format!("{}; {evaluated}", reject.join("; "))),
        ),
        Some(evaluated) => (doc.status, Some(evaluated)),
        None => (doc.status, doc.reason.clone()),
    };
    Ok(Decision {
        model_id: doc.model_id.clone(),
        version,
        status,
        reason,
        production: state.production,
        registry: registry.store().url_of(&format!("{m}/v{version}.json")),
        reevaluated,
    })
}

/// A model's primary metric on the holdout rows of this run.
fn score_on_holdout(
    a: &Artifact,
    clean: &arrow::record_batch::RecordBatch,
    table: &arrow::record_batch::RecordBatch,
    task: Task,
    threshold: f64,
    metric: Metric,
) -> Result<f64> {
    let rows = holdout::row_numbers(table)?;
    let pred = a
        .predict_rows(clean, Some(&rows))
        .map_err(|e| Error::Data(format!("production model cannot score this holdout: {e}")))?
        .values;
    let y: Vec<f64> = holdout::column(table, "target")?;
    let m = crate::metrics::evaluate(task, &y, &pred, threshold)
        .map_err(|e| Error::Data(e.to_string()))?;
    m.get(&metric)
        .copied()
        .ok_or_else(|| Error::Data(format!("metric `{metric}` not produced")))
}
