//! Binning, as LightGBM's `src/io/bin.cpp`: each feature's values cut into at most 255 bins
//! once, before any tree; features of few bins bundled into one byte a row; the rows put in an
//! order in which a leaf's rows lie close together.

use rayon::prelude::*;

use super::objective::{init_score, sigmoid, Objective};
use super::params::Params;
use super::search;
use super::split::best_split;
use crate::model::Columns;

/// Bin upper bounds of one feature: value `v` falls in the first bin whose bound is >= v.
pub(super) fn bin_bounds(col: &[f64], max_bins: usize) -> Vec<f64> {
    // A deterministic sample bounds the cost on large data.
    let step = (col.len() / 200_000).max(1);
    let mut s: Vec<f64> = col
        .iter()
        .step_by(step)
        .copied()
        .filter(|v| !v.is_nan())
        .collect();
    crate::stats::sort_f64(&mut s);
    let mut distinct: Vec<(f64, usize)> = Vec::new();
    for v in s {
        match distinct.last_mut() {
            Some((d, c)) if *d == v => *c += 1,
            _ => distinct.push((v, 1)),
        }
    }
    let mut bounds = Vec::new();
    if distinct.len() <= max_bins {
        for w in distinct.windows(2) {
            bounds.push((w[0].0 + w[1].0) / 2.0);
        }
    } else {
        // Equal-frequency bins over the distinct values, cutting between distinct values.
        let total: usize = distinct.iter().map(|d| d.1).sum();
        let per = total as f64 / max_bins as f64;
        let mut acc = 0usize;
        let mut next = per;
        for w in distinct.windows(2) {
            acc += w[0].1;
            if acc as f64 >= next && bounds.len() + 1 < max_bins {
                bounds.push((w[0].0 + w[1].0) / 2.0);
                while next <= acc as f64 {
                    next += per;
                }
            }
        }
    }
    bounds.push(f64::INFINITY);
    bounds
}

/// Features bucketed once: a row-major matrix of bin numbers (one byte per bundle of features,
/// see [`bundles`]), so that one pass over a leaf's rows fills every feature's histogram.
pub(super) struct Binned {
    /// `row_major[r * stride + k]` is row `r`'s cell in bundle `k`: the bins of the bundle's
    /// features in mixed radix, the first feature's bin the least significant digit. Bytes past
    /// the last bundle are padding.
    pub(super) row_major: Vec<u8>,
    /// Bytes per row: 8, 12, 16 or 32 when there are that few bundles (a fixed width lets the
    /// per-row loop unroll; the smallest that fits streams the fewest bytes); else the bundle
    /// count.
    pub(super) stride: usize,
    /// Histogram slots filled per row: the bundle count rounded up to an even number (see
    /// [`fill`]; the padding slot fills a scratch histogram).
    pub(super) width: usize,
    /// Features whose bins share a byte of `row_major`, each bundle's features in increasing
    /// order.
    pub(super) bundles: Vec<Vec<usize>>,
    /// The same bins feature by feature (`columns[f * n + r]`): partitioning a leaf reads one
    /// feature of its rows, from a column that fits the second-level cache.
    pub(super) columns: Vec<u8>,
    pub(super) n: usize,
    pub(super) n_features: usize,
    pub(super) bounds: Vec<Vec<f64>>,
    /// The features the rows are sorted by, most significant first (see [`row_order`]; empty
    /// when the rows are in no particular order).
    pub(super) sort_keys: Vec<usize>,
}

#[cfg(test)]
pub(super) fn bin_features(x: &dyn Columns, n: usize, max_bins: usize) -> Result<Binned, String> {
    let (columns, bounds) = bin_columns(x, n, max_bins)?;
    Ok(Binned::new(columns, bounds, n))
}

