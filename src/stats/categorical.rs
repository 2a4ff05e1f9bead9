//! Drift tests for categorical features: the chi-square test of a 2×k contingency table as
//! `scipy.stats.chi2_contingency` computes it (Yates' correction when there is one degree of
//! freedom), and the population stability index as Evidently computes it (empty proportions
//! floored at 0.0001).

/// Natural log of the gamma function (Lanczos, g = 7, 9 terms; ~1e-15 relative).
pub fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let mut a = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularised upper incomplete gamma function Q(a, x) = Γ(a, x) / Γ(a).
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let lead = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        // Series for P, then Q = 1 − P.
        let (mut sum, mut term, mut n) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * 1e-17 {
                break;
            }
        }
        1.0 - sum * lead.exp()
    } else {
        // Continued fraction for Q (modified Lentz).
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-16 {
                break;
            }
        }
        lead.exp() * h
    }
}

/// Survival function of the chi-square distribution with `k` degrees of freedom.
pub fn chi2_sf(x: f64, k: f64) -> f64 {
    gamma_q(k / 2.0, x / 2.0).clamp(0.0, 1.0)
}

/// A chi-square test result.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Chi2Result {
    pub statistic: f64,
    pub p_value: f64,
    pub dof: u64,
}

/// `chi2_contingency` of a 2×k table (reference counts, current counts). Categories empty in
/// both rows are left out (scipy refuses them); `None` when fewer than two categories remain or
/// a row is empty.
pub fn chi2_contingency(reference: &[u64], current: &[u64]) -> Option<Chi2Result> {
    let cols: Vec<(f64, f64)> = reference
        .iter()
        .zip(current)
        .filter(|(a, b)| **a + **b > 0)
        .map(|(&a, &b)| (a as f64, b as f64))
        .collect();
    let (r0, r1): (f64, f64) = cols
        .iter()
        .fold((0.0, 0.0), |acc, c| (acc.0 + c.0, acc.1 + c.1));
    if cols.len() < 2 || r0 == 0.0 || r1 == 0.0 {
        return None;
    }
    let total = r0 + r1;
    let dof = (cols.len() - 1) as u64;
    let mut stat = 0.0;
    for &(a, b) in &cols {
        let ct = a + b;
        for (obs, row) in [(a, r0), (b, r1)] {
            let exp = row * ct / total;
            let mut o = obs;
            if dof == 1 {
                let diff = exp - o;
                o += diff.signum() * diff.abs().min(0.5);
            }
            stat += (o - exp) * (o - exp) / exp;
        }
    }
    Some(Chi2Result {
        statistic: stat,
        p_value: chi2_sf(stat, dof as f64),
        dof,
    })
}

/// Population stability index of two count vectors over the same categories.
pub fn psi(reference: &[u64], current: &[u64]) -> f64 {
    let (tr, tc) = (
        reference.iter().sum::<u64>() as f64,
        current.iter().sum::<u64>() as f64,
    );
    if tr == 0.0 || tc == 0.0 {
        return f64::NAN;
    }
    reference
        .iter()
        .zip(current)
        .map(|(&r, &c)| {
            let p = if r == 0 { 1e-4 } else { r as f64 / tr };
            let q = if c == 0 { 1e-4 } else { c as f64 / tc };
            (q - p) * (q / p).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        a == b || (a - b).abs() <= 1e-9 * b.abs()
    }

    // scipy 1.17.1: scripts/reference/chi2.py (chi2_contingency(table), chi2.sf(x, k)).
    const TABLES: &[(&str, &[[u64; 5]], usize, f64, f64, u64)] = &[
        (
            "2x4",
            &[[120, 340, 95, 445, 0], [130, 310, 120, 400, 0]],
            4,
            6.274328517040503,
            0.09900016871705845,
            3,
        ),
        (
            "2x2_yates",
            &[[30, 70, 0, 0, 0], [45, 55, 0, 0, 0]],
            2,
            4.181333333333333,
            0.04087153408900628,
            1,
        ),
        (
            "2x3_small_p",
            &[[5000, 3000, 2000, 0, 0], [3000, 3000, 4000, 0, 0]],
            3,
            1166.6666666666665,
            4.587248032856554e-254,
            2,
        ),
        (
            "2x5_equal",
            &[[200, 250, 200, 200, 150], [400, 500, 400, 400, 300]],
            5,
            0.0,
            1.0,
            4,
        ),
    ];

    #[test]
    fn chi2_contingency_matches_scipy() {
        for (name, t, k, stat, p, dof) in TABLES {
            let r = chi2_contingency(&t[0][..*k], &t[1][..*k]).unwrap();
            assert!(
                (r.statistic - stat).abs() <= 1e-9 * stat.max(1.0),
                "{name}: {} != {stat}",
                r.statistic
            );
            assert!(close(r.p_value, *p), "{name}: p {:e} != {p:e}", r.p_value);
            assert_eq!(r.dof, *dof, "{name}");
        }
    }

    #[test]
    fn chi2_sf_matches_scipy() {
        for (x, k, want) in [
            (3.2, 1.0, 0.07363827012030258),
            (12.5, 4.0, 0.013995792487650894),
            (0.4, 3.0, 0.9402424948393607),
            (250.0, 2.0, 5.166420632837831e-55),
            (1e-3, 5.0, 0.9999999983185123),
            (40.0, 30.0, 0.10486428110798468),
        ] {
            let got = chi2_sf(x, k);
            assert!(
                close(got, want),
                "chi2.sf({x}, {k}) = {got:e}, scipy {want:e}"
            );
        }
    }

    #[test]
    fn psi_is_zero_for_equal_shares_and_grows_with_shift() {
        assert!(psi(&[200, 250, 200], &[400, 500, 400]).abs() < 1e-15);
        // (0.5-0.25)ln(2) + (0.5-0.75)ln(2/3) = 0.2746530721670274
        assert!((psi(&[25, 75], &[50, 50]) - 0.2746530721670274).abs() < 1e-12);
        assert!(psi(&[100, 0], &[90, 10]) > 0.1);
    }
}
