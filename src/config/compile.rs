//! Compiles a pipeline file into a checked [`Pipeline`], reporting every problem at once.

use std::time::Duration;

use indexmap::IndexMap;
use serde::de::DeserializeOwned;

use super::datasets::{compile_datasets, compile_quality};
use super::models::{compile_fairness, compile_models};
use super::spec::*;
use super::stages::compile_stages;
use super::*;
use crate::error::{Error, Result};
use crate::time::{parse_duration, parse_timestamp};

/// Values that override the pipeline file for one invocation.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--set key.path=value`
    pub set: Vec<(String, String)>,
    /// `--input dataset=URL`
    pub inputs: Vec<(String, String)>,
    /// `--as-of`
    pub as_of: Option<String>,
    /// Read `MLPIPE_DATA`, `MLPIPE_ARTIFACTS` and `MLPIPE_REGISTRY` for the storage roots, and
    /// `MLPIPE_PSEUDONYM_KEY` for the pseudonyms of personal data.
    pub env: bool,
}

impl Overrides {
    /// Parses `key=value` pairs as given on the command line.
    pub fn parse_pairs(pairs: &[String], flag: &str) -> Result<Vec<(String, String)>> {
        pairs
            .iter()
            .map(|p| {
                p.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| Error::Usage(format!("{flag} expects key=value, got `{p}`")))
            })
            .collect()
    }
}

/// Reads and compiles a pipeline file.
pub fn compile_file(path: &str, ov: &Overrides) -> Result<Pipeline> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        Error::Usage(format!(
            "cannot read pipeline file {path}: {e}; pass the path of a pipeline file (default {DEFAULT_PIPELINE})"
        ))
    })?;
    compile_str(&src, path, ov)
}

const TOP_LEVEL: &[&str] = &[
    "pipeline", "storage", "run", "datasets", "quality", "models", "fairness", "stages",
];

/// Compiles the text of a pipeline file.
pub fn compile_str(src: &str, file: &str, ov: &Overrides) -> Result<Pipeline> {
    let config_err = |problems: Vec<String>| Error::Config {
        file: file.to_string(),
        problems,
    };
    let mut doc: toml::Table =
        toml::from_str(src).map_err(|e| config_err(vec![format!("not valid TOML: {e}")]))?;
    let mut problems = Vec::new();
    apply_overrides(&mut doc, ov, &mut problems);

    for key in doc.keys() {
        if !TOP_LEVEL.contains(&key.as_str()) {
            problems.push(format!(
                "{key}: unknown key{} (expected one of: {})",
                suggest(key, TOP_LEVEL.iter().copied()),
                TOP_LEVEL.join(", ")
            ));
        }
    }
    let section = |name: &str| doc.get(name).cloned();

    let meta: Option<PipelineMeta> = match section("pipeline") {
        Some(v) => de(v, "pipeline", &mut problems),
        None => {
            problems.push("pipeline: missing section [pipeline] with `name`".into());
            None
        }
    };
    let storage: StorageSpec = section("storage")
        .and_then(|v| de(v, "storage", &mut problems))
        .unwrap_or_default();
    let fairness_spec: FairnessSpec = section("fairness")
        .and_then(|v| de(v, "fairness", &mut problems))
        .unwrap_or_default();
    let run: RunSpec = section("run")
        .and_then(|v| de(v, "run", &mut problems))
        .unwrap_or_default();
    let quality_spec: QualitySpec = section("quality")
        .and_then(|v| de(v, "quality", &mut problems))
        .unwrap_or_default();

    let dataset_specs: IndexMap<String, DatasetSpec> =
        table_entries(&doc, "datasets", &mut problems)
            .into_iter()
            .filter_map(|(k, v)| de(v, &format!("datasets.{k}"), &mut problems).map(|d| (k, d)))
            .collect();
    let model_specs: Vec<(String, ModelSpec)> = table_entries(&doc, "models", &mut problems)
        .into_iter()
        .filter_map(|(k, v)| de(v, &format!("models.{k}"), &mut problems).map(|m| (k, m)))
        .collect();
    let stage_entries = table_entries(&doc, "stages", &mut problems);
    let stage_specs: Vec<(String, StageSpec)> = stage_entries
        .into_iter()
        .filter_map(|(k, v)| de(v, &format!("stages.{k}"), &mut problems).map(|s| (k, s)))
        .collect();

    // Storage roots.
    let mut root = |name: &str, value: &str| match crate::storage::normalize_url(value) {
        Ok(u) if url::Url::parse(&u).is_ok() => u.trim_end_matches('/').to_string(),
        _ => {
            problems.push(format!(
                "storage.{name}: `{value}` is not a valid URL or path"
            ));
            String::new()
        }
    };
    let storage = Storage {
        data: root("data", &storage.data),
        artifacts: root("artifacts", &storage.artifacts),
        registry: root("registry", &storage.registry),
    };

    let as_of_text = ov.as_of.clone().or(run.as_of.clone());
    let as_of = as_of_text.and_then(|t| match parse_timestamp(&t) {
        Some(ts) => Some(ts),
        None => {
            problems.push(format!(
                "run.as_of: `{t}` is not a timestamp; use RFC 3339, e.g. 2026-11-20T06:00:00Z"
            ));
            None
        }
    });
    let default_timeout = timeout(&run.stage_timeout, "run.stage_timeout", &mut problems)
        .unwrap_or(Duration::from_secs(3600));
    let shutdown_grace = duration(&run.shutdown_grace, "run.shutdown_grace", &mut problems)
        .unwrap_or(Duration::from_secs(20));
    let default_backoff = duration(&run.retry_backoff, "run.retry_backoff", &mut problems)
        .unwrap_or(Duration::from_secs(2));
    let default_retries = run.stage_retries.unwrap_or(1);
    let pseudonyms = if ov.env {
        crate::data::pseudonym::Pseudonyms::from_env().unwrap_or_else(|e| {
            problems.push(e.to_string());
            Default::default()
        })
    } else {
        Default::default()
    };

    let datasets = compile_datasets(&dataset_specs, &mut problems);
    let quality = compile_quality(&quality_spec, &datasets, &mut problems);
    let models = compile_models(&model_specs, &stage_specs, &datasets, &mut problems);
    let fairness = compile_fairness(&fairness_spec, &models, &datasets, &mut problems);
    let (stages, dag) = compile_stages(
        &stage_specs,
        &datasets,
        &models,
        (default_timeout, default_retries, default_backoff),
        &mut problems,
    );

    if !problems.is_empty() {
        return Err(config_err(problems));
    }
    let meta = meta.expect("no problems means [pipeline] parsed");
    let resolved = serde_json::to_value(&doc).unwrap_or(serde_json::Value::Null);
    Ok(Pipeline {
        name: meta.name,
        description: meta.description,
        file: file.to_string(),
        storage,
        as_of,
        seed: run.seed.unwrap_or(42),
        max_concurrent_fits: run.max_concurrent_fits.unwrap_or(0),
        shutdown_grace,
        datasets,
        quality,
        models,
        fairness,
        stages,
        dag,
        resolved,
        pseudonyms,
    })
}

