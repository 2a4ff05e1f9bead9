//! Calibration of a binary model's probabilities, and how well calibrated they are.
//!
//! A booster's probabilities rank customers well but need not be probabilities in the strict
//! sense (of the customers given 0.3, 30 % churn); performance estimated from them without
//! outcomes (CBPE) is only as good as their calibration. The train stage measures calibration on
//! the holdout — the expected calibration error and a reliability curve — and fits a calibrator
//! on a slice of the training rows kept out of the booster's fit (never the holdout): isotonic
//! regression (scikit-learn's `IsotonicRegression`) or Platt's sigmoid (scikit-learn's
//! `_sigmoid_calibration`); the artifact keeps the one that lowers the holdout's error, or none.

use serde::{Deserialize, Serialize};

/// A fitted calibration of probabilities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Calibrator {
    /// The model's probabilities as they are.
    #[default]
    None,
    /// A non-decreasing step function, linear between its points (`x` increasing), clipped
    /// outside them.
    Isotonic { x: Vec<f64>, y: Vec<f64> },
    /// `1 / (1 + exp(a p + b))` of the probability `p`.
    Platt { a: f64, b: f64 },
}

impl Calibrator {
    pub fn is_none(&self) -> bool {
        matches!(self, Calibrator::None)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Calibrator::None => "none",
            Calibrator::Isotonic { .. } => "isotonic",
            Calibrator::Platt { .. } => "platt",
        }
    }

    /// The calibrated probability of `p`.
    pub fn apply(&self, p: f64) -> f64 {
        match self {
            Calibrator::None => p,
            Calibrator::Isotonic { x, y } => interpolate(x, y, p),
            Calibrator::Platt { a, b } => 1.0 / (1.0 + (a * p + b).exp()),
        }
    }

    /// Calibrates every probability of `p` in place.
    pub fn apply_all(&self, p: &mut [f64]) {
        if !self.is_none() {
            p.iter_mut().for_each(|v| *v = self.apply(*v));
        }
    }

    /// Isotonic regression of `y` (0/1) on `p`, as scikit-learn fits it: equal `p` pooled into
    /// their mean, pool-adjacent-violators with weights, and only the points where the step
    /// function bends kept.
    pub fn fit_isotonic(p: &[f64], y: &[f64]) -> Calibrator {
        Calibrator::fit_isotonic_ordered(p, y, &isotonic_order(p, y))
    }

    /// [`Calibrator::fit_isotonic`] on the rows `order` lists, in [`isotonic_order`] (a
    /// subset of that order keeps it: cross-fitting sorts once).
    pub fn fit_isotonic_ordered(p: &[f64], y: &[f64], order: &[u32]) -> Calibrator {
        // Equal x pooled: (x, mean y, weight).
        let mut blocks: Vec<(f64, f64, f64)> = Vec::new();
        for &i in order {
            let i = i as usize;
            match blocks.last_mut() {
                Some((x, sum, w)) if *x == p[i] => {
                    *sum += y[i];
                    *w += 1.0;
                }
                _ => blocks.push((p[i], y[i], 1.0)),
            }
        }
        let xs: Vec<f64> = blocks.iter().map(|b| b.0).collect();
        let mut ys: Vec<f64> = blocks.iter().map(|b| b.1 / b.2).collect();
        let ws: Vec<f64> = blocks.iter().map(|b| b.2).collect();
        pool_adjacent_violators(&mut ys, &ws);
        // Keep the ends and every point where the function changes on either side.
        let n = xs.len();
        let keep: Vec<usize> = (0..n)
            .filter(|&i| i == 0 || i == n - 1 || ys[i - 1] != ys[i] || ys[i] != ys[i + 1])
            .collect();
        Calibrator::Isotonic {
            x: keep.iter().map(|&i| xs[i]).collect(),
            y: keep.iter().map(|&i| ys[i]).collect(),
        }
    }

    /// Platt's sigmoid of `y` (0/1) on `p`, as scikit-learn fits it: the targets smoothed by the
    /// class counts, the cross-entropy minimised (here by Newton's method, to convergence).
    pub fn fit_platt(p: &[f64], y: &[f64]) -> Calibrator {
        let pos = y.iter().filter(|v| **v > 0.0).count() as f64;
        let neg = y.len() as f64 - pos;
        let (t_pos, t_neg) = ((pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0));
        let (mut a, mut b) = (0.0f64, ((neg + 1.0) / (pos + 1.0)).ln());
        for _ in 0..100 {
            // Gradient and Hessian of Σ -[t ln q + (1 - t) ln(1 - q)], q = 1 / (1 + e^(a f + b)).
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for (f, yi) in p.iter().zip(y) {
                let t = if *yi > 0.0 { t_pos } else { t_neg };
                let q = 1.0 / (1.0 + (a * f + b).exp());
                let d = t - q; // d loss / d (a f + b)
                ga += d * f;
                gb += d;
                let w = q * (1.0 - q);
                haa += w * f * f;
                hab += w * f;
                hbb += w;
            }
            let det = haa * hbb - hab * hab;
            if det.abs() < 1e-300 {
                break;
            }
            let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
            a -= da;
            b -= db;
            if da.abs() < 1e-15 * (1.0 + a.abs()) && db.abs() < 1e-15 * (1.0 + b.abs()) {
                break;
            }
        }
        Calibrator::Platt { a, b }
    }
}

