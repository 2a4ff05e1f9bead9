//! The `[models]` and `[fairness]` sections: each model's task, target, features, algorithm and
//! gates, and the sensitive attributes.

use indexmap::IndexMap;

use super::compile::suggest;
use super::spec::*;
use super::*;
use crate::metrics::Metric;
use crate::model::{Algorithm, Task};

pub(super) fn compile_models(
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
        let produced = || {
            Metric::of(task)
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for g in &m.gates {
            match Gate::parse(g) {
                Err(GateError::Syntax) => problems.push(format!(
                    "{path}.gates: `{g}` is not `metric op value` (e.g. \"r2 >= 0.75\")"
                )),
                Err(GateError::UnknownMetric(metric)) => problems.push(format!(
                    "{path}.gates: a {} model does not produce `{metric}` (it produces {})",
                    m.task,
                    produced()
                )),
                Ok(gate) if !Metric::of(task).contains(&gate.metric) => problems.push(format!(
                    "{path}.gates: a {} model does not produce `{}` (it produces {})",
                    m.task,
                    gate.metric,
                    produced()
                )),
                Ok(gate) => gates.push(gate),
            }
        }
        use crate::model::calibration::Choice;
        let calibration = match (m.calibration.as_deref(), task) {
            (None, Task::Binary) => Choice::Auto,
            (None, Task::Regression) => Choice::None,
            (Some(c), _) => match Choice::parse(c) {
                None => {
                    problems.push(format!(
                        "{path}.calibration: `{c}` is not a calibration{} (choose one of {})",
                        suggest(c, Choice::NAMES.iter().copied()),
                        Choice::NAMES.join(", ")
                    ));
                    Choice::None
                }
                Some(Choice::None) => Choice::None,
                Some(_) if task == Task::Regression => {
                    problems.push(format!(
                        "{path}.calibration: `{c}` calibrates probabilities; a regression model has none (remove the key)"
                    ));
                    Choice::None
                }
                Some(choice) => choice,
            },
        };
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
                calibration,
            },
        );
    }
    out
}

pub(super) fn compile_fairness(
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
