//! The random-forest baseline, fitted with smartcore.
//!
//! Regression models are smartcore's `RandomForestRegressor`. Binary models are the same forest
//! of regression trees on the 0/1 target: for a 0/1 target the squared-error split criterion is
//! proportional to the Gini impurity, and the mean of a leaf is the fraction of positives in it,
//! so the forest's mean is the probability scikit-learn's `RandomForestClassifier.predict_proba`
//! gives (smartcore's own classifier only votes, which gives no usable ranking for AUC).
//! Defaults follow scikit-learn — 100 trees on bootstrap samples, all features as split
//! candidates for regression and √features for binary models — except the depth, which is
//! limited to 10: smartcore's exact splitter scans every training row at every node, so a tree's
//! cost grows with rows × nodes, and trees grown to purity on the fixtures' 16 000 rows take
//! seconds each (set `max_depth = 0` to grow them anyway). Trees are fitted in parallel, tree
//! `i` with seed `seed + i`, and averaged in order, so training is deterministic; each tree is
//! stored as smartcore serialises it.

use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use smartcore::ensemble::random_forest_regressor::{
    RandomForestRegressor, RandomForestRegressorParameters,
};
use smartcore::linalg::basic::matrix::DenseMatrix;

/// Parameters of `algorithm = "random_forest"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForestParams {
    pub n_trees: usize,
    /// 0 = grow until leaves are pure (or `min_samples_split` stops them).
    pub max_depth: u16,
    pub min_samples_leaf: usize,
    pub min_samples_split: usize,
    /// Features tried at each split; 0 = all for regression, √features for binary models.
    pub max_features: usize,
    pub seed: u64,
}

impl Default for ForestParams {
    fn default() -> Self {
        ForestParams {
            n_trees: 100,
            max_depth: 10,
            min_samples_leaf: 1,
            min_samples_split: 2,
            max_features: 0,
            seed: 42,
        }
    }
}

impl ForestParams {
    /// Every invalid field, one message each.
    pub fn check(&self) -> Vec<String> {
        let mut e = Vec::new();
        if self.n_trees == 0 {
            e.push("n_trees must be at least 1".into());
        }
        if self.min_samples_leaf == 0 {
            e.push("min_samples_leaf must be at least 1".into());
        }
        if self.min_samples_split < 2 {
            e.push("min_samples_split must be at least 2".into());
        }
        e
    }
}

type Rf = RandomForestRegressor<f64, f64, DenseMatrix<f64>, Vec<f64>>;

/// A fitted forest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forest {
    /// Binary model: predictions are probabilities, clamped to [0, 1].
    pub probability: bool,
    pub features: usize,
    /// One single-tree smartcore forest per tree (so they can be fitted in parallel).
    pub trees: Vec<Arc<Rf>>,
}

fn matrix(x: &[&[f64]]) -> Result<DenseMatrix<f64>, String> {
    let n = x.first().map_or(0, |c| c.len());
    DenseMatrix::new(n, x.len(), x.concat(), true).map_err(|e| e.to_string())
}

