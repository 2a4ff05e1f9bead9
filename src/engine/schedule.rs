//! Which ready stages start: every one, except that at most `run.max_concurrent_fits` train
//! stages fit at once, the most expensive first.

use super::manifest::Manifest;
use crate::config::{Pipeline, StageKind, StageParams};

/// How many train stages may fit at once: `run.max_concurrent_fits`, or (0) no limit.
pub(super) fn fit_slots(p: &Pipeline) -> usize {
    match p.max_concurrent_fits {
        0 => usize::MAX,
        n => n,
    }
}

/// What a train stage is expected to cost (`None` for other kinds): its model's work per row
/// times the training rows its prepare stage reported (1 before that is known).
fn fit_cost(p: &Pipeline, m: &Manifest, i: usize) -> Option<f64> {
    let StageParams::Train { model } = &p.stages[i].params else {
        return None;
    };
    let model = &p.models[model];
    let rows = p
        .dag
        .ancestors(i)
        .into_iter()
        .filter(|&d| matches!(&p.stages[d].params, StageParams::Prepare { dataset, .. } if *dataset == model.dataset))
        .find_map(|d| Some(m.stages.get(&p.stages[d].name)?.prepare()?.train_rows as f64))
        .unwrap_or(1.0);
    Some(
        rows * model
            .algorithm
            .work_per_row(model.task, model.features.len()),
    )
}

/// Which of the ready stages start now.
#[derive(Debug, PartialEq)]
pub(super) struct Ready {
    pub(super) start: Vec<usize>,
    /// Train stages held back until a fit finishes.
    pub(super) held: Vec<usize>,
}

/// Every ready stage starts, except that at most `slots` train stages fit at once, the most
/// expensive first (so the longest fit is not the one left to run alone at the end). Each fit
/// holds its own binned rows and gradients, so a limit bounds the memory of a pipeline with many
/// models. It is not the default: on 2 cores the three shipped fits at 10 M customers ended
/// sooner all at once than two at a time, because the last fit alone leaves a core idle in its
/// serial parts (docs/PERFORMANCE.md, item 27).
pub(super) fn schedule(
    p: &Pipeline,
    m: &Manifest,
    ready: Vec<usize>,
    in_flight: &[usize],
    slots: usize,
) -> Ready {
    let (mut fits, mut start): (Vec<(usize, f64)>, Vec<usize>) = (Vec::new(), Vec::new());
    for i in ready {
        match fit_cost(p, m, i) {
            Some(c) => fits.push((i, c)),
            None => start.push(i),
        }
    }
    // Stable: equal costs keep the pipeline file's order.
    fits.sort_by(|a, b| b.1.total_cmp(&a.1));
    let running = in_flight
        .iter()
        .filter(|&&i| p.stages[i].kind() == StageKind::Train)
        .count();
    let free = slots.max(1).saturating_sub(running);
    let held = fits.split_off(free.min(fits.len()));
    start.extend(fits.into_iter().map(|(i, _)| i));
    Ready {
        start,
        held: held.into_iter().map(|(i, _)| i).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::manifest::tests::manifest;
    use crate::stages::record::Summary;

    /// The shipped pipeline with `--set` overrides.
    fn shipped(set: &[(&str, &str)]) -> Pipeline {
        let ov = crate::config::compile::Overrides {
            set: set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        crate::config::compile::compile_file(
            concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/engagement.toml"),
            &ov,
        )
        .unwrap()
    }

    /// The shipped pipeline's manifest after `prepare` reported `train_rows`.
    fn prepared(p: &Pipeline, train_rows: u64) -> Manifest {
        let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
        let mut m = manifest("r", &names);
        let prep = m.stages.get_mut("prepare").unwrap();
        prep.kind = StageKind::Prepare;
        prep.status = crate::stages::StageStatus::Succeeded;
        prep.summary = Some(Summary::Prepare(crate::stages::prepare::Summary {
            rows: train_rows,
            train_rows,
            holdout_rows: 0,
        }));
        m
    }

    fn names(p: &Pipeline, ix: &[usize]) -> Vec<String> {
        ix.iter().map(|&i| p.stages[i].name.clone()).collect()
    }

    #[test]
    fn fits_start_most_expensive_first_and_no_more_than_the_slots() {
        // Churn (binary: logistic loss) costs more than a regression with as many trees; ltv is
        // given more trees than engagement.
        let p = shipped(&[("models.ltv.params.n_trees", "250")]);
        let m = prepared(&p, 1_000_000);
        let ix = |n: &str| p.stage_index(n).unwrap();
        let cost = |n: &str| fit_cost(&p, &m, ix(n)).unwrap();
        assert!(cost("train_churn") > cost("train_ltv"));
        assert!(cost("train_ltv") > cost("train_engagement"));
        // The rows come from the prepare stage: ten times the rows, ten times the cost.
        let m10 = prepared(&p, 10_000_000);
        assert_eq!(
            fit_cost(&p, &m10, ix("train_churn")),
            Some(10.0 * cost("train_churn"))
        );
        assert_eq!(fit_cost(&p, &m, ix("score")), None);

        let trains = vec![ix("train_engagement"), ix("train_churn"), ix("train_ltv")];
        let mut ready = trains.clone();
        ready.push(ix("drift"));
        // Two slots, nothing running: the two most expensive start, other kinds always start.
        let r = schedule(&p, &m, ready.clone(), &[], 2);
        assert_eq!(names(&p, &r.start), ["drift", "train_churn", "train_ltv"]);
        assert_eq!(names(&p, &r.held), ["train_engagement"]);
        // One fit (and a stage of another kind) running: one more starts.
        let rest = vec![ix("train_engagement"), ix("train_ltv")];
        let r = schedule(&p, &m, rest, &[ix("train_churn"), ix("validate")], 2);
        assert_eq!(names(&p, &r.start), ["train_ltv"]);
        assert_eq!(names(&p, &r.held), ["train_engagement"]);
        // Both slots taken: every fit waits.
        let r = schedule(
            &p,
            &m,
            vec![ix("train_engagement")],
            &[ix("train_churn"), ix("train_ltv")],
            2,
        );
        assert!(r.start.is_empty());
        assert_eq!(names(&p, &r.held), ["train_engagement"]);
        // Enough slots: all start, most expensive first; zero slots still lets one run.
        let r = schedule(&p, &m, trains.clone(), &[], 8);
        assert_eq!(
            names(&p, &r.start),
            ["train_churn", "train_ltv", "train_engagement"]
        );
        let r = schedule(&p, &m, trains.clone(), &[], 0);
        assert_eq!(names(&p, &r.start), ["train_churn"]);
        // Equal costs keep the pipeline file's order.
        let p = shipped(&[]);
        let m = prepared(&p, 1000);
        let r = schedule(&p, &m, trains, &[], 3);
        assert_eq!(
            names(&p, &r.start),
            ["train_churn", "train_engagement", "train_ltv"]
        );
    }

    #[test]
    fn fit_slots_default_to_no_limit() {
        assert_eq!(fit_slots(&shipped(&[])), usize::MAX);
        assert_eq!(fit_slots(&shipped(&[("run.max_concurrent_fits", "1")])), 1);
    }
}
