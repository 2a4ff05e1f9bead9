//! Every bad input of the README's "Bad input" list: a project whose first run put models in production is fed one bad
//! input, and `mlpipe run` must
//! - exit with the code of the failure's kind (1 check failed, 2 usage, 3 data, 4 storage),
//! - say where: the stage, and the file, column or key at fault,
//! - lose nothing: the registry is byte for byte what it was (no production model replaced, no
//!   half-written entry), the failing stage committed no output, no stage is left "running",
//!   nothing ran after it, and every file in the artifacts folder is whole (each JSON parses,
//!   each Parquet file decodes).
//!
//! Wrong credentials against a real S3 server are in `cloud::wrong_credentials_and_a_dead_endpoint_fail_cleanly_and_write_nothing`;
//! here an endpoint that refuses every request (HTTP 403) and one that does not answer stand in.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use crate::common::*;

const CURRENT: &str = "data/current/part-00000.parquet";
const CUSTOMERS: &str = "data/customers/part-00000.parquet";

/// `b` with column `name` replaced (type and values).
fn with_column(b: &RecordBatch, name: &str, ty: DataType, col: ArrayRef) -> RecordBatch {
    let i = b.schema().index_of(name).unwrap();
    let mut fields: Vec<Field> = b
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields[i] = Field::new(name, ty, true);
    let mut cols = b.columns().to_vec();
    cols[i] = col;
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

/// Every file of the registry, by path, with its bytes.
fn registry(p: &Project) -> BTreeMap<String, Vec<u8>> {
    let root = p.path("models");
    files_under(&root)
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(&root).unwrap().display().to_string();
            (rel, std::fs::read(&f).unwrap())
        })
        .collect()
}

/// A loopback HTTP server that refuses every request with S3's AccessDenied, until dropped.
struct Refusing {
    port: u16,
}

impl Refusing {
    fn start() -> Refusing {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { break };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    // One response per request head; the body (if any) is read and ignored.
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            continue;
                        }
                        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
                        let _ = write!(
                            c,
                            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                    }
                });
            }
        });
        Refusing { port }
    }
}

struct Case {
    name: &'static str,
    /// Breaks the project (data or pipeline file); returns extra arguments and environment.
    apply: Box<dyn Fn(&Project) -> (Vec<String>, Vec<(String, String)>)>,
    code: i32,
    /// The stage the error must name (None: refused before any stage ran).
    stage: Option<&'static str>,
    /// Fragments the error message must contain.
    says: &'static [&'static str],
}

