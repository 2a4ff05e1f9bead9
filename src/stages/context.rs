//! What a running stage sees: the pipeline, the stores, the outputs of the stages it needs, a
//! place to write its own outputs, progress, and the in-process cache of tables.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
use object_store::PutPayload;
use sha2::{Digest, Sha256};

use super::faults::Faults;
use super::record::{OutputRecord, StageRecord};
use crate::config::{Pipeline, Stage, StageKind};
use crate::data::reader::Located;
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::storage::Store;

/// State shared by every stage of one invocation.
pub struct Shared {
    pub pipeline: Arc<Pipeline>,
    pub run_id: String,
    pub artifacts: Store,
    pub as_of: DateTime<Utc>,
    /// Whether `as_of` was given (`--as-of` or `run.as_of`) rather than read from the clock.
    pub as_of_pinned: bool,
    /// Dataset locations listed while planning, by dataset name.
    pub located: HashMap<String, Located>,
    /// Tables decoded in this process, by artifact path, so downstream stages skip re-reading.
    pub tables: Mutex<HashMap<String, Arc<RecordBatch>>>,
    /// Datasets read in this process, by name and input fingerprint.
    pub datasets: Mutex<HashMap<(String, String), Arc<crate::data::Table>>>,
    pub faults: Faults,
    /// The run's metrics.
    pub telemetry: crate::telemetry::Telemetry,
    /// The model registry at the pipeline's `registry` root.
    pub registry: Registry,
}

impl Shared {
    /// Where a dataset's files are: as listed while planning, or listed now.
    pub async fn located(&self, name: &str) -> Result<Located> {
        match self.located.get(name) {
            Some(l) => Ok(l.clone()),
            None => {
                let ds = &self.pipeline.datasets[name];
                crate::data::reader::locate(&self.pipeline.storage.data, &ds.location)
                    .await
                    .map_err(|e| e.context(format!("dataset `{name}`")))
            }
        }
    }
}

/// A train stage before the current one.
pub struct Trained<'a> {
    pub stage: &'a String,
    pub record: &'a StageRecord,
    pub summary: &'a super::train::Summary,
}

impl Trained<'_> {
    /// One of its outputs (`model`, `metrics`, `holdout`).
    pub fn output(&self, name: &str) -> Result<&OutputRecord> {
        self.record.output(name).ok_or_else(|| {
            Error::Data(format!(
                "stage `{}` has no `{name}` output; re-run it with --force",
                self.stage
            ))
        })
    }

    /// The run that trained the model (this one, or the one whose outputs were reused).
    pub fn run_id<'b>(&'b self, this_run: &'b str) -> &'b str {
        self.record.reused_from.as_deref().unwrap_or(this_run)
    }
}

/// The context of one attempt of one stage.
pub struct StageCtx {
    pub shared: Arc<Shared>,
    pub stage: Stage,
    pub attempt: u32,
    /// Records of the stages this one needs, by name.
    pub upstream: HashMap<String, StageRecord>,
    pub progress: ProgressBar,
    outputs: Mutex<Vec<OutputRecord>>,
    samples: Mutex<Vec<crate::telemetry::Sample>>,
    /// Rows read and written by this attempt (the stage span's `rows_in` / `rows_out`).
    rows_in: std::sync::atomic::AtomicU64,
    rows_out: std::sync::atomic::AtomicU64,
}

impl StageCtx {
    pub fn new(
        shared: Arc<Shared>,
        stage: Stage,
        attempt: u32,
        upstream: HashMap<String, StageRecord>,
        progress: ProgressBar,
    ) -> Self {
        StageCtx {
            shared,
            stage,
            attempt,
            upstream,
            progress,
            outputs: Mutex::new(Vec::new()),
            samples: Mutex::new(Vec::new()),
            rows_in: Default::default(),
            rows_out: Default::default(),
        }
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.shared.pipeline
    }

