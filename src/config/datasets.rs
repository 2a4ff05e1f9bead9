//! The `[datasets]` and `[quality]` sections: declared datasets with their columns (inheritance
//! resolved), and the data-quality checks with their thresholds.

use indexmap::IndexMap;

use super::compile::suggest;
use super::spec::*;
use super::*;

pub(super) fn compile_datasets(
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
        // A column the dataset declares again takes the fields it gives over the inherited ones.
        for (c, cs) in &spec.columns {
            let merged = match columns_spec.get(c) {
                Some(inherited) => merge_column(inherited, cs),
                None => cs.clone(),
            };
            columns_spec.insert(c.clone(), merged);
        }
        if columns_spec.is_empty() {
            problems.push(format!("{path}: declares no columns"));
        }
        let mut columns = Vec::new();
        for (c, cs) in &columns_spec {
            let cpath = format!("{path}.columns.{c}");
            let Some(ty_name) = &cs.ty else {
                problems.push(format!(
                    "{cpath}.type: missing (string, int32, int64, float64, bool, date or timestamp)"
                ));
                continue;
            };
            let Some(ty) = ColumnType::parse(ty_name) else {
                problems.push(format!(
                    "{cpath}.type: unknown type `{ty_name}` (expected string, int32, int64, float64, bool, date or timestamp)"
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
        let location = match (&spec.location, &spec.produced_by) {
            (Some(l), None) => l.clone(),
            (None, Some(_)) => String::new(),
            (Some(_), Some(stage)) => {
                problems.push(format!(
                    "{path}: has a location and is produced by stage `{stage}`; keep one of them"
                ));
                String::new()
            }
            (None, None) => {
                problems.push(format!(
                    "{path}.location: missing (a file, folder or glob under the data root, a URL, \
                     or `produced_by` a sql stage)"
                ));
                String::new()
            }
        };
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
                produced_by: spec.produced_by.clone(),
                primary_key,
                timestamp,
                pii,
                columns,
                // Not inherited: the outcomes of a snapshot may be missing, the snapshot not.
                optional: spec.optional.unwrap_or(false),
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

pub(super) fn compile_quality(
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
    // Defaults are the data-quality table of the monitoring strategy (README, "Data quality").
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

/// An inherited column declaration with the fields a dataset gives for it instead.
fn merge_column(inherited: &ColumnSpec, own: &ColumnSpec) -> ColumnSpec {
    ColumnSpec {
        ty: own.ty.clone().or_else(|| inherited.ty.clone()),
        nullable: own.nullable.or(inherited.nullable),
        min: own.min.or(inherited.min),
        max: own.max.or(inherited.max),
        values: own.values.clone().or_else(|| inherited.values.clone()),
        description: own
            .description
            .clone()
            .or_else(|| inherited.description.clone()),
    }
}
