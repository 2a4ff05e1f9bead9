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
use crate::registry::{Change, Status, VersionDoc, VersionMetrics};

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
        let bytes = ctx.shared.artifacts.get(&art_out.path).await?;
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
        // Champion/challenger: the production version scored on this run's holdout rows. If
        // production moves while we commit, evaluate again.
        let mut outcome = None;
        for _ in 0..5 {
            let st = registry.state(m).await?;
            let champion = match st.production.filter(|_| reject.is_empty()) {
                None => None,
                Some(v) => {
                    let doc = &st.versions[&v];
                    let b = registry
                        .store()
                        .get(&format!("{m}/artifacts/{}.json", doc.artifact_sha256))
                        .await?;
                    let champ: Artifact = serde_json::from_slice(&b)?;
                    let value = score_on_holdout(
                        &champ,
                        &clean,
                        &holdout,
                        model.task,
                        model.threshold,
                        primary,
                    )?;
                    Some((v, value))
                }
            };
            let stale = Arc::new(AtomicBool::new(false));
            let seen = st.production;
            let (reject, base, stale2) = (reject.clone(), base.clone(), stale.clone());
            let (state, changes) = registry
                .commit(m, &run_id, move |st| {
                    // Already registered by this run (a resumed run): nothing to add.
                    if st.versions.values().any(|v| v.run_id == base.run_id && v.artifact_sha256 == base.artifact_sha256) {
                        return Ok(Vec::new());
                    }
                    if st.production != seen {
                        stale2.store(true, Ordering::SeqCst);
                        return Ok(Vec::new());
                    }
                    let version = st.next_version();
                    let mut doc = base.clone();
                    doc.version = version;
                    doc.model_id = format!("{}_v{version}", doc.model);
                    let mut changes = Vec::new();
                    if !reject.is_empty() {
                        doc.status = Status::Rejected;
                        doc.reason = Some(reject.join("; "));
                        changes.push(Change::Registered { doc: Box::new(doc) });
                    } else {
                        let promote = match champion {
                            None => Some("first version to pass its gates and fairness".to_string()),
                            Some((v, theirs)) => {
                                if primary.at_least_as_good(ours, theirs) {
                                    Some(format!("{primary} {ours:.4} on this holdout, production v{v} {theirs:.4}"))
                                } else {
                                    doc.reason = Some(format!("not better than production v{v}: {primary} {ours:.4} vs {theirs:.4} on the same holdout"));
                                    None
                                }
                            }
                        };
                        changes.push(Change::Registered { doc: Box::new(doc) });
                        if let Some(reason) = promote {
                            changes.push(Change::Promoted { version, reason });
                        }
                    }
                    Ok(changes)
                })
                .await?;
            if stale.load(Ordering::SeqCst) {
                continue;
            }
            outcome = Some((state, changes));
            break;
        }
        let (state, changes) = outcome.ok_or_else(|| Error::storage(format!("registry for `{m}`: production kept moving during registration; run `register` again")))?;
        let version = changes
            .iter()
            .find_map(|c| {
                if let Change::Registered { doc } = c {
                    Some(doc.version)
                } else {
                    None
                }
            })
            .or_else(|| {
                state
                    .versions
                    .values()
                    .find(|v| v.run_id == base.run_id && v.artifact_sha256 == base.artifact_sha256)
                    .map(|v| v.version)
            })
            .ok_or_else(|| {
                Error::Infra(format!(
                    "registry for `{m}`: the registration was not recorded"
                ))
            })?;
        let doc = &state.versions[&version];
        ctx.emit(crate::telemetry::Event::ModelRegistered {
            model: m,
            version,
            model_id: &doc.model_id,
            status: doc.status.as_str(),
            reason: doc.reason.as_deref(),
        });
        decisions.insert(
            m.clone(),
            Decision {
                model_id: doc.model_id.clone(),
                version,
                status: doc.status,
                reason: doc.reason.clone(),
                production: state.production,
                registry: registry.store().url_of(&format!("{m}/v{version}.json")),
            },
        );
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
    let (pred, _) = a
        .predict_rows(clean, Some(&rows))
        .map_err(|e| Error::Data(format!("production model cannot score this holdout: {e}")))?;
    let y: Vec<f64> = holdout::column(table, "target")?;
    let m = crate::metrics::evaluate(task, &y, &pred, threshold)
        .map_err(|e| Error::Data(e.to_string()))?;
    m.get(&metric)
        .copied()
        .ok_or_else(|| Error::Data(format!("metric `{metric}` not produced")))
}
