//! `sql`: runs one query over declared datasets and earlier sql stages' tables (DataFusion, see
//! [`crate::sql`]) and writes its result as `<output>.parquet`, the table a dataset with
//! `produced_by` this stage reads like any dataset's files. Writes `sql.json`: the query as run,
//! the rows read and bytes scanned per input table, the rows and columns written.
//!
//! A result checked against its declared dataset: every declared column present with a type
//! that converts to the declared one (else exit 3 naming the column), written in the declared
//! order and canonical types; columns not declared are left out, with a warning. A table no
//! dataset declares is written with the engine's types (text as plain strings) and recorded.
//! No rows is an error: a pre-cleanup or feature query that keeps nothing has gone wrong.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::context::StageCtx;
use super::load::Input;
use super::StageDone;
use crate::config::{ColumnType, Dataset, StageKind};
use crate::error::{Error, Result};
use crate::sql::{Query, Tables};

/// One input table as the query read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableRead {
    /// Where it came from: `dataset` (files under the data root) or the sql stage that wrote it.
    pub source: String,
    /// Rows of the files the query's scans opened, from their footers (files a filter on hive
    /// partition columns excludes are not opened).
    pub rows_in: u64,
    /// Rows the scans passed on to the query: `rows_in` less what the filters pushed into them
    /// (a join's key bounds included) dropped — by row group and page statistics, or row by row.
    pub rows_read: u64,
    /// Bytes read from its files.
    pub bytes_scanned: u64,
}

/// What a sql stage reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub output: String,
    pub rows_out: u64,
    /// Per table the query names.
    pub inputs: IndexMap<String, TableRead>,
    /// The columns written and their types (declared, or as the engine inferred them).
    pub columns: IndexMap<String, String>,
    /// Result columns no declaration names, not written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    pub seconds: f64,
}

impl Summary {
    pub fn rows_in(&self) -> u64 {
        self.inputs.values().map(|t| t.rows_in).sum()
    }

    pub fn bytes_scanned(&self) -> u64 {
        self.inputs.values().map(|t| t.bytes_scanned).sum()
    }
}

/// `sql.json`: the summary and the query as it ran (placeholders rendered).
#[derive(Debug, Serialize)]
struct Report<'a> {
    query: &'a str,
    #[serde(flatten)]
    summary: &'a Summary,
}

