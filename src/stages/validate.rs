//! `validate`: the data-quality checks (null rate, schema violations, outliers, duplicates,
//! freshness; see [`crate::quality`]) on each dataset. Writes `quality.json`, and per dataset the
//! clean rows (`<dataset>/clean.parquet`, with the split bucket `_bucket` of each row's key) and
//! the QA table of rejected rows with their reasons (`<dataset>/rejected.parquet`, columns `_row`
//! and `_reasons` added). Both tables carry the dataset's `pii` columns as pseudonyms
//! ([`crate::data::pseudonym`]), never in clear. A failed check whose
//! action is `stop` fails the stage (exit 1) after the report and QA table are written.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Duration, Utc};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::context::StageCtx;
use super::StageDone;
use crate::config::OnFail;
use crate::error::{Error, Result};
use crate::quality::{self, Status};

/// `quality.json`: every check of every dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The "now" freshness was measured against.
    pub as_of: String,
    pub datasets: IndexMap<String, quality::DatasetReport>,
}

/// What a validate stage reports, per dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Summary(pub IndexMap<String, DatasetSummary>);

/// One dataset's checks, in brief.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub rows: u64,
    pub clean_rows: u64,
    pub rejected_rows: u64,
    pub status: Status,
    pub checks: IndexMap<String, CheckSummary>,
}

/// One check, in brief.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckSummary {
    pub value: f64,
    pub status: Status,
    pub on_fail: OnFail,
}

impl DatasetSummary {
    fn of(r: &quality::DatasetReport) -> DatasetSummary {
        DatasetSummary {
            rows: r.rows,
            clean_rows: r.clean_rows,
            rejected_rows: r.rejected_rows,
            status: r.status,
            checks: r
                .checks
                .iter()
                .map(|(k, v)| {
                    let c = CheckSummary {
                        value: v.value,
                        status: v.status,
                        on_fail: v.on_fail,
                    };
                    (k.clone(), c)
                })
                .collect(),
        }
    }
}

/// What checking one dataset produced.
struct Checked {
    name: String,
    report: quality::DatasetReport,
    stops: Vec<String>,
    valid_until: Option<DateTime<Utc>>,
}

