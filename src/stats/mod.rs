//! Statistics: quantiles and fences shared by the checks and the generator, and the two-sample
//! Kolmogorov–Smirnov test of the drift stage ([`ks`], with the distributions in [`kolmogorov`]).

pub mod categorical;
pub mod kolmogorov;
pub mod ks;

/// The `q` quantile of `values` with linear interpolation between order statistics, as
/// `numpy.quantile` (method `linear`) and `pandas.Series.quantile` compute it. Reorders `values`.
/// `None` for an empty slice. NaNs must have been removed.
pub fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let h = (n - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let (_, &mut x_lo, rest) = values.select_nth_unstable_by(lo, f64::total_cmp);
    if lo + 1 >= n || h == lo as f64 {
        return Some(x_lo);
    }
    let x_hi = rest.iter().copied().fold(f64::INFINITY, f64::min);
    Some(x_lo + (h - lo as f64) * (x_hi - x_lo))
}

/// Tukey's fences: `(q1 - k·iqr, q3 + k·iqr)`. `None` for an empty slice. Reorders `values`.
pub fn iqr_fences(values: &mut [f64], k: f64) -> Option<(f64, f64)> {
    let q1 = quantile(values, 0.25)?;
    let q3 = quantile(values, 0.75)?;
    let iqr = q3 - q1;
    Some((q1 - k * iqr, q3 + k * iqr))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed with numpy 2.4.6:
    //   numpy.quantile([7, 1, 3, 9, 4, 4, 10, 2], [0.25, 0.5, 0.75, 0.9]) -> [2.75, 4.0, 7.5, 9.3]
    #[test]
    fn quantiles_match_numpy_linear() {
        let v = [7.0, 1.0, 3.0, 9.0, 4.0, 4.0, 10.0, 2.0];
        for (q, want) in [
            (0.25, 2.75),
            (0.5, 4.0),
            (0.75, 7.5),
            (0.9, 9.3),
            (0.0, 1.0),
            (1.0, 10.0),
        ] {
            let got = quantile(&mut v.clone(), q).unwrap();
            assert!((got - want).abs() < 1e-12, "q={q}: {got} != {want}");
        }
        assert_eq!(quantile(&mut [], 0.5), None);
        assert_eq!(quantile(&mut [5.0], 0.75), Some(5.0));
    }

    // pandas 3.1.1: s = pd.Series([1,2,3,4,5,6,7,8,9,100]); q1, q3 = s.quantile([.25,.75]) -> 3.25, 7.75
    // fences with k=1.5: (-3.5, 14.5)
    #[test]
    fn fences_match_pandas() {
        let mut v: Vec<f64> = (1..=9).map(f64::from).chain([100.0]).collect();
        let (lo, hi) = iqr_fences(&mut v, 1.5).unwrap();
        assert!(
            (lo + 3.5).abs() < 1e-12 && (hi - 14.5).abs() < 1e-12,
            "{lo} {hi}"
        );
    }
}
