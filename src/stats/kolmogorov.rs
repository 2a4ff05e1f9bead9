//! Distributions of Kolmogorov–Smirnov statistics, computed the way scipy computes them so that
//! p-values agree to 1e-9 relative:
//!
//! - [`kolmogn_sf`]: the two-sided one-sample statistic D_n (scipy's `kstwo.sf`), dispatching
//!   like Simard & L'Ecuyer (2011) between the Ruben–Gambino closed forms, twice the one-sided
//!   Smirnov tail, the Durbin matrix (Marsaglia–Tsang–Wang 2003), Pomeranz (1974) and Pelz–Good
//!   (1976).
//! - [`smirnov`]: the one-sided statistic D_n⁺ (Birnbaum–Tingey 1951 sum, with van Mulbregt's
//!   choice of lower or upper sum and his large-n approximation).

use std::f64::consts::PI;

/// 2^128 and its inverse: rescaling factors that keep intermediate products in range.
const E128: i32 = 128;
const EP128: f64 = 3.402_823_669_209_385e38;
const EM128: f64 = 2.938_735_877_055_719e-39;
/// log of the smallest subnormal double: exp() of anything below is 0.
const MINLOG: f64 = -745.133_219_101_941_2;
const MIN_LOG_PELZ: f64 = -708.0;
const SMIRNOV_MAX_COMPUTE_N: u64 = 1_000_000;
const SM_UPPER_MAX_TERMS: u64 = 3;
const SM_UPPERSUM_MIN_N: u64 = 10;
const STIRLING: [f64; 8] = [
    -2.955_065_359_477_124_2e-2,
    6.410_256_410_256_410_3e-3,
    -1.917_526_917_526_917_5e-3,
    8.417_508_417_508_417_5e-4,
    -5.952_380_952_380_952_4e-4,
    7.936_507_936_507_936_5e-4,
    -2.777_777_777_777_777_8e-3,
    8.333_333_333_333_333_3e-2,
];

fn clip(p: f64) -> f64 {
    p.clamp(0.0, 1.0)
}

/// log(n!) - n log(n), by Stirling's series.
fn log_nfactorial_div_n_pow_n(n: f64) -> f64 {
    let rn = 1.0 / n;
    let x = rn / n;
    let poly = STIRLING.iter().fold(0.0, |acc, c| acc * x + c);
    n.ln() / 2.0 - n + (2.0 * PI).ln() / 2.0 + rn * poly
}

/// Survival function of the two-sided one-sample KS statistic: P(D_n > x).
pub fn kolmogn_sf(n: u64, x: f64) -> f64 {
    if n == 0 || x.is_nan() {
        return f64::NAN;
    }
    let nf = n as f64;
    if x >= 1.0 {
        return 0.0;
    }
    if x <= 0.0 {
        return 1.0;
    }
    let t = nf * x;
    if t <= 1.0 {
        // Ruben–Gambino: 1/2n <= x <= 1/n
        if t <= 0.5 {
            return 1.0;
        }
        let cdf = if n <= 140 {
            (1..=n)
                .map(|i| i as f64 * (1.0 / nf) * (2.0 * t - 1.0))
                .product::<f64>()
        } else {
            (log_nfactorial_div_n_pow_n(nf) + nf * (2.0 * t - 1.0).ln()).exp()
        };
        return clip(1.0 - cdf);
    }
    if t >= nf - 1.0 {
        return clip(2.0 * (1.0 - x).powf(nf));
    }
    if x >= 0.5 {
        return clip(2.0 * smirnov(n, x));
    }
    let nxsquared = t * x;
    if n <= 140 {
        if nxsquared <= 0.754693 {
            return clip(1.0 - durbin_matrix_cdf(n, x));
        }
        if nxsquared <= 4.0 {
            return clip(1.0 - pomeranz_cdf(n, x));
        }
        return clip(2.0 * smirnov(n, x));
    }
    if nxsquared >= 370.0 {
        return 0.0;
    }
    if nxsquared >= 2.2 {
        return clip(2.0 * smirnov(n, x));
    }
    let cdf = if n <= 100_000 && nf * x.powf(1.5) <= 1.4 {
        durbin_matrix_cdf(n, x)
    } else {
        return clip(pelz_good(n, x, false));
    };
    clip(1.0 - cdf)
}

