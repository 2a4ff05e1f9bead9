//! The split search, as LightGBM's `FeatureHistogram::FindBestThreshold`: for a leaf's
//! histograms, the feature and bin whose cut gains most.

use super::histogram::{FeatureHist, COUNT};
use super::params::Params;

#[derive(Clone, Copy, Debug)]
pub(super) struct Split {
    pub(super) gain: f64,
    pub(super) feature: usize,
    pub(super) bin: usize,
    pub(super) gl: f64,
    pub(super) hl: f64,
}

/// The best split of a leaf with `n` rows.
pub(super) fn best_split<const N: usize>(
    bounds: &[Vec<f64>],
    hist: &[FeatureHist<N>],
    g: f64,
    h: f64,
    n: usize,
    p: &Params,
) -> Option<Split> {
    let lambda = p.lambda_l2;
    let parent = g * g / (h + lambda);
    let min_data = p.min_data_in_leaf as f64;
    let mut best: Option<Split> = None;
    for (f, fh) in hist.iter().enumerate() {
        let nb = bounds[f].len();
        let (mut gl, mut hl, mut nl) = (0.0, 0.0, 0.0);
        for (bin, e) in fh[..nb.saturating_sub(1)].iter().enumerate() {
            gl += e[0];
            hl += e[1];
            nl += e[COUNT[N]];
            if nl < min_data {
                continue;
            }
            if n as f64 - nl < min_data {
                break;
            }
            let hr = h - hl;
            if hl < p.min_sum_hessian_in_leaf || hr < p.min_sum_hessian_in_leaf {
                continue;
            }
            let gr = g - gl;
            let gain = gl * gl / (hl + lambda) + gr * gr / (hr + lambda) - parent;
            if gain > p.min_gain_to_split && best.is_none_or(|s| gain > s.gain) {
                best = Some(Split {
                    gain,
                    feature: f,
                    bin,
                    gl,
                    hl,
                });
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A histogram of squared error (gradient, count) entries.
    fn hist(entries: &[(f64, f64)]) -> FeatureHist<2> {
        let mut h = [[0.0; 2]; 256];
        for (b, &(g, n)) in entries.iter().enumerate() {
            h[b] = [g, n];
        }
        h
    }

    #[test]
    fn the_best_split_is_the_cut_of_largest_gain_that_leaves_enough_rows_each_side() {
        // Four bins: the gradients change sign between bins 1 and 2.
        let bounds = vec![vec![1.0, 2.0, 3.0, f64::INFINITY]];
        let h = hist(&[(-30.0, 30.0), (-20.0, 30.0), (25.0, 30.0), (25.0, 30.0)]);
        let p = Params {
            min_data_in_leaf: 20,
            ..Params::default()
        };
        let s = best_split(&bounds, &[h], 0.0, 120.0, 120, &p).unwrap();
        assert_eq!((s.feature, s.bin), (0, 1));
        assert_eq!((s.gl, s.hl), (-50.0, 60.0));
        let want = 50.0 * 50.0 / 60.0 + 50.0 * 50.0 / 60.0;
        assert!((s.gain - want).abs() < 1e-12);
        // Too few rows on either side of every cut: no split.
        let p = Params {
            min_data_in_leaf: 70,
            ..Params::default()
        };
        assert!(best_split(&bounds, &[h], 0.0, 120.0, 120, &p).is_none());
    }
}
