//! `sql` stages: the raw pipeline derives the flat table exactly and trains the same models;
//! queries are planned at `validate` with positions; rows read and written are reported; reuse
//! and `--stage` treat them like any stage; bad queries and results fail clearly.

use std::path::Path;

use arrow::array::{Array, AsArray};

use crate::cloud::{run_env, S3};
use crate::common::*;

/// The raw export's snapshot time (`pipelines/raw.toml`'s `run.as_of`).
const EXPORT_AS_OF: &str = "2026-11-20T06:00:00Z";

/// A project with the generator's flat tables and raw export of `rows` customers in
/// `data/export/` (`pipelines/raw.toml`'s data root).
fn raw_project(rows: usize) -> Project {
    let p = Project::new(false);
    let n = rows.to_string();
    p.ok(&[
        "generate",
        "--raw",
        "--rows",
        &n,
        "--seed",
        "42",
        "--out",
        "data/export",
    ]);
    p
}

/// A table with its rows ordered by `customer_id`.
fn sorted_by_id(b: &arrow::record_batch::RecordBatch) -> arrow::record_batch::RecordBatch {
    let idx = arrow::compute::sort_to_indices(b.column_by_name("customer_id").unwrap(), None, None)
        .unwrap();
    arrow::compute::take_record_batch(b, &idx).unwrap()
}

fn summary<'a>(m: &'a serde_json::Value, stage: &str) -> &'a serde_json::Value {
    &m["stages"][stage]["summary"]
}