pub async fn run(ctx: &StageCtx, datasets: &[String]) -> Result<StageDone> {
    // Datasets are independent: check and write them concurrently.
    let checked =
        futures::future::try_join_all(datasets.iter().map(|name| check_one(ctx, name))).await?;
    let mut report = Report {
        as_of: ctx
            .shared
            .as_of
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        datasets: IndexMap::new(),
    };
    let mut summary = Summary(IndexMap::new());
    let mut stops = Vec::new();
    let mut valid_until: Option<DateTime<Utc>> = None;
    for c in checked {
        summary
            .0
            .insert(c.name.clone(), DatasetSummary::of(&c.report));
        report.datasets.insert(c.name.clone(), c.report);
        stops.extend(c.stops);
        valid_until = match (valid_until, c.valid_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    ctx.write_json("quality", "quality.json", &report).await?;
    if !stops.is_empty() {
        return Err(Error::CheckFailed(stops.join("\n")));
    }
    let mut done = StageDone::new(summary);
    done.valid_until = valid_until;
    Ok(done)
}

async fn check_one(ctx: &StageCtx, name: &String) -> Result<Checked> {
    let p = ctx.pipeline();
    let mut stops = Vec::new();
    let mut valid_until = None;
    let expected = ctx
        .upstream
        .values()
        .find_map(|r| Some(r.load()?.inputs.get(name)?.fingerprint.clone()));
    let table = super::dataset_table(ctx, name, expected.as_deref()).await?;
    ctx.progress
        .set_message(format!("checking {name} ({} rows)", table.num_rows()));
    let ds = p.datasets[name].clone();
    let q = p.quality.clone();
    let as_of = ctx.shared.as_of;
    let t = table.clone();
    let outcome = tokio::task::spawn_blocking(move || quality::check(&ds, &t, &q, as_of))
        .await
        .map_err(|e| Error::Infra(format!("stage `{}`: checks panicked: {e}", ctx.stage.name)))?;
    let report = outcome.report;
    for (check, r) in &report.checks {
        let worst = r
            .worst
            .iter()
            .map(|(c, v)| format!("{c} {}", fmt_value(check, *v)))
            .collect::<Vec<_>>()
            .join(", ");
        // Per-column values: null rates are numbers, outliers objects with a `rate`.
        let columns = r.details["columns"]
            .as_object()
            .map(|cols| {
                cols.iter()
                    .filter_map(|(c, v)| {
                        Some((c.clone(), v.as_f64().or_else(|| v["rate"].as_f64())?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        ctx.emit(crate::telemetry::Event::QualityChecked {
            dataset: name,
            check,
            value: r.value,
            status: r.status.as_str(),
            columns,
            worst: worst.clone(),
        });
        if r.stops() {
            stops.push(format!(
                "dataset `{name}`: {check} is {} (fail above {}){}; fix the data, or set quality.{check}.on_fail = \"continue\" to go on with the clean rows",
                fmt_value(check, r.value),
                fmt_value(check, r.fail),
                if worst.is_empty() { String::new() } else { format!(" — worst: {worst}") }
            ));
        }
    }
    // Freshness measured on the clock changes status when the data ages past a threshold.
    if !ctx.shared.as_of_pinned {
        if let Some(f) = report.checks.get("freshness") {
            let hours_left = match f.status {
                Status::Pass => Some(f.warn - f.value),
                Status::Warn => Some(f.fail - f.value),
                Status::Fail => None,
            };
            valid_until = hours_left
                .map(|h| Utc::now() + Duration::milliseconds((h.max(0.0) * 3.6e6) as i64));
        }
    }

    // The clean rows and the QA table, with personal data pseudonymised.
    let raw = &table.batch;
    let pii = &p.datasets[name].pii;
    let batch = &{
        let (b, cols, ps) = (raw.clone(), pii.clone(), p.pseudonyms.clone());
        tokio::task::spawn_blocking(move || ps.apply(&b, &cols))
            .await
            .map_err(|e| Error::Infra(format!("pseudonymising panicked: {e}")))??
    };
    let keep = {
        let mut bits = arrow::array::BooleanBufferBuilder::new(batch.num_rows());
        bits.append_n(batch.num_rows(), true);
        for &r in outcome.rejected.keys() {
            bits.set_bit(r as usize, false);
        }
        BooleanArray::new(bits.finish(), None)
    };
    let reject_mask =
        arrow::compute::not(&keep).map_err(|e| Error::Infra(format!("filter: {e}")))?;
    let rejected = crate::data::filter_rows(batch, &reject_mask)?;
    let rows: UInt64Array = outcome.rejected.keys().map(|&r| r as u64).collect();
    let reasons: StringArray = outcome
        .rejected
        .values()
        .map(|v| Some(v.join(",")))
        .collect();
    let mut fields: Vec<Field> = rejected
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("_row", DataType::UInt64, false));
    fields.push(Field::new("_reasons", DataType::Utf8, false));
    let mut cols: Vec<ArrayRef> = rejected.columns().to_vec();
    cols.push(Arc::new(rows));
    cols.push(Arc::new(reasons));
    let rejected = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
        .map_err(|e| Error::Infra(format!("QA table: {e}")))?;
    ctx.progress.set_message(format!("writing {name}"));
    ctx.write_table(
        &format!("{name}.rejected"),
        &format!("{name}/rejected.parquet"),
        rejected,
    )
    .await?;
    if stops.is_empty() {
        let key = p.datasets[name].primary_key.clone();
        let batch = if key.is_empty() {
            batch.clone()
        } else {
            // The split bucket comes from the raw key, before pseudonyms replace it.
            let (b, r) = (batch.clone(), raw.clone());
            tokio::task::spawn_blocking(move || crate::data::split::with_buckets(&b, &r, &key))
                .await
                .map_err(|e| Error::Infra(format!("split buckets panicked: {e}")))??
        };
        let clean = crate::data::filter_rows(&batch, &keep)?;
        ctx.write_table(
            &format!("{name}.clean"),
            &format!("{name}/clean.parquet"),
            clean,
        )
        .await?;
    }
    Ok(Checked {
        name: name.clone(),
        report,
        stops,
        valid_until,
    })
}

/// A check's value as a person reads it.
pub fn fmt_value(check: &str, v: f64) -> String {
    match check {
        "null_rate" | "outliers" => format!("{:.2}%", v * 100.0),
        "freshness" if v >= f64::MAX / 2.0 => "no timestamps".into(),
        "freshness" => format!("{v:.1} h"),
        _ => format!("{v:.0}"),
    }
}
