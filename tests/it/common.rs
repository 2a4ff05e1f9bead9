//! A temporary project folder with the default pipeline, and helpers to run `mlpipe` in it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_mlpipe");
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// A pinned "now", so outputs do not depend on the clock.
pub const AS_OF: &str = "2026-11-20T12:00:00Z";

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// A folder with `pipelines/engagement.toml` and, if `with_data`, the shipped `data/`.
    pub fn new(with_data: bool) -> Project {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(
            &Path::new(REPO).join("pipelines"),
            &dir.path().join("pipelines"),
        );
        if with_data {
            copy_dir(&Path::new(REPO).join("data"), &dir.path().join("data"));
        }
        Project { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs `mlpipe ARGS` in the project folder (pretty logs, no terminal).
    pub fn mlpipe(&self, args: &[&str]) -> Output {
        self.mlpipe_env(args, &[])
    }

    pub fn mlpipe_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(BIN);
        c.current_dir(self.dir.path())
            .args(args)
            .env_remove("MLPIPE_FAULTS")
            .env_remove("MLPIPE_DATA")
            .env_remove("MLPIPE_ARTIFACTS")
            .env_remove("MLPIPE_REGISTRY")
            .env_remove("MLPIPE_PSEUDONYM_KEY")
            .env_remove("MLPIPE_STORAGE_RETRIES")
            .env_remove("MLPIPE_STORAGE_RETRY_TIMEOUT")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            .env_remove("MLPIPE_METRICS_ADDR")
            .env_remove("PROMETHEUS_PUSHGATEWAY_URL")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL");
        if !args.contains(&"--log-format") {
            c.args(["--log-format", "pretty"]);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// Runs and asserts the exit code, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.mlpipe(args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "mlpipe {args:?} failed:\n{}\n{}",
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }

    /// A JSON file of the project, parsed.
    pub fn json(&self, rel: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    pub fn manifest(&self, run_id: &str) -> serde_json::Value {
        self.json(&format!("runs/{run_id}/manifest.json"))
    }

    pub fn latest(&self) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.path("runs/LATEST")).unwrap())
                .unwrap();
        v["run_id"].as_str().unwrap().to_string()
    }

    /// (name, sha256) of a stage's outputs in a run's manifest.
    pub fn outputs(&self, run_id: &str, stage: &str) -> Vec<(String, String)> {
        manifest_outputs(&self.manifest(run_id), stage)
    }
}

/// (name, sha256) of a stage's outputs in a manifest, sorted.
pub fn manifest_outputs(m: &serde_json::Value, stage: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = m["stages"][stage]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap().to_string(),
                o["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Reads a whole Parquet file into one record batch.
pub fn read_parquet(path: &Path) -> arrow::record_batch::RecordBatch {
    let f = std::fs::File::open(path).unwrap();
    let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let schema = arrow::array::RecordBatchReader::schema(&r);
    let batches: Vec<_> = r.map(|b| b.unwrap()).collect();
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

/// Every file under a folder (none if it does not exist), sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every `*.parquet` file under a folder, sorted.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect()
}

/// One column of every Parquet file under a folder, in file and row order, as text (a null as
/// ""; files without the column contribute nothing).
pub fn column_text(dir: &Path, column: &str) -> Vec<String> {
    let mut out = Vec::new();
    for f in parquet_files(dir) {
        let b = read_parquet(&f);
        if let Some(c) = b.column_by_name(column) {
            let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).unwrap();
            let s = c
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            out.extend(s.iter().map(|v| v.unwrap_or_default().to_string()));
        }
    }
    out
}

/// Fails with how to install `tool` (a Debian `package`) when it is not on the PATH.
pub fn need(tool: &str, package: &str) {
    need_installed(tool, &format!("apt-get install {package}"));
}

/// Fails with how to install `tool` (the command `install`) when it is not on the PATH.
pub fn need_installed(tool: &str, install: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: run scripts/test.sh (it installs it) or `{install}`"
    );
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, what: &str) {
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "{what} did not start listening on 127.0.0.1:{port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// What the registry decided, without what differs between equal runs (times, run ids, URIs):
/// per model, the production version and each version's status, algorithm, metrics and artifact
/// hash. `state` reads a model's `state.json`.
pub fn registry_result(
    state: impl Fn(&str) -> Option<Vec<u8>>,
) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for model in ["engagement", "churn", "ltv"] {
        let Some(bytes) = state(model) else { continue };
        let state: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let versions: BTreeMap<String, serde_json::Value> = state["versions"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::json!({
                        "status": v["status"],
                        "algorithm": v["algorithm"],
                        "metrics": v["metrics"],
                        "artifact_sha256": v["artifact_sha256"],
                    }),
                )
            })
            .collect();
        out.insert(
            model.to_string(),
            serde_json::json!({ "production": state["production"], "versions": versions }),
        );
    }
    out
}

/// Writes `batch` as a Parquet file (row groups of at most `row_group` rows), creating folders.
pub fn write_parquet(path: &Path, batch: &arrow::record_batch::RecordBatch, row_group: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// Every JSON file under the project's `runs/` parses and every Parquet file decodes; the
/// number of files checked.
pub fn all_files_whole(p: &Project) -> Result<usize, String> {
    let files = files_under(&p.path("runs"));
    for f in &files {
        let name = f.display().to_string();
        if name.ends_with(".json") {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(f).unwrap())
                .map_err(|e| format!("{name} is not whole JSON: {e}"))?;
        } else if name.ends_with(".parquet") {
            let file = std::fs::File::open(f).unwrap();
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.build().map_err(Into::into))
                .map_err(|e| format!("{name} is not a whole Parquet file: {e}"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{name} does not decode: {e}"))?;
        }
    }
    Ok(files.len())
}
