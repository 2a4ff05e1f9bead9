//! Histograms, as LightGBM's `src/treelearner/feature_histogram.hpp`: per feature and bin, the
//! sums of the gradients and hessians (and row counts) of a leaf's rows, from which the split
//! search reads every threshold's gain.

use rayon::prelude::*;

use super::bin::Binned;
use super::objective::{logistic_gradients, logistic_gradients_chunk, Gh, Grad};

/// A histogram entry: a bin's gradient and hessian sums, and for logistic loss (N = 4) its row
/// count and a zero, so that a row is added to an entry with one 256-bit addition (see
/// [`add_row`]). Squared error uses N = 2: its hessian is 1, so the hessian sum is the count.
pub(super) type Entry<const N: usize> = [f64; N];

/// Where an entry of `N` values keeps the row count: the hessian for squared error (N = 2),
/// the third value for logistic loss (N = 4, or 3).
pub(super) const COUNT: [usize; 5] = [0, 0, 1, 2, 2];

/// One feature's histogram. A bin number is a byte, so 256 entries need no bounds check.
pub(super) type FeatureHist<const N: usize> = [Entry<N>; 256];

/// Every feature's histogram from a histogram of bundle cells (`flat`, [`FILL_STRIDE`] entries a
/// bundle): a feature alone in its bundle takes its entries as they are; a feature sharing a
/// bundle sums, for each of its bins, the cells that hold that bin, in cell order.
pub(super) fn marginals<const M: usize>(b: &Binned, flat: &[Entry<M>]) -> Vec<FeatureHist<M>> {
    let mut out = vec![[[0.0; M]; 256]; b.n_features];
    for (k, members) in b.bundles.iter().enumerate() {
        let cells = &flat[k * FILL_STRIDE..k * FILL_STRIDE + 256];
        if let [f] = members[..] {
            out[f].copy_from_slice(cells);
            continue;
        }
        let size: usize = members.iter().map(|&f| b.bounds[f].len()).product();
        for (c, e) in cells[..size].iter().enumerate() {
            let mut rest = c;
            for &f in members {
                let nb = b.bounds[f].len();
                let o = &mut out[f][rest % nb];
                rest /= nb;
                for (o, e) in o.iter_mut().zip(e) {
                    *o += e;
                }
            }
        }
    }
    out
}

/// Rows per histogram task: enough work per task, few partial histograms to add up.
pub(super) const HIST_CHUNK: usize = 32 * 1024;

/// The rows of a leaf: all rows in order (the root), or a list. `Span(start, len)` is the rows
/// `start..start + len` with their gradients in a slice of their own (`gh[r - start]`), for a
/// pass that computes a chunk's gradients and adds them up while they are in the cache (see
/// [`logistic_root`]); [`fill`] takes it as one chunk.
#[derive(Clone, Copy)]
pub(super) enum Rows<'a> {
    All(usize),
    List(&'a [u32]),
    Span(usize, usize),
    /// The rows `start..end`, in order (a leaf whose rows were never moved: see
    /// [`Grower::grow`]).
    Range(usize, usize),
}

impl Rows<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Rows::All(n) => *n,
            Rows::List(l) => l.len(),
            Rows::Span(_, len) => *len,
            Rows::Range(start, end) => end - start,
        }
    }
}

pub(super) const PREFETCH: usize = 64;

#[inline(always)]
pub(super) fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults and reads nothing into the program.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (p as *const T).cast(),
        );
    }
}

/// Entries per feature in a histogram being filled: 256, and 4 more so that one feature's entry
/// for a bin and the next feature's entry for the same bin are not a multiple of 4 KiB apart.
/// The CPU first matches a load to earlier stores by the address's low 12 bits, so a row's store
/// to one feature's entry would hold up the load of the next feature's, whose bins are often the
/// same small numbers.
pub(super) const FILL_STRIDE: usize = 260;

