//! The two-sample Kolmogorov–Smirnov test, as `scipy.stats.ks_2samp(a, b)` computes it
//! (two-sided, method `auto`): the statistic is the largest gap between the two empirical CDFs;
//! the p-value is exact when both samples have at most 10 000 values (lattice-path counting,
//! Hodges 1958, in the numerically stable form of Viehmann 2021), and otherwise the tail of the
//! one-sample distribution D_n with n = round(m·n/(m+n)).

use super::kolmogorov::kolmogn_sf;

/// Largest sample size for which the exact p-value is computed.
pub const MAX_EXACT_N: usize = 10_000;

/// A KS test result.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KsResult {
    pub statistic: f64,
    pub p_value: f64,
    /// Whether the p-value is exact (else asymptotic).
    pub exact: bool,
}

/// The statistic of two *sorted* samples (NaN-free).
pub fn statistic_sorted(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let (mut max_pos, mut max_neg) = (0.0f64, 0.0f64);
    while i < a.len() || j < b.len() {
        // The next distinct value; both CDFs step past every copy of it.
        let v = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) => x.min(y),
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => unreachable!(),
        };
        while i < a.len() && a[i] <= v {
            i += 1;
        }
        while j < b.len() && b[j] <= v {
            j += 1;
        }
        let diff = i as f64 / n1 - j as f64 / n2;
        max_pos = max_pos.max(diff);
        max_neg = max_neg.max(-diff);
    }
    max_pos.max(max_neg.clamp(0.0, 1.0))
}

/// `ks_2samp(a, b)`: sorts copies of both samples. NaNs must have been removed; `None` when a
/// sample is empty.
pub fn ks_2samp(a: &[f64], b: &[f64]) -> Option<KsResult> {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    super::sort_f64(&mut a);
    super::sort_f64(&mut b);
    ks_2samp_sorted(&a, &b)
}

/// `ks_2samp` on samples already sorted ascending.
pub fn ks_2samp_sorted(a: &[f64], b: &[f64]) -> Option<KsResult> {
    let (n1, n2) = (a.len(), b.len());
    if n1 == 0 || n2 == 0 {
        return None;
    }
    Some(with_p_value(n1, n2, statistic_sorted(a, b)))
}

/// A sample's distinct values in increasing order, each with how often it occurs. A sample of
/// few distinct values (ages, counts, prices in cents) needs no sort for the test: counting its
/// values is one pass with a table that stays in the cache, where sorting 10 M values was
/// several passes over 80 MB and most of the drift stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    values: Vec<f64>,
    counts: Vec<u64>,
    total: u64,
}

/// Values that are whole numbers below this are counted in an array, the rest in a hash map.
const DIRECT: usize = 4096;

impl Counted {
    /// Counts `values` (NaN-free); `None` as soon as more than `limit` distinct values have been
    /// seen. -0.0 and 0.0 are one value, as the comparisons of the sorted test take them.
    pub fn of(values: impl IntoIterator<Item = f64>, limit: usize) -> Option<Counted> {
        use std::collections::HashMap;
        let mut direct = vec![0u64; DIRECT];
        let mut seen = 0usize;
        let mut other: HashMap<u64, u64, foldhash::fast::FixedState> = HashMap::default();
        let mut total = 0u64;
        for v in values {
            total += 1;
            if v >= 0.0 && v < DIRECT as f64 && v == v.trunc() {
                let c = &mut direct[v as usize];
                seen += usize::from(*c == 0);
                *c += 1;
            } else {
                let c = other.entry((v + 0.0).to_bits()).or_insert(0);
                seen += usize::from(*c == 0);
                *c += 1;
            }
            if seen > limit {
                return None;
            }
        }
        let mut pairs: Vec<(f64, u64)> = direct
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(v, c)| (v as f64, *c))
            .chain(other.into_iter().map(|(k, c)| (f64::from_bits(k), c)))
            .collect();
        pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        Some(Counted {
            values: pairs.iter().map(|p| p.0).collect(),
            counts: pairs.iter().map(|p| p.1).collect(),
            total,
        })
    }
}

