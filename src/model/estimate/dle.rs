//! Direct loss estimation (NannyML's DLE) for regression models: two boosters fitted on the
//! holdout predict each row's absolute and squared error from its features and the model's
//! prediction; on scored rows, the mean of the predicted absolute errors estimates the MAE and
//! the root of the mean predicted squared error the RMSE (negative predictions clipped to 0).
//! NannyML's inner model is LightGBM's regressor with its defaults; ours is this crate's booster
//! with the same defaults (100 trees), so the estimates agree within the sampling error, not
//! to the digit. The sampling errors come from the holdout's errors (NannyML's
//! `sampling_error/regression.py`).

use serde::{Deserialize, Serialize};

use super::{Estimate, Estimates};
use crate::metrics::Metric;
use crate::model::gbdt::{self, Booster, Objective};

/// What DLE keeps from the holdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dle {
    /// Predicts a row's absolute error from its features and the model's prediction.
    pub absolute_error: Booster,
    /// Predicts a row's squared error.
    pub squared_error: Booster,
    /// Of the holdout's absolute errors: their standard deviation.
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub absolute_error_std: f64,
    /// Of the holdout's squared errors: their standard deviation and mean.
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub squared_error_std: f64,
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub squared_error_mean: f64,
    /// The holdout's rows (for the estimator's own sampling error).
    #[serde(default)]
    pub rows: usize,
}

/// The most holdout rows the loss boosters are fitted on.
pub const FIT_ROWS: usize = 50_000;

/// The loss boosters' parameters: LightGBM's regressor defaults (NannyML's inner model).
fn params() -> gbdt::Checked {
    gbdt::Params {
        n_trees: 100,
        ..Default::default()
    }
    .check()
    .expect("the defaults are valid")
}

impl Dle {
    /// Fits on the holdout: its features (`x[feature][row]`, the model's transform), targets
    /// `y` and the model's predictions `pred`.
    pub fn fit(x: &[&[f64]], y: &[f64], pred: &[f64]) -> Dle {
        let abs: Vec<f64> = y.iter().zip(pred).map(|(a, b)| (a - b).abs()).collect();
        let sq: Vec<f64> = y.iter().zip(pred).map(|(a, b)| (a - b) * (a - b)).collect();
        // The boosters learn from at most FIT_ROWS rows, evenly spaced: a loss surface of a
        // few features needs no more, and two 100-tree fits on a 1 M-customer holdout (200,000
        // rows) would add a quarter to each regression model's training. The sampling errors
        // use every row.
        let step = y.len().div_ceil(FIT_ROWS).max(1);
        let pick = |v: &[f64]| -> Vec<f64> { v.iter().step_by(step).copied().collect() };
        let cols: Vec<Vec<f64>> = x.iter().map(|c| pick(c)).chain([pick(pred)]).collect();
        let inputs: Vec<&[f64]> = cols.iter().map(Vec::as_slice).collect();
        let (abs_fit, sq_fit) = (pick(&abs), pick(&sq));
        let p = params();
        let (absolute_error, squared_error) = rayon::join(
            || gbdt::train(&inputs, &abs_fit, Objective::SquaredError, &p),
            || gbdt::train(&inputs, &sq_fit, Objective::SquaredError, &p),
        );
        let (absolute_error_std, _) = crate::stats::std_mean(&abs);
        let (squared_error_std, squared_error_mean) = crate::stats::std_mean(&sq);
        Dle {
            absolute_error,
            squared_error,
            absolute_error_std,
            squared_error_std,
            squared_error_mean,
            rows: y.len(),
        }
    }

    /// The predicted absolute and squared errors of rows (features and predictions), clipped
    /// at 0, summed: to add up over chunks of rows.
    pub fn loss_sums(&self, x: &[&[f64]], pred: &[f64]) -> [f64; 2] {
        let mut inputs: Vec<&[f64]> = x.to_vec();
        inputs.push(pred);
        // Both boosters learned from the same inputs: each value is ranked once for the two.
        let both = Booster::predict_many(&[&self.absolute_error, &self.squared_error], &inputs);
        let sum = |p: &[f64]| p.iter().map(|v| v.max(0.0)).sum::<f64>();
        [sum(&both[0]), sum(&both[1])]
    }

