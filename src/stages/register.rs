//! `register`: records every trained model in the registry (SPEC §10) and decides promotion.
//! A version that fails a gate or the fairness threshold is `rejected`, with the reason. One that
//! passes becomes `production` if there is none yet, or if it is at least as good as the current
//! production version measured on this run's holdout rows (champion/challenger); otherwise it
//! stays a `candidate`. Writes `register.json`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::StageDone;
use crate::config::Task;
use crate::engine::context::StageCtx;
use crate::engine::manifest::StageRecord;
use crate::error::{Error, Result};
use crate::model::Artifact;
use crate::registry::{Change, Registry, Status, VersionDoc};

/// Whether higher values of a metric are better.
fn higher_is_better(metric: &str) -> bool {
    !matches!(metric, "rmse" | "mae" | "log_loss" | "brier")
}

fn find<'a>(
    ctx: &'a StageCtx,
    kind: &str,
    model: Option<&str>,
) -> Option<(&'a String, &'a StageRecord)> {
    ctx.upstream.iter().find(|(_, r)| {
        r.kind == kind
            && model.is_none_or(|m| r.summary.get("model").and_then(|v| v.as_str()) == Some(m))
    })
}

pub async fn run(ctx: &StageCtx, models: &[String]) -> Result<StageDone> {
    let p = ctx.pipeline();
    let registry = Registry::open(&p.storage.registry)?;
    let prep = find(ctx, "prepare", None)
        .and_then(|(_, r)| r.output("prepare").cloned())
        .ok_or_else(|| {
            Error::Usage(format!(
                "stage `{}` needs a prepare stage before it",
                ctx.stage.name
            ))
        })?;
    let recipe: super::prepare::Recipe = ctx.read_json(&prep).await?;
    let clean = ctx.read_table(&recipe.source).await?;
    let fairness = find(ctx, "fairness", None).map(|(_, r)| r.summary.clone());
    let drift = find(ctx, "drift", None)
        .map(|(_, r)| r.summary.clone())
        .unwrap_or(serde_json::Value::Null);
    let run_id = ctx.shared.run_id.clone();
    let today = ctx.shared.as_of.format("%Y-%m-%d").to_string();
    let mut decisions = serde_json::Map::new();
    for m in models {
        let model = p.models[m].clone();
        let (stage, rec) = ctx.trained(m)?;
        let art_out = rec
            .output("model")
            .cloned()
            .ok_or_else(|| Error::Data(format!("stage `{stage}` has no model artifact")))?;
        let bytes = ctx.shared.artifacts.get(&art_out.path).await?;
        let artifact: Artifact = serde_json::from_slice(&bytes)?;
        let art_rel = registry.put_artifact(m, &art_out.sha256, bytes).await?;
        let holdout = ctx
            .read_table(rec.output("holdout").ok_or_else(|| {
                Error::Data(format!("stage `{stage}` has no holdout predictions"))
            })?)
            .await?;
        let metrics = rec.summary["metrics"].clone();
        let primary = model
            .gates
            .first()
            .map(|g| g.metric.clone())
            .unwrap_or_else(|| {
                if model.task == Task::Binary {
                    "auc".into()
                } else {
                    "r2".into()
                }
            });
        let ours = metrics[&primary].as_f64().unwrap_or(f64::NAN);
        let mut fairness_doc = serde_json::Map::new();
        if let Some(f) = fairness.as_ref().and_then(|f| f["parity"][m].as_object()) {
            fairness_doc = f.clone();
        }
        let fairness_violations: Vec<String> = fairness
            .as_ref()
            .and_then(|f| f["violations"].as_array())
            .map(|v| {
                v.iter()
                    .filter_map(|x| x.as_str())
                    .filter(|x| x.contains(&format!("model `{m}`")))
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let mut reject: Vec<String> = rec.summary["gate_failures"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .map(|s| format!("failed gate {s}"))
                    .collect()
            })
            .unwrap_or_default();
        reject.extend(
            fairness_violations
                .iter()
                .map(|v| format!("fairness below {}: {v}", p.fairness.threshold)),
        );
        let mut metrics_doc = metrics.as_object().cloned().unwrap_or_default();
        metrics_doc.insert("fairness".into(), fairness_doc.into());
        let base = VersionDoc {
            model_id: String::new(),
            training_date: today.clone(),
            deployment_date: None,
            status: Status::Candidate,
            metrics: metrics_doc.into(),
            data_version: recipe.source.sha256[..16].to_string(),
            training_duration_min: rec.summary["training_seconds"].as_f64().unwrap_or(0.0) / 60.0,
            last_evaluated: ctx
                .shared
                .as_of
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            model: m.clone(),
            version: 0,
            run_id: rec.reused_from.clone().unwrap_or_else(|| run_id.clone()),
            artifact_uri: registry.store().url_of(&art_rel),
            artifact_sha256: art_out.sha256.clone(),
            algorithm: artifact.algorithm.name().to_string(),
            params: artifact.algorithm.params_json(),
            features: model.features.clone(),
            training_data: ctx.shared.artifacts.url_of(&recipe.source.path),
            drift: drift.clone(),
            code_version: crate::engine::CODE_VERSION.to_string(),
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
                        &primary,
                    )?;
                    Some((v, value))
                }
            };
            let stale = Arc::new(AtomicBool::new(false));
            let seen = st.production;
            let (reject, base, primary, stale2) =
                (reject.clone(), base.clone(), primary.clone(), stale.clone());
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
                                let better = if higher_is_better(&primary) { ours >= theirs } else { ours <= theirs };
                                if better {
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
        let (state, changes) = outcome.ok_or_else(|| Error::Storage(format!("registry for `{m}`: production kept moving during registration; run `register` again")))?;
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
        let status = serde_json::to_value(doc.status).unwrap_or_default();
        ctx.emit(crate::telemetry::Event::ModelRegistered {
            model: m,
            version,
            model_id: &doc.model_id,
            status: status.as_str().unwrap_or("unknown"),
            reason: doc.reason.as_deref(),
        });
        decisions.insert(
            m.clone(),
            serde_json::json!({
                "model_id": doc.model_id, "version": version, "status": doc.status, "reason": doc.reason,
                "production": state.production, "registry": registry.store().url_of(&format!("{m}/v{version}.json")),
            }),
        );
    }
    ctx.write_json(
        "register",
        "register.json",
        &serde_json::json!({ "registry": p.storage.registry, "models": decisions }),
    )
    .await?;
    Ok(StageDone {
        summary: serde_json::json!({ "models": decisions }),
        ..Default::default()
    })
}

/// A model's primary metric on the holdout rows of this run.
fn score_on_holdout(
    a: &Artifact,
    clean: &arrow::record_batch::RecordBatch,
    holdout: &arrow::record_batch::RecordBatch,
    task: Task,
    threshold: f64,
    metric: &str,
) -> Result<f64> {
    let rows = super::train::holdout_row_numbers(holdout)?;
    let (pred, _) = a
        .predict_rows(clean, Some(&rows))
        .map_err(|e| Error::Data(format!("production model cannot score this holdout: {e}")))?;
    let y: Vec<f64> = super::train::holdout_column(holdout, "target")?;
    let m = super::train::evaluate(task, &y, &pred, threshold)
        .map_err(|e| Error::Data(e.to_string()))?;
    m.get(metric)
        .copied()
        .ok_or_else(|| Error::Data(format!("metric `{metric}` not produced")))
}
