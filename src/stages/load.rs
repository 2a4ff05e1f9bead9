//! `load`: reads each dataset's declared columns, converting physical variants to the declared
//! types; fails (exit 3) on a missing file or column, an unreadable file, an incompatible type or
//! an empty dataset. Writes `load.json`: files, row counts, input fingerprints.

use super::StageDone;
use crate::engine::context::StageCtx;
use crate::error::{Error, Result};

pub async fn run(ctx: &StageCtx, datasets: &[String]) -> Result<StageDone> {
    // Datasets are independent: read them concurrently, then report in declaration order.
    let tables = super::dataset_tables(ctx, datasets).await?;
    let mut report = serde_json::Map::new();
    let mut inputs = serde_json::Map::new();
    let mut rows = serde_json::Map::new();
    for (name, table) in datasets.iter().zip(tables) {
        let located = match ctx.shared.located.get(name) {
            Some(l) => l.clone(),
            None => {
                crate::data::reader::locate(
                    &ctx.pipeline().storage.data,
                    &ctx.pipeline().datasets[name].location,
                )
                .await?
            }
        };
        if table.num_rows() == 0 {
            return Err(Error::Data(format!(
                "dataset `{name}` at {} has no rows; check that the export that writes it ran",
                located.url
            )));
        }
        let unparseable: serde_json::Map<String, serde_json::Value> = table
            .unparseable
            .iter()
            .map(|(c, r)| (c.clone(), r.len().into()))
            .collect();
        let info = serde_json::json!({
            "url": located.url,
            "fingerprint": located.fingerprint(),
            "rows": table.num_rows(),
            "files": located.files,
            "unparseable_values": unparseable,
        });
        inputs.insert(
            name.clone(),
            serde_json::json!({ "url": located.url, "fingerprint": located.fingerprint(), "rows": table.num_rows(), "files": located.files.len() }),
        );
        rows.insert(name.clone(), table.num_rows().into());
        report.insert(name.clone(), info);
        ctx.emit(crate::telemetry::Event::DatasetLoaded {
            dataset: name,
            rows: table.num_rows(),
            files: located.files.len(),
        });
    }
    ctx.write_json(
        "load",
        "load.json",
        &serde_json::json!({ "datasets": report }),
    )
    .await?;
    Ok(StageDone {
        summary: serde_json::json!({ "rows": rows, "inputs": inputs }),
        ..Default::default()
    })
}
