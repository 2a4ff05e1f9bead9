//! The DAG engine (SPEC §5): plans an invocation (what runs, what is reused, what comes from an
//! earlier run), then executes the stages on tokio, independent ones concurrently, each with a
//! timeout and retries with backoff, recording every transition in the run's manifest.

pub mod context;
pub mod faults;
pub mod manifest;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::config::{Pipeline, Stage, StageKind};
use crate::error::{Error, Result};
use crate::stages;
use crate::storage::Store;
use context::{Shared, StageCtx};
use manifest::{Manifest, RunStatus, StageRecord, StageStatus};

/// The version recorded in manifests; part of every stage fingerprint.
pub const CODE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How one invocation of `mlpipe run` (or `plan`) was asked to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub run_id: Option<String>,
    pub stages: Vec<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub force: bool,
    /// Show progress spinners (on a terminal, in pretty mode).
    pub progress: bool,
    /// Serve the run's metrics on this address while it runs (`--metrics-addr`).
    pub metrics_addr: Option<String>,
    /// Print the metrics as CloudWatch Embedded Metric Format lines at the end (`--emf`).
    pub emf: bool,
}

/// What the engine will do with a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Execute it.
    Run,
    /// Take the outputs of an earlier run's identical stage.
    Reuse { from_run: String },
    /// Already completed in this run (resume).
    Done,
    /// Not selected, but needed: take its outputs from another run.
    Upstream { from_run: String },
    /// Not part of this invocation.
    Skip,
}

/// One stage in the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStage {
    pub name: String,
    pub kind: String,
    pub needs: Vec<String>,
    #[serde(flatten)]
    pub action: Action,
    pub fingerprint: String,
    #[serde(skip)]
    record: Option<StageRecord>,
}

/// The plan of an invocation.
pub struct Plan {
    pub run_id: String,
    /// The run id already exists: this invocation resumes or extends it.
    pub resumed: bool,
    /// Stages in execution order.
    pub stages: Vec<PlannedStage>,
    pub as_of: DateTime<Utc>,
    pub as_of_pinned: bool,
    existing: Option<Manifest>,
    located: HashMap<String, crate::data::reader::Located>,
    artifacts: Store,
}

/// A finished invocation: its manifest, and the error that ended it, if any.
pub struct RunOutcome {
    pub manifest: Manifest,
    pub error: Option<Error>,
}

#[derive(Serialize, Deserialize)]
struct Latest {
    run_id: String,
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    run_id: String,
    record: StageRecord,
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A new run id: UTC time, then 4 hex characters so runs started in the same second differ.
pub fn new_run_id() -> String {
    let t = now();
    let mut h = Sha256::new();
    h.update(t.timestamp_nanos_opt().unwrap_or_default().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    format!(
        "{}-{}",
        t.format("%Y%m%dT%H%M%SZ"),
        &hex::encode(h.finalize())[..4]
    )
}

fn check_run_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with(['.', '_']);
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--run-id `{id}`: use letters, digits, `-`, `_` and `.` (not first), at most 128 characters"
        )))
    }
}

fn cache_path(stage: &str, fp: &str) -> String {
    format!("_cache/{stage}/{fp}.json")
}

/// Reads a run's manifest.
pub async fn load_manifest(artifacts: &Store, run_id: &str) -> Result<Option<Manifest>> {
    artifacts.get_json(&format!("{run_id}/manifest.json")).await
}

/// The id of the most recently started run, if any.
pub async fn latest_run(artifacts: &Store) -> Result<Option<String>> {
    Ok(artifacts
        .get_json::<Latest>("LATEST")
        .await?
        .map(|l| l.run_id))
}

/// Which stages the options select.
fn selection(p: &Pipeline, o: &RunOptions) -> Result<BTreeSet<usize>> {
    let idx = |name: &str, flag: &str| {
        p.stage_index(name).ok_or_else(|| {
            Error::Usage(format!(
                "{flag} {name}: no such stage in {} (stages: {})",
                p.file,
                p.dag.names.join(", ")
            ))
        })
    };
    let all: BTreeSet<usize> = (0..p.dag.len()).collect();
    let mut sel = all.clone();
    if !o.stages.is_empty() {
        sel = o
            .stages
            .iter()
            .map(|s| idx(s, "--stage"))
            .collect::<Result<_>>()?;
    }
    if let Some(f) = &o.from {
        let i = idx(f, "--from")?;
        let mut d = p.dag.descendants(i);
        d.insert(i);
        sel = sel.intersection(&d).copied().collect();
    }
    if let Some(t) = &o.to {
        let i = idx(t, "--to")?;
        let mut a = p.dag.ancestors(i);
        a.insert(i);
        sel = sel.intersection(&a).copied().collect();
    }
    if sel.is_empty() {
        return Err(Error::Usage(
            "the --stage/--from/--to options select no stage".into(),
        ));
    }
    Ok(sel)
}