/// Deserialises one section, recording unknown keys and type errors under `path`.
pub(super) fn de<T: DeserializeOwned>(
    v: toml::Value,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    let mut unknown = Vec::new();
    let result: std::result::Result<T, _> = {
        let mut cb = |p: serde_ignored::Path| unknown.push(p.to_string());
        let ign = serde_ignored::Deserializer::new(v, &mut cb);
        serde_path_to_error::deserialize(ign)
    };
    for u in unknown {
        problems.push(format!("{path}.{u}: unknown key"));
    }
    match result {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let at = if inner == "." || inner.is_empty() {
                path.to_string()
            } else {
                format!("{path}.{inner}")
            };
            problems.push(format!("{at}: {}", e.inner()));
            None
        }
    }
}

/// The entries of a table-of-tables section such as `[datasets]`.
fn table_entries(
    doc: &toml::Table,
    name: &str,
    problems: &mut Vec<String>,
) -> Vec<(String, toml::Value)> {
    match doc.get(name) {
        None => Vec::new(),
        Some(toml::Value::Table(t)) => t.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(_) => {
            problems.push(format!(
                "{name}: must be a table of named entries ([{name}.NAME])"
            ));
            Vec::new()
        }
    }
}

fn apply_overrides(doc: &mut toml::Table, ov: &Overrides, problems: &mut Vec<String>) {
    if ov.env {
        for (var, key) in [
            ("MLPIPE_DATA", "data"),
            ("MLPIPE_ARTIFACTS", "artifacts"),
            ("MLPIPE_REGISTRY", "registry"),
        ] {
            if let Ok(v) = std::env::var(var) {
                if !v.is_empty() {
                    set_path(doc, &["storage", key], toml::Value::String(v));
                }
            }
        }
    }
    for (key, raw) in &ov.set {
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            problems.push(format!(
                "--set {key}: not a key path such as stages.validate.retries"
            ));
            continue;
        }
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        if !set_path(doc, &parts, value) {
            problems.push(format!(
                "--set {key}: `{}` is not a table",
                parts[..parts.len() - 1].join(".")
            ));
        }
    }
    for (name, url) in &ov.inputs {
        let exists = doc
            .get("datasets")
            .and_then(|d| d.as_table())
            .is_some_and(|d| d.contains_key(name));
        if !exists {
            problems.push(format!("--input {name}: no dataset `{name}` is declared"));
            continue;
        }
        let url = crate::storage::normalize_url(url).unwrap_or_else(|_| url.clone());
        set_path(
            doc,
            &["datasets", name, "location"],
            toml::Value::String(url),
        );
    }
}

