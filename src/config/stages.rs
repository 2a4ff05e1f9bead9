//! The `[stages]` section: each stage's kind and parameters, its dependencies, timeouts and
//! retries, and the checks across stages (a train stage needs a prepare stage upstream, ...).

use std::time::Duration;

use indexmap::IndexMap;

use super::compile::{de, suggest};
use super::compile::{duration, timeout};
use super::spec::*;
use super::*;

/// Every stage of the `[stages]` section and the DAG of their `needs`.
pub(super) fn compile_stages(
    specs: &[(String, StageSpec)],
    datasets: &IndexMap<String, Dataset>,
    models: &IndexMap<String, Model>,
    defaults: (Duration, u32, Duration),
    file: &str,
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
        let known = Known {
            datasets,
            models,
            file,
        };
        let params = stage_params(s, &path, &known, problems);
        let timeout =
            timeout(&s.timeout, &format!("{path}.timeout"), problems).unwrap_or(defaults.0);
        let retry_backoff = duration(&s.retry_backoff, &format!("{path}.retry_backoff"), problems)
            .unwrap_or(defaults.2);
        if let Some(params) = params {
            stages.push(Stage {
                name: name.clone(),
                params,
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
        // Checks across stages need an acyclic graph of fully parsed stages.
        check_across(&stages, &dag, datasets, problems);
    }
    (stages, dag)
}

/// What the stages may refer to.
struct Known<'a> {
    datasets: &'a IndexMap<String, Dataset>,
    models: &'a IndexMap<String, Model>,
    /// The pipeline file, which `query_file` paths are relative to.
    file: &'a str,
}

impl Known<'_> {
    fn check_datasets(&self, ds: &[String], path: &str, problems: &mut Vec<String>) {
        for d in ds {
            if !self.datasets.contains_key(d) {
                problems.push(format!(
                    "{path}.datasets: unknown dataset `{d}`{}",
                    suggest(d, self.datasets.keys().map(|s| s.as_str()))
                ));
            }
        }
    }

    /// The models a stage names, or every declared model; unknown names are problems.
    fn models(
        &self,
        names: Option<Vec<String>>,
        path: &str,
        problems: &mut Vec<String>,
    ) -> Vec<String> {
        let names = names.unwrap_or_else(|| self.models.keys().cloned().collect());
        for m in names.iter().filter(|m| !self.models.contains_key(*m)) {
            problems.push(format!("{path}.models: unknown model `{m}`"));
        }
        names
    }
}

/// The stage name of a `stages.NAME` path.
fn name_of(path: &str) -> &str {
    path.strip_prefix("stages.").unwrap_or(path)
}

