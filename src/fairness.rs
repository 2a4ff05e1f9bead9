//! Group fairness, with fairlearn's definitions: per-group size and selection rate,
//! the demographic parity ratio (smallest selection rate ÷ largest) and the equal-opportunity
//! ratio (smallest true-positive rate ÷ largest). Groups below a minimum size are reported but
//! left out of the ratios; a bootstrap gives a confidence interval for each ratio.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Figures of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub size: u64,
    pub selected: u64,
    pub selection_rate: f64,
    /// Positives in the truth, and the true-positive rate (0 when there are none, as fairlearn).
    pub positives: u64,
    pub true_positive_rate: f64,
    /// Whether the group is large enough to count in the ratios.
    pub counted: bool,
}

/// Per-group figures, by group label.
pub fn groups(
    labels: &[&str],
    selected: &[bool],
    truth: Option<&[bool]>,
    min_size: u64,
) -> BTreeMap<String, Group> {
    let names: Vec<String> = labels
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|l| l.to_string())
        .collect();
    let number: BTreeMap<&str, u32> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i as u32))
        .collect();
    let ids: Vec<u32> = labels.iter().map(|l| number[l]).collect();
    groups_by_number(&names, &ids, selected, truth, min_size)
}

/// [`groups`] of rows given by group number: row `i` is in group `names[ids[i]]`. Rows are
/// counted into an array, not looked up by label (at 10 M customers the holdout has 2 M rows
/// per model and attribute). Groups without rows are left out, as [`groups`] never sees them.
pub fn groups_by_number(
    names: &[String],
    ids: &[u32],
    selected: &[bool],
    truth: Option<&[bool]>,
    min_size: u64,
) -> BTreeMap<String, Group> {
    let mut counts = vec![[0u64; 4]; names.len()];
    for (i, (&g, &s)) in ids.iter().zip(selected).enumerate() {
        tally(&mut counts[g as usize], s, truth.is_some_and(|t| t[i]), 1);
    }
    names
        .iter()
        .zip(counts)
        .filter(|(_, c)| c[0] > 0)
        .map(|(g, [size, sel, pos, tp])| {
            (
                g.clone(),
                Group {
                    size,
                    selected: sel,
                    selection_rate: sel as f64 / size as f64,
                    positives: pos,
                    true_positive_rate: if pos == 0 {
                        0.0
                    } else {
                        tp as f64 / pos as f64
                    },
                    counted: size >= min_size,
                },
            )
        })
        .collect()
}

/// Per-group counts of rows, selected rows, positives and selected positives, indexed by group
/// number: what [`groups`] tallies, without labels, for the bootstrap's many resamples.
pub type Counts = [u64; 4];

/// Adds `n` rows of one kind to their group's counts.
pub fn tally(c: &mut Counts, selected: bool, positive: bool, n: u64) {
    c[0] += n;
    c[1] += u64::from(selected) * n;
    c[2] += u64::from(positive) * n;
    c[3] += u64::from(selected && positive) * n;
}

/// A row's kind for [`kinds`]: its group number, whether it was selected, whether it is a
/// positive, in one number.
pub fn pack(group: usize, selected: bool, positive: bool) -> usize {
    group << 2 | usize::from(selected) << 1 | usize::from(positive)
}

/// How many rows there are of each kind ([`pack`]; group numbers below `groups`): all the
/// bootstrap needs to know of the rows.
pub fn kinds(rows: impl IntoIterator<Item = usize>, groups: usize) -> Vec<u64> {
    let mut k = vec![0u64; 4 * groups];
    for r in rows {
        k[r] += 1;
    }
    k
}

/// The per-group counts of one bootstrap resample: as many draws as rows, with replacement, from
/// rows counted by kind in `kinds` (from [`kinds`]).
///
/// The ratios depend only on how many rows of each kind a resample drew, and those numbers are
/// multinomial: n draws with probabilities `kinds[k] / n`. They are drawn as such, one binomial
/// per kind given the draws left after the kinds before it, so a resample costs a few dozen
/// binomial draws rather than n row draws (at 10 M customers that was 2 M cache-missing reads per
/// resample, 900 resamples). The resamples have exactly the distribution of row-by-row ones.
pub fn resample_counts(kinds: &[u64], rng: &mut crate::generate::Rng) -> Vec<Counts> {
    use rand_distr::Distribution;
    let mut counts = vec![[0u64; 4]; kinds.len().div_ceil(4)];
    // Draws still to place, and the rows of the kinds not yet visited.
    let n = kinds.iter().sum::<u64>();
    let (mut left, mut rest) = (n, n);
    for (kind, &rows) in kinds.iter().enumerate() {
        if rows == 0 || left == 0 {
            continue;
        }
        let drawn = if rows == rest {
            left
        } else {
            rand_distr::Binomial::new(left, rows as f64 / rest as f64)
                .expect("a probability in [0, 1]")
                .sample(rng)
        };
        (left, rest) = (left - drawn, rest - rows);
        tally(&mut counts[kind >> 2], kind & 2 != 0, kind & 1 != 0, drawn);
    }
    counts
}