/// Each feature's bin bounds and its rows' bins, feature after feature (`columns[f * n + r]`,
/// then 3 bytes of padding: the vectorised partition reads 4 bytes at a row's bin).
pub(super) fn bin_columns(
    x: &dyn Columns,
    n: usize,
    max_bins: usize,
) -> Result<(Vec<u8>, Vec<Vec<f64>>), String> {
    let nf = x.count();
    let mut columns = big_vec(n * nf + 3, 0u8);
    // One feature at a time per thread, each into a buffer the thread reuses: the features are
    // never all in memory as numbers.
    let bounds: Vec<Vec<f64>> = if n == 0 {
        vec![vec![f64::INFINITY]; nf]
    } else {
        columns[..n * nf]
            .par_chunks_mut(n)
            .enumerate()
            .map_init(Vec::new, |buf, (f, col)| {
                let x = x.column(f, buf)?;
                if x.len() != n {
                    return Err(format!("feature {f} has {} rows, not {n}", x.len()));
                }
                let b = bin_bounds(x, max_bins);
                // The first bin whose bound is not below the value (NaN: bin 0).
                search::Sorted::new(&b).count_below(x, col, 0, (b.len() - 1) as u8);
                Ok(b)
            })
            .collect::<Result<_, String>>()?
    };
    Ok((columns, bounds))
}

/// Features whose bins can share one byte: the product of their bin counts is at most 256.
/// Greedily, fewest bins first (ties by feature), each feature joins the current bundle while the
/// product allows, else starts the next one; bundles are listed by their first feature.
///
/// A histogram pass adds a row's gradient once per bundle instead of once per feature, and
/// each feature's histogram is then summed from its bundle's cells ([`marginals`]): in the
/// default pipeline the four categorical features share one byte (240 cells) and four small
/// counts share two, so 15 features take 10 additions a row instead of 15. This is LightGBM's
/// idea of bundling features (for features that are never zero together, there) applied to
/// features with few values.
pub(super) fn bundles(bounds: &[Vec<f64>]) -> Vec<Vec<usize>> {
    let mut by_bins: Vec<usize> = (0..bounds.len()).collect();
    by_bins.sort_by_key(|&f| (bounds[f].len(), f));
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cells = usize::MAX;
    for f in by_bins {
        let nb = bounds[f].len();
        match out.last_mut() {
            Some(b) if cells * nb <= 256 => {
                b.push(f);
                cells *= nb;
            }
            _ => {
                out.push(vec![f]);
                cells = nb;
            }
        }
    }
    for b in &mut out {
        b.sort_unstable();
    }
    out.sort_unstable();
    out
}

impl Binned {
    /// The row-major copy of `columns` (see [`bin_columns`]), a byte per bundle of features.
    pub(super) fn new(columns: Vec<u8>, bounds: Vec<Vec<f64>>, n: usize) -> Binned {
        let nf = bounds.len();
        let bundles = bundles(&bounds);
        let nb = bundles.len();
        let stride = match nb {
            0..=8 => 8,
            9..=12 => 12,
            13..=16 => 16,
            17..=32 => 32,
            _ => nb,
        };
        // Each bundle's features with their place values.
        let digits: Vec<Vec<(usize, usize)>> = bundles
            .iter()
            .map(|b| {
                let mut place = 1;
                b.iter()
                    .map(|&f| {
                        let d = (f, place);
                        place *= bounds[f].len();
                        d
                    })
                    .collect()
            })
            .collect();
        let mut row_major = big_vec(n * stride, 0u8);
        row_major
            .par_chunks_mut(stride * 4096)
            .enumerate()
            .for_each(|(k, chunk)| {
                let base = k * 4096;
                for (j, row) in chunk.chunks_mut(stride).enumerate() {
                    for (cell, digits) in row[..nb].iter_mut().zip(&digits) {
                        *cell = digits
                            .iter()
                            .map(|&(f, place)| usize::from(columns[f * n + base + j]) * place)
                            .sum::<usize>() as u8;
                    }
                    // Padding bins vary from row to row: a bin added to in every row would
                    // chain each row's update to the previous one's store.
                    row[nb..].fill((base + j) as u8);
                }
            });
        Binned {
            row_major,
            stride,
            width: (nb + nb % 2).min(stride),
            bundles,
            columns,
            n,
            n_features: nf,
            bounds,
            sort_keys: Vec::new(),
        }
    }

    /// Whether the rows `start..end` are in order of their bins in `feature`: the rows are
    /// sorted by `sort_keys`, so they are when `feature` is one of the keys and the keys before
    /// it have one bin throughout the rows.
    pub(super) fn sorted_by(&self, start: usize, end: usize, feature: usize) -> bool {
        if end <= start {
            return true;
        }
        for &k in &self.sort_keys {
            if k == feature {
                return true;
            }
            let col = &self.columns[k * self.n..(k + 1) * self.n];
            if col[start] != col[end - 1] {
                return false;
            }
        }
        false
    }
}

/// How many features [`row_order`] sorts the rows by.
pub(super) const ORDER_KEYS: usize = 3;