/// Plans an invocation without executing anything (lists inputs, reads manifests).
pub async fn plan(p: &Pipeline, o: &RunOptions) -> Result<Plan> {
    let artifacts = Store::open(&p.storage.artifacts)?;
    if let Some(id) = &o.run_id {
        check_run_id(id)?;
    }
    let selected = selection(p, o)?;
    let run_id = o.run_id.clone().unwrap_or_else(new_run_id);
    let existing = load_manifest(&artifacts, &run_id).await?;
    if let Some(m) = &existing {
        if m.pipeline != p.name {
            return Err(Error::Usage(format!(
                "run `{run_id}` belongs to pipeline `{}`, not `{}`; pick another --run-id",
                m.pipeline, p.name
            )));
        }
    }
    let (as_of, as_of_pinned) = match (p.as_of, &existing) {
        (Some(t), _) => (t, true),
        (None, Some(m)) => (
            crate::config::compile::parse_timestamp(&m.as_of).unwrap_or_else(now),
            false,
        ),
        (None, None) => (now(), false),
    };
    let order = p.dag.topo_order().expect("compiled pipelines are acyclic");
    let needed: BTreeSet<usize> = selected
        .iter()
        .flat_map(|&i| p.dag.ancestors(i))
        .filter(|i| !selected.contains(i))
        .collect();
    // Where upstream outputs come from: this run if it exists, else the latest run.
    let base: Option<Manifest> = if needed.is_empty() {
        None
    } else if existing.is_some() {
        existing.clone()
    } else {
        match latest_run(&artifacts).await? {
            Some(id) => load_manifest(&artifacts, &id).await?,
            None => None,
        }
    };

    // Locate the inputs of the selected load stages (their fingerprints decide reuse).
    let mut located = HashMap::new();
    for &i in &selected {
        for ds in stages::datasets_read(&p.stages[i]) {
            if !located.contains_key(&ds) {
                let d = &p.datasets[&ds];
                located.insert(
                    ds.clone(),
                    crate::data::reader::locate(&p.storage.data, &d.location).await?,
                );
            }
        }
    }

    let mut fps: HashMap<usize, String> = HashMap::new();
    let mut out = Vec::new();
    for i in order {
        let st = &p.stages[i];
        let needs = st.needs.clone();
        let mut planned = PlannedStage {
            name: st.name.clone(),
            kind: st.kind.name().to_string(),
            needs,
            action: Action::Skip,
            fingerprint: String::new(),
            record: None,
        };
        if selected.contains(&i) {
            let upstream: Vec<&String> = p.dag.deps[i].iter().map(|d| &fps[d]).collect();
            let fp = fingerprint(p, st, &upstream, &located, as_of_pinned.then_some(as_of));
            planned.fingerprint = fp.clone();
            let done_here = existing
                .as_ref()
                .and_then(|m| m.stage(&st.name))
                .filter(|r| r.status.is_done() && r.fingerprint == fp);
            if let (Some(r), false) = (done_here, o.force) {
                planned.action = Action::Done;
                planned.record = Some(r.clone());
            } else if let (false, Some(hit)) = (o.force, cached(&artifacts, &st.name, &fp).await?) {
                planned.action = Action::Reuse {
                    from_run: hit.run_id.clone(),
                };
                let mut r = hit.record;
                r.status = StageStatus::Reused;
                r.reused_from = Some(r.reused_from.clone().unwrap_or(hit.run_id));
                planned.record = Some(r);
            } else {
                planned.action = Action::Run;
            }
            fps.insert(i, fp);
        } else if needed.contains(&i) {
            let Some(b) = &base else {
                return Err(Error::Data(format!(
                    "stage `{}` needs the outputs of `{}`, and there is no earlier run to take them from; \
                     run the whole pipeline first, or add --stage {}",
                    selected.iter().map(|&s| p.stages[s].name.as_str()).collect::<Vec<_>>().join("`, `"),
                    st.name,
                    st.name
                )));
            };
            let rec = b
                .stage(&st.name)
                .filter(|r| r.status.is_done())
                .ok_or_else(|| {
                    Error::Data(format!(
                    "run `{}` has no completed `{}` stage, whose outputs the selected stages need; \
                     run `mlpipe run --stage {} --run-id {}` first",
                    b.run_id, st.name, st.name, b.run_id
                ))
                })?;
            planned.fingerprint = rec.fingerprint.clone();
            if existing.as_ref().is_some_and(|m| m.run_id == b.run_id) {
                planned.action = Action::Done;
                planned.record = Some(rec.clone());
            } else {
                planned.action = Action::Upstream {
                    from_run: b.run_id.clone(),
                };
                let mut r = rec.clone();
                r.status = StageStatus::Reused;
                r.reused_from = Some(r.reused_from.clone().unwrap_or_else(|| b.run_id.clone()));
                planned.record = Some(r);
            }
            fps.insert(i, rec.fingerprint.clone());
        }
        out.push(planned);
    }
    Ok(Plan {
        resumed: existing.is_some(),
        run_id,
        stages: out,
        as_of,
        as_of_pinned,
        existing,
        located,
        artifacts,
    })
}

/// A cache entry whose outputs all still exist and whose validity has not run out.
async fn cached(artifacts: &Store, stage: &str, fp: &str) -> Result<Option<CacheEntry>> {
    let Some(e) = artifacts
        .get_json::<CacheEntry>(&cache_path(stage, fp))
        .await
        .ok()
        .flatten()
    else {
        return Ok(None);
    };
    if let Some(until) = e
        .record
        .valid_until
        .as_deref()
        .and_then(crate::config::compile::parse_timestamp)
    {
        if now() > until {
            return Ok(None);
        }
    }
    for o in &e.record.outputs {
        match artifacts.head(&o.path).await? {
            Some(h) if h.size == o.bytes => {}
            _ => return Ok(None),
        }
    }
    Ok(Some(e))
}

