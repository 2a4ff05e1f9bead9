//! Confidence-based performance estimation (NannyML's CBPE) for binary models. With calibrated
//! probabilities `q`, a row predicted positive is a true positive with probability `q` and a
//! false positive with `1 − q`; the sums over the scored rows are the expected confusion
//! matrix, from which precision, recall and F1 follow, and the expected ROC curve from the same
//! sums over the rows in decreasing order of the model's scores. The sampling errors come from
//! the holdout (NannyML's `sampling_error/binary_classification.py`).
//!
//! As NannyML does, the estimator calibrates the model's probabilities once more, on the
//! holdout (its reference), where that lowers the calibration error out of sample: the model's
//! own calibrator (fitted on a training slice) is a few thousand rows at small scale, and the
//! estimate is only as good as the calibration. The published scores are not changed by it.

use serde::{Deserialize, Serialize};

use super::{Estimate, Estimates};
use crate::metrics::Metric;
use crate::model::calibration::Calibrator;

/// A metric's sampling-error components from the holdout: the standard deviation of its
/// observation-level values and the share of rows that carry them; the error for `n` rows is
/// `std / sqrt(n × share)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Component {
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub std: f64,
    #[serde(deserialize_with = "crate::json::nan_if_null")]
    pub share: f64,
}

impl Component {
    fn error(&self, n: usize) -> f64 {
        self.std / (n as f64 * self.share).sqrt()
    }
}

/// What CBPE keeps from the holdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub threshold: f64,
    pub roc_auc: Component,
    pub precision: Component,
    pub recall: Component,
    pub f1: Component,
    /// The holdout's rows (for the estimator's own sampling error).
    #[serde(default)]
    pub rows: usize,
    /// Isotonic, fitted on the holdout, when it lowers the calibration error there (NannyML's
    /// `needs_calibration`); none otherwise.
    #[serde(default, skip_serializing_if = "Calibrator::is_none")]
    pub calibrator: Calibrator,
}