    /// Where a dataset's files are. A dataset a sql stage produces is that stage's table, as its
    /// record lists it (the producing stage is always upstream: the compiler checks it).
    pub async fn located(&self, name: &str) -> Result<Located> {
        let ds = &self.pipeline().datasets[name];
        let Some(stage) = &ds.produced_by else {
            return self.shared.located(name).await;
        };
        let out = self.input(stage, name)?;
        Ok(Located {
            store: self.shared.artifacts.clone(),
            url: self.shared.artifacts.url_of(&out.path),
            files: vec![crate::storage::ObjectInfo {
                path: out.path,
                size: out.bytes,
                // The content's digest: equal fingerprints, equal tables.
                e_tag: Some(out.sha256),
                last_modified: String::new(),
            }],
        })
    }

    /// The artifact path of a file this stage writes.
    pub fn output_path(&self, file: &str) -> String {
        format!("{}/{}/{}", self.shared.run_id, self.stage.name, file)
    }

    /// Writes one output atomically and records it (with its SHA-256) for the manifest.
    pub async fn write(
        &self,
        name: &str,
        file: &str,
        bytes: impl Into<PutPayload>,
    ) -> Result<OutputRecord> {
        use tracing::Instrument;
        let bytes = bytes.into();
        let path = self.output_path(file);
        let span = tracing::info_span!("write", file = %path, bytes = bytes.content_length());
        self.write_inner(name, path, bytes).instrument(span).await
    }

    async fn write_inner(
        &self,
        name: &str,
        path: String,
        bytes: PutPayload,
    ) -> Result<OutputRecord> {
        // The digest is taken on a blocking thread while the bytes are stored: both are serial
        // passes over the whole file (a clean table at 10 M customers is hundreds of MB).
        let len = bytes.content_length() as u64;
        let digest = {
            let b = bytes.clone();
            tokio::task::spawn_blocking(move || {
                let mut h = Sha256::new();
                b.iter().for_each(|piece| h.update(piece));
                hex::encode(h.finalize())
            })
        };
        let (sha256, stored) = tokio::join!(digest, self.shared.artifacts.put(&path, bytes));
        stored?;
        let rec = OutputRecord {
            name: name.to_string(),
            path: path.clone(),
            sha256: sha256.map_err(|e| {
                Error::Infra(format!(
                    "stage `{}`: digest of {path} failed: {e}",
                    self.stage.name
                ))
            })?,
            bytes: len,
        };
        let first = {
            let mut outs = self.outputs.lock().unwrap();
            outs.retain(|o| o.name != name);
            outs.push(rec.clone());
            outs.len() == 1
        };
        if first {
            self.shared
                .faults
                .after_first_write(&self.stage.name, self.attempt)?;
        }
        Ok(rec)
    }

    /// Writes a JSON output.
    pub async fn write_json<T: serde::Serialize>(
        &self,
        name: &str,
        file: &str,
        value: &T,
    ) -> Result<OutputRecord> {
        let mut v = serde_json::to_vec_pretty(value)?;
        v.push(b'\n');
        self.write(name, file, Bytes::from(v)).await
    }

    /// Writes a table as Parquet and keeps it in the in-process cache.
    pub async fn write_table(
        &self,
        name: &str,
        file: &str,
        batch: RecordBatch,
    ) -> Result<OutputRecord> {
        let b = batch.clone();
        let bytes =
            tokio::task::spawn_blocking(move || crate::data::writer::to_parquet_chunks(&[b]))
                .await
                .map_err(|e| {
                    Error::Infra(format!(
                        "stage `{}`: writer task failed: {e}",
                        self.stage.name
                    ))
                })??;
        self.count_rows_out(batch.num_rows());
        let rec = self.write(name, file, bytes).await?;
        self.shared
            .tables
            .lock()
            .unwrap()
            .insert(rec.path.clone(), Arc::new(batch));
        Ok(rec)
    }

    /// An output of a stage this one needs.
    pub fn input(&self, stage: &str, name: &str) -> Result<OutputRecord> {
        let rec = self.upstream.get(stage).ok_or_else(|| {
            Error::Usage(format!(
                "stage `{}` reads from `{stage}` but does not list it in `needs`",
                self.stage.name
            ))
        })?;
        rec.output(name).cloned().ok_or_else(|| {
            Error::Data(format!(
                "stage `{}` needs output `{name}` of stage `{stage}`, which its record does not list; re-run `{stage}` with --force",
                self.stage.name
            ))
        })
    }

