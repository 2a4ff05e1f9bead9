//! Statistics: quantiles and fences shared by the checks and the generator, and the two-sample
//! Kolmogorov–Smirnov test of the drift stage ([`ks`], with the distributions in [`kolmogorov`]).

pub mod categorical;
pub mod kolmogorov;
pub mod ks;

/// Population standard deviation (`np.std`) and mean; NaN for no values.
pub fn std_mean(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (var.sqrt(), mean)
}

/// Row numbers `0..n` in increasing order of `key(row)`, ties in row order (what a stable
/// comparison sort gives), sorted as plain keys: a comparator reaching into other arrays costs
/// a cache miss a comparison on a million rows.
pub fn rows_by_key<K: Ord + Send>(n: usize, key: impl Fn(usize) -> K) -> Vec<u32> {
    let mut keyed: Vec<(K, u32)> = (0..n as u32).map(|i| (key(i as usize), i)).collect();
    // No two pairs are equal (the row numbers differ), so any sort gives this one order: on
    // every core for many rows (CBPE's estimate and the calibrator's folds sort a million).
    if n >= 1 << 15 {
        use rayon::slice::ParallelSliceMut;
        keyed.par_sort_unstable();
    } else {
        keyed.sort_unstable();
    }
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// An unsigned key that orders as `f64::total_cmp` orders the values (the sign bit flipped for
/// positives, every bit for negatives): integer sorts of these keys sort the floats.
pub fn order_key(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | 1 << 63
    }
}

/// Sorts `v` ascending in [`f64::total_cmp`] order (NaNs allowed: negative ones first, positive
/// ones last). A radix sort, linear in the length: each value becomes a `u64` whose unsigned
/// order is `total_cmp`'s, and the keys are distributed 11 bits at a time, least significant
/// first, skipping the digits every key shares. Values that compare equal have the same bits,
/// so the result is exactly what a comparison sort gives. (A comparison sort's `n log n` was most
/// of the drift stage at 10 M rows.)
pub fn sort_f64(v: &mut Vec<f64>) {
    const BITS: u32 = 11;
    const RADIX: usize = 1 << BITS;
    const PASSES: usize = 64usize.div_ceil(BITS as usize);
    let n = v.len();
    if n < 1 << 12 {
        v.sort_unstable_by(f64::total_cmp);
        return;
    }
    let key = order_key;
    let value = |k: u64| f64::from_bits(if k >> 63 == 1 { k & !(1 << 63) } else { !k });
    let digit = |k: u64, pass: usize| (k >> (pass as u32 * BITS)) as usize & (RADIX - 1);
    // Collected in place: the keys reuse the values' allocation.
    let mut keys: Vec<u64> = std::mem::take(v).into_iter().map(key).collect();
    let mut counts = vec![[0usize; RADIX]; PASSES];
    for &k in &keys {
        for (pass, c) in counts.iter_mut().enumerate() {
            c[digit(k, pass)] += 1;
        }
    }
    let mut other = vec![0u64; n];
    for (pass, c) in counts.iter().enumerate() {
        if c.contains(&n) {
            continue;
        }
        let mut next = [0usize; RADIX];
        let mut sum = 0;
        for (d, &c) in c.iter().enumerate() {
            next[d] = sum;
            sum += c;
        }
        for &k in &keys {
            let d = digit(k, pass);
            other[next[d]] = k;
            next[d] += 1;
        }
        std::mem::swap(&mut keys, &mut other);
    }
    *v = keys.into_iter().map(value).collect();
}

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
    fn radix_sort_orders_as_total_cmp_does() {
        let mut rng = crate::generate::Rng::new(5);
        let special = [
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            f64::from_bits(1),
            -f64::from_bits(1),
            f64::MAX,
            f64::MIN,
            f64::NAN,
            -f64::NAN,
        ];
        for n in [0, 1, 100, 4_095, 4_096, 50_000] {
            for kind in 0..3 {
                let mut v: Vec<f64> = (0..n)
                    .map(|i| match kind {
                        // Wide range and every special value.
                        0 if i % 97 == 0 => special[i / 97 % special.len()],
                        0 => (rng.normal() * 30.0).exp() * rng.normal().signum(),
                        // Small integers: most digits shared, passes skipped.
                        1 => (rng.uniform() * 20.0).floor(),
                        _ => rng.normal(),
                    })
                    .collect();
                let mut want = v.clone();
                want.sort_unstable_by(f64::total_cmp);
                sort_f64(&mut v);
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&v), bits(&want), "n {n}, kind {kind}");
            }
        }
    }

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
