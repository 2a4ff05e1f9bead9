//! Integration tests: one binary (see GUIDE.md). Each module drives the real `mlpipe` binary in
//! a temporary folder holding a copy of the default pipeline, or the library directly.

mod bad_input;
mod cloud;
mod common;
mod drift;
mod fairness;
mod formats;
mod generate;
mod models;
mod pipeline_file;
mod quality;
mod registry;
mod report;
mod run;
mod telemetry;
