//! The DAG engine, by phase: [`plan`] decides what an invocation does with each stage (run it,
//! reuse an earlier identical result, keep what this run already completed, or take a needed
//! stage's outputs from another run); [`schedule`] picks which ready stages start; [`run`]
//! executes the plan on tokio, independent stages concurrently, each with a timeout and retries
//! with backoff, recording every transition in the run's [`manifest`].
//!
//! This module holds the types the phases hand each other and the callers see.

mod attempt;
mod drive;
pub mod lease;
pub mod manifest;
mod plan;
mod run;
mod schedule;
mod stop;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::StageKind;
use crate::error::Error;
use crate::storage::Store;
use manifest::{Manifest, StageRecord};

pub use plan::{new_run_id, plan};
pub use run::execute;
pub use stop::Stop;

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
    /// Stop requests (SIGTERM, SIGINT): no new stage starts, running ones get
    /// `run.shutdown_grace`, then are cancelled.
    pub stop: Option<Stop>,
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
    pub kind: StageKind,
    pub needs: Vec<String>,
    #[serde(flatten)]
    pub action: Action,
    pub fingerprint: String,
    /// The record to start from: the completed or reused stage's, for those actions.
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
