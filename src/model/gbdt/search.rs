//! How many of a short sorted list of numbers lie below each of many values: a row's bin among a
//! feature's bin bounds when the booster buckets its features, and a value's rank among the
//! thresholds a booster splits a feature on when it scores. Both looked each value up with a
//! binary search, one value at a time, each step waiting on the last; in the 1 M pipeline the
//! scoring ranks were a fifth of the score stage.
//!
//! [`Sorted`] pads the list with +∞ to one less than a power of two, so that every value takes
//! the same steps: the step sizes halve from the power's half down to one, and each step moves
//! on when the list's number there is below the value. Where the CPU has AVX-512 (F and VL),
//! eight values take each step together, their list numbers gathered by one instruction. The
//! comparisons are the same either way, so the counts are too.

/// A sorted list of at most 255 numbers, padded for [`Sorted::count_below`].
pub(super) struct Sorted {
    /// The list, then +∞ up to `2 * top - 1` numbers.
    padded: Vec<f64>,
    /// Half the padded length plus one: the first step.
    top: usize,
}

impl Sorted {
    /// `sorted` must be in increasing order, without NaN, and at most 255 long.
    pub(super) fn new(sorted: &[f64]) -> Sorted {
        assert!(sorted.len() <= 255, "at most 255 numbers");
        debug_assert!(sorted.windows(2).all(|w| w[0] <= w[1]));
        let top = (sorted.len() + 1).next_power_of_two() / 2;
        let mut padded = sorted.to_vec();
        padded.resize((2 * top).max(1) - 1, f64::INFINITY);
        Sorted { padded, top }
    }

    /// For each value, how many of the list's numbers are below it, at most `max`; `nan` for a
    /// NaN.
    pub(super) fn count_below(&self, values: &[f64], out: &mut [u8], nan: u8, max: u8) {
        assert_eq!(values.len(), out.len());
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has AVX-512 F and VL.
            done = unsafe { self.count_below_avx512(values, out, nan, max) };
        }
        for (o, &v) in out[done..].iter_mut().zip(&values[done..]) {
            *o = self.one(v, nan, max);
        }
    }

    /// [`Sorted::count_below`] of one value.
    #[inline]
    fn one(&self, v: f64, nan: u8, max: u8) -> u8 {
        if v.is_nan() {
            return nan;
        }
        let (mut at, mut step) = (0usize, self.top);
        while step > 0 {
            // `at + step - 1 < 2 * top - 1`: within the padding.
            at += step * usize::from(self.padded[at + step - 1] < v);
            step /= 2;
        }
        at.min(usize::from(max)) as u8
    }

    /// The whole groups of eight values of [`Sorted::count_below`]; returns how many values it
    /// did.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and VL.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn count_below_avx512(&self, values: &[f64], out: &mut [u8], nan: u8, max: u8) -> usize {
        use std::arch::x86_64::*;
        let base = self.padded.as_ptr();
        let (nan, max) = (
            _mm256_set1_epi32(i32::from(nan)),
            _mm256_set1_epi32(i32::from(max)),
        );
        let groups = values.len() / 8;
        for (v, o) in values.chunks_exact(8).zip(out.chunks_exact_mut(8)) {
            // SAFETY: eight values and eight bytes; every gathered index is below
            // `2 * top - 1`, the padded length (as in `one`).
            unsafe {
                let v = _mm512_loadu_pd(v.as_ptr());
                let mut at = _mm256_setzero_si256();
                let mut step = self.top;
                while step > 0 {
                    let s = _mm256_set1_epi32(step as i32);
                    let probe = _mm256_add_epi32(at, _mm256_set1_epi32(step as i32 - 1));
                    let there = _mm512_i32gather_pd::<8>(probe, base);
                    let below = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(there, v);
                    at = _mm256_mask_add_epi32(at, below, at, s);
                    step /= 2;
                }
                let at = _mm256_min_epi32(at, max);
                let at = _mm256_mask_mov_epi32(at, _mm512_cmp_pd_mask::<_CMP_UNORD_Q>(v, v), nan);
                _mm_storel_epi64(o.as_mut_ptr().cast(), _mm256_cvtepi32_epi8(at));
            }
        }
        groups * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_the_binary_search_of_every_value() {
        let mut rng = crate::generate::Rng::new(31);
        for len in [0usize, 1, 2, 3, 7, 8, 9, 100, 127, 128, 200, 254, 255] {
            let mut list: Vec<f64> = (0..len)
                .map(|_| (rng.normal() * 4.0).round() / 2.0)
                .collect();
            list.sort_by(f64::total_cmp);
            let s = Sorted::new(&list);
            // Random values, every listed number, its neighbours, ties, infinities, signed zeros
            // and NaN; lengths that leave a remainder after the groups of eight.
            let mut values: Vec<f64> = (0..1003).map(|_| rng.normal() * 5.0).collect();
            for &x in &list {
                values.extend([x, x.next_down(), x.next_up()]);
            }
            values.extend([f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, f64::NAN, 1e300]);
            for max in [255u8, 254, 3, 0] {
                let mut got = vec![0u8; values.len()];
                s.count_below(&values, &mut got, 200, max);
                for (v, g) in values.iter().zip(&got) {
                    let want = if v.is_nan() {
                        200
                    } else {
                        list.partition_point(|x| x < v).min(usize::from(max)) as u8
                    };
                    assert_eq!(*g, want, "list of {len}, value {v}, max {max}");
                }
            }
        }
    }
}