/// The fingerprint of a stage: its kind's configuration, its inputs, the fingerprints of the
/// stages it needs, and the code version. Equal fingerprints mean equal outputs.
fn fingerprint(
    p: &Pipeline,
    st: &Stage,
    upstream: &[&String],
    located: &HashMap<String, crate::data::reader::Located>,
    as_of: Option<DateTime<Utc>>,
) -> String {
    let inputs: serde_json::Map<String, serde_json::Value> = stages::datasets_read(st)
        .into_iter()
        .filter_map(|d| {
            located
                .get(&d)
                .map(|l| (d, serde_json::Value::String(l.fingerprint())))
        })
        .collect();
    let doc = serde_json::json!({
        "code": CODE_VERSION,
        "kind_version": stages::kind_version(st),
        "config": stages::config_slice(p, st),
        "inputs": inputs,
        "upstream": upstream,
        "as_of": as_of.map(ts),
    });
    hex::encode(Sha256::digest(doc.to_string().as_bytes()))[..16].to_string()
}

/// How many train stages may fit at once: `run.max_concurrent_fits`, or (0) no limit.
fn fit_slots(p: &Pipeline) -> usize {
    match p.max_concurrent_fits {
        0 => usize::MAX,
        n => n,
    }
}

/// What a train stage is expected to cost (`None` for other kinds): its model's work per row
/// times the training rows its prepare stage reported (1 before that is known).
fn fit_cost(p: &Pipeline, m: &Manifest, i: usize) -> Option<f64> {
    let StageKind::Train { model } = &p.stages[i].kind else {
        return None;
    };
    let model = &p.models[model];
    let rows = p
        .dag
        .ancestors(i)
        .into_iter()
        .filter(|&d| matches!(&p.stages[d].kind, StageKind::Prepare { dataset, .. } if *dataset == model.dataset))
        .find_map(|d| m.stages.get(&p.stages[d].name)?.summary.get("train_rows")?.as_f64())
        .unwrap_or(1.0);
    Some(
        rows * model
            .algorithm
            .work_per_row(model.task, model.features.len()),
    )
}

/// Which of the ready stages start now.
#[derive(Debug, PartialEq)]
struct Ready {
    start: Vec<usize>,
    /// Train stages held back until a fit finishes.
    held: Vec<usize>,
}

/// Every ready stage starts, except that at most `slots` train stages fit at once, the most
/// expensive first (so the longest fit is not the one left to run alone at the end). Each fit
/// holds its own binned rows and gradients, so a limit bounds the memory of a pipeline with many
/// models. It is not the default: on 2 cores the three shipped fits at 10 M customers ended
/// 4-5 s sooner all at once (61.9-63.3 s) than two at a time (66.4-68.8 s), because the
/// last fit alone leaves a core idle in its serial parts (docs/PERFORMANCE.md, item 27).
fn schedule(
    p: &Pipeline,
    m: &Manifest,
    ready: Vec<usize>,
    in_flight: &[usize],
    slots: usize,
) -> Ready {
    let (mut fits, mut start): (Vec<(usize, f64)>, Vec<usize>) = (Vec::new(), Vec::new());
    for i in ready {
        match fit_cost(p, m, i) {
            Some(c) => fits.push((i, c)),
            None => start.push(i),
        }
    }
    // Stable: equal costs keep the pipeline file's order.
    fits.sort_by(|a, b| b.1.total_cmp(&a.1));
    let running = in_flight
        .iter()
        .filter(|&&i| matches!(p.stages[i].kind, StageKind::Train { .. }))
        .count();
    let free = slots.max(1).saturating_sub(running);
    let held = fits.split_off(free.min(fits.len()));
    start.extend(fits.into_iter().map(|(i, _)| i));
    Ready {
        start,
        held: held.into_iter().map(|(i, _)| i).collect(),
    }
}

/// Updates the manifest and persists it after every change. Several invocations may update one
/// run's manifest at once (Step Functions runs each stage as its own task): every write is
/// conditional on the version last seen, and on a conflict the writer re-reads the manifest,
/// keeps its own stages' records and takes everyone else's, and writes again.
struct ManifestWriter {
    manifest: Manifest,
    artifacts: Store,
    /// The stored manifest's e-tag as last read or written; `None` before it exists (or on a
    /// backend without e-tags).
    etag: Option<String>,
    stored: bool,
    /// The stages this invocation executes: the only records it owns.
    owned: BTreeSet<String>,
    /// Whether a write of this invocation has landed (and so counted it in `invocations`).
    landed: bool,
}

impl ManifestWriter {
    fn path(&self) -> String {
        format!("{}/manifest.json", self.manifest.run_id)
    }

