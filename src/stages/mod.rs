//! The stage kinds. The engine knows them only through this module: what each reads, the part
//! of the configuration its outputs depend on, and how to execute it. Each kind's module holds
//! its `run`, the documents it writes and its [`record::Summary`]; the stages after it read those
//! as types, never as JSON looked up by key.
//!
//! | kind | reads | writes |
//! | --- | --- | --- |
//! | [`load`] | the declared datasets | `load.json` |
//! | [`validate`] | the datasets (cached or re-read) | `quality.json`, clean and rejected tables |
//! | [`prepare`] | the clean rows' split buckets | `prepare.json` (the recipe) |
//! | [`train`] | the recipe and the clean rows | `model.json`, `metrics.json`, `holdout.parquet` |
//! | [`score`] | clean rows and the trained models | `scores.parquet` |
//! | [`fairness`] | holdout tables and the clean rows' attributes | `fairness.json` |
//! | [`drift`] | two clean tables, scores and holdouts | `drift.json` |
//! | [`register`] | train, fairness and drift results | registry commits, `register.json` |
//! | [`evaluate`] | outcomes, the scoring history of earlier runs, the registry | `evaluate.json`, realized cohorts |
//! | [`health`] | the registry, this run's drift, scoring and evaluation, the accuracy history | `health.json`, accuracy readings |
//! | [`sql`] | the datasets and earlier sql tables its query names | `<output>.parquet`, `sql.json` |

pub mod context;
pub mod drift;
pub mod evaluate;
pub mod fairness;
pub mod faults;
pub mod health;
pub mod load;
pub mod prepare;
pub mod record;
pub mod register;
pub mod score;
pub mod sql;
pub mod train;
pub mod validate;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::{Pipeline, Stage, StageKind, StageParams};
use crate::data::Table;
use crate::error::Result;
use context::StageCtx;
use record::Summary;

pub use record::{OutputRecord, StageRecord, StageStatus};

/// What a successful stage hands back besides its outputs.
#[derive(Debug)]
pub struct StageDone {
    /// The kind's figures, for the manifest, the stages after it and the summary.
    pub summary: Summary,
    /// Datasets read, with their files' fingerprints (merged into the manifest's `inputs`).
    pub inputs: indexmap::IndexMap<String, load::Input>,
    /// After this time the outputs must not be reused.
    pub valid_until: Option<DateTime<Utc>>,
    /// Checks that failed (a gate, an unhealthy model): the stage succeeded, but the run ends
    /// with exit code 1.
    pub check_failures: Vec<String>,
    /// What the stage noticed and people should read (counted rows it could not use, ...).
    pub warnings: Vec<String>,
}

