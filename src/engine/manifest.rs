//! `runs/<run_id>/manifest.json`: what a run did, stage by stage. A stage's outputs are trusted
//! only when its record here says it succeeded; that write is the commit point of a stage.
//!
//! Also the run's other records under the artifacts root: `LATEST` (the most recently started
//! run), the reuse cache `_cache/<stage>/<fingerprint>.json`, and `_last_success.json`.

use std::collections::BTreeSet;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stages::load::Input;
use crate::storage::Store;

pub use crate::stages::record::{OutputRecord, StageRecord, StageStatus, Summary};

/// The state of a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    /// Stopped by SIGTERM or SIGINT; `mlpipe run --run-id <id>` resumes it.
    Interrupted,
}

/// The whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub run_id: String,
    pub pipeline: String,
    pub pipeline_file: String,
    pub status: RunStatus,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    /// Estimated Fargate cost of this invocation, in US dollars (`telemetry::fargate_cost_usd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// How many times this run id was started (1 + resumes).
    pub invocations: u32,
    pub code_version: String,
    /// The "now" freshness was measured against.
    pub as_of: String,
    /// Datasets read, with their files' fingerprints.
    #[serde(default)]
    pub inputs: IndexMap<String, Input>,
    /// Stage name → record, in declaration order.
    pub stages: IndexMap<String, StageRecord>,
    /// The pipeline file's resolved values.
    pub config: serde_json::Value,
}

impl Manifest {
    pub fn stage(&self, name: &str) -> Option<&StageRecord> {
        self.stages.get(name)
    }

    /// Every check that failed in a completed stage (failed gates, unhealthy models).
    pub fn check_failures(&self) -> Vec<String> {
        self.stages
            .values()
            .filter(|r| r.status.is_done())
            .flat_map(|r| r.check_failures.iter().cloned())
            .collect()
    }
}

/// The path of a run's manifest under the artifacts root.
pub fn path(run_id: &str) -> String {
    format!("{run_id}/manifest.json")
}

/// Reads a run's manifest.
pub async fn load(artifacts: &Store, run_id: &str) -> Result<Option<Manifest>> {
    artifacts.get_json(&path(run_id)).await
}

#[derive(Serialize, Deserialize)]
struct Latest {
    run_id: String,
}

/// The id of the most recently started run, if any.
pub async fn latest_run(artifacts: &Store) -> Result<Option<String>> {
    Ok(artifacts
        .get_json::<Latest>("LATEST")
        .await?
        .map(|l| l.run_id))
}

/// Records `run_id` as the most recently started run.
pub async fn set_latest(artifacts: &Store, run_id: &str) -> Result<()> {
    let doc = Latest {
        run_id: run_id.to_string(),
    };
    artifacts.put_json("LATEST", &doc).await
}

/// The manifest of the most recently started run, if any.
pub async fn latest(artifacts: &Store) -> Result<Option<Manifest>> {
    match latest_run(artifacts).await? {
        Some(id) => load(artifacts, &id).await,
        None => Ok(None),
    }
}

/// An entry of the reuse cache: a completed stage and the run that completed it.
#[derive(Serialize, Deserialize)]
pub struct CacheEntry {
    pub run_id: String,
    pub record: StageRecord,
}

/// Where the reuse cache keeps a stage's entry for a fingerprint.
pub fn cache_path(stage: &str, fingerprint: &str) -> String {
    format!("_cache/{stage}/{fingerprint}.json")
}

/// When a run last succeeded (`_last_success.json`), for the metric of that name.
#[derive(Serialize, Deserialize)]
pub struct LastSuccess {
    pub run_id: String,
    pub finished_at: String,
    pub unix_seconds: f64,
}

/// The path of [`LastSuccess`] under the artifacts root.
pub const LAST_SUCCESS: &str = "_last_success.json";

/// Updates the manifest and persists it after every change. Several invocations may update one
/// run's manifest at once (Step Functions runs each stage as its own task): every write is
/// conditional on the version last seen, and on a conflict the writer re-reads the manifest,
/// keeps its own stages' records and takes everyone else's, and writes again.
pub(super) struct ManifestWriter {
    pub(super) manifest: Manifest,
    artifacts: Store,
    /// The stored manifest's e-tag as last read or written; `None` before it exists (or on a
    /// backend without e-tags).
    etag: Option<String>,
    stored: bool,
    /// The records this invocation decides: the stages whose lease it holds (or held), and
    /// those it reused. On a conflict every other record is taken from the stored manifest.
    owned: BTreeSet<String>,
    /// Whether a write of this invocation has landed (and so counted it in `invocations`).
    landed: bool,
}

impl ManifestWriter {
    pub(super) fn new(manifest: Manifest, artifacts: Store, owned: BTreeSet<String>) -> Self {
        ManifestWriter {
            manifest,
            artifacts,
            etag: None,
            stored: false,
            owned,
            landed: false,
        }
    }

    fn path(&self) -> String {
        path(&self.manifest.run_id)
    }

    /// This invocation decides `stage`'s record from now on (it holds the stage's lease).
    pub(super) fn own(&mut self, stage: &str) {
        self.owned.insert(stage.to_string());
    }

    /// Takes from the stored manifest what other invocations own.
    pub(super) async fn merge_stored(&mut self) -> Result<()> {
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

    /// Applies `f` to the manifest and stores it.
    pub(super) async fn update<R>(&mut self, f: impl FnOnce(&mut Manifest) -> R) -> Result<R> {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::StageKind;

    pub(crate) fn manifest(run: &str, stages: &[&str]) -> Manifest {
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
            code_version: crate::CODE_VERSION.into(),
            as_of: String::new(),
            inputs: Default::default(),
            stages: stages
                .iter()
                .map(|s| {
                    (
                        s.to_string(),
                        StageRecord::new(StageKind::Train, StageStatus::NotSelected, String::new()),
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
        let mut first = ManifestWriter::new(manifest("r", &refs), store.clone(), BTreeSet::new());
        first.update(|_| ()).await.unwrap();
        let tasks: Vec<_> = names
            .iter()
            .map(|name| {
                let (store, name) = (store.clone(), name.clone());
                let refs: Vec<String> = refs.iter().map(|s| s.to_string()).collect();
                tokio::spawn(async move {
                    let r: Vec<&str> = refs.iter().map(String::as_str).collect();
                    let mut w =
                        ManifestWriter::new(manifest("r", &r), store, [name.clone()].into());
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
}
