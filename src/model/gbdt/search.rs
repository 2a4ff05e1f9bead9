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
//!
//! Most features are whole numbers — counts, ages, days, the codes of categories — and a whole
//! number's count can be read from a table instead: for the integers from the list's floor to
//! one past its ceiling, the count below each, worked out when the list is made. Where a group
//! of eight values are all whole numbers, one gather from that table replaces the eight steps
//! (values beyond the table's ends take its end counts, which are theirs: nothing in the list is
//! below the floor, everything finite is below one past the ceiling). A group with any other
//! value takes the steps.

/// A sorted list of at most 255 numbers, padded for [`Sorted::count_below`].
pub(super) struct Sorted {
    /// The list, then +∞ up to `2 * top - 1` numbers.
    padded: Vec<f64>,
    /// Half the padded length plus one: the first step.
    top: usize,
    /// The counts below the whole numbers `lowest..=lowest + table.len() - 1`, when the list's
    /// finite numbers span at most [`TABLE_MAX`] of them and it holds no -∞.
    table: Vec<u32>,
    lowest: f64,
}

/// The most whole numbers a [`Sorted`] tabulates (8 KB of counts).
const TABLE_MAX: usize = 2048;

impl Sorted {
    /// `sorted` must be in increasing order, without NaN, and at most 255 long.
    pub(super) fn new(sorted: &[f64]) -> Sorted {
        assert!(sorted.len() <= 255, "at most 255 numbers");
        debug_assert!(sorted.windows(2).all(|w| w[0] <= w[1]));
        let top = (sorted.len() + 1).next_power_of_two() / 2;
        let mut padded = sorted.to_vec();
        padded.resize((2 * top).max(1) - 1, f64::INFINITY);
        let finite: Vec<f64> = sorted.iter().copied().filter(|v| v.is_finite()).collect();
        let (lowest, highest) = match (finite.first(), finite.last()) {
            (Some(lo), Some(hi)) => (lo.floor(), hi.floor() + 1.0),
            _ => (0.0, 0.0),
        };
        let tabulate = sorted.first() != Some(&f64::NEG_INFINITY)
            && highest - lowest < TABLE_MAX as f64
            && lowest.abs() < f64::from(1 << 30)
            && highest.abs() < f64::from(1 << 30);
        let table = if tabulate {
            (0..=(highest - lowest) as usize)
                .map(|k| sorted.partition_point(|x| *x < lowest + k as f64) as u32)
                .collect()
        } else {
            Vec::new()
        };
        Sorted {
            padded,
            top,
            table,
            lowest,
        }
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
        let tabulated = !self.table.is_empty();
        let (lowest, highest) = (
            _mm512_set1_pd(self.lowest),
            _mm512_set1_pd(self.lowest + (self.table.len().max(1) - 1) as f64),
        );
        for (v, o) in values.chunks_exact(8).zip(out.chunks_exact_mut(8)) {
            // SAFETY: eight values and eight bytes; every gathered index is below
            // `2 * top - 1`, the padded length (as in `one`), or, from the table, within
            // `0..table.len()` (the value is clamped to the table's whole numbers first).
            unsafe {
                let v = _mm512_loadu_pd(v.as_ptr());
                if tabulated {
                    let floor =
                        _mm512_roundscale_pd::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(v);
                    // NaN is unequal to itself: a group with a NaN takes the steps.
                    if _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(floor, v) == 0xFF {
                        let k = _mm512_min_pd(_mm512_max_pd(v, lowest), highest);
                        let k = _mm512_cvttpd_epi32(_mm512_sub_pd(k, lowest));
                        let at = _mm256_i32gather_epi32::<4>(self.table.as_ptr().cast(), k);
                        let at = _mm256_min_epi32(at, max);
                        _mm_storel_epi64(o.as_mut_ptr().cast(), _mm256_cvtepi32_epi8(at));
                        continue;
                    }
                }
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
        let mut lists: Vec<Vec<f64>> = [0usize, 1, 2, 3, 7, 8, 9, 100, 127, 128, 200, 254, 255]
            .iter()
            .map(|&len| {
                let mut list: Vec<f64> = (0..len)
                    .map(|_| (rng.normal() * 4.0).round() / 2.0)
                    .collect();
                list.sort_by(f64::total_cmp);
                list
            })
            .collect();
        // Bin bounds end in +∞; a list may start at -∞; one spanning too many whole numbers to
        // tabulate; whole-number cuts, where a value equal to a cut is not below it.
        lists.push(vec![-3.5, 0.5, 2.5, f64::INFINITY]);
        lists.push(vec![f64::INFINITY]);
        lists.push(vec![f64::NEG_INFINITY, -1.0, 4.0]);
        lists.push(vec![-5000.0, 0.0, 7.25, 9000.5]);
        lists.push(vec![-2.0, -1.0, 0.0, 3.0, 3.0, 11.0]);
        for list in lists {
            let len = list.len();
            let s = Sorted::new(&list);
            // Random values, every listed number, its neighbours, ties, infinities, signed zeros
            // and NaN; runs of eight whole numbers (some past either end of the list, one with
            // a NaN or a fraction among them); lengths that leave a remainder after the groups
            // of eight.
            let mut values: Vec<f64> = (0..1003).map(|_| rng.normal() * 5.0).collect();
            for &x in &list {
                values.extend([x, x.next_down(), x.next_up()]);
            }
            values.extend([f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, f64::NAN, 1e300]);
            for start in -20..20 {
                values.extend((0..8).map(|i| f64::from(start * 8 + i)));
            }
            values.extend([
                -0.0,
                0.0,
                1.0,
                -1.0,
                f64::INFINITY,
                f64::NEG_INFINITY,
                3.0,
                1e12,
            ]);
            values.extend([1.0, 2.0, f64::NAN, 4.0, 5.0, 6.0, 7.0, 8.0]);
            values.extend([1.0, 2.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0]);
            values.extend((0..8).map(|i| f64::from(-6000 + 2000 * i)));
            for max in [255u8, 254, 3, 0] {
                let mut got = vec![0u8; values.len()];
                s.count_below(&values, &mut got, 200, max);
                for (v, g) in values.iter().zip(&got) {
                    let want = if v.is_nan() {
                        200
                    } else {
                        list.partition_point(|x| x < v).min(usize::from(max)) as u8
                    };
                    assert_eq!(*g, want, "list {list:?} of {len}, value {v}, max {max}");
                }
            }
        }
    }

    #[test]
    fn lists_of_few_whole_numbers_are_tabulated() {
        assert!(!Sorted::new(&[0.5, 3.5, 17.5, f64::INFINITY])
            .table
            .is_empty());
        assert!(Sorted::new(&[0.5, 3.5, 1e6]).table.is_empty());
        assert!(Sorted::new(&[f64::NEG_INFINITY, 0.5]).table.is_empty());
    }
}
