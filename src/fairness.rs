//! Group fairness (SPEC §8), with fairlearn's definitions: per-group size and selection rate,
//! the demographic parity ratio (smallest selection rate ÷ largest) and the equal-opportunity
//! ratio (smallest true-positive rate ÷ largest). Groups below a minimum size are reported but
//! left out of the ratios; a bootstrap gives a confidence interval for each ratio.

use std::collections::BTreeMap;

use serde::Serialize;

/// Figures of one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    let mut acc: BTreeMap<&str, (u64, u64, u64, u64)> = BTreeMap::new();
    for (i, (&g, &s)) in labels.iter().zip(selected).enumerate() {
        let e = acc.entry(g).or_default();
        e.0 += 1;
        e.1 += u64::from(s);
        if let Some(t) = truth {
            if t[i] {
                e.2 += 1;
                e.3 += u64::from(s);
            }
        }
    }
    acc.into_iter()
        .map(|(g, (size, sel, pos, tp))| {
            (
                g.to_string(),
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

/// A row for [`resample_counts`]: its group number, whether it was selected, whether it is a
/// positive, in one word.
pub fn pack(group: usize, selected: bool, positive: bool) -> u64 {
    (group as u64) << 2 | u64::from(selected) << 1 | u64::from(positive)
}

/// The per-group counts of one bootstrap resample of `rows` (packed by [`pack`], group numbers
/// below `groups`): as many draws as rows, with replacement.
pub fn resample_counts(rows: &[u64], groups: usize, rng: &mut crate::generate::Rng) -> Vec<Counts> {
    let n = rows.len();
    // Draws counted per packed word, in four interleaved tables: consecutive draws of one group
    // would otherwise wait on each other's increments.
    let codes = 4 * groups;
    let mut hits = vec![0u32; 4 * codes];
    for i in 0..n {
        hits[(i & 3) * codes + rows[rng.below(n)] as usize] += 1;
    }
    let mut counts = vec![[0u64; 4]; groups];
    for (code, h) in hits.iter().enumerate() {
        let code = code % codes;
        tally(
            &mut counts[code >> 2],
            code & 2 != 0,
            code & 1 != 0,
            u64::from(*h),
        );
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

    #[test]
    fn a_resample_counts_what_drawing_row_by_row_counts() {
        let rows: Vec<(usize, bool, bool)> =
            (0..1_001).map(|i| (i % 3, i % 5 == 0, i % 7 < 3)).collect();
        let packed: Vec<u64> = rows.iter().map(|&(g, s, t)| pack(g, s, t)).collect();
        for seed in [1, 2, 3] {
            let mut rng = crate::generate::Rng::new(seed);
            let mut want = vec![[0u64; 4]; 3];
            for _ in 0..rows.len() {
                let (g, s, t) = rows[rng.below(rows.len())];
                tally(&mut want[g], s, t, 1);
            }
            let got = resample_counts(&packed, 3, &mut crate::generate::Rng::new(seed));
            assert_eq!(got, want, "seed {seed}");
        }
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