pub async fn run(ctx: &StageCtx, query: &Query, output: &str) -> Result<StageDone> {
    let started = Instant::now();
    let stage = ctx.stage.name.clone();
    let p = ctx.pipeline();
    let rendered = crate::sql::render(&query.text, ctx.shared.as_of)
        .map_err(|e| Error::Usage(format!("stage `{stage}`: {}:{e}", query.origin)))?;
    let (tables, sources, inputs) = register_tables(ctx, query).await?;

    let plan = crate::sql::plan(&tables.ctx, &rendered, &query.origin)
        .await
        .map_err(|e| Error::Data(format!("stage `{stage}`: {e}; the files do not have the columns their declarations (or the stage that wrote them) say")))?;
    let failed = |e: datafusion::error::DataFusionError| engine_error(&stage, e);
    let df = tables
        .ctx
        .execute_logical_plan(plan)
        .await
        .map_err(failed)?;
    let physical = df.create_physical_plan().await.map_err(failed)?;
    let declared = p.datasets.get(output);
    let shape = Shape::of(&stage, output, declared, &physical.schema())?;
    let mut stream =
        datafusion::physical_plan::execute_stream(physical.clone(), tables.ctx.task_ctx())
            .map_err(failed)?;
    ctx.progress
        .set_message(format!("running the query for {output}"));

    // The result is re-cut into whole row groups before it is encoded: the file's bytes (and
    // the settings the encoder takes from its first rows) do not depend on where the engine
    // cut its batches.
    let mut encoder = None;
    let mut groups = crate::data::writer::Regroup::new(shape.schema.clone());
    let mut rows_out = 0u64;
    let mut ended = false;
    while !ended {
        let ready = match stream.next().await {
            Some(b) => {
                let b = shape.apply(&b.map_err(failed)?)?;
                rows_out += b.num_rows() as u64;
                groups.push(b)?
            }
            None => {
                ended = true;
                groups.finish()?.into_iter().collect()
            }
        };
        for batch in ready {
            let e = match encoder.take() {
                Some(e) => e,
                None => crate::data::writer::chunked_encoder(&batch)?,
            };
            encoder = Some(
                tokio::task::spawn_blocking(move || {
                    let mut e = e;
                    e.push(batch).map(|()| e)
                })
                .await
                .map_err(|e| Error::Infra(format!("stage `{stage}`: writer task failed: {e}")))??,
            );
        }
    }
    let read = scans(&physical, &tables);
    let inputs_read: IndexMap<String, TableRead> = query
        .tables
        .iter()
        .map(|t| {
            let [rows_in, rows_read, bytes_scanned] = read.get(t).copied().unwrap_or_default();
            let source = sources.get(t).cloned().unwrap_or_default();
            let r = TableRead {
                source,
                rows_in,
                rows_read,
                bytes_scanned,
            };
            (t.clone(), r)
        })
        .collect();
    let Some(encoder) = encoder else {
        let read = inputs_read
            .iter()
            .map(|(t, r)| format!("{t}: {} rows", r.rows_in))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::Data(format!(
            "stage `{stage}`: the query produced no rows for `{output}` (read {read}); check its joins and filters, and the run's time ({})",
            crate::time::format_millis(ctx.shared.as_of)
        )));
    };
    let payload = tokio::task::spawn_blocking(move || encoder.finish_payload())
        .await
        .map_err(|e| Error::Infra(format!("stage `{stage}`: writer task failed: {e}")))??;
    ctx.write(output, &format!("{output}.parquet"), payload)
        .await?;
    ctx.count_rows_out(rows_out as usize);

    let summary = Summary {
        output: output.to_string(),
        rows_out,
        columns: shape
            .schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), type_name(f.data_type())))
            .collect(),
        left_out: shape.left_out.clone(),
        inputs: inputs_read,
        seconds: started.elapsed().as_secs_f64(),
    };
    ctx.count_rows_in(summary.rows_in() as usize);
    ctx.emit(crate::telemetry::Event::QueryRan {
        stage: &stage,
        output,
        inputs: summary
            .inputs
            .iter()
            .map(|(t, r)| (t.as_str(), r.rows_in, r.rows_read, r.bytes_scanned))
            .collect(),
        rows_out,
        seconds: summary.seconds,
    });
    let report = Report {
        query: &rendered.sql,
        summary: &summary,
    };
    ctx.write_json("sql", "sql.json", &report).await?;
    let mut done = StageDone::new(summary.clone());
    if !shape.left_out.is_empty() {
        done.warnings.push(format!(
            "stage `{stage}`: result columns {} are not declared in datasets.{output} and were not written",
            shape.left_out.join(", ")
        ));
    }
    done.inputs = inputs
        .into_iter()
        .map(|(name, mut input)| {
            input.rows = summary.inputs.get(&name).map(|r| r.rows_in);
            (name, input)
        })
        .collect();
    Ok(done)
}

/// Registers every table the query names: an earlier sql stage's table (from its record), or a
/// declared dataset's files (as listed while planning), through the store they are in. Returns
/// the tables, each table's source, and the datasets read (for the manifest's inputs).
async fn register_tables(
    ctx: &StageCtx,
    query: &Query,
) -> Result<(Tables, IndexMap<String, String>, IndexMap<String, Input>)> {
    let stage = &ctx.stage.name;
    let p = ctx.pipeline();
    let mut tables = Tables::new();
    let mut sources = IndexMap::new();
    let mut inputs = IndexMap::new();
    let failed = |e| engine_error(stage, e);
    for t in &query.tables {
        let written = ctx.upstream.iter().find_map(|(name, r)| {
            (r.kind == StageKind::Sql && r.status.is_done())
                .then(|| r.output(t).map(|o| (name.clone(), o.clone())))
                .flatten()
        });
        if let Some((by, out)) = written {
            let (store, path) = ctx.shared.artifacts.object(&out.path);
            tables
                .register(t, store, vec![path], false, None, Vec::new())
                .await
                .map_err(failed)?;
            sources.insert(t.clone(), by);
            continue;
        }
        let Some(ds) = p.datasets.get(t) else {
            return Err(Error::Usage(format!(
                "stage `{stage}`: the query reads `{t}`, which is neither a declared dataset nor the output of a sql stage it needs"
            )));
        };
        let located = ctx.located(t).await?;
        if located.files.is_empty() && !ds.optional {
            return Err(Error::Data(format!(
                "stage `{stage}`: dataset `{t}` has no Parquet files at {}; check datasets.{t}.location or pass --input {t}=URL",
                located.url
            )));
        }
        let partitions = partition_columns(ds, &located);
        let leave_out: Vec<String> = partitions.iter().map(|(c, _)| c.clone()).collect();
        let schema = crate::sql::declared_schema(ds, &leave_out);
        let (roots, folder) = roots(&located);
        if roots.is_empty() {
            // An optional dataset with no files yet: no rows, with the declared columns.
            let empty = datafusion::datasource::empty::EmptyTable::new(
                crate::sql::declared_schema(ds, &[]),
            );
            tables
                .ctx
                .register_table(t.as_str(), Arc::new(empty))
                .map_err(failed)?;
        } else {
            let (store, _) = located.store.object("");
            tables
                .register(t, store, roots, folder, Some(schema), partitions)
                .await
                .map_err(failed)?;
        }
        sources.insert(t.clone(), "dataset".to_string());
        inputs.insert(
            t.clone(),
            Input {
                url: located.url.clone(),
                fingerprint: located.fingerprint(),
                rows: None,
                files: located.files.len(),
            },
        );
    }
    Ok((tables, sources, inputs))
}

