//! `mlpipe`: a batch ML pipeline orchestrator. One binary loads customer Parquet data from
//! S3-compatible or local storage, checks its quality, and runs the stages a pipeline file
//! declares as a DAG with reuse, resume and a manifest per run.
//!
//! Layers, from the bottom: [`storage`] (object_store from URLs), [`data`] (Parquet in, Arrow in
//! memory, schema adaptation), [`config`] (the pipeline file, compiled and checked), [`quality`]
//! and [`generate`] (domain logic), [`stages`] (the stage kinds), [`engine`] (planning and
//! execution), [`summary`] and [`cli`] (what people see).

pub mod business;
pub mod cli;
pub mod config;
pub mod data;
pub mod engine;
pub mod error;
pub mod export;
pub mod fairness;
pub mod generate;
pub mod history;
pub mod json;
pub mod metrics;
pub mod model;
pub mod quality;
pub mod registry;
pub mod report;
pub mod sql;
pub mod stages;
pub mod stats;
pub mod storage;
pub mod summary;
pub mod telemetry;
pub mod time;

pub use error::{Error, Result};

/// The version of this build: recorded in manifests and registry entries, and part of every
/// stage's fingerprint (a new version recomputes rather than reuses).
pub const CODE_VERSION: &str = env!("CARGO_PKG_VERSION");
