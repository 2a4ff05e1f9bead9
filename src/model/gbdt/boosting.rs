//! The boosting loop, as LightGBM's `src/boosting/gbdt.cpp`: bin the features, order the rows,
//! then grow `n_trees` trees, each on the gradients of the scores so far.

use rayon::prelude::*;

use super::bin::{big_vec, bin_columns, reorder_columns, row_order, Binned};
use super::grower::{Grower, Root};
use super::histogram::logistic_root;
use super::objective::{init_score, Gh, Objective};
use super::params::{Checked, Params};
use super::partition::FitRunning;
use super::{Booster, Columns};

/// Trains a booster on column-major features `x[feature][row]` and targets `y` (0/1 for
/// logistic).
pub fn train(x: &[&[f64]], y: &[f64], objective: Objective, p: &Checked) -> Booster {
    train_columns(&x, y, objective, p).expect("slices of one length")
}

/// [`train`] on features read one at a time from `x` (see [`Columns`]); `Err` when `x` cannot
/// give a feature or its length is not `y`'s.
pub fn train_columns(
    x: &dyn Columns,
    y: &[f64],
    objective: Objective,
    p: &Checked,
) -> Result<Booster, String> {
    let n = y.len();
    let (mut columns, bounds) = bin_columns(x, n, p.max_bins)?;
    let (order, keys) = row_order(&columns, &bounds, y, objective, p);
    reorder_columns(&mut columns[..n * bounds.len()], n, &order);
    let y: Vec<f64> = order.iter().map(|&r| y[r as usize]).collect();
    drop(order);
    let mut binned = Binned::new(columns, bounds, n);
    binned.sort_keys = keys;
    Ok(train_binned(binned, &y, objective, p))
}

/// Grows the trees on rows in the order of `binned` and `y` (see [`row_order`]): nothing
/// below depends on which row is which, only on the order in which rows are added up.
pub(super) fn train_binned(binned: Binned, y: &[f64], objective: Objective, p: &Params) -> Booster {
    let _running = FitRunning::new();
    train_binned_with(binned, y, objective, p, FitRunning::alone).0
}

