//! Model metrics, with scikit-learn's definitions (metric values agree with scikit-learn's to
//! 1e-9). [`Metric`] names them once for the pipeline file's gates, the train stage, the registry
//! and the health check; the functions are pure, over slices, with an error for inputs that leave
//! a metric undefined.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::model::Task;

/// A metric a model is measured by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    R2,
    Rmse,
    Mae,
    Auc,
    LogLoss,
    Brier,
    Precision,
    Recall,
    F1,
    /// The share of rows predicted positive at the threshold: reported, not a measure of
    /// quality, so no gate may use it.
    PositiveRate,
}

/// A model's metrics, in the order [`evaluate`] computes them. An undefined value is NaN, written
/// as `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metrics(#[serde(deserialize_with = "crate::json::nan_map")] pub IndexMap<Metric, f64>);

impl std::ops::Deref for Metrics {
    type Target = IndexMap<Metric, f64>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Metrics {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a> IntoIterator for &'a Metrics {
    type Item = (&'a Metric, &'a f64);
    type IntoIter = indexmap::map::Iter<'a, Metric, f64>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Metric {
    const ALL: [Metric; 10] = [
        Metric::R2,
        Metric::Rmse,
        Metric::Mae,
        Metric::Auc,
        Metric::LogLoss,
        Metric::Brier,
        Metric::Precision,
        Metric::Recall,
        Metric::F1,
        Metric::PositiveRate,
    ];

    /// The metrics of a task that measure quality (usable in gates), in the order they are
    /// reported.
    pub fn of(task: Task) -> &'static [Metric] {
        match task {
            Task::Regression => &[Metric::R2, Metric::Rmse, Metric::Mae],
            Task::Binary => &[
                Metric::Auc,
                Metric::LogLoss,
                Metric::Brier,
                Metric::Precision,
                Metric::Recall,
                Metric::F1,
            ],
        }
    }