#[test]
fn the_raw_pipeline_derives_the_flat_table_and_trains_the_same_models() {
    let p = raw_project(5000);
    let truth = p.json("data/export/truth.json");
    p.ok(&["validate", "pipelines/raw.toml"]);
    p.ok(&["run", "pipelines/raw.toml", "--run-id", "raw"]);
    let m = p.json("runs/raw/raw/manifest.json");
    assert_eq!(m["status"], "succeeded");

    // The derived table is the flat one, column for column, value for value.
    let derived = read_parquet(&p.path("runs/raw/raw/features/customers.parquet"));
    let flat = sorted_by_id(&read_parquet(
        &p.path("data/export/customers/part-00000.parquet"),
    ));
    assert_eq!(derived.num_rows(), 5000);
    // The declared order and canonical types (every column nullable: nulls where the
    // declaration forbids them are the validate stage's to count, not the writer's to refuse).
    let shape =
        |b: &arrow::record_batch::RecordBatch| -> Vec<(String, arrow::datatypes::DataType)> {
            b.schema()
                .fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().clone()))
                .collect()
        };
    assert_eq!(shape(&derived), shape(&flat));
    for (i, f) in flat.schema().fields().iter().enumerate() {
        assert!(
            derived.column(i).to_data() == flat.column(i).to_data(),
            "column {} differs",
            f.name()
        );
    }

    // Rows in and out: every raw row read, the pre-cleanup's drops countable.
    let raw = &truth["raw"];
    let cleanup = summary(&m, "cleanup");
    let events = &cleanup["inputs"]["events"];
    assert_eq!(events["rows_in"], raw["events"], "{events}");
    assert_eq!(
        cleanup["inputs"]["profiles"]["rows_in"], raw["profiles"],
        "{cleanup}"
    );
    // The join's bounds on the accounts, pushed into the scan, may drop test accounts' events
    // there; never a real customer's.
    let events_read = events["rows_read"].as_u64().unwrap();
    let test_events = raw["test_account_events"].as_u64().unwrap();
    assert!(
        events_read + test_events >= raw["events"].as_u64().unwrap(),
        "{events}"
    );
    let kept = cleanup["rows_out"].as_u64().unwrap();
    let dropped = raw["events"].as_u64().unwrap() - kept;
    let (dups, tests) = (
        raw["duplicate_events"].as_u64().unwrap(),
        raw["test_account_events"].as_u64().unwrap(),
    );
    // Every duplicate and every test account's event goes (a test account's duplicate counts
    // in both).
    assert!(
        dropped <= dups + tests && dropped >= dups.max(tests),
        "{dropped} {dups} {tests}"
    );
    assert!(
        cleanup["inputs"]["events"]["bytes_scanned"]
            .as_u64()
            .unwrap()
            > 0
    );
    // `events_clean` is declared by no dataset: written with the engine's types, in the
    // query's order, and recorded as such (in the summary and in `sql.json`).
    let expected = [
        ("event_id", "int64", "Int64"),
        ("customer_id", "string", "Utf8"),
        ("event_time", "timestamp", "Timestamp(µs, \"UTC\")"),
        ("event_type", "string", "Utf8"),
        ("minutes", "float64", "Float64"),
        ("amount", "float64", "Float64"),
    ];
    let recorded = cleanup["columns"].as_object().unwrap();
    let recorded: Vec<(&str, &str)> = recorded
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        .collect();
    let want: Vec<(&str, &str)> = expected.iter().map(|(c, t, _)| (*c, *t)).collect();
    assert_eq!(recorded, want, "{cleanup}");
    assert_eq!(
        p.json("runs/raw/raw/cleanup/sql.json")["columns"],
        cleanup["columns"]
    );
    let written = read_parquet(&p.path("runs/raw/raw/cleanup/events_clean.parquet"));
    let types: Vec<(String, String)> = written
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect();
    let want: Vec<(String, String)> = expected
        .iter()
        .map(|(c, _, a)| (c.to_string(), a.to_string()))
        .collect();
    assert_eq!(types, want);
    let features = summary(&m, "features");
    assert_eq!(features["inputs"]["events_clean"]["source"], "cleanup");
    assert_eq!(features["inputs"]["events_clean"]["rows_in"], kept);
    assert_eq!(features["rows_out"], 5000);
    assert_eq!(features["columns"]["snapshot_date"], "date");
    // ... as metrics and in the manifest's inputs.
    let prom = std::fs::read_to_string(p.path("runs/raw/raw/metrics.prom")).unwrap();
    assert!(
        prom.contains(&format!(
            "sql_rows_read{{pipeline=\"engagement-raw\",stage=\"cleanup\",table=\"events\"}} {events_read}"
        )) || prom.contains(&format!("stage=\"cleanup\",table=\"events\"}} {events_read}")),
        "{prom}"
    );
    for name in [
        "sql_rows_in",
        "sql_rows_read",
        "sql_bytes_scanned",
        "sql_rows_written",
    ] {
        assert!(prom.contains(&format!("# HELP {name} ")), "{name}: {prom}");
    }
    assert_eq!(m["inputs"]["events"]["rows"], raw["events"]);

    // The flat pipeline on the flat table in the same order trains the same models.
    write_parquet(
        &p.path("data/export/customers/part-00000.parquet"),
        &flat,
        128 * 1024,
    );
    p.ok(&[
        "run",
        "--to",
        "fairness",
        "--as-of",
        EXPORT_AS_OF,
        "--run-id",
        "flat",
        "--set",
        "storage.data=data/export",
    ]);
    let f = p.manifest("flat");
    for stage in ["train_engagement", "train_churn", "train_ltv"] {
        let raw_metrics = &summary(&m, stage)["metrics"];
        assert!(
            raw_metrics.as_object().is_some_and(|o| !o.is_empty()),
            "{stage}"
        );
        assert_eq!(raw_metrics, &summary(&f, stage)["metrics"], "{stage}");
    }

    // Unchanged: both queries reused. A changed query runs again, and what reads its table.
    p.ok(&["run", "pipelines/raw.toml", "--run-id", "again"]);
    let again = p.json("runs/raw/again/manifest.json");
    for stage in ["cleanup", "features", "load"] {
        assert_eq!(again["stages"][stage]["status"], "reused", "{stage}");
    }
    let sql = p.path("pipelines/sql/features.sql");
    let text = std::fs::read_to_string(&sql).unwrap();
    std::fs::write(
        &sql,
        text.replace("-- A stable order", "-- A stable order, kept"),
    )
    .unwrap();
    p.ok(&[
        "run",
        "pipelines/raw.toml",
        "--run-id",
        "edited",
        "--to",
        "load",
    ]);
    let edited = p.json("runs/raw/edited/manifest.json");
    assert_eq!(edited["stages"]["cleanup"]["status"], "reused");
    assert_eq!(edited["stages"]["features"]["status"], "succeeded");
    // The same rows, the same bytes.
    let table = |m: &serde_json::Value| {
        m["stages"]["features"]["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "customers")
            .unwrap()["sha256"]
            .clone()
    };
    assert_eq!(table(&edited), table(&m));

    // One stage alone takes the tables it reads from the latest run.
    p.ok(&[
        "run",
        "pipelines/raw.toml",
        "--stage",
        "features",
        "--force",
    ]);
}

