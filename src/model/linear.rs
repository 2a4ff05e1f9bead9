//! The linear baselines: least-squares linear regression and L2-regularised logistic
//! regression, fitted with linfa.
//!
//! Linear models need a different view of the features than trees do: a category's index is not
//! a quantity. So the model carries its own [`Term`] per feature, fitted on the training rows
//! like scikit-learn's `StandardScaler` + `OneHotEncoder(drop="first")`: numbers (and bools)
//! are standardised with the training mean and population standard deviation; a category with
//! `k` training values becomes `k - 1` indicator columns, the first (sorted) value being the
//! reference. Nulls and categories never seen in training (the transform's extra code) score as
//! the reference; a feature that is constant in training is left out.
//!
//! Coefficients are stored for the standardised columns, and every prediction — the holdout's at
//! training time and every later one — goes through [`Linear::predict`], so a reloaded model
//! reproduces its holdout predictions exactly.

use linfa::prelude::*;
use linfa::Dataset;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::transform::{Encoding, Transform};

/// Parameters of `algorithm = "linear"` (ordinary least squares has none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinearParams {}

/// Parameters of `algorithm = "logistic"`, with scikit-learn's defaults: `alpha` is the L2
/// penalty on the coefficients (scikit-learn's `1 / C`; the intercept is not penalised).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogisticParams {
    pub alpha: f64,
    pub max_iterations: u64,
    pub gradient_tolerance: f64,
}

impl Default for LogisticParams {
    fn default() -> Self {
        LogisticParams {
            alpha: 1.0,
            max_iterations: 100,
            gradient_tolerance: 1e-4,
        }
    }
}

impl LogisticParams {
    /// Every invalid field, one message each.
    pub fn check(&self) -> Vec<String> {
        let mut e = Vec::new();
        if !(self.alpha >= 0.0 && self.alpha.is_finite()) {
            e.push(format!("alpha {} must be 0 or more", self.alpha));
        }
        if self.max_iterations == 0 {
            e.push("max_iterations must be at least 1".into());
        }
        if !(self.gradient_tolerance > 0.0 && self.gradient_tolerance.is_finite()) {
            e.push(format!(
                "gradient_tolerance {} must be more than 0",
                self.gradient_tolerance
            ));
        }
        e
    }
}

/// How one feature (a column of the transform's output) enters the linear model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Term {
    /// `(x - mean) / scale`: one column.
    Scaled { mean: f64, scale: f64 },
    /// Codes `1..levels` become one indicator column each; code 0 (the reference), nulls and
    /// unseen categories are all zeros.
    OneHot { levels: usize },
    /// Constant in training: no column.
    Dropped,
}

impl Term {
    fn width(&self) -> usize {
        match self {
            Term::Scaled { .. } => 1,
            Term::OneHot { levels } => levels.saturating_sub(1),
            Term::Dropped => 0,
        }
    }
}

/// The link between the linear predictor and the prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// Regression: the prediction is the linear predictor.
    Identity,
    /// Binary: the prediction is the probability `1 / (1 + e^-z)`.
    Logit,
}

/// A fitted linear model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    pub link: Link,
    pub terms: Vec<Term>,
    /// One per design column, in term order.
    pub coefficients: Vec<f64>,
    pub intercept: f64,
}

/// Terms fitted on the training columns `x` (already through `transform`).
fn fit_terms(x: &[&[f64]], transform: &Transform) -> Vec<Term> {
    transform
        .features
        .iter()
        .zip(x)
        .map(|(f, col)| match &f.encoding {
            Encoding::Categorical { categories } if categories.len() > 1 => Term::OneHot {
                levels: categories.len(),
            },
            Encoding::Categorical { .. } => Term::Dropped,
            Encoding::Numeric { .. } | Encoding::Bool { .. } => match mean_and_scale(col) {
                Some((mean, scale)) => Term::Scaled { mean, scale },
                None => Term::Dropped,
            },
        })
        .collect()
}

/// The mean and population standard deviation of a column, `None` when it is constant. Sums of
/// values near the largest finite `f64` overflow; then the values are divided by the largest
/// magnitude first (each quotient is at most 1, so nothing overflows) and the results scaled
/// back, so any finite column has a finite mean and deviation.
fn mean_and_scale(col: &[f64]) -> Option<(f64, f64)> {
    let n = col.len() as f64;
    let mean = col.iter().sum::<f64>() / n;
    let var = col.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let (mean, sd) = if mean.is_finite() && var.is_finite() {
        (mean, var.sqrt())
    } else {
        let big = col.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let m = col.iter().map(|v| v / big).sum::<f64>() / n;
        let var = col
            .iter()
            .map(|v| (v / big - m) * (v / big - m))
            .sum::<f64>()
            / n;
        (m * big, var.sqrt() * big)
    };
    (sd > 0.0 && sd.is_finite()).then_some((mean, sd))
}