/// What a binary model's `calibration` asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// Isotonic, Platt or none: whichever has the lowest cross-fitted error on the slice.
    #[default]
    Auto,
    Isotonic,
    Platt,
    /// No calibration, and no training rows set aside for it.
    None,
}

impl Choice {
    pub const NAMES: [&'static str; 4] = ["auto", "isotonic", "platt", "none"];

    pub fn parse(s: &str) -> Option<Choice> {
        Some(match s {
            "auto" => Choice::Auto,
            "isotonic" => Choice::Isotonic,
            "platt" | "sigmoid" => Choice::Platt,
            "none" => Choice::None,
            _ => return None,
        })
    }
}

/// Bins of the expected calibration error and the reliability curve.
pub const BINS: usize = 10;

/// One candidate calibrator's errors, cross-fitted on the calibration slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub method: String,
    /// The Brier score, which decides.
    pub brier: f64,
    /// How much lower it is than without calibration, and the standard error of that
    /// difference (paired, row by row).
    pub improvement: f64,
    pub standard_error: f64,
    /// The expected calibration error, for people.
    pub ece: f64,
}

/// The fewest rows `auto` sets aside to calibrate on: below, calibration is not tried (at a
/// tenth of the training side, models trained on fewer than 100 000 rows).
pub const MIN_AUTO_ROWS: usize = 10_000;

/// How many standard errors a calibrator must lower the Brier score by to be kept.
pub const SIGNIFICANCE: f64 = 2.0;

/// The calibrator for probabilities `p` with outcomes `y` (0/1) of the calibration slice, and
/// for `auto` each candidate's errors: the slice's rows cut in two by position (even, odd), each
/// candidate fitted on one half and measured on the other. A calibrator is kept only where it
/// lowers the Brier score out of sample by more than [`SIGNIFICANCE`] standard errors of the
/// row-by-row difference — on a slice of a few thousand rows an isotonic fit often "wins" by
/// noise, and its flat steps then move whole groups of customers across the threshold at once;
/// of those kept, the one with the lowest Brier score is refitted on the whole slice. The Brier
/// score decides rather than the binned calibration error: it is measured per row, without
/// bins, and so is far less noisy.
pub fn choose(choice: Choice, p: &[f64], y: &[f64]) -> (Calibrator, Vec<Candidate>) {
    let fit = |method: &str, p: &[f64], y: &[f64]| match method {
        "isotonic" => Calibrator::fit_isotonic(p, y),
        "platt" => Calibrator::fit_platt(p, y),
        _ => Calibrator::None,
    };
    let method = match choice {
        Choice::None => return (Calibrator::None, Vec::new()),
        Choice::Isotonic => "isotonic",
        Choice::Platt => "platt",
        Choice::Auto => {
            let half = |parity: usize| -> (Vec<f64>, Vec<f64>) {
                (0..p.len())
                    .filter(|i| i % 2 == parity)
                    .map(|i| (p[i], y[i]))
                    .unzip()
            };
            let halves = [half(0), half(1)];
            // Out-of-fold calibrated probabilities of every row, in the halves' order.
            let out_of_fold = |m: &str| -> Vec<f64> {
                (0..2)
                    .flat_map(|k| {
                        let (fp, fy) = &halves[k];
                        let c = fit(m, fp, fy);
                        halves[1 - k]
                            .0
                            .iter()
                            .map(move |v| c.apply(*v))
                            .collect::<Vec<_>>()
                    })
                    .collect()
            };
            let truth: Vec<f64> = (0..2).flat_map(|k| halves[1 - k].1.clone()).collect();
            let n = truth.len().max(1) as f64;
            let squared = |q: &[f64]| -> Vec<f64> {
                q.iter()
                    .zip(&truth)
                    .map(|(a, b)| (a - b) * (a - b))
                    .collect()
            };
            let base = squared(&out_of_fold("none"));
            let errors: Vec<Candidate> = ["none", "isotonic", "platt"]
                .iter()
                .map(|m| {
                    let q = out_of_fold(m);
                    let sq = squared(&q);
                    let diff: Vec<f64> = base.iter().zip(&sq).map(|(a, b)| a - b).collect();
                    let mean = diff.iter().sum::<f64>() / n;
                    let var = diff.iter().map(|d| (d - mean) * (d - mean)).sum::<f64>()
                        / (n - 1.0).max(1.0);
                    Candidate {
                        method: m.to_string(),
                        brier: sq.iter().sum::<f64>() / n,
                        improvement: mean,
                        standard_error: (var / n).sqrt(),
                        ece: expected_calibration_error(&truth, &q, BINS),
                    }
                })
                .collect();
            let best = errors
                .iter()
                .filter(|c| c.method == "none" || c.improvement > SIGNIFICANCE * c.standard_error)
                .filter(|c| c.brier.is_finite())
                .min_by(|a, b| a.brier.total_cmp(&b.brier))
                .map_or("none", |c| c.method.as_str())
                .to_string();
            return (fit(&best, p, y), errors);
        }
    };
    (fit(method, p, y), Vec::new())
}

