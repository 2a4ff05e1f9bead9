//! `mlpipe validate`: checks the pipeline file without touching data.

use super::{overrides, PipelineArgs};
use crate::config;
use crate::error::Result;

pub fn validate(a: PipelineArgs) -> Result<i32> {
    let p = config::compile_file(&a.pipeline, &overrides(&a)?)?;
    println!(
        "{}: pipeline `{}` is valid — {} datasets, {} stages ({})",
        p.file,
        p.name,
        p.datasets.len(),
        p.stages.len(),
        p.dag
            .topo_order()
            .unwrap_or_default()
            .iter()
            .map(|&i| p.stages[i].name.as_str())
            .collect::<Vec<_>>()
            .join(" → ")
    );
    Ok(0)
}
