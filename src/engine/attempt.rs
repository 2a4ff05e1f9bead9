//! Executing one stage: take its lease (or wait for the invocation that holds it and take its
//! result), run attempts with a timeout each, retry infrastructure failures with exponential
//! backoff, and commit the outcome to the manifest and the reuse cache. Every failure is
//! recorded in the stage's record and named after the stage.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use indicatif::ProgressBar;

use super::lease::{Leases, Taken};
use super::manifest::{self, CacheEntry, StageRecord, StageStatus};
use super::run::Writer;
use crate::config::Stage;
use crate::error::{Error, Result};
use crate::stages::context::{Shared, StageCtx};
use crate::stages::{self, faults, StageDone};
use crate::telemetry::Event;
use crate::time::format_millis as ts;

/// How often a waiting invocation looks whether the holder of a stage's lease is done.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// What became of a stage.
pub(super) enum Ended {
    /// This invocation executed it.
    Executed,
    /// Another invocation of the run executed it while this one waited; its record stands.
    ByAnother,
}

/// Runs one stage to its end (see the module's description).
pub(super) async fn run_stage(
    shared: Arc<Shared>,
    st: Stage,
    upstream: HashMap<String, StageRecord>,
    writer: Writer,
    bar: ProgressBar,
    leases: Leases,
    note: Option<String>,
) -> Result<Ended> {
    let name = st.name.clone();
    let Some(seq) = take_lease(&leases, &writer, &st).await? else {
        return Ok(Ended::ByAnother);
    };
    {
        // This invocation decides the record from now on; its warnings are this execution's.
        let mut w = writer.lock().await;
        w.own(&name);
        w.manifest.stages.get_mut(&name).expect("record").warnings = note.into_iter().collect();
    }
    // Renew the lease while the stage runs; the task ends with this one (dropped or aborted).
    let heartbeat = tokio::spawn(heartbeat(leases.clone(), name.clone(), seq));
    let _stop_heartbeat = AbortOnDrop(heartbeat);
    let r = attempts(shared, st, upstream, &writer, bar).await;
    if let Err(e) = leases.release(&name, seq).await {
        tracing::warn!(stage = %name, error = %e, "the stage's lease could not be released; it expires by itself");
    }
    r.map(|()| Ended::Executed)
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews a held lease every third of its lifetime.
async fn heartbeat(leases: Leases, stage: String, mut seq: u64) {
    loop {
        tokio::time::sleep(leases.heartbeat_every()).await;
        match leases.renew(&stage, seq).await {
            Ok(Some(next)) => seq = next,
            Ok(None) => {
                tracing::error!(stage = %stage, "another invocation took this stage's lease (a heartbeat came too late); its outputs may be overwritten");
                return;
            }
            Err(e) => {
                tracing::warn!(stage = %stage, error = %e, "the stage's lease could not be renewed")
            }
        }
    }
}

/// Takes the stage's lease: `Some(seq)` once this invocation holds it, `None` when another
/// invocation of the run completed the stage (with this plan's fingerprint) while this one
/// waited for it.
async fn take_lease(leases: &Leases, writer: &Writer, st: &Stage) -> Result<Option<u64>> {
    let mut told = false;
    loop {
        let holder = match leases
            .take(&st.name)
            .await
            .map_err(|e| e.context(format!("stage `{}`", st.name)))?
        {
            Taken::Held(seq) => return Ok(Some(seq)),
            Taken::By(l) => l,
        };
        if !told {
            tracing::warn!(
                stage = %st.name,
                invocation = %holder.holder.invocation,
                host = %holder.holder.host,
                pid = holder.holder.pid,
                expires = %holder.expires,
                "stage is being executed by another invocation of this run; waiting for it"
            );
            told = true;
        }
        tokio::time::sleep(WAIT_POLL).await;
        let mut w = writer.lock().await;
        let fingerprint = w.manifest.stages[&st.name].fingerprint.clone();
        w.merge_stored().await?;
        let theirs = &w.manifest.stages[&st.name];
        if theirs.status.is_done() && theirs.fingerprint == fingerprint {
            tracing::info!(stage = %st.name, "another invocation of this run completed the stage; taking its outputs");
            return Ok(None);
        }
    }
}

/// Attempts with a timeout each, retries with exponential backoff for infrastructure errors,
/// and the manifest updated at every transition.
async fn attempts(
    shared: Arc<Shared>,
    st: Stage,
    upstream: HashMap<String, StageRecord>,
    writer: &Writer,
    bar: ProgressBar,
) -> Result<()> {
    let max_attempts = 1 + st.retries;
    let begun = Utc::now();
    let t0 = Instant::now();
    for attempt in 1..=max_attempts {
        let total = begin_attempt(writer, &st, begun).await?;
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
            Ok(done) => return succeed(&ctx, writer, done, t0).await,
            Err(e) => {
                let will_retry = e.is_retryable() && attempt < max_attempts;
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
                return Err(fail(&ctx, writer, e, t0).await);
            }
        }
    }
    unreachable!("the loop returns on the last attempt")
}