/// A stage's kind and its parameters, checked against the datasets and models.
fn stage_params(
    s: &StageSpec,
    path: &str,
    known: &Known,
    problems: &mut Vec<String>,
) -> Option<StageParams> {
    let params = toml::Value::Table(s.params.clone());
    let (datasets, models) = (known.datasets, known.models);
    match s.kind.as_str() {
        "load" => de::<LoadParams>(params, path, problems).map(|p| {
            known.check_datasets(&p.datasets, path, problems);
            StageParams::Load {
                datasets: p.datasets,
            }
        }),
        "validate" => de::<ValidateParams>(params, path, problems).map(|p| {
            known.check_datasets(&p.datasets, path, problems);
            StageParams::Validate {
                datasets: p.datasets,
            }
        }),
        "prepare" => de::<PrepareParams>(params, path, problems).map(|p| {
            known.check_datasets(std::slice::from_ref(&p.dataset), path, problems);
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
            StageParams::Prepare {
                dataset: p.dataset,
                holdout,
            }
        }),
        "train" => de::<TrainParams>(params, path, problems).map(|p| {
            if !models.contains_key(&p.model) {
                problems.push(format!(
                    "{path}.model: unknown model `{}`{}",
                    p.model,
                    suggest(&p.model, models.keys().map(|s| s.as_str()))
                ));
            }
            StageParams::Train { model: p.model }
        }),
        "score" => de::<ScoreParams>(params, path, problems).map(|p| {
            known.check_datasets(std::slice::from_ref(&p.dataset), path, problems);
            let from = match p.models_from.as_deref() {
                None | Some("run") => ModelSource::Run,
                Some("registry") => ModelSource::Registry,
                Some(other) => {
                    problems.push(format!(
                        "{path}.models_from: `{other}` is not `run` (the models this run trains) or `registry` (each model's production version)"
                    ));
                    ModelSource::Run
                }
            };
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
            StageParams::Score { dataset: p.dataset, models: names, from }
        }),
        "evaluate" => de::<EvaluateParams>(params, path, problems).map(|p| {
            known.check_datasets(std::slice::from_ref(&p.outcomes), path, problems);
            let outcomes = datasets.get(&p.outcomes);
            let names = match p.models {
                Some(names) => {
                    for m in &names {
                        match (models.get(m), outcomes) {
                            (None, _) => problems.push(format!("{path}.models: unknown model `{m}`")),
                            (Some(model), Some(ds)) if ds.column(&model.target).is_none() => problems.push(format!(
                                "{path}.models: `{m}`'s target `{}` is not a declared column of `{}`; declare it there (nullable until it is observed)",
                                model.target, p.outcomes
                            )),
                            _ => {}
                        }
                    }
                    names
                }
                None => models
                    .values()
                    .filter(|m| outcomes.is_some_and(|ds| ds.column(&m.target).is_some()))
                    .map(|m| m.name.clone())
                    .collect(),
            };
            if let Some(ds) = outcomes {
                if ds.primary_key.is_empty() {
                    problems.push(format!(
                        "{path}.outcomes: `{}` has no primary_key to join scores on",
                        p.outcomes
                    ));
                }
                if ds.timestamp.is_none() {
                    problems.push(format!(
                        "{path}.outcomes: `{}` has no timestamp: when each outcome was observed",
                        p.outcomes
                    ));
                }
                if names.is_empty() {
                    problems.push(format!(
                        "{path}.outcomes: `{}` declares no model's target; add the target columns it observes",
                        p.outcomes
                    ));
                }
            }
            let horizon = duration(&p.horizon, &format!("{path}.horizon"), problems)
                .unwrap_or_default();
            StageParams::Evaluate { outcomes: p.outcomes, models: names, horizon }
        }),
        "drift" => de::<DriftParams>(params, path, problems).map(|p| {
            known.check_datasets(&[p.reference.clone(), p.current.clone()], path, problems);
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
            StageParams::Drift {
                reference: p.reference,
                current: p.current,
                features,
                ks_threshold: p.ks_threshold.unwrap_or(0.1),
                psi_threshold: p.psi_threshold.unwrap_or(0.2),
            }
        }),
        "fairness" => de::<FairnessParams>(params, path, problems).map(|p| {
            StageParams::Fairness {
                models: known.models(p.models, path, problems),
            }
        }),
        "health" => de::<toml::Table>(params, path, problems).map(|t| {
            for k in t.keys() {
                problems.push(format!("{path}.{k}: unknown key"));
            }
            StageParams::Health
        }),
        "sql" => de::<SqlParams>(params, path, problems).and_then(|p| {
            let query = match (p.query, p.query_file) {
                (Some(q), None) => crate::sql::Query::new(q, format!("{path}.query")),
                (None, Some(f)) => {
                    let dir = std::path::Path::new(known.file)
                        .parent()
                        .unwrap_or(std::path::Path::new(""));
                    let full = dir.join(&f).to_string_lossy().into_owned();
                    match std::fs::read_to_string(&full) {
                        Ok(q) => crate::sql::Query::new(q, full),
                        Err(e) => {
                            problems.push(format!(
                                "{path}.query_file: cannot read {full}: {e} (the path is relative to the pipeline file)"
                            ));
                            return None;
                        }
                    }
                }
                _ => {
                    problems.push(format!(
                        "{path}: give the query inline (`query`) or in a file (`query_file`), one of them"
                    ));
                    return None;
                }
            };
            let query = match query {
                Ok(q) => q,
                Err(e) => {
                    problems.push(format!("{path}: {e}"));
                    return None;
                }
            };
            if let Some(ds) = datasets.get(&p.output) {
                let stage = name_of(path);
                match &ds.produced_by {
                    Some(by) if by == stage => {}
                    Some(by) => problems.push(format!(
                        "{path}.output: `{}` is the dataset stage `{by}` produces; name another table",
                        p.output
                    )),
                    None => problems.push(format!(
                        "{path}.output: `{}` is a dataset read from `{}`; name another table, or declare datasets.{}.produced_by = \"{stage}\" instead of its location",
                        p.output, ds.location, p.output
                    )),
                }
            }
            Some(StageParams::Sql {
                query,
                output: p.output,
            })
        }),
        "register" => de::<RegisterParams>(params, path, problems).map(|p| {
            StageParams::Register {
                models: known.models(p.models, path, problems),
            }
        }),
        other => {
            problems.push(format!(
                "{path}.kind: unknown stage kind `{other}`{} (this build knows: {})",
                suggest(other, StageKind::ALL.iter().map(|k| k.name())),
                StageKind::ALL.map(|k| k.name()).join(", ")
            ));
            None
        }
    }
}