    /// The name in pipeline files, `metrics.json` and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Metric::R2 => "r2",
            Metric::Rmse => "rmse",
            Metric::Mae => "mae",
            Metric::Auc => "auc",
            Metric::LogLoss => "log_loss",
            Metric::Brier => "brier",
            Metric::Precision => "precision",
            Metric::Recall => "recall",
            Metric::F1 => "f1",
            Metric::PositiveRate => "positive_rate",
        }
    }

    pub fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The task whose models produce it.
    pub fn task(self) -> Task {
        match self {
            Metric::R2 | Metric::Rmse | Metric::Mae => Task::Regression,
            _ => Task::Binary,
        }
    }

    /// Whether a larger value is a better model (errors and losses: no).
    pub fn higher_is_better(self) -> bool {
        !matches!(
            self,
            Metric::Rmse | Metric::Mae | Metric::LogLoss | Metric::Brier
        )
    }

    /// Whether `ours` is at least as good as `theirs`.
    pub fn at_least_as_good(self, ours: f64, theirs: f64) -> bool {
        if self.higher_is_better() {
            ours >= theirs
        } else {
            ours <= theirs
        }
    }

    /// The metric a model of `task` is judged by when its gates name none.
    pub fn primary(task: Task) -> Metric {
        match task {
            Task::Regression => Metric::R2,
            Task::Binary => Metric::Auc,
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// Every metric of a task on truth `y` and predictions `p` (probabilities for a binary task,
/// whose decision threshold is `threshold`).
pub fn evaluate(task: Task, y: &[f64], p: &[f64], threshold: f64) -> Result<Metrics, MetricError> {
    let mut m = Metrics::default();
    match task {
        Task::Regression => {
            m.insert(Metric::R2, r2(y, p)?);
            m.insert(Metric::Rmse, rmse(y, p)?);
            m.insert(Metric::Mae, mae(y, p)?);
        }
        Task::Binary => {
            let yb: Vec<bool> = y.iter().map(|v| *v == 1.0).collect();
            m.insert(Metric::Auc, roc_auc(&yb, p)?);
            m.insert(Metric::LogLoss, log_loss(&yb, p)?);
            m.insert(Metric::Brier, brier(&yb, p)?);
            let c = Confusion::at(&yb, p, threshold)?;
            m.insert(Metric::Precision, c.precision());
            m.insert(Metric::Recall, c.recall());
            m.insert(Metric::F1, c.f1());
            m.insert(
                Metric::PositiveRate,
                p.iter().filter(|v| **v >= threshold).count() as f64 / p.len() as f64,
            );
        }
    }
    Ok(m)
}

/// Why a metric cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    #[error("the truth has {0} values and the predictions {1}")]
    LengthMismatch(usize, usize),
    #[error("no values to measure")]
    Empty,
    #[error("the truth has only one class; AUC is undefined")]
    SingleClass,
}

type R = Result<f64, MetricError>;

fn check(a: usize, b: usize) -> Result<(), MetricError> {
    if a != b {
        Err(MetricError::LengthMismatch(a, b))
    } else if a == 0 {
        Err(MetricError::Empty)
    } else {
        Ok(())
    }
}

/// Compensated (Neumaier) sum, so long sums agree with numpy's pairwise sums to ~1 ulp.
fn sum(it: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for x in it {
        let t = s + x;
        c += if s.abs() >= x.abs() {
            (s - t) + x
        } else {
            (x - t) + s
        };
        s = t;
    }
    s + c
}

/// `sklearn.metrics.r2_score`: 1 − SS_res/SS_tot (1 for a perfect fit of a constant, else 0).
pub fn r2(y: &[f64], p: &[f64]) -> R {
    check(y.len(), p.len())?;
    let mean = sum(y.iter().copied()) / y.len() as f64;
    let ss_res = sum(y.iter().zip(p).map(|(a, b)| (a - b) * (a - b)));
    let ss_tot = sum(y.iter().map(|a| (a - mean) * (a - mean)));
    Ok(if ss_tot == 0.0 {
        if ss_res == 0.0 {
            1.0
        } else {
            0.0
        }
    } else {
        1.0 - ss_res / ss_tot
    })
}

/// `sklearn.metrics.root_mean_squared_error`.
pub fn rmse(y: &[f64], p: &[f64]) -> R {
    check(y.len(), p.len())?;
    Ok((sum(y.iter().zip(p).map(|(a, b)| (a - b) * (a - b))) / y.len() as f64).sqrt())
}

/// `sklearn.metrics.mean_absolute_error`.
pub fn mae(y: &[f64], p: &[f64]) -> R {
    check(y.len(), p.len())?;
    Ok(sum(y.iter().zip(p).map(|(a, b)| (a - b).abs())) / y.len() as f64)
}

/// `sklearn.metrics.roc_auc_score` for a binary truth: the area under the ROC curve, with tied
/// scores forming one step (trapezoids), as `roc_curve` + `auc` compute it.
///
/// Computed as the Mann–Whitney statistic: the pairs of a positive and a negative in which the
/// positive scores higher, plus half the tied pairs, over all pairs. That is the trapezoids'
/// area exactly (both are sums of whole and half numbers, exact in `f64` below 2⁵³ pairs). The
/// two classes' scores are sorted on their own with the linear radix sort and merged, instead of
/// sorting row numbers by their scores (an `n log n` sort of cache-missing reads, most of the
/// metric's time for 2 M holdout rows). Signed zeros tie, as `==` has them.
pub fn roc_auc(y: &[bool], score: &[f64]) -> R {
    check(y.len(), score.len())?;
    let pos = y.iter().filter(|&&v| v).count();
    let (mut p, mut n) = (Vec::with_capacity(pos), Vec::with_capacity(y.len() - pos));
    for (&t, &s) in y.iter().zip(score) {
        // -0.0 + 0.0 is 0.0: one key for both zeros.
        if t {
            p.push(s + 0.0)
        } else {
            n.push(s + 0.0)
        }
    }
    if p.is_empty() || n.is_empty() {
        return Err(MetricError::SingleClass);
    }
    crate::stats::sort_f64(&mut p);
    crate::stats::sort_f64(&mut n);
    // Twice the statistic: 2 per negative below a positive, 1 per tie. `below` negatives are
    // under the current positive score.
    let (mut twice, mut below, mut k) = (0u128, 0usize, 0usize);
    while k < p.len() {
        let s = p[k];
        while below < n.len() && n[below].total_cmp(&s).is_lt() {
            below += 1;
        }
        let mut tied = 0usize;
        while below + tied < n.len() && n[below + tied].total_cmp(&s).is_eq() {
            tied += 1;
        }
        let mut same = 0u64;
        while k < p.len() && p[k].total_cmp(&s).is_eq() {
            (same, k) = (same + 1, k + 1);
        }
        twice += u128::from(same) * (2 * below + tied) as u128;
    }
    Ok((twice as f64 / 2.0) / (pos as f64 * (y.len() - pos) as f64))
}

/// `sklearn.metrics.log_loss` for a binary truth: probabilities clipped to [ε, 1−ε] (ε the f64
/// machine epsilon) after forming both classes' columns.
pub fn log_loss(y: &[bool], p: &[f64]) -> R {
    check(y.len(), p.len())?;
    let eps = f64::EPSILON;
    let total = sum(y.iter().zip(p).map(|(&t, &q)| {
        let q = if t { q } else { 1.0 - q };
        -q.clamp(eps, 1.0 - eps).ln()
    }));
    Ok(total / y.len() as f64)
}

/// `sklearn.metrics.brier_score_loss`.
pub fn brier(y: &[bool], p: &[f64]) -> R {
    check(y.len(), p.len())?;
    Ok(sum(y
        .iter()
        .zip(p)
        .map(|(&t, &q)| (q - f64::from(u8::from(t))).powi(2)))
        / y.len() as f64)
}

/// Counts of a binary decision against the truth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    pub fn_: u64,
}