impl StageDone {
    pub fn new(summary: impl Into<Summary>) -> StageDone {
        StageDone {
            summary: summary.into(),
            inputs: Default::default(),
            valid_until: None,
            check_failures: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// Executes one attempt of a stage.
pub async fn execute(ctx: &StageCtx) -> Result<StageDone> {
    match &ctx.stage.params {
        StageParams::Load { datasets } => load::run(ctx, datasets).await,
        StageParams::Validate { datasets } => validate::run(ctx, datasets).await,
        StageParams::Prepare { dataset, holdout } => prepare::run(ctx, dataset, *holdout).await,
        StageParams::Train { model } => train::run(ctx, model).await,
        StageParams::Score {
            dataset,
            models,
            from,
        } => score::run(ctx, dataset, models, *from).await,
        StageParams::Evaluate {
            outcomes,
            models,
            horizon,
        } => evaluate::run(ctx, outcomes, models, *horizon).await,
        StageParams::Fairness { models } => fairness::run(ctx, models).await,
        StageParams::Register { models } => register::run(ctx, models).await,
        StageParams::Health => health::run_stage(ctx).await,
        StageParams::Sql { query, output } => sql::run(ctx, query, output).await,
        StageParams::Drift {
            reference,
            current,
            features,
            ks_threshold,
            psi_threshold,
        } => {
            let thresholds = drift::Thresholds {
                ks: *ks_threshold,
                psi: *psi_threshold,
            };
            drift::run(ctx, reference, current, features, thresholds).await
        }
    }
}

/// Datasets a stage reads from the data root (their files' fingerprints enter its fingerprint).
/// A dataset a sql stage produces is not among them: the producing stage's fingerprint, which
/// enters the reader's, stands for it.
pub fn datasets_read(p: &Pipeline, st: &Stage) -> Vec<String> {
    let names: &[String] = match &st.params {
        StageParams::Load { datasets } => datasets,
        StageParams::Sql { query, .. } => &query.tables,
        _ => &[],
    };
    names
        .iter()
        .filter(|n| p.datasets.get(*n).is_some_and(|d| d.produced_by.is_none()))
        .cloned()
        .collect()
}

/// Bumped when a kind's logic changes its outputs, so earlier results are not reused.
pub fn kind_version(kind: StageKind) -> u32 {
    match kind {
        StageKind::Load => 1,
        // 2: personal data pseudonymised, `_bucket` in the clean rows.
        StageKind::Validate => 2,
        StageKind::Prepare => 2,
        // 2: logistic gradients use an inline `exp` (probabilities differ in the 11th digit).
        // 3: features of few bins share histogram bytes, ordered leaves (bins' sums added in
        // another order: predictions differ in their last digits).
        // 4: binary models calibrated on a slice of the training side; estimators in the artifact.
        StageKind::Train => 4,
        // 2: estimates, business figures, attribute columns, the scoring history.
        StageKind::Score => 2,
        StageKind::Drift => 1,
        // 2: bootstrap resamples drawn as multinomial counts (other intervals, same method).
        StageKind::Fairness => 2,
        StageKind::Register => 1,
        StageKind::Health => 1,
        StageKind::Evaluate => 1,
        StageKind::Sql => 1,
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
    let kind = &st.params;
    match kind {
        StageParams::Load { datasets: d } => {
            serde_json::json!({ "kind": kind, "datasets": datasets(d), "data": p.storage.data })
        }
        StageParams::Validate { datasets: d } => {
            serde_json::json!({ "kind": kind, "datasets": datasets(d), "quality": p.quality, "pseudonyms": p.pseudonyms.scheme() })
        }
        StageParams::Prepare { dataset, .. } => {
            serde_json::json!({ "kind": kind, "datasets": datasets(std::slice::from_ref(dataset)) })
        }
        // The attributes' columns and the business figures are in its outputs.
        StageParams::Score { dataset, .. } => {
            serde_json::json!({ "kind": kind, "datasets": datasets(std::slice::from_ref(dataset)), "fairness": p.fairness.attributes, "business": p.business })
        }
        StageParams::Train { model } => {
            serde_json::json!({ "kind": kind, "model": p.models[model] })
        }
        // The query as written, the declarations of the datasets it reads and of its output,
        // where the data root is (with the files' fingerprints, from `datasets_read`).
        StageParams::Sql { query, output } => {
            let mut read: Vec<String> = query
                .tables
                .iter()
                .filter(|t| p.datasets.contains_key(*t))
                .cloned()
                .collect();
            read.extend(p.datasets.contains_key(output).then(|| output.clone()));
            serde_json::json!({ "kind": kind, "datasets": datasets(&read), "data": p.storage.data })
        }
        StageParams::Drift { .. } | StageParams::Health | StageParams::Evaluate { .. } => {
            serde_json::json!({ "kind": kind })
        }
        StageParams::Fairness { .. } => {
            serde_json::json!({ "kind": kind, "fairness": p.fairness, "seed": p.seed })
        }
        // Unchanged inputs: the earlier registration stands (no duplicate versions).
        StageParams::Register { .. } => {
            serde_json::json!({ "kind": kind, "registry": p.storage.registry, "fairness_threshold": p.fairness.threshold })
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
    let located = ctx.located(name).await?;
    let t = read_dataset(
        ctx.shared.clone(),
        ctx.progress.clone(),
        name.to_string(),
        located,
        expected_fingerprint.map(String::from),
    )
    .instrument(tracing::info_span!("load", dataset = %name))
    .await?;
    ctx.count_rows_in(t.num_rows());
    Ok(t)
}

/// Reads several datasets in parallel (one task each, so decoding uses every core).
pub async fn dataset_tables(ctx: &StageCtx, names: &[String]) -> Result<Vec<Arc<Table>>> {
    let mut tasks = Vec::with_capacity(names.len());
    for n in names {
        let located = ctx.located(n).await?;
        tasks.push(tokio::spawn(tracing::Instrument::instrument(
            read_dataset(
                ctx.shared.clone(),
                ctx.progress.clone(),
                n.clone(),
                located,
                None,
            ),
            tracing::info_span!("load", dataset = %n),
        )));
    }
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
    shared: Arc<context::Shared>,
    progress: indicatif::ProgressBar,
    name: String,
    located: crate::data::reader::Located,
    expected_fingerprint: Option<String>,
) -> Result<Arc<Table>> {
    let name = name.as_str();
    let ds = &shared.pipeline.datasets[name];
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
    let t = Arc::new(if located.files.is_empty() && ds.optional {
        // Not there yet: no rows, with the declared columns.
        crate::data::Table::empty(ds)
    } else {
        crate::data::reader::read_dataset(ds, &located, None).await?
    });
    shared.datasets.lock().unwrap().insert(key, t.clone());
    Ok(t)
}