/// The object paths a dataset's table lists: its folder (so the engine reads the hive partition
/// values from the paths), or each file of a single-file or glob location.
fn roots(located: &crate::data::reader::Located) -> (Vec<object_store::path::Path>, bool) {
    if located.files.is_empty() {
        return (Vec::new(), false);
    }
    let suffix = located.url.strip_prefix(located.store.url()).unwrap_or("");
    if suffix.trim_matches('/').is_empty() {
        (vec![located.store.object("").1], true)
    } else {
        let files = located
            .files
            .iter()
            .map(|f| located.store.object(&f.path).1);
        (files.collect(), false)
    }
}

/// Declared columns that are hive partitions of the dataset's files (`key=value` folders in
/// their paths), with their types in the query.
fn partition_columns(
    ds: &Dataset,
    located: &crate::data::reader::Located,
) -> Vec<(String, DataType)> {
    let Some(first) = located.files.first() else {
        return Vec::new();
    };
    // The folders of its path, outermost first: `event_date=2026-11-19/part-00000.parquet`.
    let folders = first.path.rsplit_once('/').map_or("", |(d, _)| d);
    folders
        .split('/')
        .filter_map(|seg| seg.split_once('=').map(|(k, _)| k))
        .filter_map(|k| {
            let c = ds.column(k)?;
            Some((k.to_string(), crate::data::adapt::canonical_type(c.ty)))
        })
        .collect()
}

/// How the result's batches become the written table: for a declared output, its columns in
/// the declared order and canonical types; else the result with text as plain strings.
struct Shape {
    stage: String,
    output: String,
    schema: SchemaRef,
    /// Per written column: its index in the result.
    from: Vec<usize>,
    left_out: Vec<String>,
}

impl Shape {
    fn of(stage: &str, output: &str, declared: Option<&Dataset>, result: &Schema) -> Result<Shape> {
        let mut fields = Vec::new();
        let mut from = Vec::new();
        let mut left_out = Vec::new();
        match declared {
            Some(ds) => {
                for c in &ds.columns {
                    let Some((i, f)) = result.column_with_name(&c.name) else {
                        return Err(Error::Data(format!(
                            "stage `{stage}`: the result has no column `{}`, which datasets.{output} declares ({}); add it to the query's SELECT or drop it from the declaration (result columns: {})",
                            c.name,
                            c.ty.name(),
                            result.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
                        )));
                    };
                    if !converts(f.data_type(), c.ty) {
                        return Err(Error::Data(format!(
                            "stage `{stage}`: column `{}` of the result is {}, which datasets.{output} declares {}; CAST it in the query or change the declaration",
                            c.name,
                            type_name(f.data_type()),
                            c.ty.name()
                        )));
                    }
                    fields.push(Field::new(
                        &c.name,
                        crate::data::adapt::canonical_type(c.ty),
                        true,
                    ));
                    from.push(i);
                }
                left_out = result
                    .fields()
                    .iter()
                    .filter(|f| ds.column(f.name()).is_none())
                    .map(|f| f.name().clone())
                    .collect();
            }
            None => {
                for (i, f) in result.fields().iter().enumerate() {
                    let ty = match f.data_type() {
                        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
                        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
                        other => other.clone(),
                    };
                    fields.push(Field::new(f.name(), ty, true));
                    from.push(i);
                }
            }
        }
        Ok(Shape {
            stage: stage.to_string(),
            output: output.to_string(),
            schema: Arc::new(Schema::new(fields)),
            from,
            left_out,
        })
    }

    fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        // Checked casts: a value the declared type cannot hold is an error, not a null.
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        let columns = self
            .from
            .iter()
            .zip(self.schema.fields())
            .map(|(&i, f)| {
                let c = batch.column(i);
                if c.data_type() == f.data_type() {
                    return Ok(c.clone());
                }
                cast_with_options(c, f.data_type(), &options).map_err(|e| {
                    Error::Data(format!(
                        "stage `{}`: column `{}` of the result does not fit datasets.{}'s {}: {e}",
                        self.stage,
                        f.name(),
                        self.output,
                        type_name(f.data_type())
                    ))
                })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| Error::Infra(format!("stage `{}`: {e}", self.stage)))
    }
}

/// Whether a result column of type `t` converts to the declared type without changing what its
/// values mean (integers narrow with a check on each value).
fn converts(t: &DataType, declared: ColumnType) -> bool {
    use DataType::*;
    let t = match t {
        Dictionary(_, v) => v.as_ref(),
        t => t,
    };
    let int = matches!(
        t,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64
    );
    match declared {
        ColumnType::String => matches!(t, Utf8 | LargeUtf8 | Utf8View),
        ColumnType::Int32 | ColumnType::Int64 => int,
        ColumnType::Float64 => {
            int || matches!(
                t,
                Float16 | Float32 | Float64 | Decimal128(..) | Decimal256(..)
            )
        }
        ColumnType::Bool => matches!(t, Boolean),
        ColumnType::Date => matches!(t, Date32 | Date64),
        // A timestamp without a time zone is taken as UTC, as the run's time is.
        ColumnType::Timestamp => matches!(t, Timestamp(..)),
    }
}

/// A type as messages and `sql.json` name it: the declared name where there is one.
fn type_name(t: &DataType) -> String {
    let declared = [
        ColumnType::String,
        ColumnType::Int32,
        ColumnType::Int64,
        ColumnType::Float64,
        ColumnType::Bool,
        ColumnType::Date,
        ColumnType::Timestamp,
    ];
    declared
        .into_iter()
        .find(|c| &crate::data::adapt::canonical_type(*c) == t)
        .map(|c| c.name().to_string())
        .unwrap_or_else(|| t.to_string())
}

/// Rows in the files opened, rows read and bytes scanned per table, from the plan's scans (each
/// table's store has its own URL, see [`Tables`]; the files' row counts are the statistics the
/// engine took from their footers when it listed them).
fn scans(plan: &Arc<dyn ExecutionPlan>, tables: &Tables) -> IndexMap<String, [u64; 3]> {
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    let mut out: IndexMap<String, [u64; 3]> = IndexMap::new();
    let mut stack = vec![plan.clone()];
    while let Some(node) = stack.pop() {
        if let Some(scan) = node.downcast_ref::<DataSourceExec>() {
            let config = scan.data_source().downcast_ref::<FileScanConfig>();
            if let (Some(config), Some(m)) = (config, node.metrics()) {
                if let Some(t) = tables.table_of(config.object_store_url.as_str()) {
                    let count = |name| m.sum_by_name(name).map_or(0, |v| v.as_usize() as u64);
                    let e = out.entry(t.to_string()).or_default();
                    // A large file may be read in byte ranges by several partitions: each
                    // file counts once.
                    let mut files = std::collections::HashMap::new();
                    for f in config.file_groups.iter().flat_map(|g| g.iter()) {
                        let rows = f
                            .statistics
                            .as_ref()
                            .and_then(|s| s.num_rows.get_value().copied());
                        files.insert(f.object_meta.location.clone(), rows.unwrap_or(0));
                    }
                    e[0] += files.values().sum::<usize>() as u64;
                    e[1] += m.output_rows().unwrap_or(0) as u64;
                    e[2] += count("bytes_scanned");
                }
            }
        }
        stack.extend(node.children().into_iter().cloned());
    }
    out
}

/// An engine failure: storage (retried, exit 4) when the object store failed, else the query
/// could not run on this data (exit 3).
fn engine_error(stage: &str, e: datafusion::error::DataFusionError) -> Error {
    use datafusion::error::DataFusionError as E;
    match e.find_root() {
        E::ObjectStore(os) => Error::storage(format!(
            "stage `{stage}`: reading a table failed: {os}; check the storage is reachable and the credentials"
        )),
        E::ResourcesExhausted(m) => Error::Infra(format!(
            "stage `{stage}`: the query ran out of memory: {m}; give the task more memory"
        )),
        _ => Error::Data(format!("stage `{stage}`: the query failed: {}", e.strip_backtrace())),
    }
}
