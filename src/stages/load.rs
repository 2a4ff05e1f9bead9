//! `load`: reads each dataset's declared columns, converting physical variants to the declared
//! types; fails (exit 3) on a missing file or column, an unreadable file, an incompatible type or
//! an empty dataset. Writes `load.json`: files, row counts, input fingerprints.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::context::StageCtx;
use super::StageDone;
use crate::error::{Error, Result};
use crate::storage::ObjectInfo;

/// A dataset read, as the manifest's `inputs` record it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub url: String,
    /// Of the files' names, sizes and versions: equal fingerprints, equal data.
    pub fingerprint: String,
    /// Rows read (absent when the files were only listed, while planning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    pub files: usize,
}

/// `load.json`: per dataset, what was read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub datasets: IndexMap<String, Loaded>,
}

/// One dataset in `load.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Loaded {
    pub url: String,
    pub fingerprint: String,
    pub rows: u64,
    pub files: Vec<ObjectInfo>,
    /// Per column, the values that did not convert to the declared type.
    pub unparseable_values: IndexMap<String, usize>,
}

/// What a load stage reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Rows per dataset.
    pub rows: IndexMap<String, u64>,
    pub inputs: IndexMap<String, Input>,
}

pub async fn run(ctx: &StageCtx, datasets: &[String]) -> Result<StageDone> {
    // Datasets are independent: read them concurrently, then report in declaration order.
    let tables = super::dataset_tables(ctx, datasets).await?;
    let mut report = Report {
        datasets: IndexMap::new(),
    };
    let mut summary = Summary {
        rows: IndexMap::new(),
        inputs: IndexMap::new(),
    };
    for (name, table) in datasets.iter().zip(tables) {
        let located = ctx.located(name).await?;
        if table.num_rows() == 0 && !ctx.pipeline().datasets[name].optional {
            return Err(Error::Data(format!(
                "dataset `{name}` at {} has no rows; check that the export that writes it ran",
                located.url
            )));
        }
        let rows = table.num_rows() as u64;
        let input = Input {
            url: located.url.clone(),
            fingerprint: located.fingerprint(),
            rows: Some(rows),
            files: located.files.len(),
        };
        report.datasets.insert(
            name.clone(),
            Loaded {
                url: located.url.clone(),
                fingerprint: input.fingerprint.clone(),
                rows,
                files: located.files.clone(),
                unparseable_values: table
                    .unparseable
                    .iter()
                    .map(|(c, r)| (c.clone(), r.len()))
                    .collect(),
            },
        );
        summary.inputs.insert(name.clone(), input);
        summary.rows.insert(name.clone(), rows);
        ctx.emit(crate::telemetry::Event::DatasetLoaded {
            dataset: name,
            rows: table.num_rows(),
            files: located.files.len(),
        });
    }
    ctx.write_json("load", "load.json", &report).await?;
    let mut done = StageDone::new(summary.clone());
    done.inputs = summary.inputs;
    Ok(done)
}
