//! Partitioning a leaf's rows into its children, as LightGBM's
//! `src/treelearner/data_partition.hpp`.

use rayon::prelude::*;

use super::bin::Binned;
use super::histogram::{prefetch, PREFETCH};
use super::split::Split;

/// Partition of a leaf's rows on `bin <= split bin`, across two of the grower's row buffers: the
/// left rows stay at the front of `seg`, in their order, and the right rows go to the back of
/// `other` (the leaf's places in the other buffer, which no other leaf uses) in the reverse of
/// their order. The left child is then `seg[..l]` and the right `other[l..]`, where `l`, the
/// number of left rows, is returned. With `first` (an ordered leaf, such as the root) the rows
/// are `first..first + seg.len()` in order and `seg` is written, not read. Nothing is copied
/// back: gathering the right rows in a scratch buffer and copying them behind the left ones
/// would move 8 more bytes a right row, and on large data the partitions wait on memory.
pub(super) fn partition(
    b: &Binned,
    seg: &mut [u32],
    other: &mut [u32],
    first: Option<usize>,
    s: &Split,
) -> usize {
    let m = seg.len();
    assert!(other.len() == m && first.is_none_or(|f| f + m <= b.n));
    let (mut l, mut r, mut i) = (0usize, 0usize, 0usize);
    let col = &b.columns[s.feature * b.n..(s.feature + 1) * b.n];
    #[cfg(target_arch = "x86_64")]
    if m >= 64 && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F; `columns` has 3 bytes after its last column, and
        // `other` is as long as `seg` (see `simd_partition`).
        (l, r, i) = unsafe {
            match first {
                Some(f) => simd_partition::<true>(b, s.feature, f, seg, other, s.bin as u8),
                None => simd_partition::<false>(b, s.feature, 0, seg, other, s.bin as u8),
            }
        };
    }
    // Branch-free: both destinations are written and one count advances (`l <= i`, so the
    // write to `seg` never lands on an unread row, and `m - 1 - r >= l`).
    while i < m {
        let row = if let Some(f) = first {
            (f + i) as u32
        } else {
            if let Some(&ahead) = seg.get(i + PREFETCH) {
                prefetch(&col[ahead as usize]);
            }
            seg[i]
        };
        let left = (col[row as usize] as usize) <= s.bin;
        seg[l] = row;
        other[m - 1 - r] = row;
        l += usize::from(left);
        r += usize::from(!left);
        i += 1;
    }
    l
}

/// Rows a task of [`partition_par`] partitions.
pub(super) const PARTITION_CHUNK: usize = 16 * 1024;

/// [`partition`] on both cores: the same children, in the same order, written to a third buffer.
///
/// Each chunk of [`PARTITION_CHUNK`] rows is partitioned on its own, as [`partition`] does a
/// leaf (left rows at the chunk's front in `seg`, right rows reversed at its back in `other`),
/// the chunks in parallel. Then the chunks' pieces are copied into `third`: the left pieces in
/// chunk order from its front, the right pieces (each already reversed) in reverse chunk order
/// behind them. `third[..l]` is then `seg[..l]` of [`partition`] and `third[l..]` its
/// `other[l..]`, so the trees are the same bits whichever runs. The copy moves 8 more bytes a
/// row, which a serial partition does not, so the grower calls this only while its fit is the
/// only one running (see [`FITS_RUNNING`]).
pub(super) fn partition_par(
    b: &Binned,
    seg: &mut [u32],
    other: &mut [u32],
    third: &mut [u32],
    first: Option<usize>,
    s: &Split,
) -> usize {
    let m = seg.len();
    assert!(other.len() == m && third.len() == m);
    let lefts: Vec<usize> = seg
        .par_chunks_mut(PARTITION_CHUNK)
        .zip(other.par_chunks_mut(PARTITION_CHUNK))
        .enumerate()
        .map(|(k, (seg, other))| {
            partition(b, seg, other, first.map(|f| f + k * PARTITION_CHUNK), s)
        })
        .collect();
    let l: usize = lefts.iter().sum();
    // Where each chunk's pieces go: the left ones from the front, the right ones from the back.
    let (mut left_to, mut right_to) = third.split_at_mut(l);
    let mut moves = Vec::with_capacity(lefts.len());
    let chunks = seg
        .chunks(PARTITION_CHUNK)
        .zip(other.chunks(PARTITION_CHUNK));
    for ((seg, other), &lk) in chunks.zip(&lefts) {
        let (to_l, rest) = std::mem::take(&mut left_to).split_at_mut(lk);
        left_to = rest;
        let at = right_to.len() - (seg.len() - lk);
        let (rest, to_r) = std::mem::take(&mut right_to).split_at_mut(at);
        right_to = rest;
        moves.push((to_l, &seg[..lk], to_r, &other[lk..]));
    }
    moves
        .into_par_iter()
        .for_each(|(to_l, from_l, to_r, from_r)| {
            to_l.copy_from_slice(from_l);
            to_r.copy_from_slice(from_r);
        });
    l
}