    /// Takes from the stored manifest what other invocations own.
    async fn merge_stored(&mut self) -> Result<()> {
        let Some((bytes, tag)) = self.artifacts.get_versioned(&self.path()).await? else {
            self.stored = false;
            self.etag = None;
            return Ok(());
        };
        let theirs: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Data(format!(
                "{} is not valid: {e}; delete it or restore it from a backup",
                self.artifacts.url_of(&self.path())
            ))
        })?;
        for (name, rec) in theirs.stages {
            if !self.owned.contains(&name) && rec.status != StageStatus::NotSelected {
                self.manifest.stages.insert(name, rec);
            }
        }
        for (k, v) in theirs.inputs {
            self.manifest.inputs.entry(k).or_insert(v);
        }
        // This invocation counts once: on top of theirs until its first write has landed.
        self.manifest.invocations = theirs.invocations + u32::from(!self.landed);
        self.stored = true;
        self.etag = tag;
        Ok(())
    }

    async fn update<R>(&mut self, f: impl FnOnce(&mut Manifest) -> R) -> Result<R> {
        let r = f(&mut self.manifest);
        for _ in 0..50 {
            let mut v = serde_json::to_vec_pretty(&self.manifest)?;
            v.push(b'\n');
            let expected = match (self.stored, &self.etag) {
                (false, _) => None,
                (true, Some(t)) => Some(t.as_str()),
                // Stored, but the backend gives no e-tags: nothing to compare with.
                (true, None) => {
                    self.artifacts
                        .put(&self.path(), bytes::Bytes::from(v))
                        .await?;
                    self.landed = true;
                    return Ok(r);
                }
            };
            match self
                .artifacts
                .put_conditional(&self.path(), v.into(), expected)
                .await?
            {
                crate::storage::Conditional::Written(tag) => {
                    self.etag = tag;
                    self.stored = true;
                    self.landed = true;
                    return Ok(r);
                }
                crate::storage::Conditional::Conflict => self.merge_stored().await?,
            }
        }
        Err(Error::Infra(format!(
            "{}: 50 conflicting concurrent updates in a row; too many invocations are writing this run at once",
            self.artifacts.url_of(&self.path())
        )))
    }
}