/// A value standardised: `(v - mean) / scale`, or, where that difference overflows,
/// `v / scale - mean / scale`.
fn standardised(v: f64, mean: f64, scale: f64) -> f64 {
    let z = (v - mean) / scale;
    if z.is_finite() || !v.is_finite() {
        z
    } else {
        v / scale - mean / scale
    }
}

/// The design matrix (rows × columns) of `x` under `terms`.
fn design(terms: &[Term], x: &[&[f64]]) -> Array2<f64> {
    let n = x.first().map_or(0, |c| c.len());
    let width: usize = terms.iter().map(Term::width).sum();
    let mut d = Array2::zeros((n, width));
    let mut j = 0;
    for (term, col) in terms.iter().zip(x) {
        match term {
            Term::Scaled { mean, scale } => {
                for (r, v) in col.iter().enumerate() {
                    d[[r, j]] = standardised(*v, *mean, *scale);
                }
            }
            Term::OneHot { levels } => {
                for (r, v) in col.iter().enumerate() {
                    let code = *v as usize;
                    if code >= 1 && code < *levels {
                        d[[r, j + code - 1]] = 1.0;
                    }
                }
            }
            Term::Dropped => {}
        }
        j += term.width();
    }
    d
}

impl Linear {
    /// Ordinary least squares on the training columns `x` and target `y`.
    pub fn fit_regression(
        x: &[&[f64]],
        y: &[f64],
        transform: &Transform,
    ) -> Result<Linear, String> {
        let terms = fit_terms(x, transform);
        let d = design(&terms, x);
        let ds = Dataset::new(d, Array1::from(y.to_vec()));
        let fitted = linfa_linear::LinearRegression::new()
            .fit(&ds)
            .map_err(|e| format!("linear regression: {e}"))?;
        Ok(Linear {
            link: Link::Identity,
            terms,
            coefficients: fitted.params().to_vec(),
            intercept: fitted.intercept(),
        })
    }

    /// L2-regularised logistic regression on the training columns `x` and 0/1 target `y`.
    pub fn fit_logistic(
        x: &[&[f64]],
        y: &[f64],
        transform: &Transform,
        p: &LogisticParams,
    ) -> Result<Linear, String> {
        let terms = fit_terms(x, transform);
        let d = design(&terms, x);
        let labels: Array1<bool> = y.iter().map(|v| *v == 1.0).collect();
        let ds = Dataset::new(d, labels);
        let fitted = linfa_logistic::LogisticRegression::default()
            .alpha(p.alpha)
            .max_iterations(p.max_iterations)
            .gradient_tolerance(p.gradient_tolerance)
            .fit(&ds)
            .map_err(|e| format!("logistic regression: {e}"))?;
        // linfa models the probability of whichever class it calls positive; we always model
        // the probability of `true`.
        let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
        Ok(Linear {
            link: Link::Logit,
            terms,
            coefficients: fitted.params().iter().map(|c| sign * c).collect(),
            intercept: sign * fitted.intercept(),
        })
    }

    /// Predictions for column-major features (`x[feature][row]`, through the transform).
    pub fn predict(&self, x: &[&[f64]]) -> Vec<f64> {
        let d = design(&self.terms, x);
        d.rows()
            .into_iter()
            .map(|row| {
                let z = row
                    .iter()
                    .zip(&self.coefficients)
                    .fold(self.intercept, |acc, (v, c)| acc + v * c);
                match self.link {
                    Link::Identity => z,
                    Link::Logit => 1.0 / (1.0 + (-z).exp()),
                }
            })
            .collect()
    }

