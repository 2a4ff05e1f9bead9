//! The ready loop: every stage starts as soon as the stages it needs are done (as
//! [`super::schedule`] allows), until none is left or one fails; then the running ones finish
//! and nothing new starts. A stop signal starts nothing new either, and cancels what still runs
//! after the shutdown grace. A stage that finds an earlier stage's output changed since it was
//! recorded has that stage recomputed, then runs again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinSet;

use super::attempt::{run_stage, Ended};
use super::lease::Leases;
use super::manifest::{self, Manifest, StageRecord, StageStatus};
use super::run::Writer;
use super::schedule::{fit_slots, schedule};
use super::Stop;
use crate::config::Pipeline;
use crate::error::{Error, Result};
use crate::stages::context::Shared;
use crate::telemetry::Event;

/// How the loop ended: the first error (with its stage's index; the earliest in the pipeline
/// when several fail), the stages that never started, and the stop signal if one came.
pub(super) struct Driven {
    pub first_error: Option<(usize, Error)>,
    pub pending: Vec<usize>,
    pub stopped_by: Option<i32>,
    /// The stages cancelled after the shutdown grace.
    pub interrupted: Vec<String>,
}

/// What the loop works with.
pub(super) struct Driver {
    pub p: Arc<Pipeline>,
    pub shared: Arc<Shared>,
    pub writer: Writer,
    pub leases: Leases,
    /// Stages to run that have not started.
    pub pending: Vec<usize>,
    /// Stages whose outputs the stages after them may read: completed earlier (this run, a
    /// reused result, another run) or by this loop. Not the stored records' statuses: on an
    /// existing run a stage this invocation runs again may be recorded as done from before.
    pub done: BTreeSet<usize>,
    /// Stages whose outputs come from another run (`--stage` with upstream): a changed output
    /// of theirs is an error, not recomputed here.
    pub from_other_runs: BTreeSet<usize>,
    pub stop: Option<Stop>,
    pub grace: Duration,
    pub progress: bool,
}

/// The loop's state.
struct Loop {
    running: JoinSet<(usize, Result<Ended>)>,
    /// Which stage each running task is.
    tasks: HashMap<tokio::task::Id, usize>,
    in_flight: Vec<usize>,
    first_error: Option<(usize, Error)>,
    held: BTreeSet<usize>,
    /// Stages recomputed because a later stage found their output changed (once each).
    recomputed: BTreeSet<usize>,
    /// Why a stage runs again, for its record's warnings.
    notes: HashMap<usize, String>,
    stopped_by: Option<i32>,
    interrupted: Vec<String>,
}

impl Driver {
    /// Runs the loop (see the module's description).
    pub(super) async fn drive(mut self) -> Result<Driven> {
        let bars = MultiProgress::with_draw_target(if self.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let mut l = Loop {
            running: JoinSet::new(),
            tasks: HashMap::new(),
            in_flight: Vec::new(),
            first_error: None,
            held: BTreeSet::new(),
            recomputed: BTreeSet::new(),
            notes: HashMap::new(),
            stopped_by: None,
            interrupted: Vec::new(),
        };
        let mut stop = self.stop.clone();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            if l.first_error.is_none() && l.stopped_by.is_none() {
                self.start_ready(&mut l, &bars).await;
            }
            if l.running.is_empty() {
                break;
            }
            tokio::select! {
                sig = wait_for(&mut stop), if l.stopped_by.is_none() => {
                    tracing::warn!(
                        signal = super::stop::name(sig),
                        grace_seconds = self.grace.as_secs_f64(),
                        "stop requested: no new stage starts; running stages have the shutdown grace to finish (a second signal exits at once)"
                    );
                    l.stopped_by = Some(sig);
                    deadline = Some(tokio::time::Instant::now() + self.grace);
                }
                _ = sleep_until(deadline) => {
                    deadline = None;
                    l.running.abort_all();
                }
                joined = l.running.join_next_with_id() => {
                    let Some(joined) = joined else { continue };
                    self.joined(&mut l, joined).await?;
                }
            }
        }
        Ok(Driven {
            first_error: l.first_error,
            pending: self.pending,
            stopped_by: l.stopped_by,
            interrupted: l.interrupted,
        })
    }

    /// Starts the stages whose needs are done.
    async fn start_ready(&mut self, l: &mut Loop, bars: &MultiProgress) {
        let p = self.p.clone();
        let m = self.writer.lock().await.manifest.clone();
        let ready: Vec<usize> = self
            .pending
            .iter()
            .copied()
            .filter(|&i| p.dag.deps[i].iter().all(|d| self.done.contains(d)))
            .collect();
        let slots = fit_slots(&p);
        let ready = schedule(&p, &m, ready, &l.in_flight, slots);
        for &i in &ready.held {
            if l.held.insert(i) {
                tracing::info!(
                    stage = %p.stages[i].name,
                    max_concurrent_fits = slots,
                    "stage waits for a running fit to finish (run.max_concurrent_fits)"
                );
            }
        }
        for i in ready.start {
            self.pending.retain(|&x| x != i);
            l.in_flight.push(i);
            let bar = bars.add(spinner(&p.stages[i].name));
            let note = l.notes.remove(&i);
            let id = self.spawn(&mut l.running, i, upstream_records(&p, &m, i), bar, note);
            l.tasks.insert(id, i);
        }
    }