/// Records that an attempt starts; returns the stage's attempts over all invocations.
async fn begin_attempt(writer: &Writer, st: &Stage, begun: chrono::DateTime<Utc>) -> Result<u32> {
    writer
        .lock()
        .await
        .update(|m| {
            let r = m.stages.get_mut(&st.name).expect("record");
            r.status = StageStatus::Running;
            r.attempts += 1;
            r.started_at = Some(ts(begun));
            r.error = None;
            r.error_kind = None;
            r.attempts
        })
        .await
        .map_err(|e| {
            named(
                &st.name,
                e.context("the manifest could not record that it started"),
            )
        })
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
/// samples in the run's metrics, and the reuse cache entry. The cache is an index for later
/// runs: when it cannot be written the stage still succeeded, and its record says why later
/// runs will recompute it.
async fn succeed(ctx: &StageCtx, writer: &Writer, done: StageDone, t0: Instant) -> Result<()> {
    let (shared, name) = (&ctx.shared, &ctx.stage.name);
    let elapsed = t0.elapsed().as_secs_f64();
    let (outputs, samples) = (ctx.take_outputs(), ctx.take_samples());
    let commit = |m: &mut manifest::Manifest| {
        for (k, v) in done.inputs.clone() {
            m.inputs.insert(k, v);
        }
        let r = m.stages.get_mut(name).expect("record");
        r.status = StageStatus::Succeeded;
        r.outputs = outputs.clone();
        r.summary = Some(done.summary.clone());
        r.check_failures = done.check_failures.clone();
        r.warnings.extend(done.warnings.iter().cloned());
        r.valid_until = done.valid_until.map(ts);
        r.finished_at = Some(ts(Utc::now()));
        r.duration_s = Some(elapsed);
        r.reused_from = None;
        r.samples = samples.clone();
        r.clone()
    };
    let rec = writer
        .lock()
        .await
        .update(commit)
        .await
        .map_err(|e| named(name, e.context("the manifest could not record its success")))?;
    shared.telemetry.record(&rec.samples);
    if shared
        .pipeline
        .stage(name)
        .is_some_and(|st| st.params.reusable())
    {
        let entry = CacheEntry {
            run_id: shared.run_id.clone(),
            record: rec.clone(),
        };
        let path = manifest::cache_path(name, &rec.fingerprint);
        if let Err(e) = shared.artifacts.put_json(&path, &entry).await {
            let warning = format!(
                "the reuse cache entry {} could not be written ({e}); later runs will recompute this stage",
                shared.artifacts.url_of(&path)
            );
            tracing::warn!(stage = %name, "{warning}");
            writer
                .lock()
                .await
                .update(|m| {
                    m.stages
                        .get_mut(name)
                        .expect("record")
                        .warnings
                        .push(warning)
                })
                .await
                .map_err(|e| named(name, e.context("the manifest could not record a warning")))?;
        }
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
/// If even the manifest cannot record it, the error says that too.
async fn fail(ctx: &StageCtx, writer: &Writer, e: Error, t0: Instant) -> Error {
    let name = &ctx.stage.name;
    let elapsed = t0.elapsed().as_secs_f64();
    let msg = e.to_string();
    let span = tracing::Span::current();
    span.record("status", "failed");
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", msg.as_str());
    let outputs = ctx.take_outputs();
    let recorded = writer
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
        .await;
    if let Err(w) = recorded {
        tracing::error!(stage = %name, error = %w, "the manifest could not record the stage's failure");
    }
    named(name, e)
}

/// `e` with the stage's name in front, unless its message already starts with it.
fn named(stage: &str, e: Error) -> Error {
    let named = format!("stage `{stage}`");
    if e.to_string().starts_with(&named) {
        e
    } else {
        e.context(named)
    }
}