/// P(D_n <= d) by the Durbin matrix algorithm (Marsaglia, Tsang & Wang 2003).
fn durbin_matrix_cdf(n: u64, d: f64) -> f64 {
    if d >= 1.0 {
        return 1.0;
    }
    let nd = n as f64 * d;
    if nd <= 0.5 {
        return 0.0;
    }
    let k = nd.ceil() as usize;
    let h = k as f64 - nd;
    let m = 2 * k - 1;
    let mut v: Vec<f64> = (1..=m).map(|i| 1.0 - h.powi(i as i32)).collect();
    let mut w = vec![0.0; m];
    let mut fac = 1.0;
    for j in 1..=m {
        w[j - 1] = fac;
        fac /= j as f64;
        v[j - 1] *= fac;
    }
    let tt = (2.0 * h - 1.0).max(0.0).powi(m as i32) - 2.0 * h.powi(m as i32);
    v[m - 1] = (1.0 + tt) * fac;
    let mut hm = vec![0.0; m * m];
    for i in 1..m {
        for r in (i - 1)..m {
            hm[r * m + i] = w[r - (i - 1)];
        }
    }
    for r in 0..m {
        hm[r * m] = v[r];
    }
    for c in 0..m {
        hm[(m - 1) * m + c] = v[m - 1 - c];
    }
    let matmul = |a: &[f64], b: &[f64]| -> Vec<f64> {
        let mut out = vec![0.0; m * m];
        for i in 0..m {
            for l in 0..m {
                let a_il = a[i * m + l];
                if a_il == 0.0 {
                    continue;
                }
                let (row, brow) = (&mut out[i * m..(i + 1) * m], &b[l * m..(l + 1) * m]);
                for (o, bv) in row.iter_mut().zip(brow) {
                    *o += a_il * bv;
                }
            }
        }
        out
    };
    let mut pwr: Vec<f64> = (0..m * m)
        .map(|i| if i % (m + 1) == 0 { 1.0 } else { 0.0 })
        .collect();
    let mut nn = n;
    let (mut expnt, mut hexpnt) = (0i64, 0i64);
    while nn > 0 {
        if nn % 2 == 1 {
            pwr = matmul(&pwr, &hm);
            expnt += hexpnt;
        }
        hm = matmul(&hm, &hm);
        hexpnt *= 2;
        if hm[(k - 1) * m + (k - 1)].abs() > EP128 {
            hm.iter_mut().for_each(|x| *x /= EP128);
            hexpnt += E128 as i64;
        }
        nn /= 2;
    }
    let mut p = pwr[(k - 1) * m + (k - 1)];
    for i in 1..=n {
        p = i as f64 * p / n as f64;
        if p.abs() < EM128 {
            p *= EP128;
            expnt -= E128 as i64;
        }
    }
    if expnt != 0 {
        p *= 2f64.powi(expnt as i32);
    }
    clip(p)
}

fn pomeranz_j1j2(i: i64, n: i64, ll: i64, ceilf: i64, roundf: i64) -> (i64, i64) {
    let (j1, j2) = if i == 0 {
        (-ll - ceilf - 1, ll + ceilf - 1)
    } else {
        let (ip1div2, ip1mod2) = ((i + 1) / 2, (i + 1) % 2);
        if ip1mod2 == 0 {
            if ip1div2 == n + 1 {
                (n - ll - ceilf - 1, n + ll + ceilf - 1)
            } else {
                (ip1div2 - 1 - ll - roundf - 1, ip1div2 + ll - 1 + ceilf - 1)
            }
        } else {
            (ip1div2 - 1 - ll - 1, ip1div2 + ll + roundf - 1)
        }
    };
    ((j1 + 2).max(0), j2.min(n))
}

