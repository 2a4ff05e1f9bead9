//! The `sql` stages' engine: Apache DataFusion (docs/ARCHITECTURE.md, "Raw data and the SQL
//! engine"). This module is the glue: a stage's [`Query`] as written, its placeholders rendered
//! with positions kept ([`render`]), the tables it names, every query planned against the
//! declared schemas when a pipeline is compiled ([`check_queries`]), and the session and tables
//! a stage runs its query on, read through mlpipe's own object stores ([`Tables`]).
//!
//! Nothing here parses or evaluates SQL: DataFusion's parser (sqlparser), planner and optimizer
//! do, and its Parquet scan reads the files with projection and predicate pushdown.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, Utc};
use datafusion::catalog::TableProvider;
use datafusion::common::DataFusionError;
use datafusion::datasource::empty::EmptyTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
use serde::Serialize;

use crate::config::{Dataset, Stage, StageParams};

/// The placeholders a query may use, rendered as SQL literals of the run's time.
pub const PLACEHOLDERS: [&str; 2] = ["as_of", "as_of_date"];

/// A `sql` stage's query as written, with the tables it reads.
#[derive(Debug, Clone, Serialize)]
pub struct Query {
    /// The text as written (placeholders not rendered): with the tables read, what the stage's
    /// outputs depend on.
    pub text: String,
    /// Where it is written, for messages: the query file, or `stages.NAME.query`.
    #[serde(skip)]
    pub origin: String,
    /// The tables it reads (common table expressions excluded), in name order.
    #[serde(skip)]
    pub tables: Vec<String>,
    /// Whether it uses a placeholder of the run's time: its result depends on `as_of`.
    #[serde(skip)]
    pub uses_as_of: bool,
}

impl Query {
    /// Parses the query (one `SELECT` or `WITH` statement) and finds the tables it reads.
    /// The error says where, as `origin:line:column: message`.
    pub fn new(text: String, origin: String) -> Result<Query, String> {
        let rendered =
            render(&text, DateTime::<Utc>::UNIX_EPOCH).map_err(|e| format!("{origin}:{e}"))?;
        let statement = rendered.parse(&origin)?;
        let (refs, _ctes) = datafusion::sql::resolve::resolve_table_references(&statement, true)
            .map_err(|e| rendered.describe(&e, &origin))?;
        let mut tables = Vec::new();
        for r in refs {
            if r.schema().is_some() {
                return Err(format!(
                    "{origin}: `{r}` names a schema; name the table alone (a dataset or an earlier sql stage's output)"
                ));
            }
            tables.push(r.table().to_string());
        }
        tables.sort();
        tables.dedup();
        Ok(Query {
            uses_as_of: !rendered.shifts.is_empty(),
            text,
            origin,
            tables,
        })
    }
}

/// A query with its placeholders rendered, and where each rendering moved the text, so that a
/// position the engine reports in the rendered query is given back in the query as written.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub sql: String,
    shifts: Vec<Shift>,
}

/// One placeholder rendered: on `line`, written at `written` (1-based column, `written_len`
/// characters), rendered at `rendered` (`rendered_len` characters).
#[derive(Debug, Clone, Copy)]
struct Shift {
    line: u64,
    written: u64,
    written_len: u64,
    rendered: u64,
    rendered_len: u64,
}

/// Renders `{{ as_of }}` (the run's time, a `TIMESTAMP`) and `{{ as_of_date }}` (its date, a
/// `DATE`). An unknown placeholder is an error at its `line:column`.
pub fn render(text: &str, as_of: DateTime<Utc>) -> Result<Rendered, String> {
    let mut sql = String::with_capacity(text.len() + 64);
    let mut shifts = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line_no = i as u64 + 1;
        if i > 0 {
            sql.push('\n');
        }
        let (mut rest, mut written, mut rendered) = (line, 1u64, 1u64);
        while let Some(at) = rest.find("{{") {
            let before = rest[..at].chars().count() as u64;
            sql.push_str(&rest[..at]);
            written += before;
            rendered += before;
            let Some(len) = rest[at..].find("}}") else {
                return Err(format!(
                    "{line_no}:{written}: `{{{{` opens a placeholder that `}}}}` does not close"
                ));
            };
            let name = rest[at + 2..at + len].trim();
            let value = match name {
                "as_of" => format!(
                    "CAST('{}' AS TIMESTAMP)",
                    as_of.format("%Y-%m-%dT%H:%M:%S%.6fZ")
                ),
                "as_of_date" => format!("CAST('{}' AS DATE)", as_of.format("%Y-%m-%d")),
                other => {
                    return Err(format!(
                        "{line_no}:{written}: unknown placeholder `{{{{ {other} }}}}` (known: {})",
                        PLACEHOLDERS.map(|p| format!("{{{{ {p} }}}}")).join(", ")
                    ))
                }
            };
            let shift = Shift {
                line: line_no,
                written,
                written_len: rest[at..at + len + 2].chars().count() as u64,
                rendered,
                rendered_len: value.chars().count() as u64,
            };
            sql.push_str(&value);
            written += shift.written_len;
            rendered += shift.rendered_len;
            shifts.push(shift);
            rest = &rest[at + len + 2..];
        }
        sql.push_str(rest);
    }
    Ok(Rendered { sql, shifts })
}

