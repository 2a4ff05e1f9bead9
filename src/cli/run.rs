//! `mlpipe run` and `mlpipe plan`.

use std::io::IsTerminal;
use std::sync::Arc;

use super::{overrides, run_options, RunArgs};
use crate::config;
use crate::engine;
use crate::error::Result;

/// Runs the pipeline (or the selected part), prints the summary, and returns the exit code.
pub async fn run(a: RunArgs, json: bool) -> Result<i32> {
    let p = Arc::new(config::compile_file(
        &a.pipeline.pipeline,
        &overrides(&a.pipeline)?,
    )?);
    let progress = !json && std::io::stderr().is_terminal();
    let mut opts = run_options(&a, progress);
    opts.stop = Some(engine::Stop::on_signals().map_err(|e| {
        crate::error::Error::Infra(format!("cannot listen for SIGTERM and SIGINT: {e}"))
    })?);
    let plan = engine::plan(&p, &opts).await?;
    let outcome = engine::execute(p.clone(), plan, &opts).await?;
    let code = outcome.error.as_ref().map_or(0, |e| e.exit_code());
    let text = crate::summary::run_summary(&p, &outcome.manifest, &p.storage.artifacts, code);
    if json {
        tracing::info!(summary = %text, run_id = %outcome.manifest.run_id, "run summary");
    } else {
        print!("{text}");
    }
    match outcome.error {
        None => Ok(0),
        Some(e) => Err(e),
    }
}

/// Prints what a run with these options would do.
pub async fn plan(a: RunArgs) -> Result<i32> {
    let p = config::compile_file(&a.pipeline.pipeline, &overrides(&a.pipeline)?)?;
    let plan = engine::plan(&p, &run_options(&a, false)).await?;
    print!("{}", crate::summary::plan_table(&p, &plan));
    Ok(0)
}
