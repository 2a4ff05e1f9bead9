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
    "pipeline", "storage", "run", "datasets", "quality", "models", "fairness", "health",
    "business", "stages",
];

/// The pipeline file `doc` (read from `file`) on top of the file its `pipeline.extends` names,
/// and that file on top of its own, and so on: tables merged key by key, this file's values
/// winning; `[stages]` is only ever this file's.
fn resolve_extends(
    mut doc: toml::Table,
    file: &str,
    seen: &mut Vec<String>,
) -> std::result::Result<toml::Table, String> {
    let Some(base) = doc
        .get("pipeline")
        .and_then(|p| p.get("extends"))
        .and_then(|v| v.as_str())
        .map(String::from)
    else {
        return Ok(doc);
    };
    let dir = std::path::Path::new(file)
        .parent()
        .unwrap_or(std::path::Path::new(""));
    let path = dir.join(&base).to_string_lossy().into_owned();
    if seen.contains(&path) {
        return Err(format!(
            "pipeline.extends: {} extend each other",
            seen.join(" -> ")
        ));
    }
    seen.push(path.clone());
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("pipeline.extends: cannot read {path}: {e}"))?;
    let base_doc: toml::Table = toml::from_str(&text)
        .map_err(|e| format!("pipeline.extends: {path} is not valid TOML: {e}"))?;
    let mut merged = resolve_extends(base_doc, &path, seen)?;
    // A model's default dataset is the one the base's prepare stage prepares: say it, as the
    // base's stages do not come along.
    let prepared = merged
        .get("stages")
        .and_then(|s| s.as_table())
        .and_then(|s| {
            s.values().find_map(|st| {
                (st.get("kind")?.as_str()? == "prepare").then(|| st.get("dataset").cloned())?
            })
        });
    if let (Some(ds), Some(models)) = (
        prepared,
        merged.get_mut("models").and_then(|m| m.as_table_mut()),
    ) {
        for (_, m) in models.iter_mut() {
            let Some(m) = m.as_table_mut() else { continue };
            m.entry("dataset").or_insert_with(|| ds.clone());
        }
    }
    merged.remove("stages");
    if let Some(p) = merged.get_mut("pipeline").and_then(|p| p.as_table_mut()) {
        // The base's name, description and extends are its own.
        p.clear();
    }
    if let Some(p) = doc.get_mut("pipeline").and_then(|p| p.as_table_mut()) {
        p.remove("extends");
    }
    // A dataset this file has a `sql` stage produce has no location of its own: the base's goes.
    if let (Some(top), Some(base)) = (
        doc.get("datasets").and_then(|d| d.as_table()),
        merged.get_mut("datasets").and_then(|d| d.as_table_mut()),
    ) {
        for (name, d) in top {
            if d.get("produced_by").is_some() {
                if let Some(b) = base.get_mut(name).and_then(|b| b.as_table_mut()) {
                    b.remove("location");
                }
            }
        }
    }
    merge(&mut merged, std::mem::take(&mut doc));
    Ok(merged)
}

/// Merges `top` into `base`: tables key by key, any other value replaced.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Compiles the text of a pipeline file.
pub fn compile_str(src: &str, file: &str, ov: &Overrides) -> Result<Pipeline> {
    let config_err = |problems: Vec<String>| Error::Config {
        file: file.to_string(),
        problems,
    };
    let doc: toml::Table =
        toml::from_str(src).map_err(|e| config_err(vec![format!("not valid TOML: {e}")]))?;
    let mut doc =
        resolve_extends(doc, file, &mut vec![file.to_string()]).map_err(|e| config_err(vec![e]))?;
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
    let health_spec: HealthSpec = section("health")
        .and_then(|v| de(v, "health", &mut problems))
        .unwrap_or_default();
    let business_spec: Option<BusinessSpec> =
        section("business").and_then(|v| de(v, "business", &mut problems));

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
    let health = compile_health(&health_spec, &mut problems);
    let business = business_spec.map(|b| compile_business(&b, &models, &mut problems));
    let (stages, dag) = compile_stages(
        &stage_specs,
        &datasets,
        &models,
        (default_timeout, default_retries, default_backoff),
        file,
        &mut problems,
    );
    // Every query planned against the declared schemas, before any data is read (with the
    // other problems, so that all are reported at once).
    let stand_in = as_of.unwrap_or_else(chrono::Utc::now);
    problems.extend(crate::sql::check_queries(
        &stages, &dag, &datasets, stand_in,
    ));

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
        health,
        business,
        stages,
        dag,
        resolved,
        pseudonyms,
    })
}

fn compile_health(h: &HealthSpec, problems: &mut Vec<String>) -> Health {
    let positive = |v: Option<f64>, key: &str, default: f64, problems: &mut Vec<String>| match v {
        Some(x) if !(x.is_finite() && x > 0.0) => {
            problems.push(format!("health.{key}: {x} must be a number above 0"));
            default
        }
        Some(x) => x,
        None => default,
    };
    let evaluation_periods = h.evaluation_periods.unwrap_or(3);
    if evaluation_periods == 0 {
        problems.push("health.evaluation_periods: must be at least 1".into());
    }
    Health {
        min_outcomes: h.min_outcomes.unwrap_or(100).max(1),
        evaluation_periods: evaluation_periods.max(1),
        max_age_days: positive(h.max_age_days, "max_age_days", 90.0, problems),
        drift_ks: positive(h.drift_ks, "drift_ks", 0.1, problems),
        inference_ms_per_1k: positive(
            h.inference_ms_per_1k,
            "inference_ms_per_1k",
            100.0,
            problems,
        ),
    }
}

