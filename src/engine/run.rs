//! Executing a plan: the run's manifest opened, every ready stage started on tokio as its needs
//! complete (the ready set chosen by [`super::schedule`]), each stage's attempts run with a
//! timeout and retried with backoff, every transition recorded, and the run closed with its
//! telemetry and report.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use super::manifest::{
    self, CacheEntry, LastSuccess, Manifest, ManifestWriter, RunStatus, StageRecord, StageStatus,
};
use super::schedule::{fit_slots, schedule};
use super::{Action, Plan, RunOptions, RunOutcome};
use crate::config::{Pipeline, Stage};
use crate::error::{Error, Result};
use crate::stages::context::{Shared, StageCtx};
use crate::stages::{self, faults, StageDone};
use crate::storage::Store;
use crate::telemetry::{Event, Telemetry};
use crate::time::format_millis as ts;

type Writer = Arc<Mutex<ManifestWriter>>;

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
    let registry = crate::registry::Registry::open(&p.storage.registry)?;
    let writer = open_manifest(&p, &plan).await?;
    tracing::info!(run_id = %plan.run_id, pipeline = %p.name, resumed = plan.resumed, "run started");
    let telemetry = Telemetry::new(&p.name);
    let server = serve_metrics(o, &telemetry).await?;
    replay_earlier_results(&p, &plan, &telemetry);
    let shared = Arc::new(Shared {
        pipeline: p.clone(),
        run_id: plan.run_id.clone(),
        artifacts: plan.artifacts.clone(),
        as_of: plan.as_of,
        as_of_pinned: plan.as_of_pinned,
        located: plan.located.clone(),
        tables: Default::default(),
        datasets: Default::default(),
        faults,
        telemetry: telemetry.clone(),
        registry,
    });
    let to_run: Vec<usize> = plan
        .stages
        .iter()
        .filter(|s| s.action == Action::Run)
        .map(|s| {
            p.stage_index(&s.name)
                .expect("planned stages are the pipeline's")
        })
        .collect();
    let (mut first_error, pending) = drive(&p, &shared, &writer, to_run, o.progress).await?;
    // A failed check (a gate, an unhealthy model) does not stop the pipeline, but the run ends
    // with exit code 1.
    if first_error.is_none() {
        let failures = writer.lock().await.manifest.check_failures();
        if !failures.is_empty() {
            first_error = Some((usize::MAX, Error::CheckFailed(failures.join("; "))));
        }
    }
    let manifest = close_manifest(&p, &writer, &pending, &first_error, started).await?;
    finish_telemetry(&manifest, &plan.artifacts, &telemetry, o).await;
    write_report(&manifest, &plan.artifacts).await;
    if let Some(task) = server {
        task.abort();
    }
    Ok(RunOutcome {
        manifest,
        error: first_error.map(|(_, e)| e),
    })
}

/// The run's manifest as this invocation starts it: an existing run's, or a new one; a record
/// per stage in declaration order (the planned action's record, or a pending one to run); the
/// inputs listed while planning. Stored before any stage starts, and `LATEST` pointed at it.
async fn open_manifest(p: &Pipeline, plan: &Plan) -> Result<Writer> {
    let mut manifest = match plan.existing.clone() {
        Some(mut m) => {
            m.invocations += 1;
            m.status = RunStatus::Running;
            m.finished_at = None;
            m.config = p.resolved.clone();
            m.code_version = crate::CODE_VERSION.into();
            m
        }
        None => Manifest {
            run_id: plan.run_id.clone(),
            pipeline: p.name.clone(),
            pipeline_file: p.file.clone(),
            status: RunStatus::Running,
            started_at: ts(Utc::now()),
            finished_at: None,
            duration_s: None,
            cost_usd: None,
            invocations: 1,
            code_version: crate::CODE_VERSION.into(),
            as_of: ts(plan.as_of),
            inputs: Default::default(),
            stages: Default::default(),
            config: p.resolved.clone(),
        },
    };
    let mut records = indexmap::IndexMap::new();
    for planned in &plan.stages {
        let previous = manifest.stages.get(&planned.name).cloned();
        let rec = match (&planned.action, &planned.record) {
            (Action::Done | Action::Reuse { .. } | Action::Upstream { .. }, Some(r)) => r.clone(),
            (Action::Run, _) => {
                let mut r = StageRecord::new(
                    planned.kind,
                    StageStatus::Pending,
                    planned.fingerprint.clone(),
                );
                r.attempts = previous.map(|p| p.attempts).unwrap_or(0);
                r
            }
            _ => previous.unwrap_or_else(|| {
                StageRecord::new(planned.kind, StageStatus::NotSelected, String::new())
            }),
        };
        records.insert(planned.name.clone(), rec);
    }
    // Declaration order, whatever order the plan lists them in.
    manifest.stages = p
        .stages
        .iter()
        .filter_map(|st| Some((st.name.clone(), records.shift_remove(&st.name)?)))
        .collect();
    for (name, l) in &plan.located {
        let input = crate::stages::load::Input {
            url: l.url.clone(),
            fingerprint: l.fingerprint(),
            rows: None,
            files: l.files.len(),
        };
        manifest.inputs.insert(name.clone(), input);
    }
    // The records this invocation decides: what it executes and what it reuses.
    let owned: BTreeSet<String> = plan
        .stages
        .iter()
        .filter(|s| matches!(s.action, Action::Run | Action::Reuse { .. }))
        .map(|s| s.name.clone())
        .collect();
    let mut w = ManifestWriter::new(manifest, plan.artifacts.clone(), owned);
    if plan.existing.is_some() {
        w.merge_stored().await?;
    }
    w.update(|_| ()).await?;
    manifest::set_latest(&plan.artifacts, &plan.run_id).await?;
    Ok(Arc::new(Mutex::new(w)))
}