fn set_path(doc: &mut toml::Table, parts: &[&str], value: toml::Value) -> bool {
    let mut t = doc;
    for p in &parts[..parts.len() - 1] {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        match entry {
            toml::Value::Table(next) => t = next,
            _ => return false,
        }
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
    true
}

/// A stage timeout: a duration above zero (a zero timeout would fail every attempt at once).
pub(super) fn timeout(
    d: &Option<DurationSpec>,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<Duration> {
    let t = duration(d, path, problems)?;
    if t.is_zero() {
        problems.push(format!(
            "{path}: a timeout of zero would end every attempt at once; use a positive duration such as \"10m\""
        ));
        return None;
    }
    Some(t)
}

pub(super) fn duration(
    d: &Option<DurationSpec>,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<Duration> {
    match d {
        None => None,
        Some(DurationSpec::Seconds(s)) if *s >= 0.0 && s.is_finite() => {
            Some(Duration::from_secs_f64(*s))
        }
        Some(DurationSpec::Text(t)) if parse_duration(t).is_some() => parse_duration(t),
        Some(other) => {
            let given = match other {
                DurationSpec::Seconds(s) => s.to_string(),
                DurationSpec::Text(t) => format!("\"{t}\""),
            };
            problems.push(format!(
                "{path}: {given} is not a duration; use seconds (zero or more) or text such as \"90s\", \"10m\", \"1h\""
            ));
            None
        }
    }
}

/// " (did you mean `x`?)" when a known name is close to the given one.
pub(super) fn suggest<'a>(given: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|k| (edit_distance(given, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[pipeline]
name = "t"
[datasets.d]
location = "d/"
primary_key = "id"
timestamp = "ts"
columns.id = { type = "string" }
columns.ts = { type = "timestamp" }
columns.x = { type = "float64", min = 0, nullable = true }
[stages.load]
kind = "load"
datasets = ["d"]
[stages.check]
kind = "validate"
needs = ["load"]
datasets = ["d"]
timeout = "5m"
"#;

    fn problems(src: &str) -> Vec<String> {
        match compile_str(src, "t.toml", &Overrides::default()) {
            Err(Error::Config { problems, .. }) => problems,
            other => panic!("expected config error, got {other:?}"),
        }
    }

    #[test]
    fn minimal_pipeline_compiles() {
        let p = compile_str(MINIMAL, "t.toml", &Overrides::default()).unwrap();
        assert_eq!(p.stages.len(), 2);
        assert_eq!(p.stage("check").unwrap().timeout, Duration::from_secs(300));
        assert_eq!(p.datasets["d"].primary_key, ["id"]);
        assert!(p.storage.data.starts_with("file://"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let src = MINIMAL.replace("timeout = \"5m\"", "timeout = \"5m\"\ntiemout = 3\nneeds_x = 1")
            + "[stages.a]\nkind = \"load\"\ndatasets = [\"nope\"]\nneeds = [\"b\"]\n[stages.b]\nkind = \"load\"\ndatasets = [\"d\"]\nneeds = [\"a\", \"ghost\"]\n";
        let p = problems(&src);
        let all = p.join("\n");
        assert!(all.contains("stages.check.tiemout: unknown key"), "{all}");
        assert!(all.contains("stages.check.needs_x: unknown key"), "{all}");
        assert!(all.contains("unknown dataset `nope`"), "{all}");
        assert!(all.contains("unknown stage `ghost`"), "{all}");
        assert!(
            all.contains("stages: cycle a -> b -> a") || all.contains("stages: cycle b -> a -> b"),
            "{all}"
        );
    }

    #[test]
    fn set_overrides_and_type_errors_name_the_key() {
        let ov = Overrides {
            set: vec![("stages.check.retries".into(), "\"two\"".into())],
            ..Default::default()
        };
        let err = compile_str(MINIMAL, "t.toml", &ov).unwrap_err().to_string();
        assert!(err.contains("stages.check.retries"), "{err}");
        let ov = Overrides {
            set: vec![("stages.check.retries".into(), "4".into())],
            ..Default::default()
        };
        assert_eq!(
            compile_str(MINIMAL, "t.toml", &ov)
                .unwrap()
                .stage("check")
                .unwrap()
                .retries,
            4
        );
    }

    #[test]
    fn column_references_are_checked() {
        let src = MINIMAL.replace("timestamp = \"ts\"", "timestamp = \"x\"\npii = [\"email\"]");
        let all = problems(&src).join("\n");
        assert!(
            all.contains("datasets.d.timestamp: `x` is float64"),
            "{all}"
        );
        assert!(
            all.contains("datasets.d.pii: `email` is not a declared column"),
            "{all}"
        );
    }

    #[test]
    fn validate_needs_an_upstream_load() {
        let src = MINIMAL.replace("needs = [\"load\"]\n", "");
        let all = problems(&src).join("\n");
        assert!(all.contains("not loaded by any load stage"), "{all}");
    }

    #[test]
    fn unknown_kind_suggests_the_closest() {
        let src = MINIMAL.replace("kind = \"validate\"", "kind = \"validat\"");
        assert!(problems(&src)
            .join("\n")
            .contains("did you mean `validate`"));
    }
}
