//! `mlpipe health`: the daily model health check of the production models, with what the latest
//! run observed; exit code 1 when a model is unhealthy.

use super::{overrides, PipelineArgs};
use crate::config;
use crate::engine::manifest;
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::stages::health;
use crate::storage::Store;

/// Where the command writes its report under the artifacts root.
const LATEST: &str = "health/latest.json";

pub async fn health(a: PipelineArgs) -> Result<i32> {
    let p = config::compile_file(&a.pipeline, &overrides(&a)?)?;
    let registry = Registry::open(&p.storage.registry)?;
    let artifacts = Store::open(&p.storage.artifacts)?;
    let latest = manifest::latest(&artifacts).await?;
    let records = latest.iter().flat_map(|m| m.stages.values());
    let observed = health::observe(&artifacts, records).await?;
    let now = p.as_of.unwrap_or_else(chrono::Utc::now);
    // The latest run's own reading is this check's, seen again: it does not count twice.
    let run_id = latest.as_ref().map_or("", |m| m.run_id.as_str());
    let report = health::run(&p, &registry, &observed, Some((&artifacts, run_id)), now).await?;
    artifacts.put_json(LATEST, &report).await?;
    for e in report.events() {
        e.log();
    }
    print!("{}", text(&report));
    if report.healthy {
        Ok(0)
    } else {
        Err(Error::CheckFailed(format!(
            "{} of {} models unhealthy; retrain with `mlpipe run` (see {})",
            report.models.iter().filter(|h| !h.healthy).count(),
            report.models.len(),
            artifacts.url_of(LATEST)
        )))
    }
}

/// The report as people read it: a line per model, a line per check.
pub fn text(report: &health::Report) -> String {
    let mut s = String::new();
    for h in &report.models {
        let state = if h.healthy {
            "healthy".to_string()
        } else {
            format!("UNHEALTHY — retraining is due: {}", h.reasons.join("; "))
        };
        s += &format!(
            "{:<14} {:<16} {state}\n",
            h.model,
            h.production.as_deref().unwrap_or("(no production)")
        );
        for (k, c) in &h.checks {
            s += &format!(
                "    {:<10} {} {}\n",
                k,
                if c.passed { "ok  " } else { "FAIL" },
                c.detail
            );
        }
    }
    s
}