    /// The estimates for `n` scored rows whose [`Dle::loss_sums`] are `sums`.
    pub fn estimate(&self, sums: [f64; 2], n: usize) -> Estimates {
        let nf = n as f64;
        let mae_se = |n: f64| self.absolute_error_std / n.sqrt();
        let rmse_se =
            |n: f64| (self.squared_error_std.powi(2) / (4.0 * n * self.squared_error_mean)).sqrt();
        // The estimator's own error, for the holdout's size (absent from older artifacts).
        let reference = |se: &dyn Fn(f64) -> f64| {
            if self.rows > 0 {
                se(self.rows as f64)
            } else {
                0.0
            }
        };
        let mut out = Estimates::new();
        out.insert(
            Metric::Mae,
            Estimate::banded(
                sums[0] / nf,
                mae_se(nf),
                reference(&mae_se),
                0.0,
                f64::INFINITY,
            ),
        );
        out.insert(
            Metric::Rmse,
            Estimate::banded(
                (sums[1] / nf).sqrt(),
                rmse_se(nf),
                reference(&rmse_se),
                0.0,
                f64::INFINITY,
            ),
        );
        out
    }
}

impl Dle {
    /// [`Dle::estimate`] of rows with predictions `pred`, and R² derived from the estimated
    /// squared error: R² = 1 − MSE / Var(y), with Var(y) taken as Var(ŷ) + MSE (the errors of a
    /// least-squares fit are uncorrelated with its predictions). NannyML has no R² estimate; this
    /// one follows the estimated RMSE, its errors the RMSE's through the derivative.
    pub fn estimate_with_r2(&self, sums: [f64; 2], pred: &[f64]) -> Estimates {
        let mut out = self.estimate(sums, pred.len());
        let n = pred.len() as f64;
        let mean = pred.iter().sum::<f64>() / n;
        let var = pred.iter().map(|p| (p - mean) * (p - mean)).sum::<f64>() / n;
        let r2 = |rmse: f64| {
            let mse = rmse * rmse;
            1.0 - mse / (var + mse)
        };
        if let Some(rmse) = out.get(&Metric::Rmse).copied() {
            // dR²/dRMSE = −2 RMSE Var(ŷ) / (Var(ŷ) + MSE)².
            let mse = rmse.value * rmse.value;
            let slope = 2.0 * rmse.value * var / (var + mse).powi(2);
            out.insert(
                Metric::R2,
                Estimate::banded(
                    r2(rmse.value),
                    slope * rmse.sampling_error,
                    slope * rmse.reference_error,
                    f64::NEG_INFINITY,
                    1.0,
                ),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::calibration::tests::Lcg;

    /// `cbpe_dle.py`'s `regression`: two features, a target and a fixed prediction of them.
    fn regression(seed: u64, n: usize, shift: f64) -> [Vec<f64>; 4] {
        let mut g = Lcg::new(seed);
        let mut cols: [Vec<f64>; 4] = Default::default();
        for _ in 0..n {
            let a = g.next() * 4.0 - 2.0 + shift;
            let b = g.next();
            let noise = (g.next() - 0.5) * (0.5 + a.abs());
            for (c, v) in cols
                .iter_mut()
                .zip([a, b, a * a + b + noise, a * a + 0.8 * b])
            {
                c.push(v);
            }
        }
        cols
    }

    /// NannyML 0.13.1's DLE on the same data (`scripts/reference/cbpe_dle.py`): its inner model
    /// is LightGBM, so ours must land within its band (three sampling errors), and our
    /// sampling errors, which depend on the holdout alone, equal its.
    #[test]
    fn dle_lands_within_nannymls_band() {
        let [a, b, y, pred] = regression(3, 3000, 0.0);
        let d = Dle::fit(&[&a, &b], &y, &pred);
        let [a2, b2, _, pred2] = regression(5, 2000, 0.5);
        let e = d.estimate(d.loss_sums(&[&a2, &b2], &pred2), pred2.len());
        let want = [
            (
                Metric::Mae,
                [
                    0.3946561578073974,
                    0.006343196241840521,
                    0.41368574653291895,
                    0.3756265690818758,
                ],
            ),
            (
                Metric::Rmse,
                [
                    0.501036711598857,
                    0.006885537882766782,
                    0.5216933252471574,
                    0.48038009795055664,
                ],
            ),
        ];
        for (m, [_, se, upper, lower]) in want {
            let got = e[&m];
            assert!(
                got.value >= lower && got.value <= upper,
                "{m}: {got:?} outside [{lower}, {upper}]"
            );
            assert!(
                (got.sampling_error - se).abs() <= 1e-9 * se,
                "{m}: {} vs {se}",
                got.sampling_error
            );
        }
    }
}
