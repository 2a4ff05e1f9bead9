//! Histogram-based gradient-boosted trees, grown leaf-wise as LightGBM grows them, with
//! LightGBM's defaults. Features are cut into at most 255 bins once; each tree starts from the
//! gradient and hessian histograms of all rows and repeatedly splits the leaf with the largest
//! gain, building the histogram of the smaller child and deriving the larger one by
//! subtraction. Nothing is sampled, so training is deterministic: the same data and parameters
//! give the same trees, bit for bit.
//!
//! One job a file, along LightGBM's lines:
//!
//! | file | job | LightGBM |
//! | --- | --- | --- |
//! | [`params`] | hyperparameters and their check | `config.h` |
//! | [`objective`] | losses: gradients, hessians, the initial score | `src/objective/` |
//! | [`bin`] | binning, bundles of few-bin features, the row order | `src/io/bin.cpp` |
//! | [`histogram`] | gradient histograms of a leaf's rows | `feature_histogram.hpp` |
//! | [`split`] | the best split of a leaf | `FindBestThreshold` |
//! | [`partition`] | a leaf's rows into its children | `data_partition.hpp` |
//! | [`grower`] | one tree, leaf by leaf | `serial_tree_learner.cpp` |
//! | [`boosting`] | the trees, one on the gradients of the last | `src/boosting/gbdt.cpp` |
//! | [`predict`], [`search`] | scoring rows | `gbdt_prediction.cpp` |
//!
//! What keeps it fast, in brief (the measurements are in docs/PERFORMANCE.md): rows are kept in
//! an order in which a leaf's rows lie together; histograms prefetch each row's bins and
//! gradients ahead of use and add a row with one vector addition; features of few bins share a
//! byte; the root's histogram is carried from tree to tree for squared error and built with the
//! gradients for logistic loss; partitions are branch-free and, for a fit running alone, use
//! both cores.

pub mod boosting;
pub mod objective;
pub mod params;

mod bin;
mod grower;
mod histogram;
mod partition;
mod predict;
mod search;
mod split;
#[cfg(test)]
mod testutil;

use serde::{Deserialize, Serialize};

use super::Columns;
pub use boosting::{train, train_columns};
use objective::sigmoid;
pub use objective::Objective;
pub use params::{Checked, Params};

/// One tree in flat arrays. Node `i` is internal when `left[i] >= 0`: rows with
/// `x[feature[i]] <= threshold[i]` go left. Leaves hold `value[i]` (learning rate applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub feature: Vec<u32>,
    pub threshold: Vec<f64>,
    pub left: Vec<i32>,
    pub right: Vec<i32>,
    pub value: Vec<f64>,
}

impl Tree {
    /// Steps from the root to the deepest leaf.
    pub(crate) fn depth(&self) -> usize {
        fn d(t: &Tree, i: usize) -> usize {
            if t.left[i] < 0 {
                0
            } else {
                1 + d(t, t.left[i] as usize).max(d(t, t.right[i] as usize))
            }
        }
        d(self, 0)
    }
}

/// A trained booster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booster {
    pub objective: Objective,
    pub init_score: f64,
    pub trees: Vec<Tree>,
    /// Total split gain per feature: a simple importance.
    pub gain_importance: Vec<f64>,
}

impl Booster {
    /// Raw scores of column-major features (`x[feature][row]`): the initial score plus each
    /// tree's leaf value, added in tree order (see [`predict`] for how).
    pub fn raw(&self, x: &[&[f64]]) -> Vec<f64> {
        predict::raw(self, x)
    }

    /// Predictions: the score for regression, the probability for logistic.
    pub fn predict(&self, x: &[&[f64]]) -> Vec<f64> {
        let mut s = self.raw(x);
        self.link(&mut s);
        s
    }

    /// [`Booster::predict`] of several boosters over the same features, each value ranked once
    /// for all of them where their thresholds allow (see [`predict`]).
    pub fn predict_many(boosters: &[&Booster], x: &[&[f64]]) -> Vec<Vec<f64>> {
        let mut out = predict::raw_many(boosters, x);
        for (b, s) in boosters.iter().zip(&mut out) {
            b.link(s);
        }
        out
    }

    /// Raw scores to predictions.
    fn link(&self, s: &mut [f64]) {
        if self.objective == Objective::Logistic {
            s.iter_mut().for_each(|v| *v = sigmoid(*v));
        }
    }
}
