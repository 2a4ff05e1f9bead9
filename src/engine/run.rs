//! Executing a plan, as named steps: the run's manifest opened, the ready loop
//! ([`super::drive`]: every ready stage started on tokio as its needs complete, each stage run by
//! [`super::attempt`] under its lease), and the run closed: its status, telemetry and report.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio::sync::Mutex;

use super::drive::{Driven, Driver};
use super::lease::Leases;
use super::manifest::{
    self, LastSuccess, Manifest, ManifestWriter, RunStatus, StageRecord, StageStatus,
};
use super::{Action, Plan, RunOptions, RunOutcome};
use crate::config::Pipeline;
use crate::error::{Error, Result};
use crate::stages::context::Shared;
use crate::stages::faults;
use crate::storage::Store;
use crate::telemetry::{Event, Telemetry};
use crate::time::format_millis as ts;

/// The manifest writer, shared by the stages' tasks.
pub(super) type Writer = Arc<Mutex<ManifestWriter>>;

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
    let index = |name: &str| {
        p.stage_index(name)
            .expect("planned stages are the pipeline's")
    };
    let driver = Driver {
        p: p.clone(),
        shared,
        writer: writer.clone(),
        leases: Leases::new(plan.artifacts.clone(), &plan.run_id),
        pending: plan
            .stages
            .iter()
            .filter(|s| s.action == Action::Run)
            .map(|s| index(&s.name))
            .collect(),
        done: plan
            .stages
            .iter()
            .filter(|s| !matches!(s.action, Action::Run | Action::Skip))
            .map(|s| index(&s.name))
            .collect(),
        from_other_runs: plan
            .stages
            .iter()
            .filter(|s| matches!(s.action, Action::Upstream { .. }))
            .map(|s| index(&s.name))
            .collect(),
        stop: o.stop.clone(),
        grace: p.shutdown_grace,
        progress: o.progress,
    };
    let mut driven = driver.drive().await?;
    let pending = std::mem::take(&mut driven.pending);
    let first_error = outcome_error(&plan.run_id, driven, &writer).await;
    let manifest = close_manifest(&p, &writer, &pending, &first_error, started).await?;
    finish_telemetry(&manifest, &plan.artifacts, &telemetry, o).await;
    write_report(&manifest, &plan.artifacts, &p).await;
    if let Some(task) = server {
        task.abort();
    }
    Ok(RunOutcome {
        manifest,
        error: first_error.map(|(_, e)| e),
    })
}

/// What ends the run with a non-zero exit code: a stop signal (130, 143), a stage's failure, or
/// failed checks (a gate, an unhealthy model: the pipeline went on, the exit code is 1).
async fn outcome_error(run_id: &str, d: Driven, writer: &Writer) -> Option<(usize, Error)> {
    if let Some(sig) = d.stopped_by {
        let cancelled = if d.interrupted.is_empty() {
            "the running stages finished within the grace".to_string()
        } else {
            format!("stages interrupted: {}", d.interrupted.join(", "))
        };
        let message = format!(
            "run {run_id} was stopped by {} ({cancelled}); resume it with `mlpipe run --run-id {run_id}`",
            super::stop::name(sig)
        );
        return Some((
            usize::MAX - 1,
            Error::Interrupted {
                message,
                signal: sig,
            },
        ));
    }
    if d.first_error.is_some() {
        return d.first_error;
    }
    let failures = writer.lock().await.manifest.check_failures();
    (!failures.is_empty()).then(|| (usize::MAX, Error::CheckFailed(failures.join("; "))))
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
    // The records this invocation decides from the start: what it reuses. A stage it executes
    // becomes its own when it takes the stage's lease (another invocation of the run may be
    // executing it); until then, on an existing run, the stored record stands.
    let owned: BTreeSet<String> = plan
        .stages
        .iter()
        .filter(|s| matches!(s.action, Action::Reuse { .. }))
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

/// The run's last manifest update: stages that could not start are skipped (unless a stop
/// ended the run: they are still to run when it is resumed), and the run's status, end,
/// duration and cost. Failed checks leave a completed run (status succeeded) with exit code 1.
async fn close_manifest(
    p: &Pipeline,
    writer: &Writer,
    pending: &[usize],
    first_error: &Option<(usize, Error)>,
    started: Instant,
) -> Result<Manifest> {
    let mut w = writer.lock().await;
    let elapsed = started.elapsed().as_secs_f64();
    let interrupted = matches!(first_error, Some((_, Error::Interrupted { .. })));
    for &i in pending {
        let r = &w.manifest.stages[&p.stages[i].name];
        if !interrupted && !r.status.is_done() && r.status != StageStatus::Running {
            w.own(&p.stages[i].name);
        }
    }
    w.update(|m| {
        for &i in pending {
            let r = m.stages.get_mut(&p.stages[i].name).expect("record");
            if !interrupted && !r.status.is_done() && r.status != StageStatus::Running {
                r.status = StageStatus::Skipped;
            }
        }
        m.status = match first_error {
            Some((_, Error::Interrupted { .. })) => RunStatus::Interrupted,
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
async fn write_report(m: &Manifest, artifacts: &Store, p: &crate::config::Pipeline) {
    let report = format!("{}/report.html", m.run_id);
    let html = crate::report::build(m, artifacts, p).await;
    if let Err(e) = artifacts.put(&report, bytes::Bytes::from(html)).await {
        tracing::warn!(error = %e, "cannot write {report}");
    }
}