fn none() -> (Vec<String>, Vec<(String, String)>) {
    (vec![], vec![])
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "missing Parquet file",
            apply: Box::new(|p| {
                std::fs::remove_file(p.path(CURRENT)).unwrap();
                none()
            }),
            code: 3,
            stage: Some("load"),
            says: &["dataset `current`", "no Parquet files", "data/current/"],
        },
        Case {
            name: "corrupt Parquet file",
            apply: Box::new(|p| {
                std::fs::write(p.path(CURRENT), b"PAR1 this is not parquet PAR1").unwrap();
                none()
            }),
            code: 3,
            stage: Some("load"),
            says: &["current/part-00000.parquet"],
        },
        Case {
            name: "truncated Parquet file",
            apply: Box::new(|p| {
                let bytes = std::fs::read(p.path(CUSTOMERS)).unwrap();
                std::fs::write(p.path(CUSTOMERS), &bytes[..bytes.len() / 2]).unwrap();
                none()
            }),
            code: 3,
            stage: Some("load"),
            says: &["customers/part-00000.parquet"],
        },
        Case {
            name: "Parquet file whose metadata makes the parquet crate assert (found by fuzzing)",
            apply: Box::new(|p| {
                let crash = Path::new(REPO)
                    .join("fuzz/corpus/parquet_file/regression-negative-column-offset.parquet");
                std::fs::copy(crash, p.path(CURRENT)).unwrap();
                none()
            }),
            code: 3,
            stage: Some("load"),
            // The parquet crate's own words follow (they change between its versions: "should
            // not be negative" in 60, "Src size is incorrect" in 59).
            says: &["current/part-00000.parquet", "not a readable Parquet file"],
        },
        Case {
            name: "missing column",
            apply: Box::new(|p| {
                let b = read_parquet(&p.path(CURRENT));
                let keep: Vec<usize> = (0..b.num_columns())
                    .filter(|&i| b.schema().field(i).name() != "plan")
                    .collect();
                write_parquet(&p.path(CURRENT), &b.project(&keep).unwrap(), 1 << 20);
                none()
            }),
            code: 3,
            stage: Some("load"),
            says: &["no column `plan`", "current/part-00000.parquet"],
        },
        Case {
            name: "wrong type",
            apply: Box::new(|p| {
                let b = read_parquet(&p.path(CUSTOMERS));
                let col = Arc::new(BooleanArray::from(vec![true; b.num_rows()]));
                write_parquet(
                    &p.path(CUSTOMERS),
                    &with_column(&b, "monthly_spend", DataType::Boolean, col),
                    1 << 20,
                );
                none()
            }),
            code: 3,
            stage: Some("load"),
            says: &["column `monthly_spend`", "customers/part-00000.parquet"],
        },
        Case {
            name: "empty dataset",
            apply: Box::new(|p| {
                let b = read_parquet(&p.path(CURRENT));
                write_parquet(&p.path(CURRENT), &b.slice(0, 0), 1 << 20);
                none()
            }),
            code: 3,
            stage: Some("load"),
            says: &["dataset `current`", "has no rows", "data/current/"],
        },
        Case {
            name: "target with one class",
            apply: Box::new(|p| {
                let b = read_parquet(&p.path(CUSTOMERS));
                let col = Arc::new(BooleanArray::from(vec![false; b.num_rows()]));
                write_parquet(
                    &p.path(CUSTOMERS),
                    &with_column(&b, "churned", DataType::Boolean, col),
                    1 << 20,
                );
                none()
            }),
            code: 3,
            stage: Some("train_churn"),
            says: &["only one class", "`churned`"],
        },
        Case {
            name: "NaN and infinite values",
            apply: Box::new(|p| {
                let b = read_parquet(&p.path(CUSTOMERS));
                let v: Float64Array = (0..b.num_rows())
                    .map(|i| {
                        Some(match i % 3 {
                            0 => f64::NAN,
                            1 => f64::INFINITY,
                            _ => 10.0,
                        })
                    })
                    .collect();
                write_parquet(
                    &p.path(CUSTOMERS),
                    &with_column(&b, "monthly_spend", DataType::Float64, Arc::new(v)),
                    1 << 20,
                );
                none()
            }),
            code: 1,
            stage: Some("validate"),
            says: &["dataset `customers`", "schema_violations", "monthly_spend"],
        },
        Case {
            name: "text where a category list is declared, in every row",
            apply: Box::new(|p| {
                let b = read_parquet(&p.path(CURRENT));
                let v: StringArray = (0..b.num_rows()).map(|_| Some("platinum")).collect();
                write_parquet(
                    &p.path(CURRENT),
                    &with_column(&b, "plan", DataType::Utf8, Arc::new(v)),
                    1 << 20,
                );
                none()
            }),
            code: 1,
            stage: Some("validate"),
            says: &["dataset `current`", "plan"],
        },
        Case {
            name: "unknown key in the pipeline file",
            apply: Box::new(|p| {
                let f = p.path("pipelines/engagement.toml");
                let s = std::fs::read_to_string(&f).unwrap();
                std::fs::write(&f, s.replace("stage_retries = 1", "stage_retires = 1")).unwrap();
                none()
            }),
            code: 2,
            stage: None,
            says: &["engagement.toml", "run.stage_retires: unknown key"],
        },
        Case {
            name: "cycle in the pipeline file",
            apply: Box::new(|p| {
                let f = p.path("pipelines/engagement.toml");
                let s = std::fs::read_to_string(&f).unwrap();
                let s = s.replacen(
                    "kind = \"load\"",
                    "kind = \"load\"\nneeds = [\"validate\"]",
                    1,
                );
                std::fs::write(&f, s).unwrap();
                none()
            }),
            code: 2,
            stage: None,
            says: &["engagement.toml", "cycle"],
        },
        Case {
            name: "S3 endpoint that does not answer",
            apply: Box::new(|_| {
                let port = free_port();
                (
                    vec!["--set".into(), "storage.data=\"s3://mlpipe/data\"".into()],
                    s3_env(port, "2"),
                )
            }),
            code: 4,
            stage: None, // the data is listed while planning, before any stage starts
            says: &[
                "s3://mlpipe/data/customers",
                "AWS_ENDPOINT_URL",
                "after 2 retries",
            ],
        },
        Case {
            name: "S3 endpoint that refuses every request",
            apply: Box::new(|_| {
                let server = Refusing::start();
                let port = server.port;
                std::mem::forget(server); // serves until the test process ends
                (
                    vec!["--set".into(), "storage.data=\"s3://mlpipe/data\"".into()],
                    s3_env(port, "1"),
                )
            }),
            code: 4,
            stage: None,
            says: &["s3://mlpipe/data/customers", "403", "AWS_ACCESS_KEY_ID"],
        },
    ]
}