    /// Per feature, the sum of the absolute coefficients of its columns (comparable across
    /// features because the columns are standardised or indicators).
    pub fn importance(&self) -> Vec<f64> {
        let mut j = 0;
        self.terms
            .iter()
            .map(|t| {
                let w = t.width();
                let s = self.coefficients[j..j + w].iter().map(|c| c.abs()).sum();
                j += w;
                s
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::transform::Feature;

    // Made by scripts/reference/linear_baselines.py (numpy seed 7, scikit-learn 1.9.1):
    // StandardScaler + OneHotEncoder(drop="first") + LinearRegression / LogisticRegression(C=1,
    // tol=1e-12). The last two scored rows carry category code 3 (null or unseen).
    const X1: [f64; 40] = [
        50.01, 52.99, 47.26, 41.09, 45.45, 40.08, 50.6, 63.4, 45.08, 43.8, 54.9, 53.57, 51.05,
        40.7, 49.71, 56.95, 36.56, 45.42, 30.99, 37.1, 31.58, 47.65, 37.33, 52.71, 51.57, 48.13,
        24.83, 44.61, 49.51, 51.13, 34.7, 45.22, 40.21, 41.91, 60.61, 41.92, 49.67, 58.84, 44.16,
        48.88,
    ];
    const X2: [f64; 40] = [
        0.88, 0.51, 0.847, 0.64, 0.742, 0.091, 0.541, 0.508, 0.871, 0.361, 0.598, 0.059, 0.388,
        0.323, 0.15, 0.816, 0.379, 0.979, 0.59, 0.605, 0.638, 0.676, 0.151, 0.44, 0.24, 0.402,
        0.097, 0.968, 0.215, 0.672, 0.3, 0.874, 0.662, 0.132, 0.845, 0.945, 0.904, 0.57, 0.145,
        0.192,
    ];
    const CAT: [f64; 40] = [
        2.0, 2.0, 0.0, 1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.0, 1.0, 2.0, 1.0, 0.0, 0.0,
        2.0, 0.0, 2.0, 2.0, 1.0, 1.0, 2.0, 1.0, 1.0, 0.0, 1.0, 2.0, 0.0, 0.0, 2.0, 1.0, 2.0, 0.0,
        2.0, 0.0, 1.0, 2.0,
    ];
    const Y_REG: [f64; 40] = [
        7.178, 8.658, 9.228, 12.403, 8.29, 10.028, 12.661, 12.141, 6.356, 11.61, 13.79, 15.498,
        10.624, 11.269, 10.377, 11.572, 9.056, 7.31, 5.81, 8.193, 4.853, 7.235, 11.243, 11.284,
        9.223, 12.881, 6.949, 8.897, 11.796, 9.295, 7.895, 9.327, 6.525, 10.817, 10.991, 9.046,
        7.252, 12.214, 12.592, 9.033,
    ];
    const Y_BIN: [f64; 40] = [
        0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0,
        1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0,
        1.0, 0.0, 1.0, 0.0,
    ];
    const P_LIN: [f64; 42] = [
        7.860488202362305,
        9.374924226485188,
        9.284620381658415,
        10.2522474981059,
        9.198080254131405,
        9.799268594655802,
        12.351361645629574,
        11.403875360833418,
        6.9247498572609985,
        11.48421412901248,
        13.043310097939706,
        14.14690135543289,
        11.181457369118094,
        10.977550841380213,
        9.647028235270847,
        12.890935584373587,
        8.387078050982904,
        8.593298186461649,
        4.895539915794888,
        7.920913879506057,
        4.888940607428541,
        7.917211993413266,
        10.757041115261117,
        13.016833231922659,
        9.781197485371004,
        12.22243054679142,
        8.46327922660084,
        8.46361853633795,
        12.963316948816523,
        8.603897267088017,
        8.225109456429305,
        8.819771862970677,
        6.506119249295308,
        11.695494948923821,
        10.009776887317349,
        7.998758641571405,
        7.733732793171129,
        12.236024786176317,
        12.100082829809281,
        9.379517918907734,
        12.424526559662056,
        7.739199689815933,
    ];
    const P_LOG: [f64; 42] = [
        0.7619801614876497,
        0.3494140750815601,
        0.8184701929654048,
        0.8959940621051683,
        0.7622433634854757,
        0.2118010642135088,
        0.7563020955147981,
        0.21764821664567452,
        0.8072277286984347,
        0.685355548628569,
        0.7522692116358084,
        0.24302336449052012,
        0.3286306375484495,
        0.6915875317838176,
        0.12204548094174854,
        0.8727210090795877,
        0.5375050873764329,
        0.899468951573424,
        0.7495288988816743,
        0.7490456876769462,
        0.7801931767855746,
        0.6056183958448852,
        0.5681290259353363,
        0.6374592042192125,
        0.15444454046843337,
        0.6650102858455774,
        0.6942996193848895,
        0.8997365650793209,
        0.448019985710343,
        0.5485043239724154,
        0.4812110002145673,
        0.8519452453144024,
        0.6968559595582642,
        0.47663848109418394,
        0.5869242253503871,
        0.9057343521890143,
        0.7838949557542766,
        0.39808304734909594,
        0.45570892196850266,
        0.14932631736623744,
        0.14512640837501953,
        0.8991525806693782,
    ];

    fn transform() -> Transform {
        let num = |name: &str| Feature {
            name: name.into(),
            encoding: Encoding::Numeric { impute: 0.0 },
        };
        Transform {
            features: vec![
                num("x1"),
                num("x2"),
                Feature {
                    name: "c".into(),
                    encoding: Encoding::Categorical {
                        categories: vec!["a".into(), "b".into(), "c".into()],
                    },
                },
            ],
        }
    }

    fn scored() -> Vec<Vec<f64>> {
        let mut x = vec![X1.to_vec(), X2.to_vec(), CAT.to_vec()];
        for (j, v) in [[55.0, 0.2, 3.0], [40.0, 0.9, 3.0]]
            .iter()
            .flat_map(|r| r.iter().enumerate())
        {
            x[j].push(*v);
        }
        x
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "row {i}: got {g}, scikit-learn {w}");
        }
    }

    #[test]
    fn columns_near_the_largest_float_are_standardised_without_overflow() {
        let col = [1e308, -1e308, 1.0, 2.0, 3.0];
        let (mean, scale) = mean_and_scale(&col).unwrap();
        assert!(mean.is_finite() && scale.is_finite() && scale > 0.0);
        for v in col {
            assert!(standardised(v, mean, scale).is_finite(), "{v}");
        }
        // Ordinary columns keep the plain formula's bits.
        let plain = [1.0, 2.0, 4.0];
        let (m, s) = mean_and_scale(&plain).unwrap();
        assert_eq!(m, 7.0 / 3.0);
        assert_eq!(standardised(4.0, m, s), (4.0 - m) / s);
        assert!(mean_and_scale(&[5.0, 5.0]).is_none());
    }

    #[test]
    fn linear_regression_matches_scikit_learn() {
        let m = Linear::fit_regression(&[&X1, &X2, &CAT], &Y_REG, &transform()).unwrap();
        assert_eq!(m.coefficients.len(), 4, "2 scaled + 2 indicator columns");
        let x = scored();
        let views: Vec<&[f64]> = x.iter().map(|c| c.as_slice()).collect();
        assert_close(&m.predict(&views), &P_LIN, 1e-9);
    }

    #[test]
    fn logistic_regression_matches_scikit_learn() {
        let p = LogisticParams {
            alpha: 1.0,
            max_iterations: 10_000,
            gradient_tolerance: 1e-10,
        };
        let m = Linear::fit_logistic(&[&X1, &X2, &CAT], &Y_BIN, &transform(), &p).unwrap();
        let x = scored();
        let views: Vec<&[f64]> = x.iter().map(|c| c.as_slice()).collect();
        assert_close(&m.predict(&views), &P_LOG, 1e-6);
        // The model is of `true`, whichever class linfa took as positive: flipping the labels
        // flips the probabilities.
        let flipped: Vec<f64> = Y_BIN.iter().map(|v| 1.0 - v).collect();
        let f = Linear::fit_logistic(&[&X1, &X2, &CAT], &flipped, &transform(), &p).unwrap();
        let want: Vec<f64> = P_LOG.iter().map(|v| 1.0 - v).collect();
        assert_close(&f.predict(&views), &want, 1e-6);
    }

    #[test]
    fn constant_features_are_dropped_and_the_model_round_trips() {
        let ones = [1.0; 40];
        let mut t = transform();
        t.features.push(Feature {
            name: "k".into(),
            encoding: Encoding::Numeric { impute: 1.0 },
        });
        let m = Linear::fit_regression(&[&X1, &X2, &CAT, &ones], &Y_REG, &t).unwrap();
        assert_eq!(m.terms[3], Term::Dropped);
        assert_eq!(m.importance().len(), 4);
        assert_eq!(m.importance()[3], 0.0);
        let back: Linear = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        let cols: [&[f64]; 4] = [&X1, &X2, &CAT, &ones];
        assert_eq!(back.predict(&cols), m.predict(&cols));
    }
}