/// The order the booster keeps its rows in: sorted by the bins of the [`ORDER_KEYS`] features
/// whose best split of all rows gains most on the first tree's gradients, the best first, ties
/// in row order. The leaves of a tree are its rows split by bins, so in this order the rows of a
/// leaf that splits on those features lie close together, and the histogram of its rows reads
/// far fewer cache lines. The trees are those of the rows in their own order up to the order
/// in which each bin's sums are added.
///
/// Returns the order and the features it sorts by, most significant first.
pub(super) fn row_order(
    columns: &[u8],
    bounds: &[Vec<f64>],
    y: &[f64],
    objective: Objective,
    p: &Params,
) -> (Vec<u32>, Vec<usize>) {
    let n = y.len();
    let mut order: Vec<u32> = (0..n as u32).collect();
    if n < 2 {
        return (order, Vec::new());
    }
    // The first tree's gradients: every row has the initial score.
    let init = init_score(y, objective);
    let (q, h) = match objective {
        Objective::SquaredError => (init, 1.0),
        Objective::Logistic => {
            let q = sigmoid(init);
            (q, (q * (1.0 - q)).max(1e-16))
        }
    };
    let mut gains: Vec<(f64, usize)> = columns[..n * bounds.len()]
        .par_chunks(n)
        .enumerate()
        .map(|(f, col)| {
            let mut hist = [[0.0; 3]; 256];
            for (&bin, yi) in col.iter().zip(y) {
                let e = &mut hist[bin as usize];
                e[0] += q - yi;
                e[1] += h;
                e[2] += 1.0;
            }
            let (g, hs) = hist
                .iter()
                .fold((0.0, 0.0), |(g, h), e| (g + e[0], h + e[1]));
            let gain = best_split(&bounds[f..=f], &[hist], g, hs, n, p).map_or(0.0, |s| s.gain);
            (gain, f)
        })
        .collect();
    // Largest gain first; on ties the first feature.
    gains.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let keys: Vec<usize> = gains
        .iter()
        .take(ORDER_KEYS)
        .take_while(|g| g.0 > 0.0)
        .map(|g| g.1)
        .collect();
    // Least significant key first, each pass a stable counting sort.
    let mut next = vec![0u32; n];
    for &f in keys.iter().rev() {
        let col = &columns[f * n..(f + 1) * n];
        let mut at = [0usize; 257];
        for &r in &order {
            at[col[r as usize] as usize + 1] += 1;
        }
        for b in 1..257 {
            at[b] += at[b - 1];
        }
        for &r in &order {
            let b = col[r as usize] as usize;
            next[at[b]] = r;
            at[b] += 1;
        }
        std::mem::swap(&mut order, &mut next);
    }
    (order, keys)
}

/// Features of `n` rows each, one after another (as in [`bin_columns`]), with each feature's
/// rows put in `order`.
pub(super) fn reorder_columns(columns: &mut [u8], n: usize, order: &[u32]) {
    if n == 0 {
        return;
    }
    columns
        .par_chunks_mut(n)
        .for_each_init(Vec::new, |buf: &mut Vec<u8>, col| {
            buf.clear();
            buf.extend(order.iter().map(|&r| col[r as usize]));
            col.copy_from_slice(buf);
        });
}