impl Rendered {
    /// The column as written of a rendered position (a position inside a rendered placeholder
    /// is the placeholder's).
    fn written_column(&self, line: u64, column: u64) -> u64 {
        let last = self
            .shifts
            .iter()
            .filter(|s| s.line == line && s.rendered <= column)
            .next_back();
        match last {
            None => column,
            Some(s) if column < s.rendered + s.rendered_len => s.written,
            Some(s) => column - (s.rendered + s.rendered_len) + (s.written + s.written_len),
        }
    }

    /// The position just after the query's last character (where the parser found it ended).
    fn end(&self) -> (u64, u64) {
        let lines = self.sql.split('\n').count() as u64;
        let last = self.sql.rsplit('\n').next().unwrap_or("");
        (lines, last.chars().count() as u64 + 1)
    }

    /// The one statement of the query, which must be a query (`SELECT`, `WITH`, `VALUES`).
    pub fn parse(&self, origin: &str) -> Result<Statement, String> {
        let mut statements =
            DFParser::parse_sql(&self.sql).map_err(|e| self.describe(&e, origin))?;
        if statements.len() != 1 {
            return Err(format!(
                "{origin}: holds {} statements; a sql stage runs one query (SELECT or WITH ...)",
                statements.len()
            ));
        }
        let statement = statements.pop_front().expect("one statement");
        match &statement {
            Statement::Statement(s)
                if matches!(**s, datafusion::sql::sqlparser::ast::Statement::Query(_)) =>
            {
                Ok(statement)
            }
            other => Err(format!(
                "{origin}: `{}` is not a query; a sql stage runs one SELECT (or WITH ...) and mlpipe writes its result",
                first_words(&other.to_string())
            )),
        }
    }

    /// An engine error as `origin:line:column: message`, the position as written (from the
    /// error's diagnostic, or from the parser's "at Line: L, Column: C").
    pub fn describe(&self, e: &DataFusionError, origin: &str) -> String {
        let root = e.find_root().strip_backtrace();
        let root = root
            .trim_start_matches("SQL error: ")
            .trim_start_matches("Error during planning: ")
            .trim_start_matches("Schema error: ")
            .trim_start_matches("ParserError(\"")
            .trim_end_matches("\")")
            .to_string();
        let (message, position) = match e.diagnostic() {
            Some(d) => {
                let mut m = d.message.clone();
                for h in &d.helps {
                    m.push_str(&format!("; {}", h.message));
                }
                if !root.is_empty() && !m.contains(&root) {
                    m.push_str(&format!(" ({root})"));
                }
                (m, d.span.map(|s| (s.start.line, s.start.column)))
            }
            None => (root.clone(), None),
        };
        let position = position
            .filter(|p| p.0 > 0)
            .or_else(|| line_column(&message))
            .or_else(|| message.contains("found: EOF").then(|| self.end()));
        let message = strip_position(&message);
        match position {
            Some((line, column)) => format!(
                "{origin}:{line}:{}: {message}",
                self.written_column(line, column)
            ),
            None => format!("{origin}: {message}"),
        }
    }
}

/// The `Line: L, Column: C` sqlparser puts in its messages.
fn line_column(message: &str) -> Option<(u64, u64)> {
    let at = message.rfind("Line: ")?;
    let rest = &message[at + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?))
}