/// Executes a plan, inside the run's root span (`run <pipeline>`: pipeline, run id, status).
pub async fn execute(p: Arc<Pipeline>, plan: Plan, o: &RunOptions) -> Result<RunOutcome> {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "run",
        otel.name = %format!("run {}", p.name),
        pipeline = %p.name,
        run_id = %plan.run_id,
        resumed = plan.resumed,
        status = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    let out = execute_in_span(p, plan, o).instrument(span.clone()).await;
    let failed = match &out {
        Ok(o) => o.manifest.status != RunStatus::Succeeded,
        Err(_) => true,
    };
    span.record("status", if failed { "failed" } else { "succeeded" });
    if failed {
        span.record("otel.status_code", "ERROR");
        let why = match &out {
            Ok(o) => o.error.as_ref().map(|e| e.to_string()).unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        span.record("otel.status_description", why.as_str());
    }
    out
}

async fn execute_in_span(p: Arc<Pipeline>, plan: Plan, o: &RunOptions) -> Result<RunOutcome> {
    let started = Instant::now();
    // Whatever identifies a record, and any personal data, is logged only masked.
    crate::telemetry::logs::mask_fields(
        p.datasets
            .values()
            .flat_map(|d| d.primary_key.iter().chain(&d.pii).cloned()),
    );
    let faults = faults::Faults::from_env()?;
    let mut manifest = match plan.existing.clone() {
        Some(mut m) => {
            m.invocations += 1;
            m.status = RunStatus::Running;
            m.finished_at = None;
            m.config = p.resolved.clone();
            m.code_version = CODE_VERSION.into();
            m
        }
        None => Manifest {
            run_id: plan.run_id.clone(),
            pipeline: p.name.clone(),
            pipeline_file: p.file.clone(),
            status: RunStatus::Running,
            started_at: ts(now()),
            finished_at: None,
            duration_s: None,
            cost_usd: None,
            invocations: 1,
            code_version: CODE_VERSION.into(),
            as_of: ts(plan.as_of),
            inputs: Default::default(),
            stages: Default::default(),
            config: p.resolved.clone(),
        },
    };
    // Records in declaration order.
    let mut records = indexmap::IndexMap::new();
    for st in &p.stages {
        let planned = plan
            .stages
            .iter()
            .find(|s| s.name == st.name)
            .expect("planned");
        let previous = manifest.stages.get(&st.name).cloned();
        let rec = match (&planned.action, &planned.record) {
            (Action::Done | Action::Reuse { .. } | Action::Upstream { .. }, Some(r)) => r.clone(),
            (Action::Run, _) => {
                let mut r = StageRecord::new(
                    &planned.kind,
                    StageStatus::Pending,
                    planned.fingerprint.clone(),
                );
                r.attempts = previous.map(|p| p.attempts).unwrap_or(0);
                r
            }
            _ => previous.unwrap_or_else(|| {
                StageRecord::new(&planned.kind, StageStatus::NotSelected, String::new())
            }),
        };
        records.insert(st.name.clone(), rec);
    }
    manifest.stages = records;
    for (name, l) in &plan.located {
        manifest.inputs.insert(
            name.clone(),
            serde_json::json!({ "url": l.url, "fingerprint": l.fingerprint(), "files": l.files.len() }),
        );
    }
    let artifacts = plan.artifacts.clone();
    let owned = plan
        .stages
        .iter()
        // The records this invocation decides: what it executes and what it reuses.
        .filter(|s| matches!(s.action, Action::Run | Action::Reuse { .. }))
        .map(|s| s.name.clone())
        .collect();
    let mut w = ManifestWriter {
        manifest,
        artifacts: artifacts.clone(),
        etag: None,
        stored: false,
        owned,
        landed: false,
    };
    if plan.existing.is_some() {
        w.merge_stored().await?;
    }
    let writer = Arc::new(Mutex::new(w));
    writer.lock().await.update(|_| ()).await?;
    artifacts
        .put_json(
            "LATEST",
            &Latest {
                run_id: plan.run_id.clone(),
            },
        )
        .await?;
    tracing::info!(run_id = %plan.run_id, pipeline = %p.name, resumed = plan.resumed, "run started");

    let telemetry = crate::telemetry::Telemetry::new(&p.name);
    let server = match &o.metrics_addr {
        None => None,
        Some(addr) => {
            let (local, task) = crate::telemetry::serve(addr, telemetry.clone())
                .await
                .map_err(Error::Usage)?;
            tracing::info!(address = %local, "serving metrics on /metrics");
            Some(task)
        }
    };
    // Stages completed earlier in this run or reused from another report their figures again.
    for ps in &plan.stages {
        if let (Action::Done | Action::Reuse { .. }, Some(r)) = (&ps.action, &ps.record) {
            telemetry.record(&r.samples);
            telemetry.emit(crate::telemetry::Event::StageFinished {
                pipeline: &p.name,
                stage: &ps.name,
                status: if matches!(ps.action, Action::Done) {
                    "done"
                } else {
                    "reused"
                },
                seconds: 0.0,
            });
        }
    }

    let shared = Arc::new(Shared {
        pipeline: p.clone(),
        run_id: plan.run_id.clone(),
        artifacts: artifacts.clone(),
        as_of: plan.as_of,
        as_of_pinned: plan.as_of_pinned,
        located: plan.located.clone(),
        tables: Default::default(),
        datasets: Default::default(),
        faults,
        telemetry: telemetry.clone(),
    });
    let bars = if o.progress {
        MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
    } else {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    };

    let mut pending: Vec<usize> = plan
        .stages
        .iter()
        .filter(|s| s.action == Action::Run)
        .map(|s| p.stage_index(&s.name).unwrap())
        .collect();
    let mut running: JoinSet<(usize, Result<()>)> = JoinSet::new();
    let mut in_flight: Vec<usize> = Vec::new();
    let mut first_error: Option<(usize, Error)> = None;
    let fit_slots = fit_slots(&p);
    let mut held: BTreeSet<usize> = BTreeSet::new();
    loop {
        if first_error.is_none() {
            let m = writer.lock().await.manifest.clone();
            let ready: Vec<usize> = pending
                .iter()
                .copied()
                .filter(|&i| {
                    p.dag.deps[i]
                        .iter()
                        .all(|&d| m.stages[&p.stages[d].name].status.is_done())
                })
                .collect();
            let ready = schedule(&p, &m, ready, &in_flight, fit_slots);
            for &i in &ready.held {
                if held.insert(i) {
                    tracing::info!(
                        stage = %p.stages[i].name,
                        max_concurrent_fits = fit_slots,
                        "stage waits for a running fit to finish (run.max_concurrent_fits)"
                    );
                }
            }
            for i in ready.start {
                pending.retain(|&x| x != i);
                in_flight.push(i);
                let st = p.stages[i].clone();
                // Every ancestor's record: a stage may read outputs from further up the DAG.
                let upstream: HashMap<String, StageRecord> = p
                    .dag
                    .ancestors(i)
                    .iter()
                    .map(|&d| {
                        (
                            p.stages[d].name.clone(),
                            m.stages[&p.stages[d].name].clone(),
                        )
                    })
                    .collect();
                let bar = bars.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix:<18} {elapsed:>4} {wide_msg}")
                        .expect("valid template"),
                );
                bar.set_prefix(st.name.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                let (shared, writer) = (shared.clone(), writer.clone());
                let span = tracing::info_span!(
                    "stage",
                    otel.name = %st.name,
                    pipeline = %p.name,
                    run_id = %shared.run_id,
                    stage = %st.name,
                    kind = st.kind.name(),
                    attempt = tracing::field::Empty,
                    rows_in = tracing::field::Empty,
                    rows_out = tracing::field::Empty,
                    status = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                    otel.status_description = tracing::field::Empty,
                );
                running.spawn(tracing::Instrument::instrument(
                    async move {
                        let r = run_stage(shared, st, upstream, writer, bar.clone()).await;
                        bar.finish_and_clear();
                        (i, r)
                    },
                    span,
                ));
            }
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (i, r) = joined.map_err(|e| Error::Infra(format!("a stage task panicked: {e}")))?;
        in_flight.retain(|&x| x != i);
        // The decoded input datasets are the largest tables in memory; once no stage that reads
        // them is left, they go.
        if !pending
            .iter()
            .chain(&in_flight)
            .any(|&j| p.stages[j].kind.reads_datasets())
        {
            shared.datasets.lock().unwrap().clear();
        }
        if let Err(e) = r {
            if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
                first_error = Some((i, e));
            }
        }
    }
    // A failed gate does not stop the pipeline, but the run ends with exit code 1.
    if first_error.is_none() {
        let m = &writer.lock().await.manifest;
        let failures: Vec<String> = m
            .stages
            .values()
            .filter(|r| r.status.is_done())
            .filter_map(|r| {
                r.summary
                    .get("gate_failures")
                    .and_then(|v| v.as_array())
                    .cloned()
            })
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        if !failures.is_empty() {
            first_error = Some((
                usize::MAX,
                Error::CheckFailed(format!("{}", failures.join("; "))),
            ));
        }
    }
    // Whatever could not start because something failed is skipped.
    {
        let mut w = writer.lock().await;
        let elapsed = started.elapsed().as_secs_f64();
        w.update(|m| {
            for &i in &pending {
                if let Some(r) = m.stages.get_mut(&p.stages[i].name) {
                    r.status = StageStatus::Skipped;
                }
            }
            // Failed gates leave a completed run (status succeeded) with exit code 1.
            m.status = match &first_error {
                Some((i, _)) if *i != usize::MAX => RunStatus::Failed,
                _ => RunStatus::Succeeded,
            };
            m.finished_at = Some(ts(now()));
            m.duration_s = Some(elapsed);
            m.cost_usd = Some(crate::telemetry::fargate_cost_usd(elapsed));
        })
        .await?;
    }
    let manifest = writer.lock().await.manifest.clone();
    finish_telemetry(&p, &manifest, &artifacts, &telemetry, o).await;
    let report = format!("{}/report.html", manifest.run_id);
    let html = crate::report::build(&manifest, &artifacts).await;
    if let Err(e) = artifacts.put(&report, bytes::Bytes::from(html)).await {
        tracing::warn!(error = %e, "cannot write {report}");
    }
    if let Some(task) = server {
        task.abort();
    }
    Ok(RunOutcome {
        manifest,
        error: first_error.map(|(_, e)| e),
    })
}