impl Forest {
    /// Fits on column-major features `x` and target `y` (0/1 when `probability`).
    pub fn fit(
        x: &[&[f64]],
        y: &[f64],
        probability: bool,
        p: &ForestParams,
    ) -> Result<Forest, String> {
        let m = match (p.max_features, probability) {
            (0, true) => ((x.len() as f64).sqrt().floor() as usize).max(1),
            (0, false) => x.len(),
            (k, _) => k.min(x.len()),
        };
        let data = matrix(x)?;
        let y = y.to_vec();
        let trees = (0..p.n_trees as u64)
            .into_par_iter()
            .map(|i| {
                let params = RandomForestRegressorParameters {
                    max_depth: (p.max_depth > 0).then_some(p.max_depth),
                    min_samples_leaf: p.min_samples_leaf,
                    min_samples_split: p.min_samples_split,
                    n_trees: 1,
                    m: Some(m),
                    keep_samples: false,
                    seed: p.seed.wrapping_add(i),
                };
                Rf::fit(&data, &y, params)
                    .map(Arc::new)
                    .map_err(|e| format!("random forest: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Forest {
            probability,
            features: x.len(),
            trees,
        })
    }

    /// Predictions for column-major features (`x[feature][row]`, through the transform).
    pub fn predict(&self, x: &[&[f64]]) -> Result<Vec<f64>, String> {
        if x.len() != self.features {
            return Err(format!(
                "the forest was trained on {} features, not {}",
                self.features,
                x.len()
            ));
        }
        if x.first().is_none_or(|c| c.is_empty()) {
            return Ok(Vec::new());
        }
        let data = matrix(x)?;
        let per_tree = self
            .trees
            .par_iter()
            .map(|t| t.predict(&data).map_err(|e| format!("random forest: {e}")))
            .collect::<Result<Vec<_>, String>>()?;
        // Summed in tree order, whatever order the trees finished in.
        let mut p = vec![0.0; per_tree[0].len()];
        for t in &per_tree {
            p.iter_mut().zip(t).for_each(|(s, v)| *s += v);
        }
        let k = per_tree.len() as f64;
        p.iter_mut().for_each(|v| *v /= k);
        if self.probability {
            p.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 600 rows of y = 3·sin(x0) + x1² + small noise, from a fixed LCG.
    fn data() -> (Vec<Vec<f64>>, Vec<f64>) {
        let mut s = 12345u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut x0, mut x1, mut x2, mut y) = (vec![], vec![], vec![], vec![]);
        for _ in 0..600 {
            let (a, b, c) = (next() * 6.0, next() * 2.0 - 1.0, next());
            x0.push(a);
            x1.push(b);
            x2.push(c);
            y.push(3.0 * a.sin() + b * b + 0.1 * (next() - 0.5));
        }
        (vec![x0, x1, x2], y)
    }

    fn r2(y: &[f64], p: &[f64]) -> f64 {
        let mean = y.iter().sum::<f64>() / y.len() as f64;
        let ss: f64 = y.iter().map(|v| (v - mean).powi(2)).sum();
        1.0 - y.iter().zip(p).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / ss
    }

    #[test]
    fn deterministic_accurate_and_round_trips() {
        let (x, y) = data();
        let views: Vec<&[f64]> = x.iter().map(|c| &c[..400]).collect();
        let hold: Vec<&[f64]> = x.iter().map(|c| &c[400..]).collect();
        let p = ForestParams {
            n_trees: 30,
            ..Default::default()
        };
        let a = Forest::fit(&views, &y[..400], false, &p).unwrap();
        let b = Forest::fit(&views, &y[..400], false, &p).unwrap();
        let pa = a.predict(&hold).unwrap();
        assert_eq!(pa, b.predict(&hold).unwrap(), "same seed, same forest");
        assert!(
            r2(&y[400..], &pa) > 0.9,
            "holdout R² {}",
            r2(&y[400..], &pa)
        );
        let back: Forest = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(
            back.predict(&hold).unwrap(),
            pa,
            "reloaded forest predicts the same"
        );
        let other = Forest::fit(&views, &y[..400], false, &ForestParams { seed: 7, ..p }).unwrap();
        assert_ne!(other.predict(&hold).unwrap(), pa, "the seed is used");
        assert!(
            a.predict(&hold[..2]).is_err(),
            "wrong feature count is an error"
        );
    }

    #[test]
    fn binary_forest_gives_probabilities_that_rank() {
        let (x, y) = data();
        let label: Vec<f64> = y.iter().map(|v| f64::from(u8::from(*v > 1.0))).collect();
        let views: Vec<&[f64]> = x.iter().map(|c| &c[..400]).collect();
        let hold: Vec<&[f64]> = x.iter().map(|c| &c[400..]).collect();
        let f = Forest::fit(&views, &label[..400], true, &ForestParams::default()).unwrap();
        let p = f.predict(&hold).unwrap();
        assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(
            p.iter().any(|v| *v > 0.0 && *v < 1.0),
            "averaged, not voted"
        );
        let yb: Vec<bool> = label[400..].iter().map(|v| *v == 1.0).collect();
        let auc = crate::metrics::roc_auc(&yb, &p).unwrap();
        assert!(auc > 0.9, "holdout AUC {auc}");
    }
}