/// P(D_n <= x) by the Pomeranz recursion (Pomeranz 1974).
fn pomeranz_cdf(n: u64, x: f64) -> f64 {
    let n_i = n as i64;
    let nf = n as f64;
    let t = nf * x;
    let ll = t.floor() as i64;
    let f = t - ll as f64;
    let g = f.min(1.0 - f);
    let ceilf = i64::from(f > 0.0);
    let roundf = i64::from(f > 0.5);
    let npwrs = (2 * (ll + 1)) as usize;
    let mut gpower = vec![1.0; npwrs];
    let mut twogpower = vec![1.0; npwrs];
    let mut onem2gpower = vec![1.0; npwrs];
    let (a, b, c) = (g / nf, 2.0 * g / nf, (1.0 - 2.0 * g) / nf);
    for m in 1..npwrs {
        gpower[m] = gpower[m - 1] * a / m as f64;
        twogpower[m] = twogpower[m - 1] * b / m as f64;
        onem2gpower[m] = onem2gpower[m - 1] * c / m as f64;
    }
    let mut v0 = vec![0.0; npwrs];
    let mut v1 = vec![0.0; npwrs];
    v1[0] = 1.0;
    let (mut v0s, mut v1s) = (0i64, 0i64);
    let mut expnt = 0i64;
    let (mut j1, _) = pomeranz_j1j2(0, n_i, ll, ceilf, roundf);
    for i in 1..(2 * n_i + 2) {
        let k1 = j1;
        std::mem::swap(&mut v0, &mut v1);
        std::mem::swap(&mut v0s, &mut v1s);
        v1.iter_mut().for_each(|x| *x = 0.0);
        let (nj1, j2) = pomeranz_j1j2(i, n_i, ll, ceilf, roundf);
        j1 = nj1;
        let pwrs = if i == 1 || i == 2 * n_i + 1 {
            &gpower
        } else if i % 2 == 1 {
            &twogpower
        } else {
            &onem2gpower
        };
        let ln2 = j2 - k1 + 1;
        if ln2 > 0 {
            let ln2 = ln2 as usize;
            let start = (k1 - v0s) as usize;
            let src = &v0[start..start + ln2];
            // Full convolution of src and pwrs[..ln2], then the slice [j1-k1, j1-k1+len).
            let conv_start = (j1 - k1) as usize;
            let conv_len = (j2 - j1 + 1) as usize;
            for (o, idx) in (conv_start..conv_start + conv_len).enumerate() {
                let mut s = 0.0;
                let lo = idx.saturating_sub(ln2 - 1);
                for p in lo..=idx.min(ln2 - 1) {
                    s += src[p] * pwrs[idx - p];
                }
                v1[o] = s;
            }
            let mx = v1.iter().cloned().fold(f64::MIN, f64::max);
            if 0.0 < mx && mx < EM128 {
                v1.iter_mut().for_each(|x| *x *= EP128);
                expnt -= E128 as i64;
            }
            v1s = v0s + j1 - k1;
        }
    }
    let mut ans = v1[(n_i - v1s) as usize];
    for m in 1..=n {
        if ans.abs() > EP128 {
            ans *= EM128;
            expnt += E128 as i64;
        }
        ans *= m as f64;
    }
    if expnt != 0 {
        ans *= 2f64.powi(expnt as i32);
    }
    clip(ans)
}

