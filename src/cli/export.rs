//! `mlpipe export step-functions`: the DAG as an AWS Step Functions state machine.

use super::{overrides, StepFunctionsArgs};
use crate::config;
use crate::error::{Error, Result};

pub fn step_functions(a: StepFunctionsArgs) -> Result<i32> {
    let p = config::compile_file(&a.pipeline.pipeline, &overrides(&a.pipeline)?)?;
    let mut t = crate::export::EcsTarget::default();
    if let Some(c) = a.cluster {
        t.cluster = c;
    }
    if let Some(d) = a.task_definition {
        t.task_definition = d;
    }
    t.container = a.container;
    if !a.subnets.is_empty() {
        t.subnets = a.subnets;
    }
    if !a.security_groups.is_empty() {
        t.security_groups = a.security_groups;
    }
    t.assign_public_ip = a.assign_public_ip;
    let def = crate::export::step_functions(&p, &a.pipeline.pipeline, &t);
    let mut text = serde_json::to_string_pretty(&def)?;
    text.push('\n');
    match a.out {
        None => print!("{text}"),
        Some(f) => {
            std::fs::write(&f, text).map_err(|e| Error::Usage(format!("cannot write {f}: {e}")))?
        }
    }
    Ok(0)
}
