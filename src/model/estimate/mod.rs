//! Performance estimated before outcomes are known, as NannyML estimates it: for binary models
//! confidence-based performance estimation ([`cbpe`]: the expected confusion matrix from
//! calibrated probabilities), for regression models direct loss estimation ([`dle`]: a second
//! booster, fitted on the holdout, predicts each row's error). Each estimate comes with NannyML's
//! sampling error (from the holdout, for the size of the scored data) and its band of three
//! sampling errors either side.
//!
//! NannyML's band counts the scored rows' sampling error only. The estimator was fitted on the
//! holdout, whose own size limits it too (its calibration, its loss models): with a holdout a
//! fifth the size of the scored population, that error is the larger. Each estimate also
//! carries it, the same sampling error for the holdout's size (`reference_error`), and
//! [`Estimate::covers`], which says whether a realized value is consistent with the estimate,
//! allows for both.
//!
//! CBPE assumes the probabilities stay calibrated, DLE that errors depend on the features as
//! they did on the holdout: both follow a covariate shift and both miss a concept change (the
//! same features meaning something else), which only realized outcomes show.

pub mod cbpe;
pub mod dle;

use serde::{Deserialize, Serialize};

use crate::metrics::Metric;

/// How many sampling errors either side of an estimate its band spans (NannyML's
/// `SAMPLING_ERROR_RANGE`).
pub const BAND: f64 = 3.0;

/// An estimated metric with its sampling error and band.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub value: f64,
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub sampling_error: f64,
    /// NannyML's band: `value` ± [`BAND`] sampling errors.
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub lower: f64,
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub upper: f64,
    /// The sampling error of the estimator itself, from the holdout's size.
    #[serde(default)]
    pub reference_error: f64,
}

impl Estimate {
    /// `value` ± [`BAND`] sampling errors, within `[lo, hi]`.
    pub fn banded(
        value: f64,
        sampling_error: f64,
        reference_error: f64,
        lo: f64,
        hi: f64,
    ) -> Estimate {
        Estimate {
            value,
            sampling_error,
            lower: (value - BAND * sampling_error).max(lo),
            upper: (value + BAND * sampling_error).min(hi),
            reference_error,
        }
    }

    /// Whether a realized `v` is consistent with the estimate: within [`BAND`] combined errors
    /// (the scored rows' and the holdout's) of it, or inside NannyML's band.
    pub fn covers(&self, v: f64) -> bool {
        let e = self.sampling_error.hypot(self.reference_error);
        (v >= self.lower && v <= self.upper) || (v - self.value).abs() <= BAND * e
    }
}

/// Estimates by metric.
pub type Estimates = indexmap::IndexMap<Metric, Estimate>;

/// What estimating a model's performance needs, kept in its artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Estimator {
    Cbpe(cbpe::Reference),
    Dle(Box<dle::Dle>),
}

impl Estimator {
    pub fn name(&self) -> &'static str {
        match self {
            Estimator::Cbpe(_) => "cbpe",
            Estimator::Dle(_) => "dle",
        }
    }
}
