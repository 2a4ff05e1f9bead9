//! The model registry, under the `registry` root.
//!
//! Each model has an append-only log of commits, `<model>/log/<seq>.json`, each written with a
//! create-only put (`If-None-Match: *` on S3, an atomic hard link on local disks): a writer reads
//! the log, decides, and creates the next sequence number; if another writer got there first the
//! put fails, and the writer reads again and decides again. So two runs registering at the same
//! time both land, and every decision is made on the state it was applied to. The state —
//! versions, their status, which one is in production, the history of every move — is the fold
//! of the log; `<model>/v<N>.json` and `<model>/state.json` are views rewritten after each commit.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::Store;

/// A version's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Candidate,
    Production,
    Archived,
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Candidate => "candidate",
            Status::Production => "production",
            Status::Archived => "archived",
            Status::Rejected => "rejected",
        }
    }
}

/// One model version: the fields of the registry document the monitoring strategy specifies
/// (`model_id`, `training_date`, `deployment_date`, `status`, `metrics` with `fairness`,
/// `data_version`, `training_duration_min`, `last_evaluated`), then what makes a version
/// reproducible and traceable (run, artifact and its SHA-256, algorithm, parameters, features,
/// training data, drift summary, code version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionDoc {
    pub model_id: String,
    pub training_date: String,
    pub deployment_date: Option<String>,
    pub status: Status,
    /// Holdout metrics, plus `fairness` (`gender_parity`, `age_parity`, `location_parity`, …).
    pub metrics: VersionMetrics,
    pub data_version: String,
    pub training_duration_min: f64,
    pub last_evaluated: String,
    pub model: String,
    pub version: u32,
    pub run_id: String,
    pub artifact_uri: String,
    pub artifact_sha256: String,
    pub algorithm: String,
    pub params: serde_json::Value,
    pub features: Vec<String>,
    pub training_data: String,
    pub drift: serde_json::Value,
    pub code_version: String,
    /// Why the version is rejected or stayed a candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A version's metrics: the holdout metrics at training, and its fairness ratios.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionMetrics {
    #[serde(flatten)]
    pub holdout: crate::metrics::Metrics,
    /// `<attribute>_parity` → the demographic parity ratio on the holdout.
    #[serde(default, deserialize_with = "crate::json::nan_map")]
    pub fairness: indexmap::IndexMap<String, f64>,
}

/// One change in a commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A new version (candidate or rejected).
    Registered { doc: Box<VersionDoc> },
    /// A version becomes production; the previous one is archived. A rollback goes back down
    /// the production history instead of adding to it.
    Promoted {
        version: u32,
        reason: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rollback: bool,
        /// The deployment date a run gives (its as-of date, so that a backfill's model is as old
        /// as its data); by hand, the commit's date.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deployed_on: Option<String>,
    },
    /// A run trained an artifact identical to this version's (the same SHA-256): no new
    /// version; the version was evaluated again.
    Evaluated {
        version: u32,
        reason: String,
        /// The evaluation's time (the run's as-of), the version's new `last_evaluated`.
        evaluated_at: String,
    },
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    pub seq: u64,
    pub at: String,
    /// A run id, or `cli` for `mlpipe registry promote/rollback`.
    pub by: String,
    pub changes: Vec<Change>,
}

/// What a history entry records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveKind {
    /// `to` became production (a registration that won, or `registry promote`).
    #[default]
    Promoted,
    /// `registry rollback`: production went back to `to`, the version before `from`.
    RolledBack,
    /// `to` was trained again, identical, and evaluated again; production did not move.
    Evaluated,
}

/// An entry of a model's history: a move of production, or a re-evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Move {
    pub at: String,
    pub by: String,
    #[serde(default)]
    pub kind: MoveKind,
    pub from: Option<u32>,
    pub to: u32,
    pub reason: String,
}

/// A model's registry state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub model: String,
    pub production: Option<u32>,
    pub versions: BTreeMap<u32, VersionDoc>,
    pub history: Vec<Move>,
    /// The next free sequence number of the log.
    pub next_seq: u64,
}