/// The Pelz–Good asymptotic series for the CDF (or SF) of D_n.
fn pelz_good(n: u64, x: f64, cdf: bool) -> f64 {
    if x <= 0.0 {
        return if cdf { 0.0 } else { 1.0 };
    }
    if x >= 1.0 {
        return if cdf { 1.0 } else { 0.0 };
    }
    let nf = n as f64;
    let z = nf.sqrt() * x;
    let (z2, z3, z4, z6) = (z * z, z.powi(3), z.powi(4), z.powi(6));
    let (pi2, pi4, pi6) = (PI * PI, PI.powi(4), PI.powi(6));
    let qlog = -pi2 / 8.0 / z2;
    if qlog < MIN_LOG_PELZ {
        return if cdf { 0.0 } else { 1.0 };
    }
    let q = qlog.exp();
    let k1a = -z2;
    let k1b = pi2 / 4.0;
    let k2a = 6.0 * z6 + 2.0 * z4;
    let k2b = (2.0 * z4 - 5.0 * z2) * pi2 / 4.0;
    let k2c = pi4 * (1.0 - 2.0 * z2) / 16.0;
    let k3d = pi6 * (5.0 - 30.0 * z2) / 64.0;
    let k3c = pi4 * (-60.0 * z2 + 212.0 * z4) / 16.0;
    let k3b = pi2 * (135.0 * z4 - 96.0 * z6) / 4.0;
    let k3a = -30.0 * z6 - 90.0 * z.powi(8);
    let mut kk = [0.0f64; 4];
    let maxk = (16.0 * z / PI).ceil() as i64;
    for k in (1..=maxk).rev() {
        let m = (2 * k - 1) as f64;
        let (m2, m4, m6) = (m * m, m.powi(4), m.powi(6));
        let qpower = q.powf(8.0 * k as f64);
        let coeffs = [
            1.0,
            k1a + k1b * m2,
            k2a + k2b * m2 + k2c * m4,
            k3a + k3b * m2 + k3c * m4 + k3d * m6,
        ];
        for i in 0..4 {
            kk[i] = kk[i] * qpower + coeffs[i];
        }
    }
    let sqrt2pi = (2.0 * PI).sqrt();
    let div = [z, 6.0 * z4, 72.0 * z.powi(7), 6480.0 * z.powi(10)];
    for i in 0..4 {
        kk[i] = kk[i] * q * sqrt2pi / div[i];
    }
    let q2 = (-pi2 / 2.0 / z2).exp();
    let sqrt3z = 3f64.sqrt() * z;
    let (mut k2extra, mut k3extra) = (0.0, 0.0);
    for k in (1..=maxk).rev() {
        let kf = k as f64;
        let ksq = kf * kf;
        let qp = q2.powf(ksq);
        k2extra += ksq * qp;
        let kspi = PI * kf;
        k3extra += (sqrt3z + kspi) * (sqrt3z - kspi) * ksq * qp;
    }
    kk[2] += k2extra * pi2 * sqrt2pi / (-36.0 * z3);
    kk[3] += k3extra * pi2 * sqrt2pi / (216.0 * z6);
    for (i, k) in kk.iter_mut().enumerate() {
        *k /= nf.powf(i as f64 / 2.0);
    }
    if !cdf {
        for k in kk.iter_mut() {
            *k = -*k;
        }
        kk[0] += 1.0;
    }
    kk.iter().sum()
}