/// NannyML's `needs_calibration`: whether isotonic calibration lowers the expected calibration
/// error out of sample. NannyML pools the test rows of 10 stratified shuffle splits (10 % each);
/// here each row is tested once, in 10 stratified folds (rows of each class dealt to the folds
/// in turn), as random splits cannot be reproduced bit for bit. Not when there is one class, or
/// when the ranking is already all but perfect (ROC AUC above 0.999).
pub fn needs_calibration(y: &[bool], p: &[f64]) -> bool {
    const FOLDS: usize = 10;
    let pos = y.iter().filter(|t| **t).count();
    if pos == 0 || pos == y.len() || y.len() < 2 * FOLDS {
        return false;
    }
    if crate::metrics::roc_auc(y, p).is_ok_and(|a| a > 0.999) {
        return false;
    }
    let (mut seen_pos, mut seen_neg) = (0usize, 0usize);
    let fold: Vec<usize> = y
        .iter()
        .map(|&t| {
            let k = if t { &mut seen_pos } else { &mut seen_neg };
            *k += 1;
            *k % FOLDS
        })
        .collect();
    let yf: Vec<f64> = y.iter().map(|t| f64::from(u8::from(*t))).collect();
    // Sorted once: each fold's training rows, filtered from it, stay in order.
    let order = crate::model::calibration::isotonic_order(p, &yf);
    // The folds on every core (at the end of a binary model's training, often the last stage
    // running), their rows joined in fold order as one after another would give them.
    use rayon::prelude::*;
    let tested: Vec<Vec<(f64, f64, f64)>> = (0..FOLDS)
        .into_par_iter()
        .map(|k| {
            let rest: Vec<u32> = order
                .iter()
                .copied()
                .filter(|&i| fold[i as usize] != k)
                .collect();
            let c = Calibrator::fit_isotonic_ordered(p, &yf, &rest);
            (0..y.len())
                .filter(|&i| fold[i] == k)
                .map(|i| (yf[i], p[i], c.apply(p[i])))
                .collect()
        })
        .collect();
    let (mut truth, mut before, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for (t, b, a) in tested.into_iter().flatten() {
        truth.push(t);
        before.push(b);
        after.push(a);
    }
    let ece = |q: &[f64]| crate::model::calibration::expected_calibration_error(&truth, q, 10);
    ece(&before) > ece(&after)
}

/// Population standard deviation (`np.std`).
fn std(v: &[f64]) -> f64 {
    crate::stats::std_mean(v).0
}

impl Reference {
    /// The sampling-error components of the holdout's outcomes `y` and the model's
    /// probabilities `p`, with decisions at `threshold`, and the estimator's calibrator if
    /// [`needs_calibration`].
    pub fn fit(y: &[bool], p: &[f64], threshold: f64) -> Reference {
        let (mut r, needs) = rayon::join(
            || Reference::fit_uncalibrated(y, p, threshold),
            || needs_calibration(y, p),
        );
        if needs {
            let yf: Vec<f64> = y.iter().map(|t| f64::from(u8::from(*t))).collect();
            r.calibrator = Calibrator::fit_isotonic(p, &yf);
        }
        r
    }

    /// [`Reference::fit`] without the estimator's calibration (NannyML's `NoopCalibrator`).
    pub fn fit_uncalibrated(y: &[bool], p: &[f64], threshold: f64) -> Reference {
        let n = y.len() as f64;
        let pred: Vec<bool> = p.iter().map(|v| *v >= threshold).collect();
        let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
        for (t, d) in y.iter().zip(&pred) {
            match (t, d) {
                (true, true) => tp += 1,
                (false, true) => fp += 1,
                (true, false) => fn_ += 1,
                _ => {}
            }
        }
        let ones_zeros = |ones: usize, zeros: usize| {
            let mut v = vec![1.0; ones];
            v.resize(ones + zeros, 0.0);
            v
        };
        let f1 = {
            let mut v = ones_zeros(tp, fn_ + fp);
            let factor = v.len() as f64 / ((fn_ + fp) as f64 * 0.5 + tp as f64);
            v.iter_mut().for_each(|x| *x *= factor);
            Component {
                std: std(&v),
                share: v.len() as f64 / n,
            }
        };
        Reference {
            threshold,
            roc_auc: auc_component(y, p),
            precision: Component {
                std: std(&ones_zeros(tp, fp)),
                share: (tp + fp) as f64 / n,
            },
            recall: Component {
                std: std(&ones_zeros(tp, fn_)),
                share: y.iter().filter(|t| **t).count() as f64 / n,
            },
            f1,
            rows: y.len(),
            calibrator: Calibrator::None,
        }
    }

    /// The estimates for scored rows with the model's probabilities `p` (its decisions),
    /// ranked by `rank` (the model's scores before its own calibrator, whose flat steps would
    /// tie rows the model orders; else `p`). The expected counts are those of `p` after the
    /// estimator's calibrator.
    pub fn estimate(&self, p: &[f64], rank: &[f64]) -> Estimates {
        let n = p.len();
        let q: Vec<f64> = p.iter().map(|v| self.calibrator.apply(*v)).collect();
        let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
        for (&v, &c) in p.iter().zip(&q) {
            if v >= self.threshold {
                tp += c;
                fp += 1.0 - c;
            } else {
                fn_ += c;
            }
        }
        let ratio = |a: f64, b: f64| if b != 0.0 { a / b } else { 0.0 };
        let mut out = Estimates::new();
        let reference = self.rows;
        let mut put = |m: Metric, value: f64, c: &Component| {
            let r = if reference > 0 {
                c.error(reference)
            } else {
                0.0
            };
            out.insert(m, Estimate::banded(value, c.error(n), r, 0.0, 1.0));
        };
        put(Metric::Auc, expected_roc_auc(&q, rank), &self.roc_auc);
        put(Metric::Precision, ratio(tp, tp + fp), &self.precision);
        put(Metric::Recall, ratio(tp, tp + fn_), &self.recall);
        put(Metric::F1, ratio(tp, tp + 0.5 * (fp + fn_)), &self.f1);
        out
    }
}

/// The ROC AUC's components (NannyML's `auroc_sampling_error_components`): the AUC as a
/// Mann–Whitney statistic, each positive's share of the negatives ranked below it.
fn auc_component(y: &[bool], p: &[f64]) -> Component {
    let flip = y.iter().filter(|t| **t).count() * 2 > y.len();
    let (y, p): (Vec<bool>, Vec<f64>) = if flip {
        (
            y.iter().map(|t| !t).collect(),
            p.iter().map(|q| 1.0 - q).collect(),
        )
    } else {
        (y.to_vec(), p.to_vec())
    };
    let order = crate::stats::rows_by_key(y.len(), |i| crate::stats::order_key(p[i]));
    let n_pos = y.iter().filter(|t| **t).count();
    let n_neg = y.len() - n_pos;
    // The ranks of the positives; NannyML drops rank 0 with the negatives' zeros.
    let ranks: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|&(rank, &r)| y[r as usize] && rank > 0)
        .map(|(rank, _)| rank)
        .collect();
    let shares: Vec<f64> = ranks
        .iter()
        .enumerate()
        .map(|(i, rank)| (rank - i) as f64 / n_neg as f64)
        .collect();
    Component {
        std: std(&shares),
        share: n_pos as f64 / y.len() as f64,
    }
}

