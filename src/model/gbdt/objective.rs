//! The losses the booster minimises, as LightGBM's `src/objective/`: each row's gradient and
//! hessian at its score, and the score every row starts from. Squared error's gradient is
//! `score - y` with hessian 1 (the grower carries it as the gradient alone, see [`Grad`]);
//! logistic loss's is `p - y` with hessian `p (1 - p)`, `p` the sigmoid of the score.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Loss being minimised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Squared error; predictions are the raw score.
    SquaredError,
    /// Logistic loss; predictions are probabilities.
    Logistic,
}

pub(super) fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// e^x for x in [-708, 708] (callers clamp), within 2 ulp of the exact value. Written without
/// branches or calls, so that a loop of them is vectorised; libm's `exp` is a call per value,
/// and was a seventh of the logistic booster's time. Range reduction as in fdlibm: x = k ln 2 + r
/// with |r| <= ln 2 / 2, ln 2 in two parts so that k ln 2 is exact; e^r by its Taylor series to
/// r^13 (the next term is below 1e-17 of the result); 2^k assembled in the exponent bits.
#[inline(always)]
pub(super) fn exp_approx(x: f64) -> f64 {
    // 1.5 * 2^52: adding it rounds x log2(e) to the nearest integer k, held in the low bits.
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;
    let t = x * std::f64::consts::LOG2_E + SHIFT;
    let k = t - SHIFT;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut p = 1.0 / 6_227_020_800.0;
    for d in [
        479_001_600.0,
        39_916_800.0,
        3_628_800.0,
        362_880.0,
        40_320.0,
        5_040.0,
        720.0,
        120.0,
        24.0,
        6.0,
        2.0,
        1.0,
        1.0,
    ] {
        p = p * r + 1.0 / d;
    }
    // The low 12 bits of t's representation are k mod 4096; k + 1023 in 1..=2045 is 2^k's
    // biased exponent.
    f64::from_bits(t.to_bits().wrapping_add(1023) << 52) * p
}

/// Logistic loss's gradient and hessian at each row's score, in chunks the compiler vectorises
/// (eight rows at a time where the CPU has AVX-512; the same IEEE operations, so the same bits,
/// either way). The hessian is kept above 1e-16, as LightGBM keeps it.
pub(super) fn logistic_gradients(gh: &mut [Gh], score: &[f64], y: &[f64]) {
    gh.par_chunks_mut(8192)
        .zip(score.par_chunks(8192))
        .zip(y.par_chunks(8192))
        .for_each(|((gh, s), y)| logistic_gradients_chunk(gh, s, y));
}

/// [`logistic_gradients`] of one chunk of rows, on the calling thread.
pub(super) fn logistic_gradients_chunk(gh: &mut [Gh], score: &[f64], y: &[f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F.
        return unsafe { logistic_gradients_avx512(gh, score, y) };
    }
    logistic_gradients_plain(gh, score, y)
}

#[inline(always)]
pub(super) fn logistic_gradients_plain(gh: &mut [Gh], score: &[f64], y: &[f64]) {
    for ((e, s), yi) in gh.iter_mut().zip(score).zip(y) {
        let q = 1.0 / (1.0 + exp_approx((-s).clamp(-708.0, 708.0)));
        *e = [q - yi, (q * (1.0 - q)).max(1e-16)];
    }
}

/// [`logistic_gradients_plain`] compiled for AVX-512. Rust never fuses a multiply and an add on
/// its own, so the wider instructions compute the same bits.
///
/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn logistic_gradients_avx512(gh: &mut [Gh], score: &[f64], y: &[f64]) {
    logistic_gradients_plain(gh, score, y)
}

/// Gradient and hessian of one row.
pub(super) type Gh = [f64; 2];

/// A row's gradient and hessian as the histograms read them: the pair for logistic loss, the
/// gradient alone for squared error, whose hessian is always 1 (half the bytes to write each tree
/// and to read for each histogram; the same additions, so the same sums).
pub(super) trait Grad: Copy + Send + Sync {
    fn pair(self) -> Gh;
}

impl Grad for Gh {
    #[inline(always)]
    fn pair(self) -> Gh {
        self
    }
}

impl Grad for f64 {
    #[inline(always)]
    fn pair(self) -> Gh {
        [self, 1.0]
    }
}

/// The score every row starts from: the mean, or for logistic loss its log-odds.
pub(super) fn init_score(y: &[f64], objective: Objective) -> f64 {
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    match objective {
        Objective::SquaredError => mean,
        Objective::Logistic => {
            let m = mean.clamp(1e-15, 1.0 - 1e-15);
            (m / (1.0 - m)).ln()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn exp_approx_is_within_two_ulp_of_libm() {
        let mut rng = crate::generate::Rng::new(5);
        let mut worst = 0.0f64;
        let mut points: Vec<f64> = (0..200_000)
            .map(|_| rng.uniform() * 1416.0 - 708.0)
            .collect();
        points.extend((0..200_000).map(|_| rng.uniform() * 40.0 - 20.0));
        points.extend([-708.0, -1.0, -0.5, 0.0, 1e-300, 0.5, 0.3465, 1.0, 708.0]);
        for x in points {
            let (want, got) = (x.exp(), exp_approx(x));
            worst = worst.max((got - want).abs() / want);
        }
        // libm's exp is itself within 1 ulp (2.2e-16 relative at most).
        assert!(worst < 4.5e-16, "worst relative error {worst:e}");
    }

    #[test]
    fn logistic_gradients_are_the_same_bits_with_and_without_avx512() {
        let mut rng = crate::generate::Rng::new(9);
        let n = 10_007;
        let score: Vec<f64> = (0..n)
            .map(|_| rng.normal() * 8.0)
            .chain([800.0, -800.0])
            .collect();
        let y: Vec<f64> = (0..n + 2)
            .map(|_| f64::from(u8::from(rng.uniform() < 0.3)))
            .collect();
        let mut plain = vec![[0.0; 2]; n + 2];
        logistic_gradients_plain(&mut plain, &score, &y);
        for ((e, s), yi) in plain.iter().zip(&score).zip(&y) {
            let q = sigmoid(*s);
            assert!(
                (e[0] - (q - yi)).abs() < 1e-15 && e[1] >= 1e-16,
                "score {s}: {e:?}"
            );
        }
        let mut both = vec![[0.0; 2]; n + 2];
        logistic_gradients(&mut both, &score, &y);
        let bits = |v: &[Gh]| {
            v.iter()
                .flat_map(|e| e.map(f64::to_bits))
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&plain), bits(&both));
    }
}