/// Survival function of the one-sided one-sample statistic: P(D_n⁺ > x).
pub fn smirnov(n: u64, x: f64) -> f64 {
    if x.is_nan() || n == 0 || !(0.0..=1.0).contains(&x) {
        return f64::NAN;
    }
    if n == 1 {
        return 1.0 - x;
    }
    if x == 0.0 {
        return 1.0;
    }
    if x == 1.0 {
        return 0.0;
    }
    let nf = n as f64;
    let nx = nf * x;
    let mut nxfl = nx.floor() as i64;
    let mut alpha = nx - nxfl as f64;
    if alpha >= 1.0 {
        nxfl += 1;
        alpha = 0.0;
    }
    let n_i = n as i64;
    let mut n1mxfl = n_i - nxfl - if alpha == 0.0 { 0 } else { 1 };
    let mut n1mxceil = n_i - nxfl;
    if alpha == 0.0 {
        n1mxfl -= 1;
        n1mxceil += 1;
    }
    // x <= 1/n
    if nxfl == 0 || (nxfl == 1 && alpha == 0.0) {
        let cdf = x * (1.0 + x).powi((n - 1) as i32);
        return clip(1.0 - cdf);
    }
    if -2.0 * nf * x * x < MINLOG {
        return 0.0;
    }
    // x >= 1 - 1/n
    if nxfl >= n_i - 1 {
        return clip((1.0 - x).powf(nf));
    }
    if n > SMIRNOV_MAX_COMPUTE_N {
        let logp = -(6.0 * nf * x + 1.0).powi(2) / 18.0 / nf;
        // p ~ exp(-(6nx+1)^2 / 18n); keep precision for small p-values.
        let sf = if logp < -std::f64::consts::LN_2 {
            logp.exp()
        } else {
            1.0 - (-logp.exp_m1())
        };
        return clip(sf);
    }
    let n_upper_terms = n_i - n1mxceil + 1;
    let use_upper = (n_upper_terms <= 1 && x < 0.5)
        || (n >= SM_UPPERSUM_MIN_N
            && n_upper_terms <= SM_UPPER_MAX_TERMS as i64
            && x <= 0.5 / nf.sqrt());
    let (start, step, n_terms) = if use_upper {
        (n_i, -1i64, n_i - n1mxceil + 1)
    } else {
        (0, 1, n1mxfl + 1)
    };
    // A_v = C(n, v) (x + v/n)^(v-1) (1 - x - v/n)^(n-v), summed in log space with a running
    // log-binomial; terms are positive in the lower sum, alternating in the (short) upper sum.
    // log C(n, v) is kept as an unevaluated sum hi + lo (TwoSum), because it is built from up to
    // n additions to a value of order 10^4: plain f64 accumulation loses ~1e-9 relative there.
    let term = |v: i64, log_c: (f64, f64)| -> f64 {
        let a = x + v as f64 / nf;
        let b = (n_i - v) as f64 / nf - x;
        let power = n_i - v;
        if power > 0 && b == 0.0 {
            return 0.0;
        }
        let sign = if b < 0.0 && power % 2 == 1 { -1.0 } else { 1.0 };
        let rest = (v - 1) as f64 * a.ln()
            + if power > 0 {
                power as f64 * b.abs().ln()
            } else {
                0.0
            };
        sign * ((log_c.0 + rest) + log_c.1).exp()
    };
    let mut sum = 0.0f64;
    let mut comp = 0.0f64; // Kahan compensation
    let mut log_c = (0.0f64, 0.0f64); // log C(n, v) for v = start + j*step; C(n,0) = C(n,n) = 1
    let vmid = n_i / 2;
    for j in 0..n_terms {
        let v = start + j * step;
        let a = term(v, log_c);
        let y = a - comp;
        let t = sum + y;
        comp = (t - sum) - y;
        sum = t;
        if a != 0.0 {
            if 4.0 * (n_terms - j) as f64 * a.abs() < f64::EPSILON * sum && j != n_terms - 1 {
                break;
            }
        } else if j > vmid {
            break;
        }
        // C(n, j+1) = C(n, j) (n - j) / (j + 1); symmetric for the upper sum.
        let d = ((n_i - j) as f64 / (j + 1) as f64).ln();
        let s = log_c.0 + d;
        let bb = s - log_c.0;
        let err = (log_c.0 - (s - bb)) + (d - bb);
        log_c = (s, log_c.1 + err);
    }
    let prob = x * sum;
    clip(if step < 0 { 1.0 - prob } else { prob })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values: scipy 1.17.1, scipy.stats.kstwo.sf(x, n) and scipy.special.smirnov(n, x).
    #[test]
    fn closed_forms() {
        assert_eq!(kolmogn_sf(10, 0.0), 1.0);
        assert_eq!(kolmogn_sf(10, 1.0), 0.0);
        assert_eq!(kolmogn_sf(10, 0.04), 1.0); // t <= 0.5
        assert!((smirnov(1, 0.3) - 0.7).abs() < 1e-15);
    }
}