/// Runs one stage: attempts with a timeout each, retries with exponential backoff for
/// infrastructure errors, and the manifest updated at every transition.
/// When a run last succeeded (`runs/_last_success.json`), for the metric of that name.
#[derive(Serialize, Deserialize)]
struct LastSuccess {
    run_id: String,
    finished_at: String,
    unix_seconds: f64,
}

/// Ends the run's telemetry: the run's own figures, `<run>/metrics.prom`, the final Pushgateway
/// push (when `PROMETHEUS_PUSHGATEWAY_URL` is set) and the EMF lines (`--emf`). Failures here are
/// logged, not fatal: a monitoring outage must not fail a pipeline run.
async fn finish_telemetry(
    p: &Pipeline,
    m: &Manifest,
    artifacts: &Store,
    t: &crate::telemetry::Telemetry,
    o: &RunOptions,
) {
    let succeeded = m.status == RunStatus::Succeeded;
    let now_unix = now().timestamp_millis() as f64 / 1000.0;
    let last_success = if succeeded {
        let doc = LastSuccess {
            run_id: m.run_id.clone(),
            finished_at: ts(now()),
            unix_seconds: now_unix,
        };
        if let Err(e) = artifacts.put_json("_last_success.json", &doc).await {
            tracing::warn!(error = %e, "cannot record the last successful run");
        }
        Some(now_unix)
    } else {
        artifacts
            .get_json::<LastSuccess>("_last_success.json")
            .await
            .ok()
            .flatten()
            .map(|l| l.unix_seconds)
    };
    t.emit(crate::telemetry::Event::RunFinished {
        pipeline: &p.name,
        run_id: &m.run_id,
        status: if succeeded { "succeeded" } else { "failed" },
        seconds: m.duration_s.unwrap_or(0.0),
        cost_usd: m.cost_usd.unwrap_or(0.0),
        last_success,
    });
    let text = t.render();
    let path = format!("{}/metrics.prom", m.run_id);
    if let Err(e) = artifacts.put(&path, bytes::Bytes::from(text)).await {
        tracing::warn!(error = %e, "cannot write {path}");
    }
    if let Some(url) = std::env::var("PROMETHEUS_PUSHGATEWAY_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        match t.push(&url).await {
            Ok(()) => tracing::info!(gateway = %url, "metrics pushed to the Pushgateway"),
            Err(e) => tracing::error!(error = %e, "metrics were not pushed; they are in {path}"),
        }
    }
    if o.emf {
        for line in t.emf_lines(now().timestamp_millis()) {
            println!("{line}");
        }
    }
}

