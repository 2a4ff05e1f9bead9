//! Fault injection for resilience tests and chaos drills: `MLPIPE_FAULTS=stage=mode,...`.
//!
//! Modes: `fail` (every attempt fails after writing its first output), `fail_once` (the first
//! attempt in this process fails, retries succeed), `crash` (the process aborts after the stage's
//! first output is written, as a kill would leave it), `hang` (the stage never finishes, so its
//! timeout fires). Unset, nothing is injected and nothing is checked on the hot path.

use std::collections::HashMap;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Fail,
    FailOnce,
    Crash,
    Hang,
}

#[derive(Debug, Clone, Default)]
pub struct Faults(HashMap<String, Fault>);

impl Faults {
    /// Reads `MLPIPE_FAULTS`.
    pub fn from_env() -> Result<Faults> {
        match std::env::var("MLPIPE_FAULTS") {
            Ok(s) if !s.trim().is_empty() => Faults::parse(&s),
            _ => Ok(Faults::default()),
        }
    }

    pub fn parse(s: &str) -> Result<Faults> {
        let mut m = HashMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (stage, mode) = part.split_once('=').ok_or_else(|| {
                Error::Usage(format!("MLPIPE_FAULTS: `{part}` is not stage=mode"))
            })?;
            let f = match mode {
                "fail" => Fault::Fail,
                "fail_once" => Fault::FailOnce,
                "crash" => Fault::Crash,
                "hang" => Fault::Hang,
                other => {
                    return Err(Error::Usage(format!(
                        "MLPIPE_FAULTS: unknown mode `{other}` (fail, fail_once, crash, hang)"
                    )))
                }
            };
            m.insert(stage.to_string(), f);
        }
        Ok(Faults(m))
    }

    pub fn get(&self, stage: &str) -> Option<Fault> {
        self.0.get(stage).copied()
    }

    /// Called after a stage's first output is written.
    pub fn after_first_write(&self, stage: &str, attempt: u32) -> Result<()> {
        match self.get(stage) {
            Some(Fault::Fail) => Err(Error::Infra(format!(
                "stage `{stage}`: injected failure (MLPIPE_FAULTS)"
            ))),
            Some(Fault::FailOnce) if attempt == 1 => Err(Error::Infra(format!(
                "stage `{stage}`: injected failure on attempt 1 (MLPIPE_FAULTS)"
            ))),
            Some(Fault::Crash) => {
                eprintln!("mlpipe: stage `{stage}`: injected crash (MLPIPE_FAULTS)");
                std::process::abort()
            }
            _ => Ok(()),
        }
    }
}