/// Serves the run's metrics on `--metrics-addr` while it lasts.
async fn serve_metrics(
    o: &RunOptions,
    telemetry: &Telemetry,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = &o.metrics_addr else {
        return Ok(None);
    };
    let (local, task) = crate::telemetry::serve(addr, telemetry.clone())
        .await
        .map_err(Error::Usage)?;
    tracing::info!(address = %local, "serving metrics on /metrics");
    Ok(Some(task))
}

/// Stages completed earlier in this run or reused from another report their figures again, so
/// the run's metric set is whole whatever was recomputed.
fn replay_earlier_results(p: &Pipeline, plan: &Plan, telemetry: &Telemetry) {
    for ps in &plan.stages {
        if let (Action::Done | Action::Reuse { .. }, Some(r)) = (&ps.action, &ps.record) {
            telemetry.record(&r.samples);
            telemetry.emit(Event::StageFinished {
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
}

/// Starts every stage whose needs are done, as they become done, until none is left to start
/// or one fails (then the running ones finish and nothing new starts). Returns the first error
/// (with its stage's index, the earliest in the pipeline when several fail) and the stages that
/// never started.
async fn drive(
    p: &Arc<Pipeline>,
    shared: &Arc<Shared>,
    writer: &Writer,
    mut pending: Vec<usize>,
    progress: bool,
) -> Result<(Option<(usize, Error)>, Vec<usize>)> {
    let bars = MultiProgress::with_draw_target(if progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let mut running: JoinSet<(usize, Result<()>)> = JoinSet::new();
    let mut in_flight: Vec<usize> = Vec::new();
    let mut first_error: Option<(usize, Error)> = None;
    let slots = fit_slots(p);
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
            let ready = schedule(p, &m, ready, &in_flight, slots);
            for &i in &ready.held {
                if held.insert(i) {
                    tracing::info!(
                        stage = %p.stages[i].name,
                        max_concurrent_fits = slots,
                        "stage waits for a running fit to finish (run.max_concurrent_fits)"
                    );
                }
            }
            for i in ready.start {
                pending.retain(|&x| x != i);
                in_flight.push(i);
                let upstream = upstream_records(p, &m, i);
                let bar = bars.add(spinner(&p.stages[i].name));
                spawn_stage(
                    &mut running,
                    shared,
                    writer,
                    p.stages[i].clone(),
                    i,
                    upstream,
                    bar,
                );
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
            .any(|&j| p.stages[j].kind().reads_datasets())
        {
            shared.datasets.lock().unwrap().clear();
        }
        if let Err(e) = r {
            if first_error.as_ref().is_none_or(|(j, _)| i < *j) {
                first_error = Some((i, e));
            }
        }
    }
    Ok((first_error, pending))
}

/// Every ancestor's record: a stage may read outputs from further up the DAG.
fn upstream_records(p: &Pipeline, m: &Manifest, i: usize) -> HashMap<String, StageRecord> {
    p.dag
        .ancestors(i)
        .iter()
        .map(|&d| {
            let name = &p.stages[d].name;
            (name.clone(), m.stages[name].clone())
        })
        .collect()
}

fn spinner(stage: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:<18} {elapsed:>4} {wide_msg}")
            .expect("valid template"),
    );
    bar.set_prefix(stage.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Starts one stage as a task, inside its span (pipeline, run id, stage, kind, attempt, rows
/// in and out, status).
fn spawn_stage(
    running: &mut JoinSet<(usize, Result<()>)>,
    shared: &Arc<Shared>,
    writer: &Writer,
    st: Stage,
    i: usize,
    upstream: HashMap<String, StageRecord>,
    bar: ProgressBar,
) {
    let span = tracing::info_span!(
        "stage",
        otel.name = %st.name,
        pipeline = %shared.pipeline.name,
        run_id = %shared.run_id,
        stage = %st.name,
        kind = st.kind().name(),
        attempt = tracing::field::Empty,
        rows_in = tracing::field::Empty,
        rows_out = tracing::field::Empty,
        status = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    let (shared, writer) = (shared.clone(), writer.clone());
    running.spawn(tracing::Instrument::instrument(
        async move {
            let r = run_stage(shared, st, upstream, writer, bar.clone()).await;
            bar.finish_and_clear();
            (i, r)
        },
        span,
    ));
}

/// Runs one stage: attempts with a timeout each, retries with exponential backoff for
/// infrastructure errors, and the manifest updated at every transition.
async fn run_stage(
    shared: Arc<Shared>,
    st: Stage,
    upstream: HashMap<String, StageRecord>,
    writer: Writer,
    bar: ProgressBar,
) -> Result<()> {
    let max_attempts = 1 + st.retries;
    let begun = Utc::now();
    let t0 = Instant::now();
    for attempt in 1..=max_attempts {
        let total = begin_attempt(&writer, &st.name, begun).await?;
        tracing::info!(stage = %st.name, attempt = total, "stage started");
        let ctx = StageCtx::new(
            shared.clone(),
            st.clone(),
            attempt,
            upstream.clone(),
            bar.clone(),
        );
        let result = attempt_with_timeout(&ctx).await;
        let span = tracing::Span::current();
        let (rows_in, rows_out) = ctx.rows();
        span.record("attempt", total);
        span.record("rows_in", rows_in);
        span.record("rows_out", rows_out);
        match result {
            Ok(done) => return succeed(&ctx, &writer, done, t0).await,
            Err(e) => {
                let retryable = e.is_retryable();
                let will_retry = retryable && attempt < max_attempts;
                shared.telemetry.emit(Event::StageAttemptFailed {
                    pipeline: &shared.pipeline.name,
                    stage: &st.name,
                    attempt: total,
                    error: &e.to_string(),
                    will_retry,
                });
                if will_retry {
                    tokio::time::sleep(st.retry_backoff * 2u32.saturating_pow(attempt - 1)).await;
                    continue;
                }
                return Err(fail(&ctx, &writer, e, t0).await?);
            }
        }
    }
    unreachable!("the loop returns on the last attempt")
}

/// Records that an attempt starts; returns the stage's attempts over all invocations.
async fn begin_attempt(writer: &Writer, name: &str, begun: chrono::DateTime<Utc>) -> Result<u32> {
    writer
        .lock()
        .await
        .update(|m| {
            let r = m.stages.get_mut(name).expect("record");
            r.status = StageStatus::Running;
            r.attempts += 1;
            r.started_at = Some(ts(begun));
            r.error = None;
            r.error_kind = None;
            r.attempts
        })
        .await
}

/// One attempt, ended by the stage's timeout if it runs longer.
async fn attempt_with_timeout(ctx: &StageCtx) -> Result<StageDone> {
    let name = &ctx.stage.name;
    let work = async {
        if ctx.shared.faults.get(name) == Some(faults::Fault::Hang) {
            tokio::time::sleep(Duration::from_secs(86_400)).await;
        }
        stages::execute(ctx).await
    };
    match tokio::time::timeout(ctx.stage.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(Error::Infra(format!(
            "stage `{name}` timed out after {:.0?}; raise stages.{name}.timeout or look at why it is slow",
            ctx.stage.timeout
        ))),
    }
}

/// Commits a successful attempt: the record (outputs, summary, samples) in the manifest, the
/// samples in the run's metrics, and the reuse cache entry.
async fn succeed(ctx: &StageCtx, writer: &Writer, done: StageDone, t0: Instant) -> Result<()> {
    let (shared, name) = (&ctx.shared, &ctx.stage.name);
    let elapsed = t0.elapsed().as_secs_f64();
    let (outputs, samples) = (ctx.take_outputs(), ctx.take_samples());
    let rec = writer
        .lock()
        .await
        .update(|m| {
            for (k, v) in done.inputs {
                m.inputs.insert(k, v);
            }
            let r = m.stages.get_mut(name).expect("record");
            r.status = StageStatus::Succeeded;
            r.outputs = outputs;
            r.summary = Some(done.summary);
            r.check_failures = done.check_failures;
            r.valid_until = done.valid_until.map(ts);
            r.finished_at = Some(ts(Utc::now()));
            r.duration_s = Some(elapsed);
            r.reused_from = None;
            r.samples = samples;
            r.clone()
        })
        .await?;
    shared.telemetry.record(&rec.samples);
    if rec.kind.reusable() {
        let entry = CacheEntry {
            run_id: shared.run_id.clone(),
            record: rec.clone(),
        };
        let path = manifest::cache_path(name, &rec.fingerprint);
        shared.artifacts.put_json(&path, &entry).await?;
    }
    tracing::Span::current().record("status", "succeeded");
    shared.telemetry.emit(Event::StageFinished {
        pipeline: &shared.pipeline.name,
        stage: name,
        status: "succeeded",
        seconds: elapsed,
    });
    Ok(())
}

/// Records a failed last attempt; returns the error to end the stage with, naming the stage.
async fn fail(ctx: &StageCtx, writer: &Writer, e: Error, t0: Instant) -> Result<Error> {
    let name = &ctx.stage.name;
    let elapsed = t0.elapsed().as_secs_f64();
    let msg = e.to_string();
    let span = tracing::Span::current();
    span.record("status", "failed");
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", msg.as_str());
    let outputs = ctx.take_outputs();
    writer
        .lock()
        .await
        .update(|m| {
            let r = m.stages.get_mut(name).expect("record");
            r.status = StageStatus::Failed;
            r.outputs = outputs;
            r.error = Some(msg.clone());
            r.error_kind = Some(e.kind().into());
            r.finished_at = Some(ts(Utc::now()));
            r.duration_s = Some(elapsed);
        })
        .await?;
    let named = format!("stage `{name}`");
    Ok(if msg.starts_with(&named) {
        e
    } else {
        e.context(named)
    })
}

/// The run's last manifest update: stages that could not start are skipped, and the run's
/// status, end, duration and cost. Failed checks leave a completed run (status succeeded) with
/// exit code 1.
async fn close_manifest(
    p: &Pipeline,
    writer: &Writer,
    pending: &[usize],
    first_error: &Option<(usize, Error)>,
    started: Instant,
) -> Result<Manifest> {
    let mut w = writer.lock().await;
    let elapsed = started.elapsed().as_secs_f64();
    w.update(|m| {
        for &i in pending {
            if let Some(r) = m.stages.get_mut(&p.stages[i].name) {
                r.status = StageStatus::Skipped;
            }
        }
        m.status = match first_error {
            Some((i, _)) if *i != usize::MAX => RunStatus::Failed,
            _ => RunStatus::Succeeded,
        };
        m.finished_at = Some(ts(Utc::now()));
        m.duration_s = Some(elapsed);
        m.cost_usd = Some(crate::telemetry::fargate_cost_usd(elapsed));
    })
    .await?;
    Ok(w.manifest.clone())
}

/// Ends the run's telemetry: the run's own figures, `<run>/metrics.prom`, the final Pushgateway
/// push (when `PROMETHEUS_PUSHGATEWAY_URL` is set) and the EMF lines (`--emf`). Failures here are
/// logged, not fatal: a monitoring outage must not fail a pipeline run.
async fn finish_telemetry(m: &Manifest, artifacts: &Store, t: &Telemetry, o: &RunOptions) {
    let succeeded = m.status == RunStatus::Succeeded;
    let now_unix = Utc::now().timestamp_millis() as f64 / 1000.0;
    let last_success = if succeeded {
        let doc = LastSuccess {
            run_id: m.run_id.clone(),
            finished_at: ts(Utc::now()),
            unix_seconds: now_unix,
        };
        if let Err(e) = artifacts.put_json(manifest::LAST_SUCCESS, &doc).await {
            tracing::warn!(error = %e, "cannot record the last successful run");
        }
        Some(now_unix)
    } else {
        artifacts
            .get_json::<LastSuccess>(manifest::LAST_SUCCESS)
            .await
            .ok()
            .flatten()
            .map(|l| l.unix_seconds)
    };
    t.emit(Event::RunFinished {
        pipeline: &m.pipeline,
        run_id: &m.run_id,
        status: if succeeded { "succeeded" } else { "failed" },
        seconds: m.duration_s.unwrap_or(0.0),
        cost_usd: m.cost_usd.unwrap_or(0.0),
        last_success,
    });
    let path = format!("{}/metrics.prom", m.run_id);
    if let Err(e) = artifacts.put(&path, bytes::Bytes::from(t.render())).await {
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
        for line in t.emf_lines(Utc::now().timestamp_millis()) {
            println!("{line}");
        }
    }
}

/// Writes `report.html`; a failure is logged, not fatal.
async fn write_report(m: &Manifest, artifacts: &Store) {
    let report = format!("{}/report.html", m.run_id);
    let html = crate::report::build(m, artifacts).await;
    if let Err(e) = artifacts.put(&report, bytes::Bytes::from(html)).await {
        tracing::warn!(error = %e, "cannot write {report}");
    }
}
