//! The stage kinds. The engine knows them only through this module: what each reads, the part
//! of the configuration its outputs depend on, and how to execute it.

pub mod drift;
pub mod fairness;
pub mod health;
pub mod load;
pub mod prepare;
pub mod register;
pub mod score;
pub mod train;
pub mod validate;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::{Pipeline, Stage, StageKind};
use crate::data::Table;
use crate::engine::context::StageCtx;
use crate::error::Result;

/// What a successful stage hands back besides its outputs.
#[derive(Debug, Default)]
pub struct StageDone {
    /// Figures for the manifest and the summary; an `inputs` object is merged into the manifest.
    pub summary: serde_json::Value,
    /// After this time the outputs must not be reused.
    pub valid_until: Option<DateTime<Utc>>,
    /// Gates that failed: the stage succeeded, but the run ends with exit code 1.
    pub gate_failures: Vec<String>,
}

/// Executes one attempt of a stage.
pub async fn execute(ctx: &StageCtx) -> Result<StageDone> {
    match &ctx.stage.kind {
        StageKind::Load { datasets } => load::run(ctx, datasets).await,
        StageKind::Validate { datasets } => validate::run(ctx, datasets).await,
        StageKind::Prepare { dataset, holdout } => prepare::run(ctx, dataset, *holdout).await,
        StageKind::Train { model } => train::run(ctx, model).await,
        StageKind::Score { dataset, models } => score::run(ctx, dataset, models).await,
        StageKind::Fairness { models } => fairness::run(ctx, models).await,
        StageKind::Register { models } => register::run(ctx, models).await,
        StageKind::Health => health::run(ctx).await,
        StageKind::Drift {
            reference,
            current,
            features,
            ks_threshold,
            psi_threshold,
        } => {
            drift::run(
                ctx,
                reference,
                current,
                features,
                *ks_threshold,
                *psi_threshold,
            )
            .await
        }
    }
}

/// Datasets a stage reads from the data root (their files' fingerprints enter its fingerprint).
pub fn datasets_read(st: &Stage) -> Vec<String> {
    match &st.kind {
        StageKind::Load { datasets } => datasets.clone(),
        StageKind::Validate { .. }
        | StageKind::Prepare { .. }
        | StageKind::Train { .. }
        | StageKind::Score { .. }
        | StageKind::Drift { .. }
        | StageKind::Fairness { .. }
        | StageKind::Register { .. }
        | StageKind::Health => Vec::new(),
    }
}

/// Bumped when a kind's logic changes its outputs, so earlier results are not reused.
pub fn kind_version(st: &Stage) -> u32 {
    match &st.kind {
        StageKind::Load { .. } => 1,
        // 2: personal data pseudonymised, `_bucket` in the clean rows.
        StageKind::Validate { .. } => 2,
        StageKind::Prepare { .. } => 2,
        // 2: logistic gradients use an inline `exp` (probabilities differ in the 11th digit).
        // 3: features of few bins share histogram bytes, ordered leaves (bins' sums added in
        // another order: predictions differ in their last digits).
        StageKind::Train { .. } => 3,
        StageKind::Score { .. } => 1,
        StageKind::Drift { .. } => 1,
        // 2: bootstrap resamples drawn as multinomial counts (other intervals, same method).
        StageKind::Fairness { .. } => 2,
        StageKind::Register { .. } => 1,
        StageKind::Health => 1,
    }
}