/// [`statistic_sorted`] of two counted samples: the same steps, one a distinct value, with the
/// same arithmetic, so the same statistic.
pub fn statistic_counted(a: &Counted, b: &Counted) -> f64 {
    let (n1, n2) = (a.total as f64, b.total as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let (mut below_a, mut below_b) = (0u64, 0u64);
    let (mut max_pos, mut max_neg) = (0.0f64, 0.0f64);
    while i < a.values.len() || j < b.values.len() {
        let v = match (a.values.get(i), b.values.get(j)) {
            (Some(&x), Some(&y)) => x.min(y),
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => unreachable!(),
        };
        if i < a.values.len() && a.values[i] <= v {
            below_a += a.counts[i];
            i += 1;
        }
        if j < b.values.len() && b.values[j] <= v {
            below_b += b.counts[j];
            j += 1;
        }
        let diff = below_a as f64 / n1 - below_b as f64 / n2;
        max_pos = max_pos.max(diff);
        max_neg = max_neg.max(-diff);
    }
    max_pos.max(max_neg.clamp(0.0, 1.0))
}

/// `ks_2samp` of two counted samples; `None` when a sample is empty.
pub fn ks_2samp_counted(a: &Counted, b: &Counted) -> Option<KsResult> {
    let (n1, n2) = (a.total as usize, b.total as usize);
    if n1 == 0 || n2 == 0 {
        return None;
    }
    Some(with_p_value(n1, n2, statistic_counted(a, b)))
}

/// The test's result for statistic `d` of samples of `n1` and `n2` values.
fn with_p_value(n1: usize, n2: usize, d: f64) -> KsResult {
    if n1.max(n2) <= MAX_EXACT_N {
        if let Some((d, p)) = exact(n1 as u64, n2 as u64, d) {
            return KsResult {
                statistic: d,
                p_value: p,
                exact: true,
            };
        }
    }
    let (m, n) = (n1.max(n2) as f64, n1.min(n2) as f64);
    let en = (m * n / (m + n)).round_ties_even();
    let p = kolmogn_sf(en as u64, d).clamp(0.0, 1.0);
    KsResult {
        statistic: d,
        p_value: p,
        exact: false,
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The exact two-sided p-value; `None` when it cannot be computed in floating point.
/// Returns the statistic snapped to the lattice (h / lcm) as scipy does.
fn exact(n1: u64, n2: u64, d: f64) -> Option<(f64, f64)> {
    let g = gcd(n1, n2);
    let lcm = (n1 / g) * n2;
    let h = (d * lcm as f64).round_ties_even() as u64;
    let d = h as f64 / lcm as f64;
    if h == 0 {
        return Some((d, 1.0));
    }
    let p = if n1 == n2 {
        prob_outside_square(n1, h)
    } else {
        outer_prob_inside(n1, n2, g, h)
    };
    (p.is_finite() && (0.0..=1.0).contains(&p)).then_some((d, p))
}

/// P(D_{n,n} >= h/n) by a Horner-like alternating sum of binomial ratios.
fn prob_outside_square(n: u64, h: u64) -> f64 {
    let (nf, hf) = (n as f64, h as f64);
    let mut p = 0.0;
    let mut k = (nf / hf).floor() as i64;
    while k >= 0 {
        let kf = k as f64;
        let mut p1 = 1.0;
        for j in 0..h {
            let jf = j as f64;
            p1 = (nf - kf * hf - jf) * p1 / (nf + kf * hf + jf + 1.0);
        }
        p = p1 * (1.0 - p);
        k -= 1;
    }
    2.0 * p
}

/// 1 − the proportion of lattice paths from (0,0) to (m,n) staying strictly inside
/// |x/m − y/n| < h/lcm(m,n) (Hodges' inside method, computed directly as 1 − p after Viehmann).
fn outer_prob_inside(m: u64, n: u64, g: u64, h: u64) -> f64 {
    let (m, n) = if m < n { (n, m) } else { (m, n) };
    let (mg, ng) = ((m / g) as i64, (n / g) as i64);
    let (m, n, h) = (m as i64, n as i64, h as i64);
    let ceil_div = |a: i64, b: i64| -> i64 { (a as f64 / b as f64).ceil() as i64 };
    let floor_div = |a: i64, b: i64| -> i64 { (a as f64 / b as f64).floor() as i64 };
    let mut minj: i64 = 0;
    let mut maxj: i64 = ceil_div(h, mg).min(n + 1);
    let mut curlen = maxj - minj;
    let len_a = (2 * maxj + 2).min(n + 1) as usize;
    let mut a = vec![1.0f64; len_a.max(1)];
    for x in a.iter_mut().take(maxj as usize).skip(minj as usize) {
        *x = 0.0;
    }
    for i in 1..=m {
        let (lastminj, lastlen) = (minj, curlen);
        minj = (floor_div(ng * i - h, mg) + 1).max(0).min(n);
        maxj = ceil_div(ng * i + h, mg).min(n + 1);
        if maxj <= minj {
            return 1.0;
        }
        let mut val = if minj == 0 { 0.0 } else { 1.0 };
        let fi = i as f64;
        for jj in 0..(maxj - minj) {
            let j = jj + minj;
            val = (a[(jj + minj - lastminj) as usize] * fi + val * j as f64) / (fi + j as f64);
            a[jj as usize] = val;
        }
        curlen = maxj - minj;
        if lastlen > curlen {
            let from = (maxj - minj) as usize;
            let to = (from + (lastlen - curlen) as usize).min(a.len());
            for x in &mut a[from..to] {
                *x = 1.0;
            }
        }
    }
    a[(maxj - minj - 1) as usize]
}

#[cfg(test)]
mod tests {
    use super::super::kolmogorov::{kolmogn_sf, smirnov};
    use super::*;

    /// Sample of a case: x_i = ((i*a + c) % m) / m + shift for i in 0..n (integer arithmetic, so
    /// Python builds the same values).
    fn sample(n: u64, a: u64, c: u64, m: u64, shift: f64) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * a + c) % m) as f64 / m as f64 + shift)
            .collect()
    }

    type Spec = (u64, u64, u64, u64, f64);

    // Computed once with scipy 1.17.1 (numpy 2.4.6):
    //   r = scipy.stats.ks_2samp(sample(*s1), sample(*s2)); (r.statistic, r.pvalue)
    // The script that prints them: scripts/reference/ks_2samp.py.
    const CASES: &[(&str, Spec, Spec, f64, f64)] = &[
        (
            "ties_unequal",
            (8, 3, 1, 5, 0.0),
            (5, 2, 0, 7, 0.1),
            0.225,
            0.9875679875679876,
        ),
        (
            "equal_50",
            (50, 37, 3, 101, 0.0),
            (50, 41, 5, 103, 0.05),
            0.08,
            0.9977109764909107,
        ),
        (
            "unequal_300_200",
            (300, 97, 1, 1009, 0.0),
            (200, 89, 7, 997, 0.08),
            0.09333333333333334,
            0.23649002151756407,
        ),
        (
            "ties_heavy",
            (400, 13, 0, 20, 0.0),
            (350, 7, 3, 20, 0.0),
            0.004285714285714286,
            1.0,
        ),
        (
            "exact_10000_10000",
            (10000, 7919, 11, 10007, 0.0),
            (10000, 6007, 5, 10009, 0.01),
            0.0101,
            0.6875487335121528,
        ),
        (
            "asymp_10000_10001",
            (10000, 7919, 11, 10007, 0.0),
            (10001, 6007, 5, 10009, 0.01),
            0.01014082591740828,
            0.6787347071561436,
        ),
        (
            "exact_9999_10000",
            (9999, 7919, 11, 10007, 0.0),
            (10000, 6007, 5, 10009, 0.01),
            0.010141844184418441,
            0.676965442007432,
        ),
        (
            "tiny_p_exact",
            (2000, 733, 1, 2003, 0.0),
            (3000, 1223, 2, 3001, 0.3),
            0.30083333333333334,
            2.7039580930719624e-96,
        ),
        (
            "tiny_p_asymp",
            (20000, 7919, 1, 20011, 0.0),
            (30000, 12007, 2, 30011, 0.05),
            0.050000000000000044,
            1.6400629843179267e-26,
        ),
        (
            "asymp_small_n",
            (20000, 7919, 1, 20011, 0.0),
            (100, 37, 2, 101, 0.08),
            0.08334999999999992,
            0.4658551348747766,
        ),
        (
            "asymp_small_n_b",
            (20000, 7919, 1, 20011, 0.0),
            (120, 37, 2, 127, 0.03),
            0.03059999999999996,
            0.9997361715913426,
        ),
        (
            "asymp_dmtw",
            (15000, 7919, 1, 15013, 0.0),
            (15000, 12007, 2, 15017, 0.002),
            0.0023333333333334094,
            0.999999999998382,
        ),
        (
            "asymp_pelz_1m",
            (1000000, 999983, 1, 1000003, 0.0),
            (1000000, 700001, 2, 1000033, 0.0),
            4.000000000004e-06,
            1.0,
        ),
        (
            "asymp_drift_1m",
            (1000000, 999983, 1, 1000003, 0.0),
            (1000000, 700001, 2, 1000033, 0.02),
            0.020004000000000022,
            3.108641828734362e-174,
        ),
    ];

    fn close(got: f64, want: f64, rel: f64) -> bool {
        got == want || (got - want).abs() <= rel * want.abs()
    }

    #[test]
    fn ks_2samp_matches_scipy() {
        let mut failures = Vec::new();
        for (name, s1, s2, stat, p) in CASES {
            let a = sample(s1.0, s1.1, s1.2, s1.3, s1.4);
            let b = sample(s2.0, s2.1, s2.2, s2.3, s2.4);
            let r = ks_2samp(&a, &b).unwrap();
            if (r.statistic - stat).abs() > 1e-12 {
                failures.push(format!("{name}: statistic {} != {stat}", r.statistic));
            }
            if !close(r.p_value, *p, 1e-9) {
                failures.push(format!(
                    "{name}: p-value {:e} != {p:e} (exact: {})",
                    r.p_value, r.exact
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn counted_samples_give_the_sorted_samples_result_bit_for_bit() {
        // Every reference case (which has ties), and samples of whole numbers, halves, negative
        // values, large values past the direct table, and both zeros on either side.
        let mut rng = crate::generate::Rng::new(41);
        let mut pairs: Vec<(Vec<f64>, Vec<f64>)> = CASES
            .iter()
            .map(|(_, s1, s2, ..)| {
                (
                    sample(s1.0, s1.1, s1.2, s1.3, s1.4),
                    sample(s2.0, s2.1, s2.2, s2.3, s2.4),
                )
            })
            .collect();
        let mut mixed = |n: usize, shift: f64| -> Vec<f64> {
            (0..n)
                .map(|i| match i % 6 {
                    0 => (rng.uniform() * 90.0 + shift).floor(),
                    1 => (rng.uniform() * 40.0).floor() / 2.0 - 10.0,
                    2 => 4096.0 + (rng.uniform() * 5.0).floor(),
                    3 => -0.0,
                    4 => 0.0,
                    _ => (rng.normal() * 3.0).round() * 1e6,
                })
                .collect()
        };
        pairs.push((mixed(30_000, 0.0), mixed(25_000, 3.0)));
        pairs.push((mixed(7_000, 0.0), mixed(9_000, 0.0)));
        pairs.push((vec![-0.0; 40], vec![0.0; 60]));
        for (a, b) in pairs {
            let want = ks_2samp(&a, &b).unwrap();
            // No limit: some reference cases have a million distinct values.
            let (ca, cb) = (
                Counted::of(a.iter().copied(), usize::MAX).unwrap(),
                Counted::of(b.iter().copied(), usize::MAX).unwrap(),
            );
            let got = ks_2samp_counted(&ca, &cb).unwrap();
            assert_eq!(got.statistic.to_bits(), want.statistic.to_bits());
            assert_eq!(got.p_value.to_bits(), want.p_value.to_bits());
            assert_eq!(got.exact, want.exact);
        }
        // Past the limit of distinct values: not counted.
        assert!(Counted::of((0..100).map(f64::from), 99).is_none());
        assert!(Counted::of((0..100).map(f64::from), 100).is_some());
        let empty = Counted::of(std::iter::empty(), 10).unwrap();
        assert!(ks_2samp_counted(&empty, &empty).is_none());
    }

    #[test]
    fn exact_up_to_10000_per_side_asymptotic_above() {
        let a = sample(10000, 7919, 11, 10007, 0.0);
        assert!(
            ks_2samp(&a, &sample(10000, 6007, 5, 10009, 0.01))
                .unwrap()
                .exact
        );
        assert!(
            !ks_2samp(&a, &sample(10001, 6007, 5, 10009, 0.01))
                .unwrap()
                .exact
        );
        assert!(ks_2samp(&[], &a).is_none());
    }

    // scipy 1.17.1: (n, x, scipy.stats.kstwo.sf(x, n), scipy.special.smirnov(n, x)); the points
    // cover every branch of the dispatch (closed forms, Durbin matrix, Pomeranz, Pelz–Good,
    // Smirnov's tail, n > 10^6).
    const KSTWO: &[(u64, f64, f64, f64)] = &[
        (100, 0.05, 0.9532159710635725, 0.5871453380805337),
        (100, 0.12, 0.10330374901819939, 0.05165826915719442),
        (100, 0.2, 0.0005551927327988775, 0.0002775963664037337),
        (120, 0.13, 0.03150247611454803, 0.01575128935234823),
        (500000, 0.0012, 0.4671992770600679, 0.2367383346569785),
        (
            500000,
            0.003,
            0.00024632301239186754,
            0.00012316150619593377,
        ),
        (5000, 0.01, 0.6954557253913853, 0.36544317503217305),
        (5000, 0.03, 0.00024159234422666817, 0.00012079617211333408),
        (1000, 0.7, 0.0, 0.0),
        (2000000, 0.001, 0.03660662431970485, 0.018303432023617325),
        (5000, 0.004, 0.9999977369528622, 0.849880041209573),
        (1000, 0.01, 0.9999496745370611, 0.8133237754763678),
        (100, 0.25, 5.408871776434847e-06, 2.7044358882174237e-06),
        (200, 0.004, 1.0, 0.9911474407876079),
        (200, 0.996, 0.0, 0.0),
        (150, 0.05, 0.8290828416799794, 0.45719904348605866),
        (141, 0.1, 0.11128445516467944, 0.055651174842302024),
    ];

    #[test]
    fn kstwo_and_smirnov_match_scipy() {
        let mut failures = Vec::new();
        for &(n, x, sf, sm) in KSTWO {
            let got = kolmogn_sf(n, x);
            if !close(got, sf, 1e-9) {
                failures.push(format!("kstwo.sf({x}, {n}) = {got:e}, scipy {sf:e}"));
            }
            let got = smirnov(n, x);
            if !close(got, sm, 1e-9) {
                failures.push(format!("smirnov({n}, {x}) = {got:e}, scipy {sm:e}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