/// The demographic parity and equal-opportunity ratios of per-group counts: the same figures as
/// [`groups`] followed by the two ratio functions (a group with no rows does not exist).
pub fn ratios_of_counts(counts: &[Counts], min_size: u64) -> (f64, f64) {
    let counted = || counts.iter().filter(|c| c[0] > 0 && c[0] >= min_size);
    let min_max = |vals: &mut dyn Iterator<Item = f64>| {
        let (mut lo, mut hi, mut any) = (f64::INFINITY, f64::NEG_INFINITY, false);
        for v in vals {
            (lo, hi, any) = (lo.min(v), hi.max(v), true);
        }
        if any {
            lo / hi
        } else {
            f64::NAN
        }
    };
    let dpr = min_max(&mut counted().map(|c| c[1] as f64 / c[0] as f64));
    let eor = min_max(&mut counted().map(|c| {
        if c[2] == 0 {
            0.0
        } else {
            c[3] as f64 / c[2] as f64
        }
    }));
    (dpr, eor)
}

/// min ÷ max of a per-group value over the counted groups (NaN when none is counted or the
/// largest is 0, as fairlearn's `ratio(method="between_groups")`).
fn ratio(groups: &BTreeMap<String, Group>, value: impl Fn(&Group) -> f64) -> f64 {
    let vals: Vec<f64> = groups.values().filter(|g| g.counted).map(value).collect();
    if vals.is_empty() {
        return f64::NAN;
    }
    let min = vals.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    min / max
}

/// fairlearn's `demographic_parity_ratio`.
pub fn demographic_parity_ratio(groups: &BTreeMap<String, Group>) -> f64 {
    ratio(groups, |g| g.selection_rate)
}