/// The message without the parser's ` at Line: L, Column: C` (the position is given in front).
fn strip_position(message: &str) -> String {
    match message.rfind(" at Line: ") {
        Some(at) => {
            let rest = &message[at + 10..];
            let end = rest
                .find(", Column: ")
                .map(|c| {
                    let digits = rest[c + 10..]
                        .chars()
                        .take_while(|c| c.is_ascii_digit())
                        .count();
                    c + 10 + digits
                })
                .unwrap_or(rest.len());
            format!("{}{}", &message[..at], &rest[end..])
        }
        None => message.to_string(),
    }
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// A session as every sql stage uses it: spans kept for positions in messages; text as plain
/// strings; a memory pool of [`memory_budget`] bytes, beyond which sorts, aggregations and joins
/// spill to the temporary folder instead of growing (a 10 M-customer export's events do not fit
/// in memory); the engine's defaults otherwise (one partition per core).
pub fn session() -> SessionContext {
    use datafusion::execution::memory_pool::FairSpillPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    let mut config = SessionConfig::new();
    let options = config.options_mut();
    options.sql_parser.collect_spans = true;
    // Text as plain strings, not views: a sort that spills counts a view batch's shared buffers
    // once per batch (apache/datafusion#12136), so the 10 M-customer feature query's final
    // ORDER BY asked the pool for 148 GB and failed; with plain strings it spills as it should.
    options.execution.parquet.schema_force_view_types = false;
    options.sql_parser.map_string_types_to_utf8view = false;
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(memory_budget())))
        .build_arc()
        .expect("a runtime with a memory pool and the default temporary folder");
    SessionContext::new_with_config_rt(config, runtime)
}

/// The memory a query may hold before it spills: `MLPIPE_SQL_MEMORY_MB`, else half of the
/// memory this process may use (the container's limit where there is one, else the machine's).
pub fn memory_budget() -> usize {
    if let Some(mb) = std::env::var("MLPIPE_SQL_MEMORY_MB")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return mb << 20;
    }
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok());
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb << 10)
    });
    let total = match (cgroup, machine) {
        (Some(c), Some(m)) => c.min(m),
        (c, m) => c.or(m).unwrap_or(8 << 30),
    };
    total / 2
}

/// A declared dataset's schema as queries see it, without the columns in `leave_out` (hive
/// partition columns, which the engine adds from the paths).
pub fn declared_schema(ds: &Dataset, leave_out: &[String]) -> SchemaRef {
    Arc::new(Schema::new(
        ds.columns
            .iter()
            .filter(|c| !leave_out.contains(&c.name))
            .map(|c| Field::new(&c.name, crate::data::adapt::canonical_type(c.ty), true))
            .collect::<Vec<_>>(),
    ))
}

/// Plans one query in `ctx`, whose tables are registered.
pub async fn plan(
    ctx: &SessionContext,
    rendered: &Rendered,
    origin: &str,
) -> Result<LogicalPlan, String> {
    let statement = rendered.parse(origin)?;
    ctx.state()
        .statement_to_plan(statement)
        .await
        .map_err(|e| rendered.describe(&e, origin))
}

/// Plans every sql stage's query against the declared schemas (and the earlier stages' planned
/// results), reading no data: each stage's problems, with positions in the query as written.
pub fn check_queries(
    stages: &[Stage],
    dag: &crate::config::Dag,
    datasets: &indexmap::IndexMap<String, Dataset>,
    as_of: DateTime<Utc>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(order) = dag.topo_order() else {
        return problems;
    };
    let mut planned: HashMap<&str, SchemaRef> = HashMap::new();
    // Outputs of stages with a problem: what reads them cannot be planned (their problem is
    // reported, not one for every stage after them).
    let mut failed: Vec<&str> = Vec::new();
    for i in order {
        // A stage with a problem of its own is not among `stages`: found by name.
        let Some(st) = stages.iter().find(|s| s.name == dag.names[i]) else {
            continue;
        };
        let StageParams::Sql { query, output } = &st.params else {
            continue;
        };
        if query.tables.iter().any(|t| failed.contains(&t.as_str())) {
            failed.push(output);
            continue;
        }
        let ctx = session();
        for t in &query.tables {
            let schema = match (planned.get(t.as_str()), datasets.get(t)) {
                (Some(s), _) => s.clone(),
                (None, Some(ds)) => declared_schema(ds, &[]),
                // Unknown: the planner says so, with the position.
                (None, None) => continue,
            };
            let table: Arc<dyn TableProvider> = Arc::new(EmptyTable::new(schema));
            ctx.register_table(t.as_str(), table)
                .expect("a fresh session takes any table name");
        }
        let result = render(&query.text, as_of)
            .map_err(|e| format!("{}:{e}", query.origin))
            .and_then(|r| futures::executor::block_on(plan(&ctx, &r, &query.origin)));
        match result {
            Ok(p) => {
                let schema = match datasets.get(output) {
                    Some(ds) => declared_schema(ds, &[]),
                    None => Arc::new(p.schema().as_arrow().clone()),
                };
                planned.insert(output, schema);
            }
            Err(e) => {
                problems.push(format!("stages.{}: {e}", st.name));
                failed.push(output);
            }
        }
    }
    problems
}

