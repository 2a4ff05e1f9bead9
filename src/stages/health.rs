//! `health`: the health check of SPEC §11 on the production models, with the drift and scoring
//! speed this run observed. Writes `health.json`. An unhealthy model does not stop the run, but
//! the run ends with exit code 1 and says why retraining is due.

use super::StageDone;
use crate::engine::context::StageCtx;
use crate::error::Result;
use crate::health::{evaluate, Observed};
use crate::registry::Registry;

pub async fn run(ctx: &StageCtx) -> Result<StageDone> {
    let p = ctx.pipeline();
    let registry = Registry::open(&p.storage.registry)?;
    let mut observed = Observed::default();
    if let Some(rec) = ctx.upstream.values().find(|r| r.kind == "drift") {
        if let Some(out) = rec.output("drift") {
            observed.drift = Some(ctx.read_json(out).await?);
        }
    }
    if let Some(rec) = ctx.upstream.values().find(|r| r.kind == "score") {
        observed.inference_ms_per_1k = crate::health::inference_speed(rec);
    }
    let report = evaluate(p, &registry, &observed, ctx.shared.as_of).await?;
    let mut failures = Vec::new();
    for h in &report {
        ctx.emit(crate::telemetry::Event::ModelHealth {
            model: &h.model,
            version: h.production.as_deref(),
            healthy: h.healthy,
            updated: h.deployed_unix,
            reasons: h.reasons.join("; "),
        });
        if !h.healthy {
            failures.push(format!(
                "model `{}` is unhealthy, retraining is due: {}",
                h.model,
                h.reasons.join("; ")
            ));
        }
    }
    let healthy = failures.is_empty();
    ctx.write_json(
        "health",
        "health.json",
        &serde_json::json!({ "healthy": healthy, "models": report }),
    )
    .await?;
    Ok(StageDone {
        summary: serde_json::json!({ "healthy": healthy, "models": report.iter().map(|h| (h.model.clone(), serde_json::json!({ "healthy": h.healthy, "reasons": h.reasons }))).collect::<serde_json::Map<_, _>>() }),
        gate_failures: failures,
        ..Default::default()
    })
}