async fn run_stage(
    shared: Arc<Shared>,
    st: Stage,
    upstream: HashMap<String, StageRecord>,
    writer: Arc<Mutex<ManifestWriter>>,
    bar: ProgressBar,
) -> Result<()> {
    let name = st.name.clone();
    let max_attempts = 1 + st.retries;
    let begun = now();
    let t0 = Instant::now();
    for attempt in 1..=max_attempts {
        let total = writer
            .lock()
            .await
            .update(|m| {
                let r = m.stages.get_mut(&name).expect("record");
                r.status = StageStatus::Running;
                r.attempts += 1;
                r.started_at = Some(ts(begun));
                r.error = None;
                r.error_kind = None;
                r.attempts
            })
            .await?;
        tracing::info!(stage = %name, attempt = total, "stage started");
        let ctx = StageCtx::new(
            shared.clone(),
            st.clone(),
            attempt,
            upstream.clone(),
            bar.clone(),
        );
        let work = async {
            if shared.faults.get(&name) == Some(faults::Fault::Hang) {
                tokio::time::sleep(Duration::from_secs(86_400)).await;
            }
            stages::execute(&ctx).await
        };
        let result = match tokio::time::timeout(st.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Infra(format!(
                "stage `{name}` timed out after {:.0?}; raise stages.{name}.timeout or look at why it is slow",
                st.timeout
            ))),
        };
        let outputs = ctx.take_outputs();
        let samples = ctx.take_samples();
        let (rows_in, rows_out) = ctx.rows();
        let span = tracing::Span::current();
        span.record("attempt", total);
        span.record("rows_in", rows_in);
        span.record("rows_out", rows_out);
        match result {
            Ok(done) => {
                let elapsed = t0.elapsed().as_secs_f64();
                let rec = writer
                    .lock()
                    .await
                    .update(|m| {
                        if let Some(inputs) = done.summary.get("inputs").and_then(|v| v.as_object())
                        {
                            for (k, v) in inputs {
                                m.inputs.insert(k.clone(), v.clone());
                            }
                        }
                        let r = m.stages.get_mut(&name).expect("record");
                        r.status = StageStatus::Succeeded;
                        r.outputs = outputs;
                        r.summary = done.summary;
                        if !done.gate_failures.is_empty() {
                            r.summary["gate_failures"] = serde_json::json!(done.gate_failures);
                        }
                        r.valid_until = done.valid_until.map(ts);
                        r.finished_at = Some(ts(now()));
                        r.duration_s = Some(elapsed);
                        r.reused_from = None;
                        r.samples = samples;
                        r.clone()
                    })
                    .await?;
                shared.telemetry.record(&rec.samples);
                let entry = CacheEntry {
                    run_id: shared.run_id.clone(),
                    record: rec.clone(),
                };
                shared
                    .artifacts
                    .put_json(&cache_path(&name, &rec.fingerprint), &entry)
                    .await?;
                span.record("status", "succeeded");
                shared
                    .telemetry
                    .emit(crate::telemetry::Event::StageFinished {
                        pipeline: &shared.pipeline.name,
                        stage: &name,
                        status: "succeeded",
                        seconds: elapsed,
                    });
                return Ok(());
            }
            Err(e) => {
                let retryable = matches!(e, Error::Storage(_) | Error::Infra(_));
                let will_retry = retryable && attempt < max_attempts;
                let msg = e.to_string();
                shared
                    .telemetry
                    .emit(crate::telemetry::Event::StageAttemptFailed {
                        pipeline: &shared.pipeline.name,
                        stage: &name,
                        attempt: total,
                        error: &msg,
                        will_retry,
                    });
                if will_retry {
                    let wait = st.retry_backoff * 2u32.saturating_pow(attempt - 1);
                    tokio::time::sleep(wait).await;
                    continue;
                }
                let elapsed = t0.elapsed().as_secs_f64();
                let kind = e.kind();
                span.record("status", "failed");
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", msg.as_str());
                writer
                    .lock()
                    .await
                    .update(|m| {
                        let r = m.stages.get_mut(&name).expect("record");
                        r.status = StageStatus::Failed;
                        r.outputs = outputs;
                        r.error = Some(msg.clone());
                        r.error_kind = Some(kind.into());
                        r.finished_at = Some(ts(now()));
                        r.duration_s = Some(elapsed);
                    })
                    .await?;
                let named = format!("stage `{name}`");
                return Err(if msg.starts_with(&named) {
                    e
                } else {
                    e.context(named)
                });
            }
        }
    }
    unreachable!("the loop returns on the last attempt")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(run: &str, stages: &[&str]) -> Manifest {
        Manifest {
            run_id: run.into(),
            pipeline: "p".into(),
            pipeline_file: "p.toml".into(),
            status: RunStatus::Running,
            started_at: String::new(),
            finished_at: None,
            duration_s: None,
            cost_usd: None,
            invocations: 1,
            code_version: CODE_VERSION.into(),
            as_of: String::new(),
            inputs: Default::default(),
            stages: stages
                .iter()
                .map(|s| {
                    (
                        s.to_string(),
                        StageRecord::new("train", StageStatus::NotSelected, String::new()),
                    )
                })
                .collect(),
            config: serde_json::Value::Null,
        }
    }

    /// Eight invocations of one run, each executing its own stage and writing the manifest five
    /// times, all at once on a store with atomic conditional puts: no record and no invocation is
    /// lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_invocations_of_one_run_lose_no_update() {
        let store = Store::open("memory://manifest-cas/runs").unwrap();
        let names: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut first = ManifestWriter {
            manifest: manifest("r", &refs),
            artifacts: store.clone(),
            etag: None,
            stored: false,
            owned: BTreeSet::new(),
            landed: false,
        };
        first.update(|_| ()).await.unwrap();
        let tasks: Vec<_> = names
            .iter()
            .map(|name| {
                let (store, name, refs) = (store.clone(), name.clone(), refs.clone());
                let refs: Vec<String> = refs.iter().map(|s| s.to_string()).collect();
                tokio::spawn(async move {
                    let r: Vec<&str> = refs.iter().map(String::as_str).collect();
                    let mut w = ManifestWriter {
                        manifest: manifest("r", &r),
                        artifacts: store,
                        etag: None,
                        stored: false,
                        owned: [name.clone()].into(),
                        landed: false,
                    };
                    w.merge_stored().await.unwrap();
                    for attempt in 1..=5u32 {
                        w.update(|m| {
                            let rec = m.stages.get_mut(&name).unwrap();
                            rec.status = StageStatus::Running;
                            rec.attempts = attempt;
                        })
                        .await
                        .unwrap();
                        tokio::task::yield_now().await;
                    }
                    w.update(|m| m.stages.get_mut(&name).unwrap().status = StageStatus::Succeeded)
                        .await
                        .unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let m: Manifest = store.get_json("r/manifest.json").await.unwrap().unwrap();
        for name in &names {
            let rec = &m.stages[name];
            assert_eq!(rec.status, StageStatus::Succeeded, "{name}");
            assert_eq!(rec.attempts, 5, "{name}");
        }
        assert_eq!(m.invocations, 9);
    }

    /// The shipped pipeline with `--set` overrides.
    fn shipped(set: &[(&str, &str)]) -> Pipeline {
        let ov = crate::config::compile::Overrides {
            set: set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        crate::config::compile::compile_file(
            concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/engagement.toml"),
            &ov,
        )
        .unwrap()
    }

    /// The shipped pipeline's manifest after `prepare` reported `train_rows`.
    fn prepared(p: &Pipeline, train_rows: u64) -> Manifest {
        let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
        let mut m = manifest("r", &names);
        let prep = m.stages.get_mut("prepare").unwrap();
        prep.kind = "prepare".into();
        prep.summary = serde_json::json!({ "train_rows": train_rows });
        m
    }

    fn names(p: &Pipeline, ix: &[usize]) -> Vec<String> {
        ix.iter().map(|&i| p.stages[i].name.clone()).collect()
    }

    #[test]
    fn fits_start_most_expensive_first_and_no_more_than_the_slots() {
        // Churn (binary: logistic loss) costs more than a regression with as many trees; ltv is
        // given more trees than engagement.
        let p = shipped(&[("models.ltv.params.n_trees", "250")]);
        let m = prepared(&p, 1_000_000);
        let ix = |n: &str| p.stage_index(n).unwrap();
        let cost = |n: &str| fit_cost(&p, &m, ix(n)).unwrap();
        assert!(cost("train_churn") > cost("train_ltv"));
        assert!(cost("train_ltv") > cost("train_engagement"));
        // The rows come from the prepare stage: ten times the rows, ten times the cost.
        let m10 = prepared(&p, 10_000_000);
        assert_eq!(
            fit_cost(&p, &m10, ix("train_churn")),
            Some(10.0 * cost("train_churn"))
        );
        assert_eq!(fit_cost(&p, &m, ix("score")), None);

        let trains = vec![ix("train_engagement"), ix("train_churn"), ix("train_ltv")];
        let mut ready = trains.clone();
        ready.push(ix("drift"));
        // Two slots, nothing running: the two most expensive start, other kinds always start.
        let r = schedule(&p, &m, ready.clone(), &[], 2);
        assert_eq!(names(&p, &r.start), ["drift", "train_churn", "train_ltv"]);
        assert_eq!(names(&p, &r.held), ["train_engagement"]);
        // One fit (and a stage of another kind) running: one more starts.
        let rest = vec![ix("train_engagement"), ix("train_ltv")];
        let r = schedule(&p, &m, rest, &[ix("train_churn"), ix("validate")], 2);
        assert_eq!(names(&p, &r.start), ["train_ltv"]);
        assert_eq!(names(&p, &r.held), ["train_engagement"]);
        // Both slots taken: every fit waits.
        let r = schedule(
            &p,
            &m,
            vec![ix("train_engagement")],
            &[ix("train_churn"), ix("train_ltv")],
            2,
        );
        assert!(r.start.is_empty());
        assert_eq!(names(&p, &r.held), ["train_engagement"]);
        // Enough slots: all start, most expensive first; zero slots still lets one run.
        let r = schedule(&p, &m, trains.clone(), &[], 8);
        assert_eq!(
            names(&p, &r.start),
            ["train_churn", "train_ltv", "train_engagement"]
        );
        let r = schedule(&p, &m, trains.clone(), &[], 0);
        assert_eq!(names(&p, &r.start), ["train_churn"]);
        // Equal costs keep the pipeline file's order.
        let p = shipped(&[]);
        let m = prepared(&p, 1000);
        let r = schedule(&p, &m, trains, &[], 3);
        assert_eq!(
            names(&p, &r.start),
            ["train_churn", "train_engagement", "train_ltv"]
        );
    }

    #[test]
    fn fit_slots_default_to_no_limit() {
        assert_eq!(fit_slots(&shipped(&[])), usize::MAX);
        assert_eq!(fit_slots(&shipped(&[("run.max_concurrent_fits", "1")])), 1);
    }
}