/// The sql stage whose output is `table` (the first, if several name it).
fn producer(stages: &[Stage], table: &str) -> Option<usize> {
    stages
        .iter()
        .position(|s| matches!(&s.params, StageParams::Sql { output, .. } if output == table))
}

/// Checks that need the whole DAG: each stage has upstream what it reads.
fn check_across(
    stages: &[Stage],
    dag: &Dag,
    datasets: &IndexMap<String, Dataset>,
    problems: &mut Vec<String>,
) {
    let upstream_kind = |i: usize, kind: StageKind| {
        dag.ancestors(i)
            .into_iter()
            .any(|a| stages[a].kind() == kind)
    };
    for (i, st) in stages.iter().enumerate() {
        match &st.params {
            StageParams::Prepare { .. } if !upstream_kind(i, StageKind::Validate) => {
                problems.push(format!(
                    "stages.{}: a prepare stage needs a validate stage upstream (its clean rows)",
                    st.name
                ))
            }
            StageParams::Train { .. } if !upstream_kind(i, StageKind::Prepare) => {
                problems.push(format!(
                    "stages.{}: a train stage needs a prepare stage upstream",
                    st.name
                ))
            }
            StageParams::Score {
                from: ModelSource::Registry,
                ..
            } => {}
            StageParams::Evaluate { outcomes, .. } => {
                let validated = dag.ancestors(i).into_iter().any(|a| {
                    matches!(&stages[a].params, StageParams::Validate { datasets } if datasets.contains(outcomes))
                });
                if !validated {
                    problems.push(format!(
                        "stages.{}: no validate stage of `{outcomes}` runs before it; add one to `needs`",
                        st.name
                    ));
                }
            }
            StageParams::Score { models: ms, .. }
            | StageParams::Fairness { models: ms }
            | StageParams::Register { models: ms } => {
                for m in ms {
                    let trained = dag.ancestors(i).into_iter().any(
                        |a| matches!(&stages[a].params, StageParams::Train { model } if model == m),
                    );
                    if !trained {
                        problems.push(format!(
                            "stages.{}: no train stage for model `{m}` runs before it; add it to `needs`",
                            st.name
                        ));
                    }
                }
            }
            StageParams::Drift { .. } if !upstream_kind(i, StageKind::Validate) => {
                problems.push(format!(
                    "stages.{}: a drift stage needs a validate stage upstream",
                    st.name
                ))
            }
            _ => {}
        }
        // What a stage reads that a sql stage produces: that stage must run before it.
        let reads: Vec<&String> = match &st.params {
            StageParams::Load { datasets: ds } => ds.iter().collect(),
            StageParams::Sql { query, .. } => query.tables.iter().collect(),
            _ => Vec::new(),
        };
        for t in reads {
            let Some(j) = producer(stages, t) else {
                continue;
            };
            if j == i {
                problems.push(format!(
                    "stages.{}: the query reads `{t}`, the table it produces",
                    st.name
                ));
            } else if !dag.ancestors(i).contains(&j) {
                problems.push(format!(
                    "stages.{}: reads `{t}`, which stage `{}` produces; add `{}` to its `needs`",
                    st.name, stages[j].name, stages[j].name
                ));
            }
        }
        if let StageParams::Sql { output, .. } = &st.params {
            if producer(stages, output) != Some(i) {
                problems.push(format!(
                    "stages.{}.output: `{output}` is also the output of stage `{}`; name each table once",
                    st.name,
                    stages[producer(stages, output).expect("a producer")].name
                ));
            }
        }
        if let StageParams::Validate { datasets: ds } = &st.params {
            let loaded: Vec<&String> = dag
                .ancestors(i)
                .into_iter()
                .flat_map(|a| match &stages[a].params {
                    StageParams::Load { datasets } => datasets.iter().collect::<Vec<_>>(),
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
    for (name, d) in datasets {
        let Some(made_by) = &d.produced_by else {
            continue;
        };
        let ok = stages.iter().any(|s| {
            &s.name == made_by
                && matches!(&s.params, StageParams::Sql { output, .. } if output == name)
        });
        if !ok {
            problems.push(format!(
                "datasets.{name}.produced_by: `{made_by}` is not a sql stage whose output is `{name}`"
            ));
        }
    }
}