fn compile_business(
    b: &BusinessSpec,
    models: &IndexMap<String, Model>,
    problems: &mut Vec<String>,
) -> Business {
    let mut model = |key: &str, name: &Option<String>, task: Task| -> Option<String> {
        let name = name.as_ref()?;
        match models.get(name) {
            None => problems.push(format!(
                "business.{key}: unknown model `{name}`{}",
                suggest(name, models.keys().map(|s| s.as_str()))
            )),
            Some(m) if m.task != task => problems.push(format!(
                "business.{key}: `{name}` is a {:?} model; this figure needs a {task:?} one",
                m.task
            )),
            Some(_) => {}
        }
        Some(name.clone())
    };
    let churn_model = model("churn_model", &b.churn_model, Task::Binary);
    let ltv_model = model("ltv_model", &b.ltv_model, Task::Regression);
    let engagement_model = model("engagement_model", &b.engagement_model, Task::Regression);
    let mut risk_segments: Vec<(String, f64)> = b
        .risk_segments
        .clone()
        .unwrap_or_else(|| {
            [("low", 0.0), ("medium", 0.3), ("high", 0.6)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        })
        .into_iter()
        .collect();
    risk_segments.sort_by(|a, b| a.1.total_cmp(&b.1));
    if risk_segments.iter().any(|(_, v)| !(0.0..=1.0).contains(v)) {
        problems.push("business.risk_segments: each segment's lowest churn probability must be between 0 and 1".into());
    }
    if risk_segments.first().is_some_and(|(_, v)| *v > 0.0) {
        problems.push("business.risk_segments: the lowest segment must start at 0, so that every customer has one".into());
    }
    Business {
        churn_model,
        ltv_model,
        engagement_model,
        risk_segments,
    }
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
    fn sql_stages_and_the_datasets_they_produce_are_checked_together() {
        let sql = |extra: &str| {
            MINIMAL.to_string()
                + "[datasets.e]\nproduced_by = \"derive\"\ncolumns.id = { type = \"string\" }\n\
                   [stages.derive]\nkind = \"sql\"\nquery = \"SELECT id FROM d WHERE x > 0\"\noutput = \"e\"\n"
                + extra
        };
        // A load of `e` must need the stage that writes it.
        let all = problems(&sql(
            "[stages.load_e]\nkind = \"load\"\ndatasets = [\"e\"]\n",
        ))
        .join("\n");
        assert!(
            all.contains("stages.load_e: reads `e`, which stage `derive` produces; add `derive` to its `needs`"),
            "{all}"
        );
        let p = compile_str(
            &sql("[stages.load_e]\nkind = \"load\"\nneeds = [\"derive\"]\ndatasets = [\"e\"]\n"),
            "t.toml",
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(p.datasets["e"].produced_by.as_deref(), Some("derive"));
        // The produced dataset's files are the stage's: not listed as an input of the load.
        let load_e = p.stage("load_e").unwrap();
        assert!(crate::stages::datasets_read(&p, load_e).is_empty());
        assert_eq!(
            crate::stages::datasets_read(&p, p.stage("derive").unwrap()),
            ["d"]
        );
        // Both a location and a producer; a producer that does not write it; an output that is
        // a dataset read from files; one table written twice; a query naming its own output.
        let all = problems(
            &(sql("")
                + "[datasets.f]\nlocation = \"f/\"\nproduced_by = \"derive\"\ncolumns.id = { type = \"string\" }\n\
                   [stages.again]\nkind = \"sql\"\nquery = \"SELECT 1 AS id\"\noutput = \"d\"\n\
                   [stages.twice]\nkind = \"sql\"\nquery = \"SELECT id FROM e\"\noutput = \"e\"\n"),
        )
        .join("\n");
        assert!(
            all.contains("datasets.f: has a location and is produced by stage `derive`"),
            "{all}"
        );
        assert!(
            all.contains("datasets.f.produced_by: `derive` is not a sql stage whose output is `f`"),
            "{all}"
        );
        assert!(
            all.contains("stages.again.output: `d` is a dataset read from `d/`"),
            "{all}"
        );
        assert!(
            all.contains("stages.twice.output: `e` is the dataset stage `derive` produces"),
            "{all}"
        );
        // A query file that is not there; neither query nor query_file.
        let all = problems(
            &(MINIMAL.to_string()
                + "[stages.f]\nkind = \"sql\"\nquery_file = \"nope.sql\"\noutput = \"x\"\n\
                   [stages.g]\nkind = \"sql\"\noutput = \"y\"\n"),
        )
        .join("\n");
        assert!(
            all.contains("stages.f.query_file: cannot read nope.sql"),
            "{all}"
        );
        assert!(
            all.contains("stages.g: give the query inline (`query`) or in a file (`query_file`)"),
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