/// How many fits are growing trees in this process. While one is alone, its large partitions
/// run on every core ([`partition_par`]); while several run, the cores are busy with them and a
/// serial partition moves fewer bytes.
pub(super) static FITS_RUNNING: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// Counts a fit in [`FITS_RUNNING`] while it lives.
pub(super) struct FitRunning;

impl FitRunning {
    pub(super) fn new() -> Self {
        FITS_RUNNING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        FitRunning
    }

    /// This fit is the only one running, and there is more than one core for it.
    pub(super) fn alone() -> bool {
        FITS_RUNNING.load(std::sync::atomic::Ordering::Relaxed) == 1
            && rayon::current_num_threads() > 1
    }
}

impl Drop for FitRunning {
    fn drop(&mut self) {
        FITS_RUNNING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The first whole 16-row groups of [`partition`], 16 rows per step: load (`ALL`: the rows
/// `first..first + seg.len()`) or gather their bins, compare, compress the left rows to `seg` and the right rows, reversed, to the back
/// of `other`. Returns (left rows, right rows, rows done).
///
/// # Safety
/// The CPU has AVX-512 F. Each gather reads 4 bytes at a row's bin, so up to 3 bytes past the
/// feature's column: `columns` has 3 bytes of padding after the last one. Each compressed group is
/// stored whole (16 places): in `seg` at `l <= i`, over rows already read; in `other` ending at
/// `m - r`, starting at `m - r - 16 >= m - i - 16 >= 0`, on places no right row has reached.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn simd_partition<const ALL: bool>(
    b: &Binned,
    feature: usize,
    first: usize,
    seg: &mut [u32],
    other: &mut [u32],
    bin: u8,
) -> (usize, usize, usize) {
    use std::arch::x86_64::*;
    let m = seg.len();
    assert!(b.columns.len() >= (feature + 1) * b.n + 3 && other.len() == m);
    assert!(!ALL || first + m <= b.n);
    let base = b.columns[feature * b.n..].as_ptr();
    let (mut l, mut r, mut i) = (0usize, 0usize, 0usize);
    let split = _mm512_set1_epi32(i32::from(bin));
    let byte = _mm512_set1_epi32(0xFF);
    let reverse = _mm512_setr_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    let mut iota = _mm512_add_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(first as i32),
    );
    let sixteen = _mm512_set1_epi32(16);
    while i + 16 <= m {
        // SAFETY: see the function's contract; rows are below 2^31 (u32 row numbers of a
        // matrix that fits in memory).
        unsafe {
            let (rows, bins) = if ALL {
                let rows = iota;
                iota = _mm512_add_epi32(iota, sixteen);
                (
                    rows,
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(base.add(first + i).cast())),
                )
            } else {
                let rows = _mm512_loadu_si512(seg.as_ptr().add(i).cast());
                let bins = _mm512_i32gather_epi32::<1>(rows, base.cast());
                (rows, _mm512_and_si512(bins, byte))
            };
            let left = _mm512_cmple_epu32_mask(bins, split);
            _mm512_storeu_si512(
                seg.as_mut_ptr().add(l).cast(),
                _mm512_maskz_compress_epi32(left, rows),
            );
            // The right rows in lanes 0.., reversed into the top lanes: the first right row
            // lands at `m - 1 - r`.
            _mm512_storeu_si512(
                other.as_mut_ptr().add(m - r - 16).cast(),
                _mm512_permutexvar_epi32(reverse, _mm512_maskz_compress_epi32(!left, rows)),
            );
            let n_left = left.count_ones() as usize;
            l += n_left;
            r += 16 - n_left;
        }
        i += 16;
    }
    (l, r, i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gbdt::bin::bin_features;
    use crate::model::gbdt::testutil::{data, rows_with_gaps, split_at};
    #[test]
    fn partition_keeps_left_rows_in_order_and_puts_right_rows_behind_them_reversed() {
        let (a, b, _) = data(10_000);
        let x: &[&[f64]] = &[&a, &b];
        let binned = bin_features(&x, a.len(), 255).unwrap();
        let mut rng = crate::generate::Rng::new(7);
        let mut cases: Vec<(Vec<u32>, Option<usize>)> = [0, 1, 15, 16, 17, 63, 64, 65, 1000, 4099]
            .iter()
            .map(|&len| (rows_with_gaps(&mut rng, 10_000, len), None))
            .collect();
        // Ordered leaves, whose rows the partition does not read: the root (all rows), and runs
        // of rows of every length around the 16-row groups.
        cases.push(((0..10_000).collect(), Some(0)));
        for (first, len) in [(5, 0), (7, 1), (100, 15), (3, 16), (9_000, 17), (77, 1000)] {
            cases.push(((first..first + len).collect(), Some(first as usize)));
        }
        for (seg, first) in cases {
            for feature in 0..2 {
                for bin in [0, 1, 3, 100, 254] {
                    let split = split_at(feature, bin);
                    let col = |r: u32| binned.columns[feature * binned.n + r as usize] as usize;
                    let left: Vec<u32> = seg.iter().copied().filter(|&r| col(r) <= bin).collect();
                    let right: Vec<u32> = seg
                        .iter()
                        .rev()
                        .copied()
                        .filter(|&r| col(r) > bin)
                        .collect();
                    let mut got = if first.is_some() {
                        vec![u32::MAX; seg.len()]
                    } else {
                        seg.clone()
                    };
                    let mut other = vec![u32::MAX; seg.len()];
                    let l = partition(&binned, &mut got, &mut other, first, &split);
                    let case = format!(
                        "len {}, first {first:?}, feature {feature}, bin {bin}",
                        seg.len()
                    );
                    assert_eq!(l, left.len(), "{case}");
                    assert_eq!(got[..l], left[..], "{case}");
                    assert_eq!(other[l..], right[..], "{case}");
                }
            }
        }
    }

    #[test]
    fn partition_on_every_core_gives_the_serial_partitions_children() {
        // Leaves of every length around the chunks of `partition_par`, listed and ordered; the
        // children must be the serial partition's, row for row, in the third buffer.
        let (a, b, _) = data(200_000);
        let x: &[&[f64]] = &[&a, &b];
        let binned = bin_features(&x, a.len(), 255).unwrap();
        let mut rng = crate::generate::Rng::new(11);
        let c = PARTITION_CHUNK;
        let lens = [0, 1, c - 1, c, c + 1, 2 * c + 17, 5 * c + 3];
        let mut cases: Vec<(Vec<u32>, Option<usize>)> = Vec::new();
        for &len in &lens {
            let seg = rows_with_gaps(&mut rng, 200_000, len);
            assert_eq!(seg.len(), len);
            cases.push((seg, None));
            let first = 1000 + len % 997;
            cases.push(((first as u32..(first + len) as u32).collect(), Some(first)));
        }
        for (seg, first) in cases {
            for (feature, bin) in [(0, 0), (0, 100), (0, 254), (1, 2), (1, 254)] {
                let split = split_at(feature, bin);
                let m = seg.len();
                let case = format!("len {m}, first {first:?}, feature {feature}, bin {bin}");
                let (mut serial, mut serial_other) = (seg.clone(), vec![u32::MAX; m]);
                let l = partition(&binned, &mut serial, &mut serial_other, first, &split);
                let (mut par, mut par_other, mut third) =
                    (seg.clone(), vec![u32::MAX; m], vec![u32::MAX; m]);
                let lp =
                    partition_par(&binned, &mut par, &mut par_other, &mut third, first, &split);
                assert_eq!(lp, l, "{case}");
                assert_eq!(third[..l], serial[..l], "{case}");
                assert_eq!(third[l..], serial_other[l..], "{case}");
            }
        }
    }
}