/// The tables of one query run, each registered under its own object-store URL
/// (`mlpipe-inN://t`) so that the plan's scans tell which table they read.
pub struct Tables {
    pub ctx: SessionContext,
    /// Table names, by index in the URL.
    pub names: Vec<String>,
}

impl Tables {
    pub fn new() -> Tables {
        Tables {
            ctx: session(),
            names: Vec::new(),
        }
    }

    /// Registers `name` as the Parquet files at `roots` in `store`: one folder (`folder`: hive
    /// partitions from `partitions` read from the paths), or files. `schema` is without the
    /// partition columns, or inferred from the files when `None`.
    pub async fn register(
        &mut self,
        name: &str,
        store: Arc<dyn object_store::ObjectStore>,
        roots: Vec<object_store::path::Path>,
        folder: bool,
        schema: Option<SchemaRef>,
        partitions: Vec<(String, DataType)>,
    ) -> Result<(), DataFusionError> {
        let k = self.names.len();
        let base = format!("mlpipe-in{k}://t");
        let url = url::Url::parse(&base).expect("a valid URL");
        self.ctx.register_object_store(&url, store);
        let urls = roots
            .iter()
            .map(|r| {
                ListingTableUrl::parse(format!(
                    "{base}/{}{}",
                    r.as_ref(),
                    if folder { "/" } else { "" }
                ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_table_partition_cols(partitions);
        if folder {
            options = options.with_file_extension(".parquet");
        }
        let config = ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options);
        let config = match schema {
            Some(s) => config.with_schema(s),
            None => config.infer_schema(&self.ctx.state()).await?,
        };
        self.ctx
            .register_table(name, Arc::new(ListingTable::try_new(config)?))?;
        self.names.push(name.to_string());
        Ok(())
    }

    /// The table a scan's object-store URL names.
    pub fn table_of(&self, store_url: &str) -> Option<&str> {
        let k: usize = store_url
            .strip_prefix("mlpipe-in")?
            .split(':')
            .next()?
            .parse()
            .ok()?;
        self.names.get(k).map(String::as_str)
    }
}

impl Default for Tables {
    fn default() -> Self {
        Tables::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_of() -> DateTime<Utc> {
        crate::time::parse_timestamp("2026-11-20T06:00:00Z").unwrap()
    }

    #[test]
    fn placeholders_render_as_literals_and_positions_map_back() {
        let r = render(
            "SELECT {{ as_of }} AS t, x\nFROM a WHERE d < {{as_of_date}} AND y",
            as_of(),
        )
        .unwrap();
        assert_eq!(
            r.sql,
            "SELECT CAST('2026-11-20T06:00:00.000000Z' AS TIMESTAMP) AS t, x\nFROM a WHERE d < CAST('2026-11-20' AS DATE) AND y"
        );
        // `x` on line 1 is at column 26 as written.
        let x = r.sql.lines().next().unwrap().find(", x").unwrap() as u64 + 3;
        assert_eq!(r.written_column(1, x), 26);
        // Inside a rendered placeholder: the placeholder's column.
        assert_eq!(r.written_column(1, 10), 8);
        // `y` on line 2, after the second placeholder.
        let y = r.sql.lines().nth(1).unwrap().rfind('y').unwrap() as u64 + 1;
        assert_eq!(
            r.written_column(2, y),
            "FROM a WHERE d < {{as_of_date}} AND y".len() as u64
        );
        assert!(render("SELECT {{ now }}", as_of())
            .unwrap_err()
            .contains("1:8: unknown placeholder"));
    }

    #[test]
    fn a_query_names_its_tables_and_not_its_ctes() {
        let q = Query::new(
            "WITH s AS (SELECT * FROM events) SELECT * FROM s JOIN profiles p ON p.id = s.id"
                .into(),
            "q.sql".into(),
        )
        .unwrap();
        assert_eq!(q.tables, ["events", "profiles"]);
        assert!(!q.uses_as_of);
    }

    #[test]
    fn syntax_errors_and_statements_that_are_not_queries_say_where() {
        let e = Query::new("SELECT a,\n  FROM t WHERE".into(), "q.sql".into()).unwrap_err();
        assert_eq!(e, "q.sql:2:15: Expected: an expression, found: EOF");
        let e = Query::new("SELECT a\nFROM t WHERE AND b".into(), "q.sql".into()).unwrap_err();
        assert!(e.starts_with("q.sql:2:"), "{e}");
        let e = Query::new("DROP TABLE t".into(), "q.sql".into()).unwrap_err();
        assert!(e.contains("is not a query"), "{e}");
        let e = Query::new("SELECT 1; SELECT 2".into(), "q.sql".into()).unwrap_err();
        assert!(e.contains("2 statements"), "{e}");
    }
}