/// Weighted pool-adjacent-violators: `y` replaced by its least-squares non-decreasing fit.
fn pool_adjacent_violators(y: &mut [f64], w: &[f64]) {
    // Blocks as (start, weighted sum, weight).
    let mut blocks: Vec<(usize, f64, f64)> = Vec::with_capacity(y.len());
    for i in 0..y.len() {
        blocks.push((i, y[i] * w[i], w[i]));
        while blocks.len() > 1 {
            let (_, s1, w1) = blocks[blocks.len() - 1];
            let (_, s0, w0) = blocks[blocks.len() - 2];
            if s0 / w0 <= s1 / w1 {
                break;
            }
            blocks.pop();
            let last = blocks.last_mut().expect("two blocks");
            last.1 = s0 + s1;
            last.2 = w0 + w1;
        }
    }
    for (k, &(start, s, wt)) in blocks.iter().enumerate() {
        let end = blocks.get(k + 1).map_or(y.len(), |b| b.0);
        y[start..end].fill(s / wt);
    }
}

/// `np.interp(v, x, y)`: linear between the points, the end values outside them.
fn interpolate(x: &[f64], y: &[f64], v: f64) -> f64 {
    if x.is_empty() {
        return v;
    }
    if v <= x[0] {
        return y[0];
    }
    if v >= x[x.len() - 1] {
        return y[y.len() - 1];
    }
    let i = x.partition_point(|&xi| xi <= v);
    let (x0, x1, y0, y1) = (x[i - 1], x[i], y[i - 1], y[i]);
    if x1 == x0 {
        return y1;
    }
    y0 + (v - x0) * ((y1 - y0) / (x1 - x0))
}

/// Row numbers in increasing order of probability `p`, then outcome `y`: the order isotonic
/// regression pools rows in.
pub fn isotonic_order(p: &[f64], y: &[f64]) -> Vec<u32> {
    crate::stats::rows_by_key(p.len(), |i| (crate::stats::order_key(p[i]), y[i] > 0.0))
}

/// The expected calibration error as NannyML measures it: rows sorted by probability, cut into
/// `bins` bins of equal count, the bins' |mean probability − share positive| weighted by their
/// rows.
pub fn expected_calibration_error(y: &[f64], p: &[f64], bins: usize) -> f64 {
    let n = p.len();
    if n == 0 {
        return f64::NAN;
    }
    let bins = if n <= 2 * bins { (n / 2).max(1) } else { bins };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let width = n / bins;
    let mut edges: Vec<usize> = (0..=n).step_by(width.max(1)).collect();
    if *edges.last().unwrap() != n {
        // The last bin takes the remainder, as NannyML's edges do.
        *edges.last_mut().unwrap() = n;
    }
    let mut ece = 0.0;
    for w in edges.windows(2) {
        let rows = &order[w[0]..w[1]];
        if rows.is_empty() {
            continue;
        }
        let k = rows.len() as f64;
        let mp = rows.iter().map(|&r| p[r]).sum::<f64>() / k;
        let my = rows.iter().map(|&r| y[r]).sum::<f64>() / k;
        ece += k / n as f64 * (mp - my).abs();
    }
    ece
}

/// One bin of a reliability curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub lower: f64,
    pub upper: f64,
    pub rows: u64,
    pub mean_predicted: f64,
    pub share_positive: f64,
}