impl State {
    fn apply(&mut self, c: &Commit) {
        for ch in &c.changes {
            match ch {
                Change::Registered { doc } => {
                    self.versions.insert(doc.version, (**doc).clone());
                }
                Change::Promoted {
                    version,
                    reason,
                    rollback,
                    deployed_on,
                } => {
                    let from = self.production;
                    if let Some(p) = from.and_then(|p| self.versions.get_mut(&p)) {
                        p.status = Status::Archived;
                    }
                    if let Some(v) = self.versions.get_mut(version) {
                        v.status = Status::Production;
                        v.deployment_date = Some(
                            deployed_on
                                .clone()
                                .unwrap_or_else(|| c.at[..10.min(c.at.len())].to_string()),
                        );
                    }
                    self.production = Some(*version);
                    self.history.push(Move {
                        at: c.at.clone(),
                        by: c.by.clone(),
                        kind: if *rollback {
                            MoveKind::RolledBack
                        } else {
                            MoveKind::Promoted
                        },
                        from,
                        to: *version,
                        reason: reason.clone(),
                    });
                }
                Change::Evaluated {
                    version,
                    reason,
                    evaluated_at,
                } => {
                    if let Some(v) = self.versions.get_mut(version) {
                        v.last_evaluated = evaluated_at.clone();
                    }
                    self.history.push(Move {
                        at: c.at.clone(),
                        by: c.by.clone(),
                        kind: MoveKind::Evaluated,
                        from: self.production,
                        to: *version,
                        reason: reason.clone(),
                    });
                }
            }
        }
        self.next_seq = c.seq + 1;
    }

    /// The next version number.
    pub fn next_version(&self) -> u32 {
        self.versions.keys().last().map_or(1, |v| v + 1)
    }

    /// The production versions in the order they took over, the current one last: each
    /// promotion adds one, each rollback removes the current one. A rollback goes to the one
    /// before the current.
    pub fn production_stack(&self) -> Vec<u32> {
        let mut stack = Vec::new();
        for m in &self.history {
            match m.kind {
                MoveKind::Promoted => stack.push(m.to),
                MoveKind::RolledBack => {
                    stack.pop();
                    if stack.last() != Some(&m.to) {
                        stack.push(m.to);
                    }
                }
                MoveKind::Evaluated => {}
            }
        }
        stack
    }

    /// The version whose artifact has this SHA-256, if any.
    pub fn with_artifact(&self, sha256: &str) -> Option<&VersionDoc> {
        self.versions.values().find(|v| v.artifact_sha256 == sha256)
    }
}

/// The registry at a storage root.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Store,
}

const MAX_ATTEMPTS: u32 = 50;