/// The configuration a stage's outputs depend on.
pub fn config_slice(p: &Pipeline, st: &Stage) -> serde_json::Value {
    let datasets = |names: &[String]| -> serde_json::Value {
        names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    serde_json::to_value(&p.datasets[n]).unwrap_or_default(),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    match &st.kind {
        StageKind::Load { datasets: d } => {
            serde_json::json!({ "kind": st.kind, "datasets": datasets(d), "data": p.storage.data })
        }
        StageKind::Validate { datasets: d } => {
            serde_json::json!({ "kind": st.kind, "datasets": datasets(d), "quality": p.quality, "pseudonyms": p.pseudonyms.scheme() })
        }
        StageKind::Prepare { dataset, .. } => {
            serde_json::json!({ "kind": st.kind, "datasets": datasets(std::slice::from_ref(dataset)) })
        }
        StageKind::Train { model } => {
            serde_json::json!({ "kind": st.kind, "model": p.models[model] })
        }
        StageKind::Score { dataset, .. } => {
            serde_json::json!({ "kind": st.kind, "datasets": datasets(std::slice::from_ref(dataset)) })
        }
        StageKind::Drift { .. } => serde_json::json!({ "kind": st.kind }),
        StageKind::Fairness { .. } => {
            serde_json::json!({ "kind": st.kind, "fairness": p.fairness, "seed": p.seed })
        }
        // Unchanged inputs: the earlier registration stands (no duplicate versions).
        StageKind::Register { .. } => {
            serde_json::json!({ "kind": st.kind, "registry": p.storage.registry, "fairness_threshold": p.fairness.threshold })
        }
        // The registry can change between runs (promote, rollback): check every time.
        StageKind::Health => {
            serde_json::json!({ "kind": st.kind, "nonce": crate::engine::new_run_id() })
        }
    }
}

/// A dataset's table: from this process's cache, or read again from its files (which must be
/// the files the load stage fingerprinted).
pub async fn dataset_table(
    ctx: &StageCtx,
    name: &str,
    expected_fingerprint: Option<&str>,
) -> Result<Arc<Table>> {
    use tracing::Instrument;
    let t = read_dataset(
        ctx.shared.clone(),
        ctx.progress.clone(),
        name.to_string(),
        expected_fingerprint.map(String::from),
    )
    .instrument(tracing::info_span!("load", dataset = %name))
    .await?;
    ctx.count_rows_in(t.num_rows());
    Ok(t)
}

/// Reads several datasets in parallel (one task each, so decoding uses every core).
pub async fn dataset_tables(ctx: &StageCtx, names: &[String]) -> Result<Vec<Arc<Table>>> {
    let tasks: Vec<_> = names
        .iter()
        .map(|n| {
            tokio::spawn(tracing::Instrument::instrument(
                read_dataset(ctx.shared.clone(), ctx.progress.clone(), n.clone(), None),
                tracing::info_span!("load", dataset = %n),
            ))
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        let t = t
            .await
            .map_err(|e| crate::error::Error::Infra(format!("a reader task failed: {e}")))??;
        ctx.count_rows_in(t.num_rows());
        out.push(t);
    }
    Ok(out)
}

async fn read_dataset(
    shared: Arc<crate::engine::context::Shared>,
    progress: indicatif::ProgressBar,
    name: String,
    expected_fingerprint: Option<String>,
) -> Result<Arc<Table>> {
    let name = name.as_str();
    let expected_fingerprint = expected_fingerprint.as_deref();
    let shared = &shared;
    let ds = &shared.pipeline.datasets[name];
    let located = match shared.located.get(name) {
        Some(l) => l.clone(),
        None => crate::data::reader::locate(&shared.pipeline.storage.data, &ds.location).await?,
    };
    let fp = located.fingerprint();
    if let Some(want) = expected_fingerprint {
        if want != fp {
            return Err(crate::error::Error::Data(format!(
                "dataset `{name}` at {} changed since it was loaded (fingerprint {want}, now {fp}); re-run from the load stage",
                located.url
            )));
        }
    }
    let key = (name.to_string(), fp);
    if let Some(t) = shared.datasets.lock().unwrap().get(&key) {
        return Ok(t.clone());
    }
    progress.set_message(format!("reading {name} ({} files)", located.files.len()));
    let t = Arc::new(crate::data::reader::read_dataset(ds, &located, None).await?);
    shared.datasets.lock().unwrap().insert(key, t.clone());
    Ok(t)
}
