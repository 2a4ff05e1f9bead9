//! Histogram-based gradient-boosted trees, grown leaf-wise as LightGBM grows them: features are
//! bucketed into at most 255 bins once; each tree starts from the gradient/hessian histograms of
//! all rows and repeatedly splits the leaf with the largest gain, building the histogram of the
//! smaller child and deriving the larger one by subtraction. No sampling, so training is
//! deterministic: the same data and parameters give the same trees, bit for bit.
//!
//! Where the time goes, and what keeps it short (profiled on 800 000 rows × 15 features):
//! - Rows are kept sorted by the bins of the features that split the first tree's root best
//!   (see [`row_order`]), so that a leaf's rows lie closer together.
//! - Histograms of a leaf's rows read the rows' bins and gradients in row order but with gaps,
//!   from arrays far larger than the caches; each row's data is prefetched a few dozen rows
//!   ahead (45 → 11 ns a row). Rows of bins are padded to 16 or 32 bytes, so the per-row loop
//!   has a fixed length and unrolls; a row's (gradient, hessian) is added to each entry with one
//!   128-bit add, into a histogram whose features are not 4 KiB apart (see [`FILL_STRIDE`]).
//!   Logistic loss stores a row's gradient and hessian in 16 bytes, squared error its gradient
//!   alone in 8 (see [`Grad`]); the count of logistic loss's entries is added as a constant, not
//!   stored per row.
//! - Logistic gradients: the sigmoid's `exp` is computed inline ([`exp_approx`]), eight rows at
//!   a time.
//! - The root's histogram: for squared error it is carried from tree to tree (see
//!   [`Grower::grow`]); for logistic loss only gradient and hessian are summed, the row counts
//!   per bin being the same every tree. Either way in parallel chunks, added in chunk order.
//! - Partitioning a leaf reads one column of bins; it is branch-free (the left/right choice is a
//!   coin toss to the CPU), 16 rows a step with AVX-512, and copies nothing back: the right rows
//!   go to another row buffer (see [`partition`]). A fit running alone partitions its large
//!   leaves on every core, in chunks, copying the pieces into a third buffer ([`partition_par`]).
//! - Squared error keeps no scores: the leaf values are added to the gradients (`score - y`).
//! - A histogram entry is (gradient, hessian) for squared error, whose hessian sum is the row
//!   count, and (gradient, hessian, count) for logistic loss; each feature has 256 entries, so a
//!   byte-sized bin number indexes it without a bounds check. Counts are exact: LightGBM
//!   estimates them from the hessian, which moves `min_data_in_leaf` decisions of logistic trees.
//! - Scoring: see [`predict`].

mod predict;
mod search;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::Columns;

/// Loss being minimised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Squared error; predictions are the raw score.
    SquaredError,
    /// Logistic loss; predictions are probabilities.
    Logistic,
}

/// Hyperparameters, with LightGBM's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    pub n_trees: usize,
    pub learning_rate: f64,
    pub num_leaves: usize,
    /// 0 = unlimited.
    pub max_depth: usize,
    pub max_bins: usize,
    pub min_data_in_leaf: usize,
    pub min_sum_hessian_in_leaf: f64,
    pub lambda_l2: f64,
    pub min_gain_to_split: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            n_trees: 200,
            learning_rate: 0.1,
            num_leaves: 31,
            max_depth: 0,
            max_bins: 255,
            min_data_in_leaf: 20,
            min_sum_hessian_in_leaf: 1e-3,
            lambda_l2: 0.0,
            min_gain_to_split: 0.0,
        }
    }
}

impl Params {
    /// Every invalid field, one message each.
    pub fn check(&self) -> Vec<String> {
        let mut e = Vec::new();
        if self.n_trees == 0 {
            e.push("n_trees must be at least 1".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            e.push(format!(
                "learning_rate {} must be in (0, 1]",
                self.learning_rate
            ));
        }
        if self.num_leaves < 2 {
            e.push("num_leaves must be at least 2".into());
        }
        if !(2..=255).contains(&self.max_bins) {
            e.push(format!("max_bins {} must be in 2..=255", self.max_bins));
        }
        if self.min_data_in_leaf == 0 {
            e.push("min_data_in_leaf must be at least 1".into());
        }
        if self.lambda_l2 < 0.0
            || self.min_sum_hessian_in_leaf < 0.0
            || self.min_gain_to_split < 0.0
        {
            e.push("lambda_l2, min_sum_hessian_in_leaf and min_gain_to_split must be >= 0".into());
        }
        e
    }
}

/// One tree in flat arrays. Node `i` is internal when `left[i] >= 0`: rows with
/// `x[feature[i]] <= threshold[i]` go left. Leaves hold `value[i]` (learning rate applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub feature: Vec<u32>,
    pub threshold: Vec<f64>,
    pub left: Vec<i32>,
    pub right: Vec<i32>,
    pub value: Vec<f64>,
}

impl Tree {
    /// Steps from the root to the deepest leaf.
    pub(crate) fn depth(&self) -> usize {
        fn d(t: &Tree, i: usize) -> usize {
            if t.left[i] < 0 {
                0
            } else {
                1 + d(t, t.left[i] as usize).max(d(t, t.right[i] as usize))
            }
        }
        d(self, 0)
    }
}

/// A trained booster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booster {
    pub objective: Objective,
    pub init_score: f64,
    pub trees: Vec<Tree>,
    /// Total split gain per feature: a simple importance.
    pub gain_importance: Vec<f64>,
}

impl Booster {
    /// Raw scores of column-major features (`x[feature][row]`): the initial score plus each
    /// tree's leaf value, added in tree order (see [`predict`] for how).
    pub fn raw(&self, x: &[&[f64]]) -> Vec<f64> {
        predict::raw(self, x)
    }

