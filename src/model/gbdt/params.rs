//! The booster's hyperparameters, with LightGBM's defaults, and their check. Training accepts
//! only [`Checked`] parameters (linfa's `ParamGuard`): a fit cannot start on an invalid value.

use serde::{Deserialize, Serialize};

/// Hyperparameters, with LightGBM's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    pub n_trees: usize,
    pub learning_rate: f64,
    pub num_leaves: usize,
    /// 0 = unlimited.
    pub max_depth: usize,
    pub max_bins: usize,
    pub min_data_in_leaf: usize,
    pub min_sum_hessian_in_leaf: f64,
    pub lambda_l2: f64,
    pub min_gain_to_split: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            n_trees: 200,
            learning_rate: 0.1,
            num_leaves: 31,
            max_depth: 0,
            max_bins: 255,
            min_data_in_leaf: 20,
            min_sum_hessian_in_leaf: 1e-3,
            lambda_l2: 0.0,
            min_gain_to_split: 0.0,
        }
    }
}

/// Parameters whose every field is valid: what training accepts. Made only by
/// [`Params::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct Checked(Params);

impl std::ops::Deref for Checked {
    type Target = Params;
    fn deref(&self) -> &Params {
        &self.0
    }
}

impl Params {
    /// The parameters, checked, or every invalid field (one message each).
    pub fn check(&self) -> Result<Checked, Vec<String>> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(Checked(self.clone()))
        } else {
            Err(problems)
        }
    }

    /// Every invalid field, one message each.
    pub fn problems(&self) -> Vec<String> {
        let mut e = Vec::new();
        if self.n_trees == 0 {
            e.push("n_trees must be at least 1".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            e.push(format!(
                "learning_rate {} must be in (0, 1]",
                self.learning_rate
            ));
        }
        if self.num_leaves < 2 {
            e.push("num_leaves must be at least 2".into());
        }
        if !(2..=255).contains(&self.max_bins) {
            e.push(format!("max_bins {} must be in 2..=255", self.max_bins));
        }
        if self.min_data_in_leaf == 0 {
            e.push("min_data_in_leaf must be at least 1".into());
        }
        if self.lambda_l2 < 0.0
            || self.min_sum_hessian_in_leaf < 0.0
            || self.min_gain_to_split < 0.0
        {
            e.push("lambda_l2, min_sum_hessian_in_leaf and min_gain_to_split must be >= 0".into());
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_check_lists_every_problem() {
        let p = Params {
            n_trees: 0,
            learning_rate: 2.0,
            max_bins: 1000,
            ..Default::default()
        };
        assert_eq!(p.problems().len(), 3);
        assert_eq!(p.check().unwrap_err(), p.problems());
        assert_eq!(*Params::default().check().unwrap(), Params::default());
    }
}