fn s3_env(port: u16, retries: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "AKIABADINPUT".into()),
        ("AWS_SECRET_ACCESS_KEY", "bad-input-secret".into()),
        ("MLPIPE_STORAGE_RETRIES", retries.into()),
        ("MLPIPE_STORAGE_RETRY_TIMEOUT", "5s".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Checks one case; returns what went wrong, if anything.
fn check(case: &Case) -> Result<(), String> {
    let p = Project::new(true);
    let first = p.mlpipe(&["run", "--as-of", AS_OF, "--run-id", "good"]);
    if first.status.code() != Some(0) {
        return Err(format!("the first run failed: {}", stderr(&first)));
    }
    let before = registry(&p);
    if !before.keys().any(|k| k.contains("state.json")) {
        return Err("the first run registered nothing".into());
    }
    let runs_before = std::fs::read_dir(p.path("runs")).unwrap().count();
    let (mut args, env) = (case.apply)(&p);
    let mut all: Vec<String> = ["run", "--as-of", AS_OF, "--run-id", "bad"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.append(&mut args);
    let a: Vec<&str> = all.iter().map(String::as_str).collect();
    let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let o = p.mlpipe_env(&a, &e);
    let err = stderr(&o);
    if o.status.code() != Some(case.code) {
        return Err(format!(
            "exit code {:?}, expected {}:\n{err}",
            o.status.code(),
            case.code
        ));
    }
    let mut says: Vec<String> = case.says.iter().map(|s| s.to_string()).collect();
    if let Some(stage) = case.stage {
        says.push(format!("stage `{stage}`"));
    }
    for s in &says {
        if !err.contains(s.as_str()) {
            return Err(format!("the message does not say `{s}`:\n{err}"));
        }
    }
    if registry(&p) != before {
        return Err("the registry changed".into());
    }
    all_files_whole(&p)?;
    match case.stage {
        None => {
            // Refused before anything ran: not even a run folder.
            let runs_after = std::fs::read_dir(p.path("runs")).unwrap().count();
            if runs_after != runs_before {
                return Err("a run folder was created for a refused pipeline file".into());
            }
        }
        Some(stage) => {
            let m = p.manifest("bad");
            if m["status"] != "failed" {
                return Err(format!("run status {}", m["status"]));
            }
            let failed = &m["stages"][stage];
            if failed["status"] != "failed" {
                return Err(format!("stage `{stage}` is {}", failed["status"]));
            }
            // A failed check keeps its report and QA tables (whole, checked above) and the clean
            // rows of datasets that passed; no other failure commits anything, and the dataset
            // that failed never has clean rows.
            let outputs = failed["outputs"].as_array().unwrap();
            if case.code != 1 && !outputs.is_empty() {
                return Err(format!("the failed stage `{stage}` committed outputs"));
            }
            let bad_dataset = err
                .split("dataset `")
                .nth(1)
                .and_then(|r| r.split('`').next())
                .unwrap_or("");
            let clean = format!("{bad_dataset}.clean");
            if outputs.iter().any(|o| o["name"] == clean.as_str()) {
                return Err(format!("the failed stage `{stage}` committed {clean}"));
            }
            for (name, r) in m["stages"].as_object().unwrap() {
                if r["status"] == "running" {
                    return Err(format!("stage `{name}` was left running"));
                }
            }
            // Nothing downstream of the failed stage ran.
            for after in ["register", "health"] {
                if after != stage && m["stages"][after]["status"] == "succeeded" {
                    return Err(format!("stage `{after}` ran after `{stage}` failed"));
                }
            }
        }
    }
    // The production models still answer: a later good run reuses nothing broken.
    Ok(())
}

#[test]
fn every_bad_input_fails_clearly_and_loses_nothing() {
    let cases = cases();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| check(c).err().map(|e| format!("{}: {e}", c.name)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} bad-input cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn a_few_nan_values_are_rejected_rows_not_a_failed_run() {
    // Below the schema-violation threshold, NaN and ∞ rows go to the QA table with the column
    // named, and the models train on the rest.
    let p = Project::new(true);
    let b = read_parquet(&p.path(CUSTOMERS));
    let v: Float64Array = b
        .column_by_name("monthly_spend")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, x)| match i {
            5 => Some(f64::NAN),
            6 => Some(f64::INFINITY),
            7 => Some(f64::NEG_INFINITY),
            _ => x,
        })
        .collect();
    write_parquet(
        &p.path(CUSTOMERS),
        &with_column(&b, "monthly_spend", DataType::Float64, Arc::new(v)),
        1 << 20,
    );
    p.ok(&["run", "--as-of", AS_OF, "--run-id", "r"]);
    let qa = p.outputs("r", "validate");
    assert!(qa.iter().any(|(n, _)| n == "customers.rejected"), "{qa:?}");
    let rejected = read_parquet(&p.path("runs/r/validate/customers/rejected.parquet"));
    let rows: Vec<u64> = rejected
        .column_by_name("_row")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::UInt64Array>()
        .unwrap()
        .values()
        .to_vec();
    for r in [5u64, 6, 7] {
        assert!(rows.contains(&r), "row {r} not rejected: {rows:?}");
    }
    let reasons = rejected
        .column_by_name("_reasons")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let i = rows.iter().position(|&r| r == 5).unwrap();
    assert!(
        reasons.value(i).contains("monthly_spend"),
        "{}",
        reasons.value(i)
    );
    for m in ["engagement", "churn", "ltv"] {
        let doc = p.json(&format!("runs/r/train_{m}/metrics.json"));
        for (k, v) in doc["metrics"].as_object().unwrap() {
            assert!(v.as_f64().is_some_and(f64::is_finite), "{m} {k} = {v}");
        }
    }
}