/// [`train_binned`], asking `share_cores` before each large partition whether to run it on every
/// core; also returns how many did.
pub(super) fn train_binned_with(
    binned: Binned,
    y: &[f64],
    objective: Objective,
    p: &Params,
    share_cores: fn() -> bool,
) -> (Booster, usize) {
    let n = y.len();
    let init_score = init_score(y, objective);
    let mut trees = Vec::with_capacity(p.n_trees);
    let mut importance = vec![0.0; binned.n_features];
    let mut grower = Grower {
        b: &binned,
        p,
        bufs: [big_vec(n, 0), big_vec(n, 0), Vec::new()],
        leaf_of: big_vec(if p.num_leaves <= 256 { n } else { 0 }, 0),
        share_cores,
        shared: 0,
    };
    match objective {
        Objective::SquaredError => {
            // Gradients alone: the hessian is 1 (see `Grad`). A row's gradient is its score
            // minus its target, so a tree's leaf values are added to the gradients themselves:
            // no scores are kept, and no pass over all rows recomputes the gradients.
            let mut g: Vec<f64> = big_vec(n, 0.0);
            g.par_iter_mut()
                .zip(y)
                .for_each(|(e, yi)| *e = init_score - yi);
            // The root's histogram, carried from tree to tree (see `grow`).
            let mut root = Vec::new();
            for _ in 0..p.n_trees {
                let (tree, leaves) =
                    grower.grow::<2, f64>(&g, &mut importance, Root::Carried(&mut root));
                grower.add_leaf_values(&leaves, &mut g);
                trees.push(tree);
            }
        }
        Objective::Logistic => {
            let mut score = big_vec(n, init_score);
            let mut gh: Vec<Gh> = big_vec(n, [0.0, 1.0]);
            let mut counts = Vec::new();
            for _ in 0..p.n_trees {
                let (hist, gs, hs) = logistic_root(&binned, &mut gh, &score, y, &mut counts);
                let root = Root::Given(hist, gs, hs);
                let (tree, leaves) = grower.grow::<4, Gh>(&gh, &mut importance, root);
                grower.add_leaf_values(&leaves, &mut score);
                trees.push(tree);
            }
        }
    }
    let booster = Booster {
        objective,
        init_score,
        trees,
        gain_importance: importance,
    };
    (booster, grower.shared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gbdt::params::Params;
    use crate::model::gbdt::testutil::{assert_same_trees, data};

    #[test]
    fn fits_a_nonlinear_function_and_is_deterministic() {
        let (a, b, y) = data(20_000);
        let x: Vec<&[f64]> = vec![&a, &b];
        let p = Params {
            n_trees: 100,
            ..Default::default()
        }
        .check()
        .unwrap();
        let m = train(&x, &y, Objective::SquaredError, &p);
        let pred = m.predict(&x);
        let r2 = crate::metrics::r2(&y, &pred).unwrap();
        assert!(r2 > 0.98, "r2 {r2}");
        assert!(
            m == train(&x, &y, Objective::SquaredError, &p),
            "training is not deterministic"
        );
        // JSON round trip predicts identically.
        let back: Booster = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert!(
            back.predict(&x) == pred,
            "predictions differ after a JSON round trip"
        );
    }

    #[test]
    fn logistic_separates_classes() {
        let (a, b, _) = data(20_000);
        let y: Vec<f64> = a
            .iter()
            .zip(&b)
            .map(|(a, b)| f64::from(u8::from(a + 0.3 * b > 0.5)))
            .collect();
        let x: Vec<&[f64]> = vec![&a, &b];
        let m = train(
            &x,
            &y,
            Objective::Logistic,
            &Params {
                n_trees: 50,
                ..Default::default()
            }
            .check()
            .unwrap(),
        );
        let p = m.predict(&x);
        let yb: Vec<bool> = y.iter().map(|v| *v > 0.5).collect();
        assert!(crate::metrics::roc_auc(&yb, &p).unwrap() > 0.99);
        assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn a_fit_alone_partitions_on_every_core_and_grows_the_same_trees() {
        // 200 000 rows: the first splits' leaves are several partition chunks long.
        let (a, b, y) = data(200_000);
        let x: &[&[f64]] = &[&a, &b];
        let p = Params {
            n_trees: 4,
            ..Params::default()
        };
        let yl: Vec<f64> = y.iter().map(|v| f64::from(u8::from(*v > 1.5))).collect();
        for (objective, y) in [(Objective::SquaredError, &y), (Objective::Logistic, &yl)] {
            let n = y.len();
            let (columns, bounds) = bin_columns(&x, n, p.max_bins).unwrap();
            let fit = |share: fn() -> bool| {
                let binned = Binned::new(columns.clone(), bounds.clone(), n);
                train_binned_with(binned, y, objective, &p, share)
            };
            let (serial, none) = fit(|| false);
            let (shared, some) = fit(|| true);
            assert_eq!(none, 0);
            assert!(some > 0, "{objective:?}: no partition ran on every core");
            assert_eq!(
                serde_json::to_string(&serial).unwrap(),
                serde_json::to_string(&shared).unwrap(),
                "{objective:?}"
            );
        }
    }

    #[test]
    fn the_trees_do_not_depend_on_the_order_rows_come_in() {
        // The booster sorts rows itself: a shuffled copy of the data grows the same trees, up to
        // the order in which each bin's sums were added.
        let (a, b, y) = data(20_000);
        let mut rng = crate::generate::Rng::new(23);
        let mut perm: Vec<usize> = (0..a.len()).collect();
        for i in (1..perm.len()).rev() {
            perm.swap(i, rng.below(i + 1));
        }
        let shuffle = |v: &[f64]| perm.iter().map(|&r| v[r]).collect::<Vec<f64>>();
        let (sa, sb, sy) = (shuffle(&a), shuffle(&b), shuffle(&y));
        let p = Params {
            n_trees: 30,
            ..Default::default()
        }
        .check()
        .unwrap();
        for (objective, y, sy) in [
            (Objective::SquaredError, y.clone(), sy.clone()),
            (
                Objective::Logistic,
                y.iter().map(|v| f64::from(u8::from(*v > 1.5))).collect(),
                sy.iter().map(|v| f64::from(u8::from(*v > 1.5))).collect(),
            ),
        ] {
            let m = train(&[&a, &b], &y, objective, &p);
            let s = train(&[&sa, &sb], &sy, objective, &p);
            assert_same_trees(&m, &s, &format!("{objective:?}"));
        }
    }
}