impl Registry {
    pub fn open(root: &str) -> Result<Registry> {
        Ok(Registry {
            store: Store::open(root)?,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Models with a log.
    pub async fn models(&self) -> Result<Vec<String>> {
        let mut m: Vec<String> = self
            .store
            .list("")
            .await?
            .into_iter()
            .filter_map(|o| {
                let mut parts = o.path.split('/');
                let model = parts.next()?.to_string();
                (parts.next() == Some("log")).then_some(model)
            })
            .collect();
        m.dedup();
        Ok(m)
    }

    /// The state of a model: the fold of its log.
    pub async fn state(&self, model: &str) -> Result<State> {
        let mut st = State {
            model: model.to_string(),
            ..Default::default()
        };
        for o in self.store.list(&format!("{model}/log")).await? {
            let bytes = self.store.get(&o.path).await?;
            let c: Commit = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Data(format!(
                    "registry entry {} is not valid ({e}); restore it from a backup",
                    self.store.url_of(&o.path)
                ))
            })?;
            st.apply(&c);
        }
        Ok(st)
    }

    /// Decides on the current state and commits the changes, retrying on a concurrent commit.
    /// `decide` returns the changes (empty: nothing to commit).
    pub async fn commit(
        &self,
        model: &str,
        by: &str,
        decide: impl Fn(&State) -> Result<Vec<Change>>,
    ) -> Result<(State, Vec<Change>)> {
        for attempt in 0..MAX_ATTEMPTS {
            let mut st = self.state(model).await?;
            let changes = decide(&st)?;
            if changes.is_empty() {
                return Ok((st, changes));
            }
            let c = Commit {
                seq: st.next_seq,
                at: now(),
                by: by.to_string(),
                changes: changes.clone(),
            };
            let mut body = serde_json::to_vec_pretty(&c)?;
            body.push(b'\n');
            if self
                .store
                .put_if_absent(
                    &format!("{model}/log/{:010}.json", c.seq),
                    Bytes::from(body),
                )
                .await?
            {
                st.apply(&c);
                self.write_views(&st).await?;
                return Ok((st, changes));
            }
            // Someone else committed first: read again and decide again.
            tokio::time::sleep(std::time::Duration::from_millis(
                5 + 7 * attempt as u64 % 50,
            ))
            .await;
        }
        Err(Error::storage(format!(
            "registry for `{model}`: {MAX_ATTEMPTS} concurrent commits in a row; try again"
        )))
    }

    async fn write_views(&self, st: &State) -> Result<()> {
        for (v, doc) in &st.versions {
            self.store
                .put_json(&format!("{}/v{v}.json", st.model), doc)
                .await?;
        }
        self.store
            .put_json(&format!("{}/state.json", st.model), st)
            .await
    }

    /// Stores an artifact by content (idempotent) and returns its path under the registry root.
    pub async fn put_artifact(&self, model: &str, sha256: &str, bytes: Bytes) -> Result<String> {
        let rel = format!("{model}/artifacts/{sha256}.json");
        if self.store.head(&rel).await?.is_none() {
            self.store.put(&rel, bytes).await?;
        }
        Ok(rel)
    }

    /// The artifact of a version, checked against the SHA-256 the version records.
    pub async fn artifact(&self, doc: &VersionDoc) -> Result<crate::model::Artifact> {
        use sha2::{Digest, Sha256};
        let rel = format!("{}/artifacts/{}.json", doc.model, doc.artifact_sha256);
        let bytes = self.store.get(&rel).await?;
        let got = hex::encode(Sha256::digest(&bytes));
        if got != doc.artifact_sha256 {
            return Err(Error::Data(format!(
                "the registry's artifact of {} at {} has SHA-256 {got}, not the {} the version records; restore it from a backup, or promote another version",
                doc.model_id,
                self.store.url_of(&rel),
                doc.artifact_sha256
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::Data(format!(
                "the registry's artifact of {} at {} is not a model ({e})",
                doc.model_id,
                self.store.url_of(&rel)
            ))
        })
    }

    /// Makes `version` production by hand.
    pub async fn promote(&self, model: &str, version: u32, reason: &str) -> Result<State> {
        let (st, _) = self
            .commit(model, "cli", |st| {
                if st.versions.is_empty() {
                    return Err(self.no_such_model(model));
                }
                let v = st.versions.get(&version).ok_or_else(|| {
                    Error::Usage(format!(
                        "model `{model}` has no version {version} (versions: {:?})",
                        st.versions.keys().collect::<Vec<_>>()
                    ))
                })?;
                if v.status == Status::Rejected {
                    return Err(Error::Usage(format!(
                        "{} was rejected ({}); it cannot be promoted",
                        v.model_id,
                        v.reason.as_deref().unwrap_or("no reason recorded")
                    )));
                }
                if st.production == Some(version) {
                    return Ok(Vec::new());
                }
                Ok(vec![Change::Promoted {
                    version,
                    reason: reason.to_string(),
                    rollback: false,
                    deployed_on: None,
                }])
            })
            .await?;
        Ok(st)
    }

    /// Puts back the version that was production before the current one, going back down the
    /// production history: two rollbacks go two versions back.
    pub async fn rollback(&self, model: &str) -> Result<State> {
        let (st, _) = self
            .commit(model, "cli", |st| {
                if st.versions.is_empty() {
                    return Err(self.no_such_model(model));
                }
                let cur = st.production.ok_or_else(|| {
                    Error::Usage(format!(
                        "model `{model}` has no production version to roll back"
                    ))
                })?;
                let stack = st.production_stack();
                let prev = stack
                    .len()
                    .checked_sub(2)
                    .map(|i| stack[i])
                    .ok_or_else(|| {
                        Error::Usage(format!(
                        "model `{model}`: v{cur} has no earlier production version to roll back to"
                    ))
                    })?;
                Ok(vec![Change::Promoted {
                    version: prev,
                    reason: format!("rollback from v{cur}"),
                    rollback: true,
                    deployed_on: None,
                }])
            })
            .await?;
        Ok(st)
    }

    /// The error for a model the registry does not hold, listing those it does.
    pub fn no_such_model(&self, model: &str) -> Error {
        Error::Usage(format!(
            "no model named `{model}` in the registry at {}; `mlpipe registry list` shows the models it holds",
            self.store.url()
        ))
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(model: &str, version: u32, status: Status) -> VersionDoc {
        VersionDoc {
            model_id: format!("{model}_v{version}"),
            training_date: "2026-11-20".into(),
            deployment_date: None,
            status,
            metrics: VersionMetrics {
                holdout: crate::metrics::Metrics(
                    [(crate::metrics::Metric::R2, 0.8)].into_iter().collect(),
                ),
                fairness: Default::default(),
            },
            data_version: "d".into(),
            training_duration_min: 0.1,
            last_evaluated: "2026-11-20T00:00:00Z".into(),
            model: model.into(),
            version,
            run_id: "r".into(),
            artifact_uri: "a".into(),
            artifact_sha256: "s".into(),
            algorithm: "gbdt".into(),
            params: serde_json::json!({}),
            features: vec![],
            training_data: "t".into(),
            drift: serde_json::json!({}),
            code_version: "0".into(),
            reason: None,
        }
    }

    async fn register(r: &Registry, promote: bool) -> u32 {
        let (st, _) = r
            .commit("m", "test", |st| {
                let v = st.next_version();
                let mut ch = vec![Change::Registered {
                    doc: Box::new(doc("m", v, Status::Candidate)),
                }];
                if promote {
                    ch.push(Change::Promoted {
                        version: v,
                        reason: "better".into(),
                        rollback: false,
                        deployed_on: None,
                    });
                }
                Ok(ch)
            })
            .await
            .unwrap();
        *st.versions.keys().last().unwrap()
    }

    #[tokio::test]
    async fn promote_archive_and_rollback_keep_a_history() {
        let r = Registry::open("memory://registry-unit-1/reg").unwrap();
        assert_eq!(register(&r, true).await, 1);
        assert_eq!(register(&r, true).await, 2);
        let st = r.state("m").await.unwrap();
        assert_eq!(st.production, Some(2));
        assert_eq!(st.versions[&1].status, Status::Archived);
        let st = r.rollback("m").await.unwrap();
        assert_eq!(st.production, Some(1));
        assert_eq!(st.versions[&2].status, Status::Archived);
        assert_eq!(st.history.len(), 3);
        assert_eq!(st.history[2].reason, "rollback from v2");
        assert!(r.promote("m", 9, "x").await.is_err());
        assert_eq!(r.models().await.unwrap(), ["m"]);
    }

    #[tokio::test]
    async fn concurrent_commits_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::open(dir.path().to_str().unwrap()).unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move { register(&r, true).await })
            })
            .collect();
        let mut got: Vec<u32> = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        got.sort();
        assert_eq!(got, (1..=8).collect::<Vec<_>>());
        let st = r.state("m").await.unwrap();
        assert_eq!(st.versions.len(), 8);
        assert_eq!(st.history.len(), 8);
        assert_eq!(
            st.versions
                .values()
                .filter(|v| v.status == Status::Production)
                .count(),
            1
        );
    }
}