    /// An output, by name, of any stage before this one in the DAG. The error names the kind of
    /// stage to add to `needs`.
    pub fn upstream_output(&self, name: &str, made_by: &str) -> Result<OutputRecord> {
        self.upstream.values().find_map(|r| r.output(name).cloned()).ok_or_else(|| {
            Error::Usage(format!(
                "stage `{}` needs `{name}`, which no stage before it produces; add a {made_by} stage to its `needs`",
                self.stage.name
            ))
        })
    }

    /// The train stage of `model` that runs before this one: its name, record and summary.
    pub fn trained(&self, model: &str) -> Result<Trained<'_>> {
        self.upstream
            .iter()
            .find_map(|(name, r)| {
                let summary = r.train().filter(|t| t.model == model)?;
                Some(Trained {
                    stage: name,
                    record: r,
                    summary,
                })
            })
            .ok_or_else(|| {
                Error::Usage(format!(
                    "stage `{}`: no train stage for model `{model}` runs before it; add it to `needs`",
                    self.stage.name
                ))
            })
    }

    /// Every completed stage of `kind` before this one, by name (in name order, so that what a
    /// stage reads does not depend on a hash map's order).
    pub fn upstream_of(&self, kind: StageKind) -> Vec<(&String, &StageRecord)> {
        let mut v: Vec<_> = self
            .upstream
            .iter()
            .filter(|(_, r)| r.kind == kind && r.status.is_done())
            .collect();
        v.sort_by_key(|(name, _)| name.as_str());
        v
    }

    /// Reads a table written by an upstream stage (from the in-process cache when possible).
    pub async fn read_table(&self, out: &OutputRecord) -> Result<Arc<RecordBatch>> {
        use tracing::Instrument;
        let cached = self.shared.tables.lock().unwrap().get(&out.path).cloned();
        if let Some(t) = cached {
            self.count_rows_in(t.num_rows());
            return Ok(t);
        }
        let span = tracing::info_span!("load", file = %out.path);
        let b = Arc::new(
            crate::data::reader::read_parquet(
                &self.shared.artifacts,
                &out.path,
                &out.sha256,
                out.bytes,
            )
            .instrument(span)
            .await?,
        );
        self.count_rows_in(b.num_rows());
        self.shared
            .tables
            .lock()
            .unwrap()
            .insert(out.path.clone(), b.clone());
        Ok(b)
    }

    /// Reads an output of an upstream stage, checking it is the file the stage recorded.
    pub async fn read_bytes(&self, out: &OutputRecord) -> Result<bytes::Bytes> {
        self.shared
            .artifacts
            .get_verified(&out.path, &out.sha256, out.bytes)
            .await
    }

    /// Reads a JSON output of an upstream stage (checked as [`StageCtx::read_bytes`] does).
    pub async fn read_json<T: serde::de::DeserializeOwned>(&self, out: &OutputRecord) -> Result<T> {
        let bytes = self.read_bytes(out).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::Data(format!(
                "{} is not valid: {e}; re-run the stage that wrote it with --force",
                self.shared.artifacts.url_of(&out.path)
            ))
        })
    }

    pub fn take_outputs(&self) -> Vec<OutputRecord> {
        std::mem::take(&mut self.outputs.lock().unwrap())
    }

    /// Logs an event now and keeps its metric samples; the engine records them in the run's
    /// metrics (and the stage's manifest record) when the stage succeeds.
    pub fn emit(&self, e: crate::telemetry::Event) {
        e.log();
        self.samples.lock().unwrap().extend(e.samples());
    }

    pub fn count_rows_in(&self, n: usize) {
        self.rows_in
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn count_rows_out(&self, n: usize) {
        self.rows_out
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Rows read and written so far.
    pub fn rows(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.rows_in.load(Relaxed), self.rows_out.load(Relaxed))
    }

    /// The samples emitted so far (the engine takes them once the attempt ends).
    pub fn take_samples(&self) -> Vec<crate::telemetry::Sample> {
        std::mem::take(&mut self.samples.lock().unwrap())
    }
}