/// NannyML's `estimate_roc_auc`: the rows in decreasing order of `rank` (the model's scores),
/// the expected true and false positives of their calibrated probabilities `p` summed along them
/// (rounded to five decimals, as NannyML does), their rates' trapezoid area.
pub fn expected_roc_auc(p: &[f64], rank: &[f64]) -> f64 {
    // Decreasing rank, ties in row order.
    let order = crate::stats::rows_by_key(p.len(), |i| !crate::stats::order_key(rank[i]));
    let q: Vec<f64> = order.iter().map(|&i| p[i as usize]).collect();
    let round5 = |v: f64| (v * 1e5).round_ties_even() / 1e5;
    let (mut tps, mut fps) = (
        Vec::with_capacity(q.len() + 1),
        Vec::with_capacity(q.len() + 1),
    );
    tps.push(0.0);
    fps.push(0.0);
    let mut cum = 0.0;
    for (i, v) in q.iter().enumerate() {
        cum += v;
        tps.push(round5(cum));
        fps.push(round5((1 + i) as f64 - cum));
    }
    let (tp_all, fp_all) = (*tps.last().unwrap(), *fps.last().unwrap());
    let mut area = 0.0;
    for i in 1..tps.len() {
        let dx = fps[i] / fp_all - fps[i - 1] / fp_all;
        area += dx * (tps[i] / tp_all + tps[i - 1] / tp_all) / 2.0;
    }
    area
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::calibration::tests::Lcg;

    /// `cbpe_dle.py`'s `binary`: probabilities and outcomes drawn from them.
    fn binary(seed: u64, n: usize, shift: f64) -> (Vec<f64>, Vec<bool>) {
        let mut g = Lcg::new(seed);
        let mut p = Vec::with_capacity(n);
        for _ in 0..n {
            let a = g.next();
            let b = g.next();
            p.push((a * (1.0 - shift) + shift * b * b).clamp(1e-6, 1.0 - 1e-6));
        }
        let y = p.iter().map(|q| g.next() < *q).collect();
        (p, y)
    }

    /// Each metric's value, sampling error, upper and lower bound equal NannyML's to 1e-9.
    fn assert_matches(e: &Estimates, want: [(Metric, [f64; 4]); 4]) {
        for (m, [value, se, upper, lower]) in want {
            let got = e[&m];
            for (g, w, what) in [
                (got.value, value, "value"),
                (got.sampling_error, se, "sampling error"),
                (got.upper, upper, "upper"),
                (got.lower, lower, "lower"),
            ] {
                assert!(
                    (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                    "{m} {what}: {g} vs {w}"
                );
            }
        }
    }

    /// `scripts/reference/cbpe_dle.py`, NannyML 0.13.1 `CBPE(..., chunk_number=1,
    /// calibrator=NoopCalibrator())` on the same data.
    #[test]
    fn cbpe_matches_nannyml() {
        let (p_ref, y_ref) = binary(7, 3000, 0.0);
        let (p_ana, _) = binary(11, 2000, 0.3);
        let r = Reference::fit_uncalibrated(&y_ref, &p_ref, 0.5);
        let e = r.estimate(&p_ana, &p_ana);
        let want = [
            (
                Metric::Auc,
                [
                    0.7538108156967929,
                    0.006139076276122181,
                    0.7722280445251594,
                    0.7353935868684264,
                ],
            ),
            (
                Metric::Precision,
                [
                    0.660391348500132,
                    0.013709329423110919,
                    0.7015193367694648,
                    0.6192633602307993,
                ],
            ),
            (
                Metric::Recall,
                [
                    0.6219399440457491,
                    0.013813212939788726,
                    0.6633795828651153,
                    0.580500305226383,
                ],
            ),
            (
                Metric::F1,
                [
                    0.6405891530870107,
                    0.01745256986276447,
                    0.6929468626753041,
                    0.5882314434987173,
                ],
            ),
        ];
        assert_matches(&e, want);
    }

    /// `cbpe_dle.py`'s `overconfident_binary`: p² / (p² + (1 − p)²) of `binary`'s probabilities.
    fn overconfident(seed: u64, n: usize, shift: f64) -> (Vec<f64>, Vec<bool>) {
        let (p, y) = binary(seed, n, shift);
        let q = p
            .iter()
            .map(|p| p * p / (p * p + (1.0 - p) * (1.0 - p)))
            .collect();
        (q, y)
    }

    /// NannyML 0.13.1's `CBPE` with its default (isotonic) calibrator on over-confident
    /// probabilities: it decides to calibrate on the reference, and so do we; the isotonic fit on
    /// the whole reference is deterministic, so the estimates agree to 1e-9.
    #[test]
    fn cbpe_calibrates_on_the_reference_as_nannyml_does() {
        let (q_ref, y_ref) = overconfident(19, 3000, 0.0);
        let (q_ana, _) = overconfident(23, 2000, 0.3);
        assert!(needs_calibration(&y_ref, &q_ref));
        let r = Reference::fit(&y_ref, &q_ref, 0.5);
        assert_eq!(r.calibrator.name(), "isotonic");
        let e = r.estimate(&q_ana, &q_ana);
        let want = [
            (
                Metric::Auc,
                [
                    0.7612365938525,
                    0.006098375331167675,
                    0.779531719846003,
                    0.742941467858997,
                ],
            ),
            (
                Metric::Precision,
                [
                    0.6693882030167471,
                    0.013880238757399256,
                    0.7110289192889448,
                    0.6277474867445493,
                ],
            ),
            (
                Metric::Recall,
                [
                    0.6514853379564383,
                    0.013919203697966833,
                    0.6932429490503388,
                    0.6097277268625377,
                ],
            ),
            (
                Metric::F1,
                [
                    0.6603154444976068,
                    0.017546167011443594,
                    0.7129539455319376,
                    0.607676943463276,
                ],
            ),
        ];
        assert_matches(&e, want);
        // A ranking that is all but perfect is left as it is. (On well-calibrated probabilities
        // the decision is noise for NannyML too: out of sample, its ECE before and after
        // isotonic is 0.0059 vs 0.0066 on `binary(7, 20_000)` and 0.00323 vs 0.00322 on 100,000
        // rows, so no test pins it.)
        let y: Vec<bool> = (0..3000).map(|i| i % 3 == 0).collect();
        let p: Vec<f64> = y.iter().map(|&t| if t { 0.9 } else { 0.2 }).collect();
        assert!(!needs_calibration(&y, &p));
    }
}