/// The reliability curve of scikit-learn's `calibration_curve(strategy="uniform")`: `bins`
/// equal-width bins of [0, 1], the empty ones left out.
pub fn reliability_curve(y: &[f64], p: &[f64], bins: usize) -> Vec<ReliabilityBin> {
    let mut acc = vec![(0u64, 0.0f64, 0.0f64); bins];
    for (yi, pi) in y.iter().zip(p) {
        // scikit-learn: np.searchsorted(edges[1:-1], p, side="right").
        let b = (1..bins)
            .filter(|&k| (k as f64 / bins as f64) <= *pi)
            .count();
        acc[b].0 += 1;
        acc[b].1 += pi;
        acc[b].2 += yi;
    }
    acc.iter()
        .enumerate()
        .filter(|(_, a)| a.0 > 0)
        .map(|(k, &(rows, sp, sy))| ReliabilityBin {
            lower: k as f64 / bins as f64,
            upper: (k + 1) as f64 / bins as f64,
            rows,
            mean_predicted: sp / rows as f64,
            share_positive: sy / rows as f64,
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The integer generator of `scripts/reference/cbpe_dle.py` (`lcg`): 24-bit fractions,
    /// exact in `f64`, so the script and the tests compute the same inputs.
    pub(crate) struct Lcg(u64);

    impl Lcg {
        pub(crate) fn new(seed: u64) -> Lcg {
            Lcg(seed)
        }

        pub(crate) fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 40) as f64 / (1u64 << 24) as f64
        }
    }

    /// `cbpe_dle.py`'s calibration data: an over-confident score and its outcomes.
    fn overconfident() -> (Vec<f64>, Vec<f64>) {
        let mut g = Lcg::new(13);
        let raw: Vec<f64> = (0..1000).map(|_| g.next()).collect();
        let truth = raw
            .iter()
            .map(|q| f64::from(u8::from(g.next() < 0.2 + 0.6 * q)))
            .collect();
        (raw, truth)
    }

    fn close(got: f64, want: f64, tol: f64) -> bool {
        (got - want).abs() <= tol * want.abs().max(1.0)
    }

    #[test]
    fn isotonic_calibration_matches_scikit_learn() {
        let (raw, truth) = overconfident();
        let c = Calibrator::fit_isotonic(&raw, &truth);
        // scripts/reference/cbpe_dle.py: IsotonicRegression(out_of_bounds="clip").predict(probe).
        let want = [
            0.0,
            0.2692307692307692,
            0.35555555555555557,
            0.4421052631578947,
            0.6551724137931034,
            1.0,
        ];
        for (p, w) in [0.0, 0.05, 0.3, 0.5, 0.77, 1.0].iter().zip(want) {
            assert!(close(c.apply(*p), w, 1e-12), "{p}: {} vs {w}", c.apply(*p));
        }
    }

    #[test]
    fn platt_calibration_matches_scikit_learn() {
        let (raw, truth) = overconfident();
        let Calibrator::Platt { a, b } = Calibrator::fit_platt(&raw, &truth) else {
            unreachable!()
        };
        // scikit-learn's L-BFGS stops within its tolerance of the optimum Newton reaches.
        assert!(close(a, -2.53579471639638, 1e-5), "{a}");
        assert!(close(b, 1.3585813241211755, 1e-5), "{b}");
    }

    #[test]
    fn the_reliability_curve_matches_scikit_learn_and_calibration_lowers_the_error() {
        let (raw, truth) = overconfident();
        let curve = reliability_curve(&truth, &raw, 10);
        let want_true = [
            0.2727272727272727,
            0.2857142857142857,
            0.3274336283185841,
            0.358974358974359,
            0.4077669902912621,
            0.5204081632653061,
            0.5102040816326531,
            0.6222222222222222,
            0.7216494845360825,
            0.7872340425531915,
        ];
        let want_pred = [
            0.049813968364638514,
            0.15307939707577883,
            0.24814572587477424,
            0.3479275963245294,
            0.4529017487775932,
            0.5508974833147866,
            0.6526557036808559,
            0.7537885467211406,
            0.8515611549013669,
            0.9513038764608667,
        ];
        assert_eq!(curve.len(), 10);
        for (b, (t, p)) in curve.iter().zip(want_true.iter().zip(want_pred)) {
            assert!(
                close(b.share_positive, *t, 1e-12) && close(b.mean_predicted, p, 1e-12),
                "{b:?}"
            );
        }
        let before = expected_calibration_error(&truth, &raw, 10);
        let mut calibrated = raw.clone();
        Calibrator::fit_platt(&raw, &truth).apply_all(&mut calibrated);
        let after = expected_calibration_error(&truth, &calibrated, 10);
        assert!(after < before / 2.0, "{before} -> {after}");
    }
}