impl Confusion {
    /// Decisions are `score >= threshold`.
    pub fn at(y: &[bool], score: &[f64], threshold: f64) -> Result<Confusion, MetricError> {
        check(y.len(), score.len())?;
        let mut c = Confusion::default();
        for (&t, &s) in y.iter().zip(score) {
            match (t, s >= threshold) {
                (true, true) => c.tp += 1,
                (false, true) => c.fp += 1,
                (false, false) => c.tn += 1,
                (true, false) => c.fn_ += 1,
            }
        }
        Ok(c)
    }

    fn ratio(a: u64, b: u64) -> f64 {
        // scikit-learn's zero_division default gives 0.
        if b == 0 {
            0.0
        } else {
            a as f64 / b as f64
        }
    }

    pub fn precision(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fp)
    }

    /// Recall, the true-positive rate.
    pub fn recall(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fn_)
    }

    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values: scripts/reference/metrics_fairness.py (scikit-learn 1.9.1).
    const Y: [f64; 12] = [0.3, 1.2, 2.5, 0.0, 4.1, 3.3, 2.2, 0.9, 1.7, 5.0, 2.8, 3.9];
    const P: [f64; 12] = [0.5, 1.0, 2.1, 0.4, 3.6, 3.9, 2.0, 1.3, 1.1, 4.4, 3.1, 3.5];
    pub(crate) const YB: [bool; 14] = [
        true, false, true, true, false, false, true, false, true, false, false, true, true, false,
    ];
    pub(crate) const S: [f64; 14] = [
        0.9, 0.1, 0.8, 0.4, 0.4, 0.35, 0.8, 0.0, 1.0, 0.6, 0.2, 0.55, 0.4, 0.8,
    ];

    fn near(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-9 * b.abs().max(1e-300), "{a} != {b}");
    }

    #[test]
    fn regression_metrics_match_sklearn() {
        near(r2(&Y, &P).unwrap(), 0.9198603069570812);
        near(rmse(&Y, &P).unwrap(), 0.42622372841814726);
        near(mae(&Y, &P).unwrap(), 0.3999999999999999);
        assert_eq!(r2(&[1.0, 1.0], &[1.0, 1.0]).unwrap(), 1.0);
        assert_eq!(r2(&[1.0, 1.0], &[1.0, 2.0]).unwrap(), 0.0);
        assert_eq!(
            r2(&[1.0], &[1.0, 2.0]),
            Err(MetricError::LengthMismatch(1, 2))
        );
    }

    #[test]
    fn binary_metrics_match_sklearn() {
        near(roc_auc(&YB, &S).unwrap(), 0.836734693877551);
        near(log_loss(&YB, &S).unwrap(), 0.48413623813777956);
        near(brier(&YB, &S).unwrap(), 0.1675);
        let c = Confusion::at(&YB, &S, 0.5).unwrap();
        near(c.precision(), 0.7142857142857143);
        near(c.recall(), 0.7142857142857143);
        near(c.f1(), 0.7142857142857143);
        // Ties across classes, and clipping of 0 and 1 probabilities:
        //   roc_auc_score([0,0,1,1,1], [.5,.5,.5,.5,.9]) = 0.6666666666666666
        //   log_loss([1,0,1], [0.0, 1.0, 0.7]) = 24.14799390739101
        near(
            roc_auc(
                &[false, false, true, true, true],
                &[0.5, 0.5, 0.5, 0.5, 0.9],
            )
            .unwrap(),
            0.6666666666666666,
        );
        near(
            log_loss(&[true, false, true], &[0.0, 1.0, 0.7]).unwrap(),
            24.14799390739101,
        );
        assert_eq!(
            roc_auc(&[true, true], &[0.1, 0.2]),
            Err(MetricError::SingleClass)
        );
    }

    /// The ROC curve's trapezoids, as `roc_curve` + `auc` sum them: rows sorted by descending
    /// score, tied scores one step. `roc_auc` computed this way until session 10.
    fn trapezoids(y: &[bool], score: &[f64]) -> f64 {
        let mut idx: Vec<usize> = (0..y.len()).collect();
        idx.sort_unstable_by(|&a, &b| score[b].total_cmp(&score[a]));
        let pos = y.iter().filter(|&&v| v).count() as f64;
        let neg = y.len() as f64 - pos;
        let (mut tp, mut fp, mut area, mut i) = (0.0f64, 0.0f64, 0.0f64, 0);
        while i < idx.len() {
            let (tp0, fp0) = (tp, fp);
            let s = score[idx[i]];
            while i < idx.len() && score[idx[i]] == s {
                (tp, fp) = if y[idx[i]] {
                    (tp + 1.0, fp)
                } else {
                    (tp, fp + 1.0)
                };
                i += 1;
            }
            area += (fp - fp0) * (tp + tp0) / 2.0;
        }
        area / (pos * neg)
    }

    #[test]
    fn the_pair_count_is_the_trapezoids_bit_for_bit() {
        let mut rng = crate::generate::Rng::new(7);
        // Sizes on both sides of the radix sort's cut-over (4 096), few and many distinct
        // scores (ties across classes), signed zeros and negative scores.
        for (n, levels) in [
            (50, 3),
            (3_000, 1_000_000),
            (20_000, 17),
            (200_000, 1 << 30),
        ] {
            let y: Vec<bool> = (0..n).map(|_| rng.below(10) < 3).collect();
            let s: Vec<f64> = (0..n)
                .map(|i| match i % 50 {
                    0 => -0.0,
                    1 => 0.0,
                    _ => {
                        (rng.below(levels) as f64 / levels as f64 - 0.2)
                            * if y[i] { 1.3 } else { 1.0 }
                    }
                })
                .collect();
            assert_eq!(
                roc_auc(&y, &s).unwrap().to_bits(),
                trapezoids(&y, &s).to_bits(),
                "{n} rows"
            );
        }
    }
}
