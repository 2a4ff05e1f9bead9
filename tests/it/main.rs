//! Integration tests, in one binary so the crate and its dependencies link once. Each module
//! drives the real `mlpipe` binary in a temporary folder holding a copy of the default pipeline,
//! or the library directly.

mod bad_input;
mod cloud;
mod common;
mod deploy;
mod drift;
mod fairness;
mod formats;
mod fuzz_corpus;
mod generate;
mod models;
mod pipeline_file;
mod quality;
mod readable;
mod registry;
mod reliability;
mod report;
mod run;
mod sql;
mod story;
mod telemetry;