/// `n` copies of `value` in memory the kernel is asked to back with 2 MiB pages (Linux), before
/// any of it is touched. The booster reads its bins, gradients and row lists all over, a
/// leaf's rows at a time: with 4 KiB pages, on large data nearly every such read would also
/// miss the TLB. Only these long-lived buffers ask; see `src/main.rs` for the rest of the
/// process.
pub(super) fn big_vec<T: Clone>(n: usize, value: T) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = n * std::mem::size_of::<T>();
        let start = v.as_ptr() as usize;
        let (lo, hi) = (start.next_multiple_of(HUGE), (start + bytes) / HUGE * HUGE);
        if hi > lo {
            // SAFETY: [lo, hi) lies within the vector's allocation; MADV_HUGEPAGE changes how
            // the kernel backs the pages, never their contents.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        }
    }
    v.resize(n, value);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gbdt::histogram::{build_hist, Rows};
    use crate::model::gbdt::objective::Gh;
    use crate::model::gbdt::testutil::close;
    #[test]
    fn rows_are_ordered_by_the_features_that_split_the_root_best() {
        // y follows c most, then a; b is noise. Rows sort by c's bins, then a's, then b's.
        let mut rng = crate::generate::Rng::new(17);
        let n = 30_000;
        let a: Vec<f64> = (0..n).map(|_| (rng.uniform() * 7.0).floor()).collect();
        let b: Vec<f64> = (0..n).map(|_| (rng.uniform() * 3.0).floor()).collect();
        let c: Vec<f64> = (0..n).map(|_| rng.uniform()).collect();
        let y: Vec<f64> = (0..n)
            .map(|r| 10.0 * c[r] + 0.5 * a[r] + rng.normal())
            .collect();
        let x: &[&[f64]] = &[&a, &b, &c];
        let p = Params::default();
        let (columns, bounds) = bin_columns(&x, n, p.max_bins).unwrap();
        let (order, keys) = row_order(&columns, &bounds, &y, Objective::SquaredError, &p);
        assert_eq!(keys, [2, 0, 1]);
        let mut seen = vec![false; n];
        order.iter().for_each(|&r| seen[r as usize] = true);
        assert!(seen.iter().all(|s| *s), "not a permutation");
        let key = |r: u32| {
            let bin = |f: usize| columns[f * n + r as usize];
            (bin(2), bin(0), bin(1), r)
        };
        assert!(
            order.windows(2).all(|w| key(w[0]) < key(w[1])),
            "rows are not sorted by (c, a, b) bins, then row"
        );
        // Logistic loss on a 0/1 target that follows a only: a's bins lead.
        let yl: Vec<f64> = a.iter().map(|v| f64::from(u8::from(*v >= 3.0))).collect();
        let (order, keys) = row_order(&columns, &bounds, &yl, Objective::Logistic, &p);
        assert_eq!(keys[0], 0);
        assert!(order
            .windows(2)
            .all(|w| columns[w[0] as usize] <= columns[w[1] as usize]));
    }

    #[test]
    fn features_with_few_bins_share_a_byte() {
        // Bin counts as the default pipeline's features have them: four categories, small counts
        // and continuous values.
        let counts = [73, 4, 5, 4, 3, 91, 55, 255, 73, 21, 10, 6, 255, 255, 9];
        let bounds: Vec<Vec<f64>> = counts
            .iter()
            .map(|&c| {
                (1..c)
                    .map(|v| v as f64 + 0.5)
                    .chain([f64::INFINITY])
                    .collect()
            })
            .collect();
        let b = bundles(&bounds);
        // Fewest bins first: the four categories (3 × 4 × 4 × 5 = 240 cells), then 6 × 9 and
        // 10 × 21; every other feature alone.
        let mut want: Vec<Vec<usize>> = vec![vec![1, 2, 3, 4], vec![11, 14], vec![9, 10]];
        want.extend([0, 5, 6, 7, 8, 12, 13].map(|f| vec![f]));
        want.sort_unstable();
        assert_eq!(b, want);
        // The rows of a matrix in these bins: each feature's histogram out of the cells is its
        // own histogram.
        let mut rng = crate::generate::Rng::new(19);
        let n = 3_000;
        let cols: Vec<Vec<f64>> = counts
            .iter()
            .map(|&c| (0..n).map(|_| rng.below(c) as f64).collect())
            .collect();
        let x: Vec<&[f64]> = cols.iter().map(|c| c.as_slice()).collect();
        let binned = bin_features(&x.as_slice(), n, 255).unwrap();
        assert_eq!(binned.bundles.len(), 10);
        assert_eq!(binned.width, 10);
        let gh: Vec<Gh> = (0..n).map(|_| [rng.normal(), 1.0]).collect();
        let h = build_hist::<3, Gh>(&binned, Rows::All(n), &gh);
        for (f, col) in cols.iter().enumerate() {
            let mut want = [[0.0f64; 3]; 256];
            for (r, v) in col.iter().enumerate() {
                let bin = binned.bounds[f].partition_point(|ub| ub < v);
                assert_eq!(binned.columns[f * n + r] as usize, bin);
                want[bin][0] += gh[r][0];
                want[bin][1] += 1.0;
                want[bin][2] += 1.0;
            }
            for bin in 0..256 {
                assert!(close(h[f][bin][0], want[bin][0]), "feature {f}, bin {bin}");
                assert_eq!(h[f][bin][1..], want[bin][1..], "feature {f}, bin {bin}");
            }
        }
    }
}