/// fairlearn's `equal_opportunity_ratio`.
pub fn equal_opportunity_ratio(groups: &BTreeMap<String, Group>) -> f64 {
    ratio(groups, |g| g.true_positive_rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values: scripts/reference/metrics_fairness.py (fairlearn 0.15.0).
    const YB: [bool; 14] = [
        true, false, true, true, false, false, true, false, true, false, false, true, true, false,
    ];
    const S: [f64; 14] = [
        0.9, 0.1, 0.8, 0.4, 0.4, 0.35, 0.8, 0.0, 1.0, 0.6, 0.2, 0.55, 0.4, 0.8,
    ];
    const G: [&str; 14] = [
        "a", "a", "b", "b", "b", "c", "c", "c", "c", "a", "b", "c", "a", "b",
    ];

    fn decisions() -> Vec<bool> {
        S.iter().map(|&s| s >= 0.5).collect()
    }

    #[test]
    fn ratios_match_fairlearn() {
        let d = decisions();
        let g = groups(&G, &d, Some(&YB), 0);
        assert_eq!(g["a"].selection_rate, 0.5);
        assert_eq!(g["b"].selection_rate, 0.4);
        assert_eq!(g["c"].selection_rate, 0.6);
        assert!((demographic_parity_ratio(&g) - 0.6666666666666667).abs() < 1e-12);
        assert!((equal_opportunity_ratio(&g) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn a_group_never_selected_gives_zero() {
        let d: Vec<bool> = decisions()
            .iter()
            .zip(G)
            .map(|(&d, g)| d && g != "c")
            .collect();
        assert_eq!(demographic_parity_ratio(&groups(&G, &d, None, 0)), 0.0);
        // A group with no positives has a TPR of 0.
        let y: Vec<bool> = YB.iter().zip(G).map(|(&y, g)| y && g != "a").collect();
        assert_eq!(
            equal_opportunity_ratio(&groups(&G, &decisions(), Some(&y), 0)),
            0.0
        );
    }

    /// Rows of three groups with uneven kinds, one kind absent.
    fn rows() -> Vec<(usize, bool, bool)> {
        (0..1_001)
            .map(|i| (i % 3, i % 5 == 0, i % 7 < 3 && i % 3 != 1))
            .collect()
    }

    #[test]
    fn a_resample_draws_as_many_rows_as_there_are_and_only_kinds_that_exist() {
        let rows = rows();
        let k = kinds(rows.iter().map(|&(g, s, t)| pack(g, s, t)), 3);
        for seed in 0..200 {
            let c = resample_counts(&k, &mut crate::generate::Rng::new(seed));
            assert_eq!(c.iter().map(|c| c[0]).sum::<u64>(), rows.len() as u64);
            // Group 1 has no positives, so no resample has any.
            assert_eq!(c[1][2], 0);
            for g in &c {
                assert!(g[1] <= g[0] && g[2] <= g[0] && g[3] <= g[1].min(g[2]));
            }
        }
    }

    /// The multinomial draws are the row-by-row bootstrap in distribution: per kind the mean
    /// n·p, the variance n·p·(1-p) and between two kinds the covariance -n·p·q, over many
    /// resamples, within five standard errors; and the percentile interval of a ratio matches
    /// the one of row-by-row resamples within Monte Carlo error.
    #[test]
    fn resamples_are_distributed_as_drawing_row_by_row() {
        let rows = rows();
        let n = rows.len() as f64;
        let packed: Vec<usize> = rows.iter().map(|&(g, s, t)| pack(g, s, t)).collect();
        let k = kinds(packed.iter().copied(), 3);
        let reps = 20_000;
        let mut rng = crate::generate::Rng::new(7);
        let draws: Vec<Vec<Counts>> = (0..reps).map(|_| resample_counts(&k, &mut rng)).collect();
        // Kind a: group 0 selected positives' group total (c[0][0]); kind b: group 2's selected.
        let a: Vec<f64> = draws.iter().map(|c| c[0][0] as f64).collect();
        let b: Vec<f64> = draws.iter().map(|c| c[2][1] as f64).collect();
        let pa = k[0..4].iter().sum::<u64>() as f64 / n;
        let pb = (k[pack(2, true, false)] + k[pack(2, true, true)]) as f64 / n;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (ma, mb) = (mean(&a), mean(&b));
        let var_a = n * pa * (1.0 - pa);
        let se_mean = (var_a / reps as f64).sqrt();
        assert!(
            (ma - n * pa).abs() < 5.0 * se_mean,
            "mean {ma} vs {}",
            n * pa
        );
        let va = a.iter().map(|x| (x - ma).powi(2)).sum::<f64>() / (reps - 1) as f64;
        // The variance of a sample variance is about 2σ⁴/(r-1).
        let se_var = var_a * (2.0 / (reps - 1) as f64).sqrt();
        assert!(
            (va - var_a).abs() < 5.0 * se_var,
            "variance {va} vs {var_a}"
        );
        let cov = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - ma) * (y - mb))
            .sum::<f64>()
            / (reps - 1) as f64;
        let want = -n * pa * pb;
        let se_cov = (var_a * n * pb * (1.0 - pb) / reps as f64).sqrt();
        assert!(
            (cov - want).abs() < 5.0 * se_cov,
            "covariance {cov} vs {want}"
        );

        // Percentile interval of the parity ratio, both ways.
        let interval = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v[v.len() / 40], v[v.len() * 39 / 40])
        };
        let ours = interval(draws.iter().map(|c| ratios_of_counts(c, 0).0).collect());
        let mut rng = crate::generate::Rng::new(8);
        let by_row = interval(
            (0..reps)
                .map(|_| {
                    let mut c = vec![[0u64; 4]; 3];
                    for _ in 0..rows.len() {
                        let (g, s, t) = rows[rng.below(rows.len())];
                        tally(&mut c[g], s, t, 1);
                    }
                    ratios_of_counts(&c, 0).0
                })
                .collect(),
        );
        assert!(
            (ours.0 - by_row.0).abs() < 0.02 && (ours.1 - by_row.1).abs() < 0.02,
            "{ours:?} vs {by_row:?}"
        );
    }

    #[test]
    fn ratios_of_counts_equal_the_ratios_of_groups() {
        let d = decisions();
        for min_size in [0, 4, 5, 6] {
            let g = groups(&G, &d, Some(&YB), min_size);
            let mut counts = vec![[0u64; 4]; 4]; // group "d" has no rows
            for ((l, s), t) in G.iter().zip(&d).zip(YB) {
                let k = (l.as_bytes()[0] - b'a') as usize;
                tally(&mut counts[k], *s, t, 1);
            }
            let (dpr, eor) = ratios_of_counts(&counts, min_size);
            let same = |a: f64, b: f64| a == b || (a.is_nan() && b.is_nan());
            assert!(
                same(dpr, demographic_parity_ratio(&g)),
                "min_size {min_size}"
            );
            assert!(
                same(eor, equal_opportunity_ratio(&g)),
                "min_size {min_size}"
            );
        }
    }

    #[test]
    fn small_groups_are_reported_but_not_counted() {
        let g = groups(&G, &decisions(), None, 5);
        assert!(!g["a"].counted && g["b"].counted && g["c"].counted);
        assert!((demographic_parity_ratio(&g) - 0.4 / 0.6).abs() < 1e-12);
    }
}
