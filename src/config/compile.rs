//! Compiles a pipeline file into a checked [`Pipeline`], reporting every problem at once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::de::DeserializeOwned;

use super::spec::*;
use super::*;
use crate::error::{Error, Result};
use crate::model::Algorithm;

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
    let default_timeout = duration(&run.stage_timeout, "run.stage_timeout", &mut problems)
        .unwrap_or(Duration::from_secs(3600));
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
fn de<T: DeserializeOwned>(v: toml::Value, path: &str, problems: &mut Vec<String>) -> Option<T> {
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

/// Parses RFC 3339, or a date (midnight UTC), or a naive date-time taken as UTC.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// Parses `"90s"`, `"10m"`, `"1h"`, `"500ms"` or a number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| (&s[..i], &s[i..]))
        .unwrap_or((s, "s"));
    let n: f64 = num.trim().parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn duration(d: &Option<DurationSpec>, path: &str, problems: &mut Vec<String>) -> Option<Duration> {
    match d {
        None => None,
        Some(DurationSpec::Seconds(s)) if *s >= 0.0 && s.is_finite() => {
            Some(Duration::from_secs_f64(*s))
        }
        Some(DurationSpec::Text(t)) if parse_duration(t).is_some() => parse_duration(t),
        Some(other) => {
            problems.push(format!(
                "{path}: `{other:?}` is not a duration; use seconds or text such as \"90s\", \"10m\", \"1h\""
            ));
            None
        }
    }
}

fn compile_datasets(
    specs: &IndexMap<String, DatasetSpec>,
    problems: &mut Vec<String>,
) -> IndexMap<String, Dataset> {
    let mut out = IndexMap::new();
    for (name, spec) in specs {
        let path = format!("datasets.{name}");
        // Resolve `inherit` (following chains, refusing loops).
        let mut base: Option<&DatasetSpec> = None;
        if let Some(parent) = &spec.inherit {
            let mut seen = vec![name.as_str()];
            let mut cur = parent.as_str();
            loop {
                if seen.contains(&cur) {
                    problems.push(format!(
                        "{path}.inherit: inheritance loop {} -> {cur}",
                        seen.join(" -> ")
                    ));
                    break;
                }
                match specs.get(cur) {
                    None => {
                        problems.push(format!(
                            "{path}.inherit: unknown dataset `{cur}`{}",
                            suggest(cur, specs.keys().map(|s| s.as_str()))
                        ));
                        break;
                    }
                    Some(p) if p.inherit.is_none() => {
                        base = Some(p);
                        break;
                    }
                    Some(p) => {
                        seen.push(cur);
                        cur = p.inherit.as_deref().unwrap();
                    }
                }
            }
        }
        let mut columns_spec: IndexMap<String, ColumnSpec> =
            base.map(|b| b.columns.clone()).unwrap_or_default();
        for d in &spec.drop_columns {
            if columns_spec.shift_remove(d).is_none() {
                problems.push(format!(
                    "{path}.drop_columns: `{d}` is not a column of the inherited dataset"
                ));
            }
        }
        for (c, cs) in &spec.columns {
            columns_spec.insert(c.clone(), cs.clone());
        }
        if columns_spec.is_empty() {
            problems.push(format!("{path}: declares no columns"));
        }
        let mut columns = Vec::new();
        for (c, cs) in &columns_spec {
            let cpath = format!("{path}.columns.{c}");
            let Some(ty) = ColumnType::parse(&cs.ty) else {
                problems.push(format!(
                    "{cpath}.type: unknown type `{}` (expected string, int32, int64, float64, bool, date or timestamp)",
                    cs.ty
                ));
                continue;
            };
            if (cs.min.is_some() || cs.max.is_some()) && !ty.is_numeric() {
                problems.push(format!(
                    "{cpath}: min/max only apply to numeric columns, not {}",
                    ty.name()
                ));
            }
            if let (Some(lo), Some(hi)) = (cs.min, cs.max) {
                if lo > hi {
                    problems.push(format!("{cpath}: min {lo} is greater than max {hi}"));
                }
            }
            if cs.values.is_some() && ty != ColumnType::String {
                problems.push(format!("{cpath}: `values` only applies to string columns"));
            }
            columns.push(Column {
                name: c.clone(),
                ty,
                nullable: cs.nullable.unwrap_or(false),
                min: cs.min,
                max: cs.max,
                values: cs.values.clone(),
            });
        }
        let location = spec.location.clone().unwrap_or_else(|| {
            problems.push(format!(
                "{path}.location: missing (a file, folder or glob under the data root, or a URL)"
            ));
            String::new()
        });
        let primary_key: Vec<String> = spec
            .primary_key
            .clone()
            .or_else(|| base.and_then(|b| b.primary_key.clone()))
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        let timestamp: Option<String> = spec
            .timestamp
            .clone()
            .or_else(|| base.and_then(|b| b.timestamp.clone()));
        let pii: Vec<String> = spec
            .pii
            .clone()
            .or_else(|| base.and_then(|b| b.pii.clone()))
            .unwrap_or_default();
        let known = |c: &str| columns.iter().any(|col| col.name == c);
        for k in &primary_key {
            if !known(k) {
                problems.push(format!(
                    "{path}.primary_key: `{k}` is not a declared column"
                ));
            }
        }
        for k in &pii {
            if !known(k) {
                problems.push(format!("{path}.pii: `{k}` is not a declared column"));
            }
        }
        if let Some(ts) = &timestamp {
            match columns.iter().find(|c| &c.name == ts) {
                None => problems.push(format!("{path}.timestamp: `{ts}` is not a declared column")),
                Some(c) if !matches!(c.ty, ColumnType::Timestamp | ColumnType::Date) => problems
                    .push(format!(
                        "{path}.timestamp: `{ts}` is {}, not a timestamp or date column",
                        c.ty.name()
                    )),
                _ => {}
            }
        }
        out.insert(
            name.clone(),
            Dataset {
                name: name.clone(),
                location,
                primary_key,
                timestamp,
                pii,
                columns,
            },
        );
    }
    out
}

fn on_fail(s: &Option<String>, default: OnFail, path: &str, problems: &mut Vec<String>) -> OnFail {
    match s.as_deref() {
        None => default,
        Some("stop") => OnFail::Stop,
        Some("continue") => OnFail::Continue,
        Some(other) => {
            problems.push(format!(
                "{path}.on_fail: `{other}` is not `stop` or `continue`"
            ));
            default
        }
    }
}

fn compile_quality(
    q: &QualitySpec,
    datasets: &IndexMap<String, Dataset>,
    problems: &mut Vec<String>,
) -> Quality {
    let global = on_fail(&q.on_fail, OnFail::Stop, "quality", problems);
    let mut check = |spec: &Option<CheckSpec>, name: &str, warn: f64, fail: f64| -> Check {
        match spec {
            None => Check {
                enabled: true,
                warn,
                fail,
                on_fail: global,
            },
            Some(c) => {
                if c.warn > c.fail {
                    problems.push(format!(
                        "quality.{name}: warn {} is above fail {}",
                        c.warn, c.fail
                    ));
                }
                Check {
                    enabled: c.enabled.unwrap_or(true),
                    warn: c.warn,
                    fail: c.fail,
                    on_fail: on_fail(&c.on_fail, global, &format!("quality.{name}"), problems),
                }
            }
        }
    };
    // Defaults are the seeds' table (SPEC §6).
    let null_rate = check(&q.null_rate, "null_rate", 0.01, 0.05);
    let schema_violations = check(&q.schema_violations, "schema_violations", 0.0, 10.0);
    let duplicates = check(&q.duplicates, "duplicates", 0.0, 100.0);
    let freshness = check(&q.freshness, "freshness", 24.0, 48.0);
    let outliers = match &q.outliers {
        None => OutlierRule {
            check: Check {
                enabled: true,
                warn: 0.02,
                fail: 0.05,
                on_fail: global,
            },
            k: 1.5,
            columns: None,
        },
        Some(o) => {
            let c = check(
                &Some(CheckSpec {
                    warn: o.warn,
                    fail: o.fail,
                    on_fail: o.on_fail.clone(),
                    enabled: o.enabled,
                }),
                "outliers",
                0.02,
                0.05,
            );
            if let Some(m) = &o.method {
                if m != "iqr" {
                    problems.push(format!(
                        "quality.outliers.method: `{m}` is not supported (use `iqr`)"
                    ));
                }
            }
            let k = o.k.unwrap_or(1.5);
            if !(k > 0.0 && k.is_finite()) {
                problems.push(format!("quality.outliers.k: {k} must be a positive number"));
            }
            if let Some(cols) = &o.columns {
                for c in cols {
                    let found: Vec<&Column> =
                        datasets.values().filter_map(|d| d.column(c)).collect();
                    if found.is_empty() {
                        problems.push(format!(
                            "quality.outliers.columns: `{c}` is not a column of any dataset"
                        ));
                    } else if found.iter().any(|col| !col.ty.is_numeric()) {
                        problems.push(format!("quality.outliers.columns: `{c}` is not numeric"));
                    }
                }
            }
            OutlierRule {
                check: c,
                k,
                columns: o.columns.clone(),
            }
        }
    };
    Quality {
        null_rate,
        schema_violations,
        outliers,
        duplicates,
        freshness,
    }
}

fn compile_models(
    specs: &[(String, ModelSpec)],
    stages: &[(String, StageSpec)],
    datasets: &IndexMap<String, Dataset>,
    problems: &mut Vec<String>,
) -> IndexMap<String, Model> {
    // The default dataset of a model: the one the (first) prepare stage prepares.
    let prepared: Option<String> =
        stages
            .iter()
            .find(|(_, s)| s.kind == "prepare")
            .and_then(|(_, s)| {
                s.params
                    .get("dataset")
                    .and_then(|v| v.as_str())
                    .map(String::from)
            });
    let mut out = IndexMap::new();
    for (name, m) in specs {
        let path = format!("models.{name}");
        let task = match m.task.as_str() {
            "regression" => Task::Regression,
            "binary" | "classification" => Task::Binary,
            other => {
                problems.push(format!(
                    "{path}.task: `{other}` is not `regression` or `binary`"
                ));
                continue;
            }
        };
        let Some(dataset) = m.dataset.clone().or_else(|| prepared.clone()) else {
            problems.push(format!(
                "{path}.dataset: missing, and no prepare stage names one"
            ));
            continue;
        };
        let Some(ds) = datasets.get(&dataset) else {
            problems.push(format!("{path}.dataset: unknown dataset `{dataset}`"));
            continue;
        };
        match ds.column(&m.target) {
            None => problems.push(format!("{path}.target: `{}` is not a declared column of `{dataset}`", m.target)),
            Some(c) => match task {
                Task::Regression if !c.ty.is_numeric() => {
                    problems.push(format!("{path}.target: `{}` is {}, a regression target must be numeric", m.target, c.ty.name()))
                }
                Task::Binary if c.ty == ColumnType::String && m.positive_label.is_none() => problems.push(format!(
                    "{path}.positive_label: the target `{}` is text; say which value is positive (e.g. positive_label = \"Yes\")",
                    m.target
                )),
                Task::Binary if matches!(c.ty, ColumnType::Float64 | ColumnType::Date | ColumnType::Timestamp) => problems.push(format!(
                    "{path}.target: `{}` is {}; a binary target is a bool, a 0/1 integer or text with positive_label",
                    m.target,
                    c.ty.name()
                )),
                _ => {}
            },
        }
        if m.features.is_empty() {
            problems.push(format!(
                "{path}.features: a model needs at least one feature"
            ));
        }
        for f in &m.features {
            match ds.column(f) {
                None => problems.push(format!(
                    "{path}.features: `{f}` is not a declared column of `{dataset}`{}",
                    suggest(f, ds.columns.iter().map(|c| c.name.as_str()))
                )),
                Some(c) if matches!(c.ty, ColumnType::Date | ColumnType::Timestamp) => problems
                    .push(format!(
                        "{path}.features: `{f}` is a {} column; derive a number from it first",
                        c.ty.name()
                    )),
                Some(_) if f == &m.target => {
                    problems.push(format!("{path}.features: `{f}` is the target"))
                }
                Some(_) if ds.primary_key.contains(f) => {
                    problems.push(format!("{path}.features: `{f}` is the dataset's key"))
                }
                _ => {}
            }
        }
        let name_of = m.algorithm.clone().unwrap_or_else(|| "gbdt".into());
        let algorithm = if !Algorithm::NAMES.contains(&name_of.as_str()) {
            problems.push(format!(
                "{path}.algorithm: `{name_of}` is not an algorithm{} (choose one of {})",
                suggest(&name_of, Algorithm::NAMES.iter().copied()),
                Algorithm::NAMES.join(", ")
            ));
            Algorithm::default()
        } else {
            let params =
                serde_json::to_value(m.params.clone().unwrap_or_default()).unwrap_or_default();
            match Algorithm::from_parts(&name_of, params) {
                Ok(a) => a,
                Err(e) => {
                    problems.push(format!("{path}.params: {e} (for algorithm `{name_of}`)"));
                    Algorithm::default()
                }
            }
        };
        for e in algorithm.check(task) {
            problems.push(format!("{path}.{e}"));
        }
        let mut gates = Vec::new();
        for g in &m.gates {
            match Gate::parse(g) {
                None => problems.push(format!(
                    "{path}.gates: `{g}` is not `metric op value` (e.g. \"r2 >= 0.75\")"
                )),
                Some(gate) if !task.metrics().contains(&gate.metric.as_str()) => {
                    problems.push(format!(
                        "{path}.gates: a {} model does not produce `{}` (it produces {})",
                        m.task,
                        gate.metric,
                        task.metrics().join(", ")
                    ))
                }
                Some(gate) => gates.push(gate),
            }
        }
        let threshold = m.threshold.unwrap_or(0.5);
        if !(0.0..=1.0).contains(&threshold) {
            problems.push(format!(
                "{path}.threshold: {threshold} is not a probability"
            ));
        }
        out.insert(
            name.clone(),
            Model {
                name: name.clone(),
                task,
                dataset,
                target: m.target.clone(),
                positive_label: m.positive_label.clone(),
                features: m.features.clone(),
                algorithm,
                gates,
                threshold,
            },
        );
    }
    out
}

fn compile_fairness(
    f: &FairnessSpec,
    models: &IndexMap<String, Model>,
    datasets: &IndexMap<String, Dataset>,
    problems: &mut Vec<String>,
) -> Fairness {
    let threshold = f.threshold.unwrap_or(0.8);
    if !(0.0..=1.0).contains(&threshold) {
        problems.push(format!(
            "fairness.threshold: {threshold} must be between 0 and 1"
        ));
    }
    let mut attributes = IndexMap::new();
    for (name, a) in &f.attributes {
        // The attribute must exist in every dataset a model trains on.
        for m in models.values() {
            if let Some(ds) = datasets.get(&m.dataset) {
                match ds.column(&a.column) {
                    None => problems.push(format!(
                        "fairness.attributes.{name}.column: `{}` is not a declared column of `{}`",
                        a.column, m.dataset
                    )),
                    Some(c) if a.bands.is_some() && !c.ty.is_numeric() => problems.push(format!(
                        "fairness.attributes.{name}.bands: `{}` is {}, bands need a number",
                        a.column,
                        c.ty.name()
                    )),
                    _ => {}
                }
            }
        }
        if let Some(b) = &a.bands {
            if b.is_empty() || b.windows(2).any(|w| w[0] >= w[1]) {
                problems.push(format!(
                    "fairness.attributes.{name}.bands: give increasing band edges"
                ));
            }
        }
        attributes.insert(
            name.clone(),
            Attribute {
                column: a.column.clone(),
                bands: a.bands.clone(),
            },
        );
    }
    Fairness {
        threshold,
        min_group_size: f.min_group_size.unwrap_or(30),
        bootstrap: f.bootstrap.unwrap_or(100),
        attributes,
    }
}

fn compile_stages(
    specs: &[(String, StageSpec)],
    datasets: &IndexMap<String, Dataset>,
    models: &IndexMap<String, Model>,
    defaults: (Duration, u32, Duration),
    problems: &mut Vec<String>,
) -> (Vec<Stage>, Dag) {
    if specs.is_empty() {
        problems.push("stages: the pipeline declares no stages".into());
    }
    let names: Vec<String> = specs.iter().map(|(n, _)| n.clone()).collect();
    let mut deps = Vec::new();
    let mut stages = Vec::new();
    for (name, s) in specs {
        let path = format!("stages.{name}");
        let mut d = Vec::new();
        for n in &s.needs {
            match names.iter().position(|x| x == n) {
                Some(i) => d.push(i),
                None => problems.push(format!(
                    "{path}.needs: unknown stage `{n}`{}",
                    suggest(n, names.iter().map(|s| s.as_str()))
                )),
            }
        }
        deps.push(d);
        let params = toml::Value::Table(s.params.clone());
        let check_datasets = |ds: &[String], problems: &mut Vec<String>| {
            for d in ds {
                if !datasets.contains_key(d) {
                    problems.push(format!(
                        "{path}.datasets: unknown dataset `{d}`{}",
                        suggest(d, datasets.keys().map(|s| s.as_str()))
                    ));
                }
            }
        };
        let kind = match s.kind.as_str() {
            "load" => de::<LoadParams>(params, &path, problems).map(|p| {
                check_datasets(&p.datasets, problems);
                StageKind::Load {
                    datasets: p.datasets,
                }
            }),
            "validate" => de::<ValidateParams>(params, &path, problems).map(|p| {
                check_datasets(&p.datasets, problems);
                StageKind::Validate {
                    datasets: p.datasets,
                }
            }),
            "prepare" => de::<PrepareParams>(params, &path, problems).map(|p| {
                check_datasets(std::slice::from_ref(&p.dataset), problems);
                let holdout = p.holdout.unwrap_or(0.2);
                if !(0.01..=0.99).contains(&holdout) {
                    problems.push(format!(
                        "{path}.holdout: {holdout} must be between 0.01 and 0.99"
                    ));
                }
                if datasets
                    .get(&p.dataset)
                    .is_some_and(|d| d.primary_key.is_empty())
                {
                    problems.push(format!(
                        "{path}.dataset: `{}` has no primary_key to split on",
                        p.dataset
                    ));
                }
                StageKind::Prepare {
                    dataset: p.dataset,
                    holdout,
                }
            }),
            "train" => de::<TrainParams>(params, &path, problems).map(|p| {
                if !models.contains_key(&p.model) {
                    problems.push(format!(
                        "{path}.model: unknown model `{}`{}",
                        p.model,
                        suggest(&p.model, models.keys().map(|s| s.as_str()))
                    ));
                }
                StageKind::Train { model: p.model }
            }),
            "score" => de::<ScoreParams>(params, &path, problems).map(|p| {
                check_datasets(std::slice::from_ref(&p.dataset), problems);
                let names = p.models.unwrap_or_else(|| models.keys().cloned().collect());
                for m in &names {
                    match models.get(m) {
                        None => problems.push(format!("{path}.models: unknown model `{m}`")),
                        Some(model) => {
                            if let Some(ds) = datasets.get(&p.dataset) {
                                for f in model.features.iter().filter(|f| ds.column(f).is_none()) {
                                    problems.push(format!(
                                        "{path}: model `{m}` needs feature `{f}`, which `{}` does not declare",
                                        p.dataset
                                    ));
                                }
                            }
                        }
                    }
                }
                StageKind::Score { dataset: p.dataset, models: names }
            }),
            "drift" => de::<DriftParams>(params, &path, problems).map(|p| {
                check_datasets(&[p.reference.clone(), p.current.clone()], problems);
                let (r, c) = (datasets.get(&p.reference), datasets.get(&p.current));
                let features = match (&p.features, r, c) {
                    (Some(f), Some(r), Some(c)) => {
                        for x in f {
                            if r.column(x).is_none() || c.column(x).is_none() {
                                problems.push(format!(
                                    "{path}.features: `{x}` is not declared in both `{}` and `{}`",
                                    p.reference, p.current
                                ));
                            }
                        }
                        f.clone()
                    }
                    (None, Some(r), Some(c)) => {
                        let mut f: Vec<String> = Vec::new();
                        for m in models.values() {
                            for x in &m.features {
                                if r.column(x).is_some() && c.column(x).is_some() && !f.contains(x) {
                                    f.push(x.clone());
                                }
                            }
                        }
                        f
                    }
                    _ => Vec::new(),
                };
                StageKind::Drift {
                    reference: p.reference,
                    current: p.current,
                    features,
                    ks_threshold: p.ks_threshold.unwrap_or(0.1),
                    psi_threshold: p.psi_threshold.unwrap_or(0.2),
                }
            }),
            "fairness" => de::<FairnessParams>(params, &path, problems).map(|p| {
                let names = p.models.unwrap_or_else(|| models.keys().cloned().collect());
                for m in names.iter().filter(|m| !models.contains_key(*m)) {
                    problems.push(format!("{path}.models: unknown model `{m}`"));
                }
                StageKind::Fairness { models: names }
            }),
            "health" => de::<toml::Table>(params, &path, problems).map(|t| {
                for k in t.keys() {
                    problems.push(format!("{path}.{k}: unknown key"));
                }
                StageKind::Health
            }),
            "register" => de::<RegisterParams>(params, &path, problems).map(|p| {
                let names = p.models.unwrap_or_else(|| models.keys().cloned().collect());
                for m in names.iter().filter(|m| !models.contains_key(*m)) {
                    problems.push(format!("{path}.models: unknown model `{m}`"));
                }
                StageKind::Register { models: names }
            }),
            other => {
                problems.push(format!(
                    "{path}.kind: unknown stage kind `{other}`{} (this build knows: {})",
                    suggest(other, StageKind::KNOWN.iter().copied()),
                    StageKind::KNOWN.join(", ")
                ));
                None
            }
        };
        let timeout =
            duration(&s.timeout, &format!("{path}.timeout"), problems).unwrap_or(defaults.0);
        let retry_backoff = duration(&s.retry_backoff, &format!("{path}.retry_backoff"), problems)
            .unwrap_or(defaults.2);
        if let Some(kind) = kind {
            stages.push(Stage {
                name: name.clone(),
                kind,
                needs: s.needs.clone(),
                description: s.description.clone(),
                timeout,
                retries: s.retries.unwrap_or(defaults.1),
                retry_backoff,
            });
        }
    }
    let dag = Dag::new(names, deps);
    if let Some(cycle) = dag.find_cycle() {
        let mut names: Vec<&str> = cycle.iter().map(|&i| dag.names[i].as_str()).collect();
        names.push(names[0]);
        problems.push(format!("stages: cycle {}", names.join(" -> ")));
    } else if stages.len() == dag.len() {
        // Cross-stage checks need an acyclic graph of fully parsed stages.
        let upstream_kind = |i: usize, kind: &str| {
            dag.ancestors(i)
                .into_iter()
                .any(|a| stages[a].kind.name() == kind)
        };
        for (i, st) in stages.iter().enumerate() {
            match &st.kind {
                StageKind::Prepare { .. } if !upstream_kind(i, "validate") => {
                    problems.push(format!(
                    "stages.{}: a prepare stage needs a validate stage upstream (its clean rows)",
                    st.name
                ))
                }
                StageKind::Train { .. } if !upstream_kind(i, "prepare") => problems.push(format!(
                    "stages.{}: a train stage needs a prepare stage upstream",
                    st.name
                )),
                StageKind::Score { models: ms, .. }
                | StageKind::Fairness { models: ms }
                | StageKind::Register { models: ms } => {
                    for m in ms {
                        let trained = dag.ancestors(i).into_iter().any(
                            |a| matches!(&stages[a].kind, StageKind::Train { model } if model == m),
                        );
                        if !trained {
                            problems.push(format!(
                                "stages.{}: no train stage for model `{m}` runs before it; add it to `needs`",
                                st.name
                            ));
                        }
                    }
                }
                StageKind::Drift { .. } if !upstream_kind(i, "validate") => problems.push(format!(
                    "stages.{}: a drift stage needs a validate stage upstream",
                    st.name
                )),
                _ => {}
            }
            if let StageKind::Validate { datasets: ds } = &st.kind {
                let loaded: Vec<&String> = dag
                    .ancestors(i)
                    .into_iter()
                    .flat_map(|a| match &stages[a].kind {
                        StageKind::Load { datasets } => datasets.iter().collect::<Vec<_>>(),
                        _ => Vec::new(),
                    })
                    .collect();
                for d in ds {
                    if datasets.contains_key(d) && !loaded.contains(&d) {
                        problems.push(format!(
                            "stages.{}.datasets: `{d}` is not loaded by any load stage this stage needs",
                            st.name
                        ));
                    }
                }
            }
        }
    }
    (stages, dag)
}

/// " (did you mean `x`?)" when a known name is close to the given one.
fn suggest<'a>(given: &str, known: impl Iterator<Item = &'a str>) -> String {
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
    fn durations_and_timestamps_parse() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(
            parse_timestamp("2026-11-20").unwrap().to_rfc3339(),
            "2026-11-20T00:00:00+00:00"
        );
        assert!(parse_timestamp("2026-11-20T06:00:00+02:00").is_some());
    }

    #[test]
    fn unknown_kind_suggests_the_closest() {
        let src = MINIMAL.replace("kind = \"validate\"", "kind = \"validat\"");
        assert!(problems(&src)
            .join("\n")
            .contains("did you mean `validate`"));
    }
}