    /// Starts one stage as a task, inside its span (pipeline, run id, stage, kind, attempt, rows
    /// in and out, status).
    fn spawn(
        &self,
        running: &mut JoinSet<(usize, Result<Ended>)>,
        i: usize,
        upstream: HashMap<String, StageRecord>,
        bar: ProgressBar,
        note: Option<String>,
    ) -> tokio::task::Id {
        let st = self.p.stages[i].clone();
        let span = tracing::info_span!(
            "stage",
            otel.name = %st.name,
            pipeline = %self.p.name,
            run_id = %self.shared.run_id,
            stage = %st.name,
            kind = st.kind().name(),
            attempt = tracing::field::Empty,
            rows_in = tracing::field::Empty,
            rows_out = tracing::field::Empty,
            status = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let (shared, writer, leases) = (
            self.shared.clone(),
            self.writer.clone(),
            self.leases.clone(),
        );
        running
            .spawn(tracing::Instrument::instrument(
                async move {
                    let r =
                        run_stage(shared, st, upstream, writer, bar.clone(), leases, note).await;
                    bar.finish_and_clear();
                    (i, r)
                },
                span,
            ))
            .id()
    }

    /// A stage's task ended: done, failed, or cancelled by a stop.
    async fn joined(
        &mut self,
        l: &mut Loop,
        joined: std::result::Result<
            (tokio::task::Id, (usize, Result<Ended>)),
            tokio::task::JoinError,
        >,
    ) -> Result<()> {
        let (i, r) = match joined {
            Ok((id, (i, r))) => {
                l.tasks.remove(&id);
                (i, r)
            }
            Err(e) if e.is_cancelled() => {
                let i = l.tasks.remove(&e.id()).expect("a task of the loop");
                l.in_flight.retain(|&x| x != i);
                self.record_interrupted(l, i).await?;
                return Ok(());
            }
            Err(e) => return Err(Error::Infra(format!("a stage task panicked: {e}"))),
        };
        l.in_flight.retain(|&x| x != i);
        // The decoded input datasets are the largest tables in memory; once no stage that reads
        // them is left, they go.
        if !self
            .pending
            .iter()
            .chain(&l.in_flight)
            .any(|&j| self.p.stages[j].kind().reads_datasets())
        {
            self.shared.datasets.lock().unwrap().clear();
        }
        match r {
            Ok(Ended::Executed) => {
                self.done.insert(i);
            }
            Ok(Ended::ByAnother) => {
                self.done.insert(i);
                let rec = self.writer.lock().await.manifest.stages[&self.p.stages[i].name].clone();
                self.shared.telemetry.record(&rec.samples);
            }
            Err(Error::Integrity { message, path }) => {
                if !self.recompute(l, i, &path, &message).await? {
                    keep_first(l, i, Error::Integrity { message, path });
                }
            }
            Err(e) => keep_first(l, i, e),
        }
        Ok(())
    }

    /// Stage `i` found the output at `path` changed since it was recorded. If an earlier stage of
    /// this run wrote it (or was reused for it), that stage is recomputed and `i` runs again;
    /// returns false when the output came from another run or was recomputed once already.
    async fn recompute(&mut self, l: &mut Loop, i: usize, path: &str, why: &str) -> Result<bool> {
        let p = self.p.clone();
        let mut w = self.writer.lock().await;
        let Some((j, producer)) = p.stages.iter().enumerate().find_map(|(j, st)| {
            w.manifest.stages[&st.name]
                .has_output_at(path)
                .then(|| (j, st.name.clone()))
        }) else {
            return Ok(false);
        };
        if self.from_other_runs.contains(&j) || !l.recomputed.insert(j) {
            return Ok(false);
        }
        self.done.remove(&j);
        tracing::warn!(
            stage = %p.stages[i].name,
            recomputed = %producer,
            "{why}; recomputing stage `{producer}`, then this stage"
        );
        let stale = w.manifest.stages[&producer].clone();
        w.own(&producer);
        w.update(|m| {
            let r = m.stages.get_mut(&producer).expect("record");
            *r = StageRecord::new(r.kind, StageStatus::Pending, r.fingerprint.clone());
            r.attempts = stale.attempts;
        })
        .await?;
        l.notes.insert(j, format!("recomputed: {why}"));
        drop(w);
        // The changed output must not be reused by later runs either.
        let cache = manifest::cache_path(&producer, &stale.fingerprint);
        if let Err(e) = self.shared.artifacts.delete(&cache).await {
            tracing::warn!(stage = %producer, error = %e, "cannot remove the reuse cache entry of a changed output");
        }
        self.pending.push(j);
        self.pending.push(i);
        self.pending.sort_unstable();
        self.pending.dedup();
        Ok(true)
    }

    /// Records a stage cancelled after the shutdown grace.
    async fn record_interrupted(&mut self, l: &mut Loop, i: usize) -> Result<()> {
        let name = self.p.stages[i].name.clone();
        l.interrupted.push(name.clone());
        self.writer
            .lock()
            .await
            .update(|m| {
                let r = m.stages.get_mut(&name).expect("record");
                r.status = StageStatus::Interrupted;
                r.finished_at = Some(crate::time::format_millis(Utc::now()));
                r.error = Some(format!(
                    "cancelled by {} after the shutdown grace",
                    super::stop::name(l.stopped_by.unwrap_or(super::stop::SIGTERM))
                ));
                r.error_kind = Some("interrupted".into());
            })
            .await?;
        self.shared.telemetry.emit(Event::StageFinished {
            pipeline: &self.p.name,
            stage: &name,
            status: "interrupted",
            seconds: 0.0,
        });
        Ok(())
    }
}

/// Keeps the error of the earliest stage in the pipeline.
fn keep_first(l: &mut Loop, i: usize, e: Error) {
    if l.first_error.as_ref().is_none_or(|(j, _)| i < *j) {
        l.first_error = Some((i, e));
    }
}

/// Waits for a stop request, or forever without one.
async fn wait_for(stop: &mut Option<Stop>) -> i32 {
    match stop {
        Some(s) => s.wait().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
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