    /// Predictions: the score for regression, the probability for logistic.
    pub fn predict(&self, x: &[&[f64]]) -> Vec<f64> {
        let mut s = self.raw(x);
        if self.objective == Objective::Logistic {
            s.iter_mut().for_each(|v| *v = sigmoid(*v));
        }
        s
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// e^x for x in [-708, 708] (callers clamp), within 2 ulp of the exact value. Written without
/// branches or calls, so that a loop of them is vectorised; libm's `exp` is a call per value,
/// and was a seventh of the logistic booster's time. Range reduction as in fdlibm: x = k ln 2 + r
/// with |r| <= ln 2 / 2, ln 2 in two parts so that k ln 2 is exact; e^r by its Taylor series to
/// r^13 (the next term is below 1e-17 of the result); 2^k assembled in the exponent bits.
#[inline(always)]
fn exp_approx(x: f64) -> f64 {
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
fn logistic_gradients(gh: &mut [Gh], score: &[f64], y: &[f64]) {
    gh.par_chunks_mut(8192)
        .zip(score.par_chunks(8192))
        .zip(y.par_chunks(8192))
        .for_each(|((gh, s), y)| logistic_gradients_chunk(gh, s, y));
}

/// [`logistic_gradients`] of one chunk of rows, on the calling thread.
fn logistic_gradients_chunk(gh: &mut [Gh], score: &[f64], y: &[f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F.
        return unsafe { logistic_gradients_avx512(gh, score, y) };
    }
    logistic_gradients_plain(gh, score, y)
}

#[inline(always)]
fn logistic_gradients_plain(gh: &mut [Gh], score: &[f64], y: &[f64]) {
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
unsafe fn logistic_gradients_avx512(gh: &mut [Gh], score: &[f64], y: &[f64]) {
    logistic_gradients_plain(gh, score, y)
}

/// Bin upper bounds of one feature: value `v` falls in the first bin whose bound is >= v.
fn bin_bounds(col: &[f64], max_bins: usize) -> Vec<f64> {
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

/// Gradient and hessian of one row.
type Gh = [f64; 2];

/// A row's gradient and hessian as the histograms read them: the pair for logistic loss, the
/// gradient alone for squared error, whose hessian is always 1 (half the bytes to write each tree
/// and to read for each histogram; the same additions, so the same sums).
trait Grad: Copy + Send + Sync {
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

/// A histogram entry: a bin's gradient and hessian sums, and for logistic loss (N = 4) its row
/// count and a zero, so that a row is added to an entry with one 256-bit addition (see
/// [`add_row`]). Squared error uses N = 2: its hessian is 1, so the hessian sum is the count.
type Entry<const N: usize> = [f64; N];

/// Where an entry of `N` values keeps the row count: the hessian for squared error (N = 2),
/// the third value for logistic loss (N = 4, or 3).
const COUNT: [usize; 5] = [0, 0, 1, 2, 2];

/// One feature's histogram. A bin number is a byte, so 256 entries need no bounds check.
type FeatureHist<const N: usize> = [Entry<N>; 256];

#[derive(Clone, Copy, Debug)]
struct Split {
    gain: f64,
    feature: usize,
    bin: usize,
    gl: f64,
    hl: f64,
}

struct Leaf<const N: usize> {
    /// Which of the grower's row buffers holds the rows, at `start..end`; unless `ordered`.
    buf: usize,
    /// The rows are `start..end` themselves, in order, in no buffer: the root, and the children
    /// of an ordered leaf split on a feature the rows are sorted by there (see [`Grower::grow`]).
    ordered: bool,
    start: usize,
    end: usize,
    g: f64,
    h: f64,
    depth: usize,
    hist: Vec<FeatureHist<N>>,
    split: Option<Split>,
    node: usize,
}

/// Features bucketed once: a row-major matrix of bin numbers (one byte per bundle of features,
/// see [`bundles`]), so that one pass over a leaf's rows fills every feature's histogram.
struct Binned {
    /// `row_major[r * stride + k]` is row `r`'s cell in bundle `k`: the bins of the bundle's
    /// features in mixed radix, the first feature's bin the least significant digit. Bytes past
    /// the last bundle are padding.
    row_major: Vec<u8>,
    /// Bytes per row: 8, 12, 16 or 32 when there are that few bundles (fewer bytes to stream
    /// than always 16: 10 M rows of the default pipeline's 10 bundles took 120 MB instead of
    /// 160 MB, and a 10 M churn fit 33-36 s instead of 34-36 s); else the bundle count.
    stride: usize,
    /// Histogram slots filled per row: the bundle count rounded up to an even number (see
    /// [`fill`]; the padding slot fills a scratch histogram).
    width: usize,
    /// Features whose bins share a byte of `row_major`, each bundle's features in increasing
    /// order.
    bundles: Vec<Vec<usize>>,
    /// The same bins feature by feature (`columns[f * n + r]`): partitioning a leaf reads one
    /// feature of its rows, from a column that fits the second-level cache.
    columns: Vec<u8>,
    n: usize,
    n_features: usize,
    bounds: Vec<Vec<f64>>,
    /// The features the rows are sorted by, most significant first (see [`row_order`]; empty
    /// when the rows are in no particular order).
    sort_keys: Vec<usize>,
}

#[cfg(test)]
fn bin_features(x: &dyn Columns, n: usize, max_bins: usize) -> Result<Binned, String> {
    let (columns, bounds) = bin_columns(x, n, max_bins)?;
    Ok(Binned::new(columns, bounds, n))
}

/// Each feature's bin bounds and its rows' bins, feature after feature (`columns[f * n + r]`,
/// then 3 bytes of padding: the vectorised partition reads 4 bytes at a row's bin).
fn bin_columns(
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
fn bundles(bounds: &[Vec<f64>]) -> Vec<Vec<usize>> {
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
    fn new(columns: Vec<u8>, bounds: Vec<Vec<f64>>, n: usize) -> Binned {
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
    fn sorted_by(&self, start: usize, end: usize, feature: usize) -> bool {
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

/// Every feature's histogram from a histogram of bundle cells (`flat`, [`FILL_STRIDE`] entries a
/// bundle): a feature alone in its bundle takes its entries as they are; a feature sharing a
/// bundle sums, for each of its bins, the cells that hold that bin, in cell order.
fn marginals<const M: usize>(b: &Binned, flat: &[Entry<M>]) -> Vec<FeatureHist<M>> {
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

/// How many features [`row_order`] sorts the rows by.
const ORDER_KEYS: usize = 3;

/// The order the booster keeps its rows in: sorted by the bins of the [`ORDER_KEYS`] features
/// whose best split of all rows gains most on the first tree's gradients, the best first, ties
/// in row order. The leaves of a tree are its rows split by bins, so in this order the rows of a
/// leaf that splits on those features lie close together, and the histogram of its rows reads
/// far fewer cache lines: at 10 M customers the leaves' histograms took 12.5 s of a churn
/// fit instead of 20 s. The trees are those of the rows in their own order up to the order in
/// which each bin's sums are added.
///
/// Returns the order and the features it sorts by, most significant first.
fn row_order(
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
fn reorder_columns(columns: &mut [u8], n: usize, order: &[u32]) {
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
/// leaf's rows at a time: with 4 KiB pages at 10 M rows nearly every such read also missed the
/// TLB (one pair of 10 M runs: the slowest model trained in 80 s with them, 87 s without; at
/// 1 M about 5 %, within the noise). Only these long-lived buffers ask; see `src/main.rs` for
/// the rest of the process.
fn big_vec<T: Clone>(n: usize, value: T) -> Vec<T> {
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

/// Rows per histogram task: enough work per task, few partial histograms to add up.
const HIST_CHUNK: usize = 32 * 1024;

/// The rows of a leaf: all rows in order (the root), or a list. `Span(start, len)` is the rows
/// `start..start + len` with their gradients in a slice of their own (`gh[r - start]`), for a
/// pass that computes a chunk's gradients and adds them up while they are in the cache (see
/// [`logistic_root`]); [`fill`] takes it as one chunk.
#[derive(Clone, Copy)]
enum Rows<'a> {
    All(usize),
    List(&'a [u32]),
    Span(usize, usize),
    /// The rows `start..end`, in order (a leaf whose rows were never moved: see
    /// [`Grower::grow`]).
    Range(usize, usize),
}

impl Rows<'_> {
    fn len(&self) -> usize {
        match self {
            Rows::All(n) => *n,
            Rows::List(l) => l.len(),
            Rows::Span(_, len) => *len,
            Rows::Range(start, end) => end - start,
        }
    }
}

const PREFETCH: usize = 64;

#[inline(always)]
fn prefetch<T>(p: &T) {
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
/// to one feature's entry held up the load of the next feature's, whose bins are often the same
/// small numbers (flat histogram and explicit SIMD together: 9 → 7 ns a row at the root).
const FILL_STRIDE: usize = 260;

/// Adds one row's gradient and hessian, and for `M` >= 3 one to the count, to the entries of its
/// `W` bins in `flat` (feature `f`'s entry for bin `b` at `f * FILL_STRIDE + b`). With `AVX` and
/// `M` = 4, (gradient, hessian, 1, 0) is added to an entry with one 256-bit addition instead of
/// a 128-bit and a scalar one.
///
/// # Safety
/// `flat` has at least `W * FILL_STRIDE` entries; with `AVX` the CPU has AVX.
#[inline(always)]
unsafe fn add_row<const M: usize, const W: usize, G: Grad, const AVX: bool>(
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
unsafe fn fill<const M: usize, const W: usize, G: Grad, const AVX: bool>(
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
unsafe fn fill_avx<const M: usize, const W: usize, G: Grad>(
    b: &Binned,
    rows: Rows,
    gh: &[G],
    k: usize,
) -> Vec<Entry<M>> {
    // SAFETY: the caller's promise.
    unsafe { fill::<M, W, G, true>(b, rows, gh, k) }
}

/// [`fill`] for any number of features.
fn fill_any<const M: usize, G: Grad>(b: &Binned, rows: Rows, gh: &[G], k: usize) -> Vec<Entry<M>> {
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
fn build_hist<const M: usize, G: Grad>(b: &Binned, rows: Rows, gh: &[G]) -> Vec<FeatureHist<M>> {
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
fn add_in_order<const M: usize>(parts: Vec<Vec<Entry<M>>>) -> Vec<Entry<M>> {
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
fn fill_chunk<const M: usize, G: Grad>(
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
fn logistic_root(
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
fn grad_sums<G: Grad>(gh: &[G]) -> (f64, f64) {
    gh.par_chunks(HIST_CHUNK)
        .map(chunk_sums)
        .collect::<Vec<_>>()
        .into_iter()
        .fold((0.0, 0.0), |(g, h), (cg, ch)| (g + cg, h + ch))
}

/// The gradient and hessian sums of one chunk of [`grad_sums`].
fn chunk_sums<G: Grad>(c: &[G]) -> (f64, f64) {
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

/// The best split of a leaf with `n` rows.
fn best_split<const N: usize>(
    bounds: &[Vec<f64>],
    hist: &[FeatureHist<N>],
    g: f64,
    h: f64,
    n: usize,
    p: &Params,
) -> Option<Split> {
    let lambda = p.lambda_l2;
    let parent = g * g / (h + lambda);
    let min_data = p.min_data_in_leaf as f64;
    let mut best: Option<Split> = None;
    for (f, fh) in hist.iter().enumerate() {
        let nb = bounds[f].len();
        let (mut gl, mut hl, mut nl) = (0.0, 0.0, 0.0);
        for (bin, e) in fh[..nb.saturating_sub(1)].iter().enumerate() {
            gl += e[0];
            hl += e[1];
            nl += e[COUNT[N]];
            if nl < min_data {
                continue;
            }
            if n as f64 - nl < min_data {
                break;
            }
            let hr = h - hl;
            if hl < p.min_sum_hessian_in_leaf || hr < p.min_sum_hessian_in_leaf {
                continue;
            }
            let gr = g - gl;
            let gain = gl * gl / (hl + lambda) + gr * gr / (hr + lambda) - parent;
            if gain > p.min_gain_to_split && best.is_none_or(|s| gain > s.gain) {
                best = Some(Split {
                    gain,
                    feature: f,
                    bin,
                    gl,
                    hl,
                });
            }
        }
    }
    best
}

/// Trains a booster on column-major features `x[feature][row]` and targets `y` (0/1 for
/// logistic).
pub fn train(x: &[&[f64]], y: &[f64], objective: Objective, p: &Params) -> Booster {
    train_columns(&x, y, objective, p).expect("slices of one length")
}

/// [`train`] on features read one at a time from `x` (see [`Columns`]); `Err` when `x` cannot
/// give a feature or its length is not `y`'s.
pub fn train_columns(
    x: &dyn Columns,
    y: &[f64],
    objective: Objective,
    p: &Params,
) -> Result<Booster, String> {
    let n = y.len();
    let (mut columns, bounds) = bin_columns(x, n, p.max_bins)?;
    let (order, keys) = row_order(&columns, &bounds, y, objective, p);
    reorder_columns(&mut columns[..n * bounds.len()], n, &order);
    let y: Vec<f64> = order.iter().map(|&r| y[r as usize]).collect();
    drop(order);
    let mut binned = Binned::new(columns, bounds, n);
    binned.sort_keys = keys;
    Ok(train_binned(binned, &y, objective, p))
}

/// The score every row starts from: the mean, or for logistic loss its log-odds.
fn init_score(y: &[f64], objective: Objective) -> f64 {
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    match objective {
        Objective::SquaredError => mean,
        Objective::Logistic => {
            let m = mean.clamp(1e-15, 1.0 - 1e-15);
            (m / (1.0 - m)).ln()
        }
    }
}

/// Grows the trees on rows in the order of `binned` and `y` (see [`row_order`]): nothing
/// below depends on which row is which, only on the order in which rows are added up.
fn train_binned(binned: Binned, y: &[f64], objective: Objective, p: &Params) -> Booster {
    let _running = FitRunning::new();
    train_binned_with(binned, y, objective, p, FitRunning::alone).0
}

/// [`train_binned`], asking `share_cores` before each large partition whether to run it on every
/// core; also returns how many did.
fn train_binned_with(
    binned: Binned,
    y: &[f64],
    objective: Objective,
    p: &Params,
    share_cores: fn() -> bool,
) -> (Booster, usize) {
    let n = y.len();
    let init_score = init_score(y, objective);
    let mut trees = Vec::with_capacity(p.n_trees);
    let mut importance = vec![0.0; binned.n_features];
    let mut grower = Grower {
        b: &binned,
        p,
        bufs: [big_vec(n, 0), big_vec(n, 0), Vec::new()],
        leaf_of: big_vec(if p.num_leaves <= 256 { n } else { 0 }, 0),
        share_cores,
        shared: 0,
    };
    match objective {
        Objective::SquaredError => {
            // Gradients alone: the hessian is 1 (see `Grad`). A row's gradient is its score
            // minus its target, so a tree's leaf values are added to the gradients themselves:
            // no scores are kept, and no pass over all rows recomputes the gradients.
            let mut g: Vec<f64> = big_vec(n, 0.0);
            g.par_iter_mut()
                .zip(y)
                .for_each(|(e, yi)| *e = init_score - yi);
            // The root's histogram, carried from tree to tree (see `grow`).
            let mut root = Vec::new();
            for _ in 0..p.n_trees {
                let (tree, leaves) =
                    grower.grow::<2, f64>(&g, &mut importance, Root::Carried(&mut root));
                grower.add_leaf_values(&leaves, &mut g);
                trees.push(tree);
            }
        }
        Objective::Logistic => {
            let mut score = big_vec(n, init_score);
            let mut gh: Vec<Gh> = big_vec(n, [0.0, 1.0]);
            let mut counts = Vec::new();
            for _ in 0..p.n_trees {
                let (hist, gs, hs) = logistic_root(&binned, &mut gh, &score, y, &mut counts);
                let root = Root::Given(hist, gs, hs);
                let (tree, leaves) = grower.grow::<4, Gh>(&gh, &mut importance, root);
                grower.add_leaf_values(&leaves, &mut score);
                trees.push(tree);
            }
        }
    }
    let booster = Booster {
        objective,
        init_score,
        trees,
        gain_importance: importance,
    };
    (booster, grower.shared)
}

/// Partition of a leaf's rows on `bin <= split bin`, across two of the grower's row buffers: the
/// left rows stay at the front of `seg`, in their order, and the right rows go to the back of
/// `other` (the leaf's places in the other buffer, which no other leaf uses) in the reverse of
/// their order. The left child is then `seg[..l]` and the right `other[l..]`, where `l`, the
/// number of left rows, is returned. With `first` (an ordered leaf, such as the root) the rows
/// are `first..first + seg.len()` in order and `seg` is written, not read. Nothing is copied back: a partition that gathered the right rows
/// in a scratch buffer and copied them behind the left ones moved 8 more bytes a right row, and
/// at 10 M rows the partitions wait on memory (see docs/PERFORMANCE.md, item 26).
fn partition(
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
const PARTITION_CHUNK: usize = 16 * 1024;

/// [`partition`] on both cores: the same children, in the same order, written to a third buffer.
///
/// Each chunk of [`PARTITION_CHUNK`] rows is partitioned on its own, as [`partition`] does a
/// leaf (left rows at the chunk's front in `seg`, right rows reversed at its back in `other`),
/// the chunks in parallel. Then the chunks' pieces are copied into `third`: the left pieces in
/// chunk order from its front, the right pieces (each already reversed) in reverse chunk order
/// behind them. `third[..l]` is then `seg[..l]` of [`partition`] and `third[l..]` its
/// `other[l..]`, so the trees are the same bits whichever runs. The copy moves 8 more bytes a
/// row, which a serial partition does not (item 26 of docs/PERFORMANCE.md), so the grower calls
/// this only while its fit is the only one running (see [`FITS_RUNNING`]).
fn partition_par(
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
static FITS_RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts a fit in [`FITS_RUNNING`] while it lives.
struct FitRunning;

impl FitRunning {
    fn new() -> Self {
        FITS_RUNNING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        FitRunning
    }

    /// This fit is the only one running, and there is more than one core for it.
    fn alone() -> bool {
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
unsafe fn simd_partition<const ALL: bool>(
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

/// What stays the same across the trees of one booster: the bins, the parameters, and the
/// row buffers the leaves partition into (see [`partition`]).
struct Grower<'a> {
    b: &'a Binned,
    p: &'a Params,
    /// Three row buffers: a leaf's rows are in one of them at its places, and the other two are
    /// free there. A serial partition leaves the left child in the leaf's buffer and the right
    /// in the next; [`partition_par`] leaves both in the third (allocated on first use).
    bufs: [Vec<u32>; 3],
    /// Each row's leaf in the tree just grown, when there are at most 256 leaves (else empty).
    leaf_of: Vec<u8>,
    /// Whether a large partition may run on every core now ([`FitRunning::alone`]).
    share_cores: fn() -> bool,
    /// How many partitions did ([`partition_par`]).
    shared: usize,
}

/// Where a tree's root histogram comes from.
enum Root<'a, const N: usize> {
    /// Squared error: carried from tree to tree (see [`Grower::grow`]); empty before the first.
    Carried(&'a mut Vec<FeatureHist<N>>),
    /// Built with the gradients, with their sums (see [`logistic_root`]).
    Given(Vec<FeatureHist<N>>, f64, f64),
}

impl Grower<'_> {
    /// Grows one tree on the gradients `gh`; returns it and its leaves' values and rows (buffer,
    /// span), for [`Grower::add_leaf_values`].
    ///
    /// `Root::Carried` (squared error) carries the root's histogram between trees. For squared
    /// error a row's gradient is `score - y`, so when a tree adds `v` to the score of a leaf's
    /// rows, a bin's gradient sum grows by `v` times the leaf's rows in that bin, which the leaf's
    /// histogram counts: the next root histogram is this one plus those products, and the pass
    /// over all rows is needed for the first tree only.
    fn grow<const N: usize, G: Grad>(
        &mut self,
        gh: &[G],
        importance: &mut [f64],
        mut root: Root<'_, N>,
    ) -> (Tree, Vec<LeafRows>) {
        let (b, p) = (self.b, self.p);
        let n = gh.len();
        let (gs, hs, hist) = match &mut root {
            Root::Carried(r) => {
                if r.is_empty() {
                    **r = build_hist::<N, G>(b, Rows::All(n), gh);
                }
                let (gs, hs) = grad_sums(gh);
                (gs, hs, r.clone())
            }
            Root::Given(h, gs, hs) => (*gs, *hs, std::mem::take(h)),
        };
        let carried = matches!(root, Root::Carried(_));
        let split = best_split(&b.bounds, &hist, gs, hs, n, p);
        let mut tree = Tree {
            feature: vec![0],
            threshold: vec![0.0],
            left: vec![-1],
            right: vec![-1],
            value: vec![0.0],
        };
        // The root's rows are all rows in order, in no buffer.
        let mut leaves = vec![Leaf {
            buf: 0,
            ordered: true,
            start: 0,
            end: n,
            g: gs,
            h: hs,
            depth: 0,
            hist,
            split,
            node: 0,
        }];
        while leaves.len() < p.num_leaves {
            // The leaf with the largest gain (first on ties, for determinism).
            let Some((li, _)) = leaves
                .iter()
                .enumerate()
                .filter(|(_, l)| l.split.is_some() && (p.max_depth == 0 || l.depth < p.max_depth))
                .max_by(|a, b| {
                    a.1.split
                        .unwrap()
                        .gain
                        .total_cmp(&b.1.split.unwrap().gain)
                        .then(b.0.cmp(&a.0))
                })
            else {
                break;
            };
            let leaf = leaves.swap_remove(li);
            let s = leaf.split.unwrap();
            importance[s.feature] += s.gain;
            let span = leaf.start..leaf.end;
            // An ordered leaf split on a feature its rows are sorted by (the root split on the
            // first feature of the row order, most often): its left rows are a prefix of its
            // rows, both children stay ordered, and no row is moved. Their histograms read rows
            // in order, as the root's does, not gathered from a list.
            let keep_order = leaf.ordered && b.sorted_by(leaf.start, leaf.end, s.feature);
            let (l, buf_l, buf_r) = if keep_order {
                let col = &b.columns[s.feature * b.n..(s.feature + 1) * b.n];
                let l = col[span].partition_point(|&bin| usize::from(bin) <= s.bin);
                (l, 0, 0)
            } else {
                // The leaf's rows are in buffer `x` (none if ordered); `y` and `z` are free at
                // its places. Until the third buffer is needed, `x` and `y` are the first two.
                let x = leaf.buf;
                let y = if self.bufs[2].is_empty() {
                    1 - x
                } else {
                    (x + 1) % 3
                };
                let z = 3 - x - y;
                let first = leaf.ordered.then_some(leaf.start);
                let par = span.len() >= 2 * PARTITION_CHUNK && (self.share_cores)();
                self.shared += usize::from(par);
                if par && self.bufs[z].is_empty() {
                    self.bufs[z] = big_vec(self.bufs[x].len(), 0);
                }
                let [seg, other, third] = buffers(&mut self.bufs, [x, y, z]);
                let (seg, other) = (&mut seg[span.clone()], &mut other[span.clone()]);
                if par {
                    (
                        partition_par(b, seg, other, &mut third[span], first, &s),
                        z,
                        z,
                    )
                } else {
                    (partition(b, seg, other, first, &s), x, y)
                }
            };
            let mid = leaf.start + l;
            let r = leaf.end - mid;
            let (gl, hl, gr, hr) = (s.gl, s.hl, leaf.g - s.gl, leaf.h - s.hl);
            let node = leaf.node;
            let (ln, rn) = (tree.feature.len(), tree.feature.len() + 1);
            tree.feature[node] = s.feature as u32;
            tree.threshold[node] = b.bounds[s.feature][s.bin];
            tree.left[node] = ln as i32;
            tree.right[node] = rn as i32;
            for _ in 0..2 {
                tree.feature.push(0);
                tree.threshold.push(0.0);
                tree.left.push(-1);
                tree.right.push(-1);
                tree.value.push(0.0);
            }
            let child = |buf, start, end, g, h, hist, split, node| Leaf {
                buf,
                ordered: keep_order,
                start,
                end,
                g,
                h,
                depth: leaf.depth + 1,
                hist,
                split,
                node,
            };
            if leaves.len() + 2 == p.num_leaves && !carried {
                // The last split: its children stay leaves, and without a carried root
                // histogram to update nothing needs theirs.
                leaves.push(child(buf_l, leaf.start, mid, gl, hl, Vec::new(), None, ln));
                leaves.push(child(buf_r, mid, leaf.end, gr, hr, Vec::new(), None, rn));
                break;
            }
            // Histogram of the smaller child; the other is the parent's minus it.
            let small_is_left = l <= r;
            let small = match (small_is_left, keep_order) {
                (true, true) => Rows::Range(leaf.start, mid),
                (false, true) => Rows::Range(mid, leaf.end),
                (true, false) => Rows::List(&self.bufs[buf_l][leaf.start..mid]),
                (false, false) => Rows::List(&self.bufs[buf_r][mid..leaf.end]),
            };
            let small_hist = build_hist::<N, G>(b, small, gh);
            let mut big_hist = leaf.hist;
            for (bf, sf) in big_hist.iter_mut().zip(&small_hist) {
                for (be, se) in bf.iter_mut().zip(sf) {
                    for k in 0..N {
                        be[k] -= se[k];
                    }
                }
            }
            let (hist_l, hist_r) = if small_is_left {
                (small_hist, big_hist)
            } else {
                (big_hist, small_hist)
            };
            let split_l = best_split(&b.bounds, &hist_l, gl, hl, l, p);
            let split_r = best_split(&b.bounds, &hist_r, gr, hr, r, p);
            leaves.push(child(buf_l, leaf.start, mid, gl, hl, hist_l, split_l, ln));
            leaves.push(child(buf_r, mid, leaf.end, gr, hr, hist_r, split_r, rn));
        }
        let mut values = Vec::with_capacity(leaves.len());
        for leaf in &leaves {
            let v = -leaf.g / (leaf.h + p.lambda_l2) * p.learning_rate;
            tree.value[leaf.node] = v;
            let buf = (!leaf.ordered).then_some(leaf.buf);
            values.push((v, buf, leaf.start..leaf.end));
            if let Root::Carried(root) = &mut root {
                // Squared error: entry [gradient sum, row count] (N = 2).
                for (rf, lf) in root.iter_mut().zip(&leaf.hist) {
                    for (re, le) in rf.iter_mut().zip(lf) {
                        re[0] += v * le[COUNT[N]];
                    }
                }
            }
        }
        (tree, values)
    }

    /// Adds each leaf's value to `score` at its rows.
    fn add_leaf_values(&mut self, leaves: &[LeafRows], score: &mut [f64]) {
        let leaves: Vec<(f64, Span)> = leaves
            .iter()
            .map(|(v, buf, span)| match buf {
                Some(buf) => (*v, Span::List(&self.bufs[*buf][span.clone()])),
                None => (*v, Span::Range(span.clone())),
            })
            .collect();
        add_leaf_values(&leaves, score, &mut self.leaf_of);
    }
}

/// A leaf's value, and where its rows are: a span of a row buffer of the [`Grower`], or (no
/// buffer) the rows of the span themselves.
type LeafRows = (f64, Option<usize>, std::ops::Range<usize>);

/// The grower's row buffers in the order `order` (0, 1 and 2 in some order), each borrowed on
/// its own.
fn buffers(bufs: &mut [Vec<u32>; 3], order: [usize; 3]) -> [&mut Vec<u32>; 3] {
    let mut each = bufs.each_mut().map(Some);
    order.map(|i| each[i].take().expect("0, 1 and 2 in some order"))
}

/// A leaf's rows for [`add_leaf_values`]: a list, or the rows of a range.
#[derive(Clone)]
enum Span<'a> {
    List(&'a [u32]),
    Range(std::ops::Range<usize>),
}

/// Adds each leaf's value to the scores of its rows. With `leaf_of` (one place a row, at most 256
/// leaves) each row's leaf is noted in a byte and the scores are updated in row order: adding to
/// the scores of each leaf's rows in place was a cache miss a row once the scores outgrew the
/// cache (10 M customers: 64 MB of scores; the leaf numbers are 8 MB). With an empty `leaf_of`,
/// in place. Each row gets one addition either way, so the scores are the same.
fn add_leaf_values(leaves: &[(f64, Span)], score: &mut [f64], leaf_of: &mut [u8]) {
    if leaf_of.is_empty() || leaves.len() > 256 {
        for (v, rows) in leaves {
            match rows {
                Span::List(rows) => rows.iter().for_each(|&r| score[r as usize] += v),
                Span::Range(rows) => score[rows.clone()].iter_mut().for_each(|s| *s += v),
            }
        }
        return;
    }
    for (k, (_, rows)) in leaves.iter().enumerate() {
        match rows {
            Span::List(rows) => rows.iter().for_each(|&r| leaf_of[r as usize] = k as u8),
            Span::Range(rows) => leaf_of[rows.clone()].fill(k as u8),
        }
    }
    score
        .par_chunks_mut(HIST_CHUNK)
        .zip(leaf_of.par_chunks(HIST_CHUNK))
        .for_each(|(s, l)| {
            for (s, &k) in s.iter_mut().zip(l) {
                *s += leaves[usize::from(k)].0;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A split of `feature` at `bin`, for the partition tests (gain and sums unused).
    fn split_at(feature: usize, bin: usize) -> Split {
        Split {
            gain: 1.0,
            feature,
            bin,
            gl: 0.0,
            hl: 0.0,
        }
    }

    /// `len` increasing rows below `n` with gaps, as a leaf holds them.
    fn rows_with_gaps(rng: &mut crate::generate::Rng, n: u32, len: usize) -> Vec<u32> {
        let mut seg: Vec<u32> = (0..n).filter(|_| rng.uniform() < 0.5).collect();
        seg.truncate(len);
        seg
    }

    fn data(n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut rng = crate::generate::Rng::new(3);
        let a: Vec<f64> = (0..n).map(|_| rng.uniform() * 4.0 - 2.0).collect();
        let b: Vec<f64> = (0..n).map(|_| (rng.uniform() * 5.0).floor()).collect();
        let y: Vec<f64> = a
            .iter()
            .zip(&b)
            .map(|(a, b)| a * a + if *b >= 3.0 { 1.0 } else { 0.0 } + 0.1 * rng.normal())
            .collect();
        (a, b, y)
    }

    #[test]
    fn fits_a_nonlinear_function_and_is_deterministic() {
        let (a, b, y) = data(20_000);
        let x: Vec<&[f64]> = vec![&a, &b];
        let p = Params {
            n_trees: 100,
            ..Default::default()
        };
        let m = train(&x, &y, Objective::SquaredError, &p);
        let pred = m.predict(&x);
        let r2 = crate::metrics::r2(&y, &pred).unwrap();
        assert!(r2 > 0.98, "r2 {r2}");
        assert!(
            m == train(&x, &y, Objective::SquaredError, &p),
            "training is not deterministic"
        );
        // JSON round trip predicts identically.
        let back: Booster = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert!(
            back.predict(&x) == pred,
            "predictions differ after a JSON round trip"
        );
    }

    #[test]
    fn logistic_separates_classes() {
        let (a, b, _) = data(20_000);
        let y: Vec<f64> = a
            .iter()
            .zip(&b)
            .map(|(a, b)| f64::from(u8::from(a + 0.3 * b > 0.5)))
            .collect();
        let x: Vec<&[f64]> = vec![&a, &b];
        let m = train(
            &x,
            &y,
            Objective::Logistic,
            &Params {
                n_trees: 50,
                ..Default::default()
            },
        );
        let p = m.predict(&x);
        let yb: Vec<bool> = y.iter().map(|v| *v > 0.5).collect();
        assert!(crate::metrics::roc_auc(&yb, &p).unwrap() > 0.99);
        assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));
    }

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

    #[test]
    fn a_fit_alone_partitions_on_every_core_and_grows_the_same_trees() {
        // 200 000 rows: the first splits' leaves are several partition chunks long.
        let (a, b, y) = data(200_000);
        let x: &[&[f64]] = &[&a, &b];
        let p = Params {
            n_trees: 4,
            ..Params::default()
        };
        let yl: Vec<f64> = y.iter().map(|v| f64::from(u8::from(*v > 1.5))).collect();
        for (objective, y) in [(Objective::SquaredError, &y), (Objective::Logistic, &yl)] {
            let n = y.len();
            let (columns, bounds) = bin_columns(&x, n, p.max_bins).unwrap();
            let fit = |share: fn() -> bool| {
                let binned = Binned::new(columns.clone(), bounds.clone(), n);
                train_binned_with(binned, y, objective, &p, share)
            };
            let (serial, none) = fit(|| false);
            let (shared, some) = fit(|| true);
            assert_eq!(none, 0);
            assert!(some > 0, "{objective:?}: no partition ran on every core");
            assert_eq!(
                serde_json::to_string(&serial).unwrap(),
                serde_json::to_string(&shared).unwrap(),
                "{objective:?}"
            );
        }
    }

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
    fn ordered_leaves_grow_the_trees_that_moved_rows_grow() {
        // The same binned rows with and without their sort keys: without them every split moves
        // its rows into the row buffers (no child stays ordered), with them the splits on the
        // keys keep their children ordered. The trees are the same, up to the order in which
        // each bin's sums were added.
        let mut rng = crate::generate::Rng::new(37);
        let n = 40_000;
        let a: Vec<f64> = (0..n).map(|_| (rng.uniform() * 6.0).floor()).collect();
        let b: Vec<f64> = (0..n).map(|_| rng.uniform()).collect();
        let c: Vec<f64> = (0..n).map(|_| (rng.uniform() * 30.0).floor()).collect();
        let y: Vec<f64> = (0..n)
            .map(|r| 3.0 * a[r] + 10.0 * b[r] * b[r] + 0.2 * c[r] + rng.normal())
            .collect();
        let x: &[&[f64]] = &[&a, &b, &c];
        let p = Params {
            n_trees: 20,
            ..Default::default()
        };
        for (objective, y) in [
            (Objective::SquaredError, y.clone()),
            (
                Objective::Logistic,
                y.iter().map(|v| f64::from(u8::from(*v > 9.0))).collect(),
            ),
        ] {
            let (mut columns, bounds) = bin_columns(&x, n, p.max_bins).unwrap();
            let (order, keys) = row_order(&columns, &bounds, &y, objective, &p);
            assert!(!keys.is_empty());
            reorder_columns(&mut columns[..n * bounds.len()], n, &order);
            let y: Vec<f64> = order.iter().map(|&r| y[r as usize]).collect();
            let moved = train_binned(
                Binned::new(columns.clone(), bounds.clone(), n),
                &y,
                objective,
                &p,
            );
            let mut binned = Binned::new(columns, bounds, n);
            // Runs of rows with one bin of the first key are sorted by the second.
            let k0 = &binned.columns[keys[0] * n..(keys[0] + 1) * n];
            let run = k0.iter().take_while(|&&v| v == k0[0]).count();
            binned.sort_keys = keys.clone();
            assert!(binned.sorted_by(0, n, keys[0]));
            assert!(binned.sorted_by(0, run, keys[1]));
            assert!(!binned.sorted_by(0, n, keys[1]));
            let kept = train_binned(binned, &y, objective, &p);
            for (t, u) in moved.trees.iter().zip(&kept.trees) {
                assert_eq!(
                    (&t.feature, &t.threshold, &t.left, &t.right),
                    (&u.feature, &u.threshold, &u.left, &u.right),
                    "{objective:?}"
                );
                for (v, w) in t.value.iter().zip(&u.value) {
                    assert!((v - w).abs() <= 1e-12 * v.abs().max(1.0), "{v} vs {w}");
                }
            }
        }
    }

    #[test]
    fn the_trees_do_not_depend_on_the_order_rows_come_in() {
        // The booster sorts rows itself: a shuffled copy of the data grows the same trees, up to
        // the order in which each bin's sums were added.
        let (a, b, y) = data(20_000);
        let mut rng = crate::generate::Rng::new(23);
        let mut perm: Vec<usize> = (0..a.len()).collect();
        for i in (1..perm.len()).rev() {
            perm.swap(i, rng.below(i + 1));
        }
        let shuffle = |v: &[f64]| perm.iter().map(|&r| v[r]).collect::<Vec<f64>>();
        let (sa, sb, sy) = (shuffle(&a), shuffle(&b), shuffle(&y));
        let p = Params {
            n_trees: 30,
            ..Default::default()
        };
        for (objective, y, sy) in [
            (Objective::SquaredError, y.clone(), sy.clone()),
            (
                Objective::Logistic,
                y.iter().map(|v| f64::from(u8::from(*v > 1.5))).collect(),
                sy.iter().map(|v| f64::from(u8::from(*v > 1.5))).collect(),
            ),
        ] {
            let m = train(&[&a, &b], &y, objective, &p);
            let s = train(&[&sa, &sb], &sy, objective, &p);
            for (t, u) in m.trees.iter().zip(&s.trees) {
                assert_eq!(
                    (&t.feature, &t.threshold, &t.left, &t.right),
                    (&u.feature, &u.threshold, &u.left, &u.right),
                    "{objective:?}"
                );
                for (v, w) in t.value.iter().zip(&u.value) {
                    assert!((v - w).abs() <= 1e-12 * v.abs().max(1.0), "{v} vs {w}");
                }
            }
        }
    }

    #[test]
    fn leaf_values_are_added_the_same_in_row_order_and_in_place() {
        let mut rng = crate::generate::Rng::new(13);
        let n = 3 * HIST_CHUNK + 77;
        // Rows shuffled into 40 leaves of uneven sizes, as partitions leave them.
        let mut rows: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            rows.swap(i, rng.below(i + 1));
        }
        let mut cuts: Vec<usize> = (0..39).map(|_| rng.below(n)).collect();
        cuts.extend([0, n]);
        cuts.sort_unstable();
        let mut leaves: Vec<(f64, Span)> = cuts
            .windows(2)
            .map(|w| (rng.normal(), Span::List(&rows[w[0]..w[1]])))
            .collect();
        // Rows beyond the shuffled ones, as ordered leaves hold them.
        leaves.push((rng.normal(), Span::Range(n..n + 100)));
        leaves.push((rng.normal(), Span::Range(n + 100..n + 101)));
        let n = n + 101;
        let start: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let (mut in_place, mut in_order) = (start.clone(), start);
        add_leaf_values(&leaves, &mut in_place, &mut []);
        add_leaf_values(&leaves, &mut in_order, &mut vec![0; n]);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&in_order), bits(&in_place));
    }

    /// Whether `got` is `want` up to the order its terms were added in.
    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= 1e-12 * want.abs().max(1.0)
    }

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

    #[test]
    fn params_check_lists_every_problem() {
        let p = Params {
            n_trees: 0,
            learning_rate: 2.0,
            max_bins: 1000,
            ..Default::default()
        };
        assert_eq!(p.check().len(), 3);
    }
}