/// Adds one row's gradient and hessian, and for `M` >= 3 one to the count, to the entries of its
/// `W` bins in `flat` (feature `f`'s entry for bin `b` at `f * FILL_STRIDE + b`). With `AVX` and
/// `M` = 4, (gradient, hessian, 1, 0) is added to an entry with one 256-bit addition instead of
/// a 128-bit and a scalar one.
///
/// # Safety
/// `flat` has at least `W * FILL_STRIDE` entries; with `AVX` the CPU has AVX.
#[inline(always)]
pub(super) unsafe fn add_row<const M: usize, const W: usize, G: Grad, const AVX: bool>(
    flat: &mut [Entry<M>],
    bins: &[u8; W],
    gh: G,
) {
    debug_assert!(flat.len() >= W * FILL_STRIDE && (2..=4).contains(&M));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of x86_64, and AVX is there when the caller says so;
    // `f * FILL_STRIDE + bin < W * FILL_STRIDE`, within `flat` by the caller's promise, and an
    // entry has M >= 2 values (4 for the 256-bit add). A 128-bit add of (g, h) is two IEEE
    // additions, as the scalar code below does them, and the 256-bit one four.
    unsafe {
        use std::arch::x86_64::*;
        let [g, h] = gh.pair();
        let base = flat.as_mut_ptr().cast::<f64>();
        if AVX && M == 4 {
            let g = _mm256_set_pd(0.0, 1.0, h, g);
            for f in 0..W {
                let e = base.add((f * FILL_STRIDE + bins[f] as usize) * M);
                _mm256_storeu_pd(e, _mm256_add_pd(_mm256_loadu_pd(e), g));
            }
            return;
        }
        let g = _mm_set_pd(h, g);
        for f in 0..W {
            let e = base.add((f * FILL_STRIDE + bins[f] as usize) * M);
            _mm_storeu_pd(e, _mm_add_pd(_mm_loadu_pd(e), g));
            if M >= 3 {
                *e.add(2) += 1.0;
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let gh = gh.pair();
        for f in 0..W {
            let e = &mut flat[f * FILL_STRIDE + bins[f] as usize];
            e[0] += gh[0];
            e[1] += gh[1];
            if M >= 3 {
                e[2] += 1.0;
            }
        }
    }
}

/// The histogram of bundle cells of the rows of chunk `k` of `rows`, for `W` slots a row (the
/// bundles and their padding, [`Binned::width`]). The loops are written out rather than shared
/// through a closure: the compiler called such a closure once a row.
///
/// # Safety
/// With `AVX` the CPU has AVX.
#[inline(always)]
pub(super) unsafe fn fill<const M: usize, const W: usize, G: Grad, const AVX: bool>(
    b: &Binned,
    rows: Rows,
    gh: &[G],
    k: usize,
) -> Vec<Entry<M>> {
    let mut flat = vec![[0.0; M]; W * FILL_STRIDE];
    let stride = b.stride;
    assert!(W <= stride);
    let row = |r: usize| -> &[u8; W] {
        b.row_major[r * stride..r * stride + W]
            .try_into()
            .expect("rows of at least W bins")
    };
    let range =
        |start: usize, end: usize| start + k * HIST_CHUNK..(start + (k + 1) * HIST_CHUNK).min(end);
    match rows {
        Rows::All(n) => {
            for r in range(0, n) {
                // SAFETY: `flat` has W * FILL_STRIDE entries; AVX as the caller promised.
                unsafe { add_row::<M, W, G, AVX>(&mut flat, row(r), gh[r]) };
            }
        }
        Rows::Range(start, end) => {
            for r in range(start, end) {
                // SAFETY: as above.
                unsafe { add_row::<M, W, G, AVX>(&mut flat, row(r), gh[r]) };
            }
        }
        Rows::Span(start, len) => {
            for (i, &g) in gh[..len].iter().enumerate() {
                // SAFETY: as above.
                unsafe { add_row::<M, W, G, AVX>(&mut flat, row(start + i), g) };
            }
        }
        Rows::List(l) => {
            let chunk = &l[k * HIST_CHUNK..((k + 1) * HIST_CHUNK).min(l.len())];
            for (i, &r) in chunk.iter().enumerate() {
                if let Some(&ahead) = chunk.get(i + PREFETCH) {
                    // Both ends: a row of 12 bytes can straddle two cache lines.
                    prefetch(&b.row_major[ahead as usize * stride]);
                    prefetch(&b.row_major[ahead as usize * stride + W - 1]);
                    prefetch(&gh[ahead as usize]);
                }
                // SAFETY: as above.
                unsafe { add_row::<M, W, G, AVX>(&mut flat, row(r as usize), gh[r as usize]) };
            }
        }
    }
    flat
}

/// [`fill`] compiled for AVX, for the 256-bit additions of 4-value entries.
///
/// # Safety
/// The CPU has AVX.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx"))]
pub(super) unsafe fn fill_avx<const M: usize, const W: usize, G: Grad>(
    b: &Binned,
    rows: Rows,
    gh: &[G],
    k: usize,
) -> Vec<Entry<M>> {
    // SAFETY: the caller's promise.
    unsafe { fill::<M, W, G, true>(b, rows, gh, k) }
}

/// [`fill`] for any number of features.
pub(super) fn fill_any<const M: usize, G: Grad>(
    b: &Binned,
    rows: Rows,
    gh: &[G],
    k: usize,
) -> Vec<Entry<M>> {
    let w = b.stride;
    let mut flat = vec![[0.0; M]; w * FILL_STRIDE];
    let mut add = |r: usize| {
        let gh = gh[r].pair();
        for (f, &bin) in b.row_major[r * w..(r + 1) * w].iter().enumerate() {
            let e = &mut flat[f * FILL_STRIDE + bin as usize];
            e[0] += gh[0];
            e[1] += gh[1];
            if M >= 3 {
                e[2] += 1.0;
            }
        }
    };
    match rows {
        Rows::All(n) => (k * HIST_CHUNK..((k + 1) * HIST_CHUNK).min(n)).for_each(add),
        Rows::Range(start, end) => {
            (start + k * HIST_CHUNK..(start + (k + 1) * HIST_CHUNK).min(end)).for_each(add)
        }
        Rows::Span(start, len) => {
            for i in 0..len {
                let gh = gh[i].pair();
                for (f, &bin) in b.row_major[(start + i) * w..(start + i + 1) * w]
                    .iter()
                    .enumerate()
                {
                    let e = &mut flat[f * FILL_STRIDE + bin as usize];
                    e[0] += gh[0];
                    e[1] += gh[1];
                    if M >= 3 {
                        e[2] += 1.0;
                    }
                }
            }
        }
        Rows::List(l) => {
            let chunk = &l[k * HIST_CHUNK..((k + 1) * HIST_CHUNK).min(l.len())];
            for (i, &r) in chunk.iter().enumerate() {
                if let Some(&ahead) = chunk.get(i + PREFETCH) {
                    prefetch(&b.row_major[ahead as usize * w]);
                    prefetch(&gh[ahead as usize]);
                }
                add(r as usize);
            }
        }
    }
    flat
}

/// The histogram of every feature over `rows`: gradient and hessian summed per bin, and for
/// `M` = 3 the rows counted.
pub(super) fn build_hist<const M: usize, G: Grad>(
    b: &Binned,
    rows: Rows,
    gh: &[G],
) -> Vec<FeatureHist<M>> {
    let fill = |k: usize| fill_chunk::<M, G>(b, rows, gh, k);
    let chunks = rows.len().div_ceil(HIST_CHUNK);
    if chunks <= 1 {
        return marginals(b, &fill(0));
    }
    // Partial histograms in chunk order, added in that order: the sums do not depend on how the
    // work was scheduled, so training stays deterministic.
    let parts: Vec<Vec<Entry<M>>> = (0..chunks).into_par_iter().map(fill).collect();
    marginals(b, &add_in_order(parts))
}

/// Histograms of bundle cells added up in the order given.
pub(super) fn add_in_order<const M: usize>(parts: Vec<Vec<Entry<M>>>) -> Vec<Entry<M>> {
    let mut parts = parts.into_iter();
    let mut out = parts.next().unwrap_or_default();
    for p in parts {
        for (o, e) in out.iter_mut().zip(&p) {
            for k in 0..M {
                o[k] += e[k];
            }
        }
    }
    out
}

/// The histogram of bundle cells of chunk `k` of `rows` ([`fill`] for the rows' width, compiled
/// for AVX where that helps).
pub(super) fn fill_chunk<const M: usize, G: Grad>(
    b: &Binned,
    rows: Rows,
    gh: &[G],
    k: usize,
) -> Vec<Entry<M>> {
    #[cfg(target_arch = "x86_64")]
    let avx = M == 4 && std::arch::is_x86_feature_detected!("avx");
    #[cfg(not(target_arch = "x86_64"))]
    let avx = false;
    macro_rules! widths {
        ($k:expr, $($w:literal, $s:literal);*) => {
            match (b.width, b.stride.max(16)) {
                $(
                    // SAFETY: `fill_avx` only where the CPU has AVX; `fill` without it.
                    ($w, $s) if avx => unsafe { fill_avx::<M, $w, G>(b, rows, gh, $k) },
                    ($w, $s) => unsafe { fill::<M, $w, G, false>(b, rows, gh, $k) },
                )*
                _ => fill_any::<M, G>(b, rows, gh, $k),
            }
        };
    }
    widths!(k, 2, 16; 4, 16; 6, 16; 8, 16; 10, 16; 12, 16; 14, 16; 16, 16; 32, 32)
}

/// Logistic loss's gradients at each row's score (into `gh`), the root's histogram of them, and
/// their sums, in one pass: each chunk of rows has its gradients computed and added up while
/// they are in the cache, instead of a pass that writes them and another that reads them back.
/// The row counts per bin are the same for every tree: the first tree's histogram counts them
/// (into `counts`), the later ones add gradient and hessian only.
pub(super) fn logistic_root(
    b: &Binned,
    gh: &mut [Gh],
    score: &[f64],
    y: &[f64],
    counts: &mut Vec<[f64; 256]>,
) -> (Vec<FeatureHist<4>>, f64, f64) {
    let n = gh.len();
    if counts.is_empty() {
        logistic_gradients(gh, score, y);
        let h = build_hist::<4, Gh>(b, Rows::All(n), gh);
        *counts = h
            .iter()
            .map(|fh| std::array::from_fn(|bin| fh[bin][COUNT[4]]))
            .collect();
        let (gs, hs) = grad_sums(gh);
        return (h, gs, hs);
    }
    // The same chunks as `build_hist` and `grad_sums`, added in the same order.
    let parts: Vec<(Vec<Entry<2>>, (f64, f64))> = gh
        .par_chunks_mut(HIST_CHUNK)
        .zip(score.par_chunks(HIST_CHUNK))
        .zip(y.par_chunks(HIST_CHUNK))
        .enumerate()
        .map(|(k, ((gh, s), y))| {
            logistic_gradients_chunk(gh, s, y);
            let flat = fill_chunk::<2, Gh>(b, Rows::Span(k * HIST_CHUNK, gh.len()), gh, 0);
            (flat, chunk_sums(gh))
        })
        .collect();
    let (gs, hs) = parts
        .iter()
        .fold((0.0, 0.0), |(g, h), (_, (cg, ch))| (g + cg, h + ch));
    let hist = marginals(b, &add_in_order(parts.into_iter().map(|p| p.0).collect()));
    let hist = hist
        .iter()
        .zip(counts.iter())
        .map(|(fh, c)| {
            std::array::from_fn(|bin| {
                std::array::from_fn(|k| match k {
                    0 | 1 => fh[bin][k],
                    2 => c[bin],
                    _ => 0.0,
                })
            })
        })
        .collect();
    (hist, gs, hs)
}

/// The sums of all rows' gradients and hessians. Each chunk of [`HIST_CHUNK`] rows keeps eight
/// running sums, so that its additions vectorise instead of waiting on one another (one running
/// sum was a chain of dependent additions a row each tree), and the chunks' sums are added in
/// chunk order: the same numbers however the chunks were scheduled.
pub(super) fn grad_sums<G: Grad>(gh: &[G]) -> (f64, f64) {
    gh.par_chunks(HIST_CHUNK)
        .map(chunk_sums)
        .collect::<Vec<_>>()
        .into_iter()
        .fold((0.0, 0.0), |(g, h), (cg, ch)| (g + cg, h + ch))
}

/// The gradient and hessian sums of one chunk of [`grad_sums`].
pub(super) fn chunk_sums<G: Grad>(c: &[G]) -> (f64, f64) {
    let (mut g, mut h) = ([0.0; 8], [0.0; 8]);
    let mut rows = c.chunks_exact(8);
    for w in &mut rows {
        for k in 0..8 {
            let e = w[k].pair();
            g[k] += e[0];
            h[k] += e[1];
        }
    }
    for (k, e) in rows.remainder().iter().enumerate() {
        let e = e.pair();
        g[k] += e[0];
        h[k] += e[1];
    }
    (g.iter().sum::<f64>(), h.iter().sum::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gbdt::bin::bin_features;
    use crate::model::gbdt::testutil::close;
    #[test]
    fn histograms_are_the_plain_sums_for_every_row_width() {
        // 2, 9, 20 and 40 features: the features of few bins share bytes (see `bundles`), and
        // the rest make rows of 16 and 32 bins and the any-width path.
        let mut rng = crate::generate::Rng::new(11);
        let bins = |f: usize| [3, 43, 4, 200, 5, 2, 250, 7, 6][f % 9] + f / 9;
        for nf in [2usize, 9, 20, 40] {
            let n = 5_000;
            let cols: Vec<Vec<f64>> = (0..nf)
                .map(|f| {
                    (0..n)
                        .map(|_| (rng.uniform() * bins(f) as f64).floor())
                        .collect()
                })
                .collect();
            let x: Vec<&[f64]> = cols.iter().map(|c| c.as_slice()).collect();
            let b = bin_features(&x.as_slice(), n, 255).unwrap();
            assert!(b.bundles.len() < nf, "{nf} features: nothing bundled");
            let gh: Vec<Gh> = (0..n).map(|_| [rng.normal(), rng.uniform()]).collect();
            let list: Vec<u32> = (0..n as u32).filter(|_| rng.uniform() < 0.4).collect();
            for rows in [Rows::All(n), Rows::List(&list), Rows::Range(123, n - 7)] {
                let all: Vec<usize> = match rows {
                    Rows::All(n) => (0..n).collect(),
                    Rows::List(l) => l.iter().map(|&r| r as usize).collect(),
                    Rows::Range(start, end) => (start..end).collect(),
                    Rows::Span(..) => unreachable!(),
                };
                let h4 = build_hist::<4, Gh>(&b, rows, &gh);
                let h3 = build_hist::<3, Gh>(&b, rows, &gh);
                let h2 = build_hist::<2, Gh>(&b, rows, &gh);
                // Squared error's gradients alone, hessian 1.
                let g: Vec<f64> = gh.iter().map(|e| e[0]).collect();
                let g2 = build_hist::<2, f64>(&b, rows, &g);
                assert_eq!(h4.len(), nf);
                for f in 0..nf {
                    let alone = b.bundles.iter().any(|m| m[..] == [f]);
                    let mut want = [[0.0f64; 3]; 256];
                    for &r in &all {
                        let bin = b.columns[f * n + r] as usize;
                        let e = &mut want[bin];
                        e[0] += gh[r][0];
                        e[1] += gh[r][1];
                        e[2] += 1.0;
                    }
                    for bin in 0..256 {
                        let case = format!("{nf} features, feature {f}, bin {bin}");
                        // 256-bit and 128-bit additions give the same sums; counts are exact.
                        assert_eq!(h4[f][bin][..3], h3[f][bin], "{case}");
                        assert_eq!(h4[f][bin][3], 0.0, "{case}");
                        assert_eq!(h3[f][bin][2], want[bin][2], "{case}");
                        assert_eq!(h2[f][bin], [h3[f][bin][0], h3[f][bin][1]], "{case}");
                        assert_eq!(g2[f][bin][1], want[bin][2], "{case}");
                        if alone {
                            // In row order, as the rows were added.
                            assert_eq!(h3[f][bin], want[bin], "{case}");
                            assert_eq!(g2[f][bin][0], want[bin][0], "{case}");
                        } else {
                            // Cell by cell, then the cells of each bin.
                            assert!(close(h3[f][bin][0], want[bin][0]), "{case}");
                            assert!(close(h3[f][bin][1], want[bin][1]), "{case}");
                            assert!(close(g2[f][bin][0], want[bin][0]), "{case}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn logistic_root_is_the_gradients_and_their_histogram() {
        // The pass that computes each chunk's gradients and adds them up gives what computing
        // them all and then building the root's histogram gives, bit for bit.
        let mut rng = crate::generate::Rng::new(29);
        let n = 2 * HIST_CHUNK + 1234;
        let cols: Vec<Vec<f64>> = [4usize, 200, 6]
            .iter()
            .map(|&c| (0..n).map(|_| rng.below(c) as f64).collect())
            .collect();
        let x: Vec<&[f64]> = cols.iter().map(|c| c.as_slice()).collect();
        let b = bin_features(&x.as_slice(), n, 255).unwrap();
        let y: Vec<f64> = (0..n)
            .map(|_| f64::from(u8::from(rng.uniform() < 0.3)))
            .collect();
        let mut counts = Vec::new();
        let mut gh = vec![[0.0, 1.0]; n];
        let first = logistic_root(&b, &mut gh, &vec![0.1; n], &y, &mut counts);
        assert_eq!(first.0, build_hist::<4, Gh>(&b, Rows::All(n), &gh));
        let score: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let (hist, gs, hs) = logistic_root(&b, &mut gh, &score, &y, &mut counts);
        let mut want = vec![[0.0, 1.0]; n];
        logistic_gradients(&mut want, &score, &y);
        assert_eq!(gh, want);
        assert_eq!(hist, build_hist::<4, Gh>(&b, Rows::All(n), &want));
        assert_eq!((gs, hs), grad_sums(&want));
    }
}
