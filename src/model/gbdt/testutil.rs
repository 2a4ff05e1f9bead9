//! Data and helpers the booster's tests share.

use super::split::Split;

/// A split of `feature` at `bin`, for the partition tests (gain and sums unused).
pub(super) fn split_at(feature: usize, bin: usize) -> Split {
    Split {
        gain: 1.0,
        feature,
        bin,
        gl: 0.0,
        hl: 0.0,
    }
}

/// `len` increasing rows below `n` with gaps, as a leaf holds them.
pub(super) fn rows_with_gaps(rng: &mut crate::generate::Rng, n: u32, len: usize) -> Vec<u32> {
    let mut seg: Vec<u32> = (0..n).filter(|_| rng.uniform() < 0.5).collect();
    seg.truncate(len);
    seg
}

pub(super) fn data(n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut rng = crate::generate::Rng::new(3);
    let a: Vec<f64> = (0..n).map(|_| rng.uniform() * 4.0 - 2.0).collect();
    let b: Vec<f64> = (0..n).map(|_| (rng.uniform() * 5.0).floor()).collect();
    let y: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(a, b)| a * a + if *b >= 3.0 { 1.0 } else { 0.0 } + 0.1 * rng.normal())
        .collect();
    (a, b, y)
}

/// Whether `got` is `want` up to the order its terms were added in.
pub(super) fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-12 * want.abs().max(1.0)
}

/// The boosters have the same trees: the same splits, leaf values equal up to the order in which
/// each bin's sums were added.
pub(super) fn assert_same_trees(a: &super::Booster, b: &super::Booster, case: &str) {
    for (t, u) in a.trees.iter().zip(&b.trees) {
        assert_eq!(
            (&t.feature, &t.threshold, &t.left, &t.right),
            (&u.feature, &u.threshold, &u.left, &u.right),
            "{case}"
        );
        for (v, w) in t.value.iter().zip(&u.value) {
            assert!(
                (v - w).abs() <= 1e-12 * v.abs().max(1.0),
                "{case}: {v} vs {w}"
            );
        }
    }
}