/// A bucket's environment with the data root at the export (the fixtures go to `data/`).
fn export_root(mut env: Vec<(String, String)>) -> Vec<(String, String)> {
    for (k, v) in &mut env {
        if k == "MLPIPE_DATA" {
            v.push_str("/export");
        }
    }
    env
}

/// A project whose pipeline file is `pipelines/raw.toml` with `extra` appended.
fn raw_with(p: &Project, extra: &str) -> String {
    let text = std::fs::read_to_string(p.path("pipelines/raw.toml")).unwrap();
    std::fs::write(p.path("pipelines/bad.toml"), format!("{text}\n{extra}\n")).unwrap();
    "pipelines/bad.toml".into()
}

#[test]
fn validate_plans_every_query_and_says_where_each_problem_is() {
    let p = Project::new(false);
    // No data is read: the queries are planned against the declared schemas.
    p.ok(&["validate", "pipelines/raw.toml"]);
    std::fs::write(
        p.path("pipelines/sql/cleanup.sql"),
        "SELECT e.event_id, e.customer_id\nFROM events AS e\nJOIN profile AS p ON p.customer_id = e.customer_id\n",
    )
    .unwrap();
    std::fs::write(
        p.path("pipelines/sql/features.sql"),
        std::fs::read_to_string(Path::new(REPO).join("pipelines/sql/features.sql"))
            .unwrap()
            .replace("       p.plan,", "       p.plans,"),
    )
    .unwrap();
    let o = p.mlpipe(&["validate", "pipelines/raw.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    // At its line and column as written; the stage reading its table is not planned.
    assert!(
        e.contains("stages.cleanup: pipelines/sql/cleanup.sql:3:6: table 'profile' not found"),
        "{e}"
    );
    assert!(e.contains("has 1 problem"), "{e}");
    std::fs::copy(
        Path::new(REPO).join("pipelines/sql/cleanup.sql"),
        p.path("pipelines/sql/cleanup.sql"),
    )
    .unwrap();
    let e = stderr(&p.mlpipe(&["validate", "pipelines/raw.toml"]));
    let line = std::fs::read_to_string(p.path("pipelines/sql/features.sql"))
        .unwrap()
        .lines()
        .position(|l| l.contains("p.plans,"))
        .unwrap()
        + 1;
    assert!(
        e.contains(&format!(
            "stages.features: pipelines/sql/features.sql:{line}:8:"
        )),
        "{e}"
    );
    assert!(e.contains("plans"), "{e}");

    // A syntax error, with its position; an unknown placeholder.
    let f = raw_with(
        &p,
        "[stages.extra]\nkind = \"sql\"\nquery = \"SELECT customer_id\\n  FROM profiles WHERE AND is_test\"\noutput = \"x\"\n\
         [stages.later]\nkind = \"sql\"\nquery = \"SELECT {{ today }} AS t\"\noutput = \"y\"\n",
    );
    let e = stderr(&p.mlpipe(&["validate", &f]));
    // Every stage's problem at once: these two and the features stage's.
    assert!(e.contains("has 3 problems"), "{e}");
    assert!(e.contains("stages.extra: stages.extra.query:2:"), "{e}");
    assert!(
        e.contains("stages.later: stages.later.query:1:8: unknown placeholder `{{ today }}`"),
        "{e}"
    );
}

#[test]
fn a_result_that_breaks_its_declaration_or_keeps_nothing_fails_clearly() {
    let p = raw_project(300);
    let f = raw_with(
        &p,
        "[datasets.wrong]\nproduced_by = \"wrong\"\nprimary_key = \"customer_id\"\n\
         [datasets.wrong.columns]\ncustomer_id = { type = \"string\" }\nbirth_year = { type = \"string\" }\n\
         [stages.wrong]\nkind = \"sql\"\nquery = \"SELECT customer_id, birth_year FROM profiles\"\noutput = \"wrong\"\n\
         [datasets.missing]\nproduced_by = \"missing\"\n\
         [datasets.missing.columns]\ncustomer_id = { type = \"string\" }\nage = { type = \"int32\" }\n\
         [stages.missing]\nkind = \"sql\"\nquery = \"SELECT customer_id FROM profiles\"\noutput = \"missing\"\n\
         [stages.nothing]\nkind = \"sql\"\nquery = \"SELECT * FROM profiles WHERE birth_year > 3000\"\noutput = \"nothing\"\n",
    );
    p.ok(&["validate", &f]);
    // Each stage alone: exit 3, saying what is wrong and where.
    let fails = |stage: &str, says: &str| {
        let o = p.mlpipe(&["run", &f, "--stage", stage]);
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
    };
    fails(
        "wrong",
        "column `birth_year` of the result is int32, which datasets.wrong declares string",
    );
    fails(
        "missing",
        "the result has no column `age`, which datasets.missing declares",
    );
    fails(
        "nothing",
        "stage `nothing`: the query produced no rows for `nothing`",
    );
}

#[test]
fn a_runaway_query_meets_the_stage_timeout() {
    let p = raw_project(2000);
    let f = raw_with(
        &p,
        "[stages.runaway]\nkind = \"sql\"\ntimeout = \"2s\"\nretries = 0\n\
         query = \"SELECT COUNT(*) AS n FROM events a JOIN events b ON a.customer_id <> b.customer_id\"\noutput = \"pairs\"\n",
    );
    let t0 = std::time::Instant::now();
    let o = p.mlpipe(&["run", &f, "--stage", "runaway", "--run-id", "slow"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(t0.elapsed().as_secs() < 60, "the query was not stopped");
    let m = p.json("runs/raw/slow/manifest.json");
    assert_eq!(m["stages"]["runaway"]["status"], "failed");
    let err = m["stages"]["runaway"]["error"].as_str().unwrap();
    assert!(
        err.contains("timeout") || err.contains("timed out"),
        "{err}"
    );
}

#[test]
fn a_join_that_multiplies_customers_is_caught_by_the_duplicate_check() {
    let p = raw_project(500);
    let sql = p.path("pipelines/sql/features.sql");
    let text = std::fs::read_to_string(&sql).unwrap();
    // Labels joined through the events: one row per event, not per customer.
    std::fs::write(
        &sql,
        text.replace(
            "JOIN labels AS l ON l.customer_id = p.customer_id",
            "JOIN labels AS l ON l.customer_id = p.customer_id\nJOIN events_clean AS e ON e.customer_id = p.customer_id",
        ),
    )
    .unwrap();
    let o = p.mlpipe(&[
        "run",
        "pipelines/raw.toml",
        "--run-id",
        "dup",
        "--to",
        "validate",
    ]);
    assert_ne!(o.status.code(), Some(0));
    let q = p.json("runs/raw/dup/validate/quality.json");
    let dups = &q["datasets"]["customers"]["checks"]["duplicates"];
    assert_eq!(dups["status"], "fail", "{dups}");
    assert!(dups["value"].as_f64().unwrap() > 1000.0, "{dups}");
}

#[test]
fn sql_stages_read_and_write_through_s3() {
    let s3 = S3::start();
    let p = raw_project(1000);
    s3.upload_fixtures(&p);
    let o = run_env(
        &p,
        &[
            "run",
            "pipelines/raw.toml",
            "--run-id",
            "s3",
            "--to",
            "load",
        ],
        &export_root(s3.env("")),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s3.object("runs/s3/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        m["inputs"]["events"]["url"],
        "s3://mlpipe/data/export/raw/events/"
    );
    assert_eq!(m["stages"]["features"]["summary"]["rows_out"], 1000);
    assert!(
        m["stages"]["cleanup"]["summary"]["inputs"]["events"]["bytes_scanned"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(s3.object("runs/s3/features/customers.parquet").exists());
    // The table read back through the bucket is the local run's.
    p.ok(&[
        "run",
        "pipelines/raw.toml",
        "--run-id",
        "local",
        "--to",
        "features",
    ]);
    let local = read_parquet(&p.path("runs/raw/local/features/customers.parquet"));
    let remote = read_parquet(&s3.object("runs/s3/features/customers.parquet"));
    assert_eq!(local.num_rows(), remote.num_rows());
    let ids = |b: &arrow::record_batch::RecordBatch| -> Vec<String> {
        let c = b.column_by_name("customer_id").unwrap().as_string::<i32>();
        (0..c.len()).map(|i| c.value(i).to_string()).collect()
    };
    assert_eq!(ids(&local), ids(&remote));
}

#[test]
fn the_raw_pipeline_exports_to_step_functions_and_plays_stage_by_stage() {
    let p = raw_project(800);
    let def = p.ok(&["export", "step-functions", "pipelines/raw.toml"]);
    crate::deploy::statelint(&p, &def);
    let v: serde_json::Value = serde_json::from_str(&def).unwrap();
    assert_eq!(v["StartAt"], "cleanup");

    // Each step a separate process sharing only the bucket: the sql tables cross through it.
    let s3 = S3::start_moto();
    s3.upload_fixtures(&p);
    let ran = crate::deploy::play(
        &v["States"],
        v["StartAt"].as_str().unwrap(),
        &p,
        &export_root(s3.env("sfn/")),
        "exec-1",
    );
    assert_eq!(ran.len(), 9, "{ran:?}");
    let m = s3.json("sfn/runs/exec-1/manifest.json");
    for (stage, r) in m["stages"].as_object().unwrap() {
        assert_eq!(r["status"], "succeeded", "{stage}: {m}");
    }
    assert_eq!(m["stages"]["features"]["summary"]["rows_out"], 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_stages_read_and_write_through_memory_stores() {
    use mlpipe::config::{compile_file, Overrides};
    use mlpipe::engine::{self, manifest::StageStatus, RunOptions};
    use mlpipe::storage::Store;
    let p = raw_project(400);
    // The export copied into an in-process store: the query reads it there, and its table is
    // written to (and loaded from) another.
    let data = Store::open("memory://it-sql/data").unwrap();
    let root = p.path("data/export");
    for f in parquet_files(&root) {
        let rel = f.strip_prefix(&root).unwrap().to_string_lossy().to_string();
        let bytes = bytes::Bytes::from(std::fs::read(&f).unwrap());
        data.put(&rel, bytes).await.unwrap();
    }
    let ov = Overrides {
        set: vec![
            ("storage.data".into(), "\"memory://it-sql/data\"".into()),
            (
                "storage.artifacts".into(),
                "\"memory://it-sql/runs\"".into(),
            ),
            (
                "storage.registry".into(),
                "\"memory://it-sql/models\"".into(),
            ),
        ],
        ..Default::default()
    };
    let file = p.path("pipelines/raw.toml").to_string_lossy().to_string();
    let pipeline = std::sync::Arc::new(compile_file(&file, &ov).unwrap());
    let opts = RunOptions {
        run_id: Some("mem".into()),
        to: Some("validate".into()),
        ..Default::default()
    };
    let plan = engine::plan(&pipeline, &opts).await.unwrap();
    let out = engine::execute(pipeline.clone(), plan, &opts)
        .await
        .unwrap();
    assert!(out.error.is_none(), "{:?}", out.error);
    for stage in ["cleanup", "features", "load", "validate"] {
        assert_eq!(
            out.manifest.stages[stage].status,
            StageStatus::Succeeded,
            "{stage}"
        );
    }
    let q: serde_json::Value = Store::open("memory://it-sql/runs")
        .unwrap()
        .get_json("mem/validate/quality.json")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(q["datasets"]["customers"]["rows"], 400);
}
