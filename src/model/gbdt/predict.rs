//! Scoring a booster: every row's raw score is the initial score plus each tree's leaf value,
//! added in tree order, so both ways below give the same numbers bit for bit.
//!
//! - **Ranks, 64 rows per instruction** (x86-64 with AVX-512 VBMI, trees of at most 64 nodes,
//!   which `num_leaves <= 32` guarantees). Each feature's value is replaced by its rank among the
//!   distinct thresholds the booster splits that feature on, so `x <= threshold` becomes a byte
//!   comparison `rank <= k`. A tree becomes three 64-byte tables indexed by node (feature, rank of
//!   the threshold, left child); the node numbers of 64 rows sit in one 512-bit register, and one
//!   step of all 64 rows is three byte permutes (`vpermb`), a select of each row's feature, a
//!   compare and an add. About 5 times fewer instructions than the scalar walk. Boosters
//!   fitted on the same inputs (DLE's two loss models) are scored together: their thresholds
//!   share one list per feature, so each value is ranked once for both ([`raw_many`]).
//! - **Lockstep** (everything else): blocks of 64 rows walk each tree for its depth, one row at a
//!   time, leaves pointing to themselves so the inner loop has no data-dependent branch.

use rayon::prelude::*;

use super::search::Sorted;
use super::{Booster, Tree};

/// Rows scored together.
const BLOCK: usize = 64;
/// Blocks per parallel task.
const TASK_BLOCKS: usize = 8;

pub(super) fn raw(b: &Booster, x: &[&[f64]]) -> Vec<f64> {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        if let Some(r) = Ranked::new(&[b], x.len()) {
            return r.raw(&[b.init_score], x).remove(0);
        }
    }
    lockstep(b, x)
}

/// [`raw`] of several boosters over the same features. Where their thresholds fit one ranked
/// layout together (boosters fitted on the same inputs split on the same bin bounds, as DLE's
/// two loss models do), each value is ranked once for all of them; else each is scored alone.
pub(super) fn raw_many(bs: &[&Booster], x: &[&[f64]]) -> Vec<Vec<f64>> {
    #[cfg(target_arch = "x86_64")]
    if simd::available() && !bs.is_empty() {
        if let Some(r) = Ranked::new(bs, x.len()) {
            let init: Vec<f64> = bs.iter().map(|b| b.init_score).collect();
            return r.raw(&init, x);
        }
    }
    bs.iter().map(|b| raw(b, x)).collect()
}

/// A tree laid out for scoring a block of rows in lockstep: a leaf points to itself, so every row
/// takes the tree's depth in steps and the inner loop has no data-dependent branch.
struct Lockstep {
    nodes: Vec<Node>,
    value: Vec<f64>,
    depth: usize,
}

#[derive(Clone, Copy)]
struct Node {
    threshold: f64,
    feature: u32,
    /// Child when `x <= threshold`, child otherwise (NaN goes right).
    next: [u32; 2],
}

impl Lockstep {
    fn new(t: &Tree) -> Self {
        let nodes = (0..t.left.len())
            .map(|i| {
                if t.left[i] >= 0 {
                    Node {
                        threshold: t.threshold[i],
                        feature: t.feature[i],
                        next: [t.left[i] as u32, t.right[i] as u32],
                    }
                } else {
                    Node {
                        threshold: 0.0,
                        feature: 0,
                        next: [i as u32, i as u32],
                    }
                }
            })
            .collect();
        Lockstep {
            nodes,
            value: t.value.clone(),
            depth: t.depth(),
        }
    }
}

fn lockstep(b: &Booster, x: &[&[f64]]) -> Vec<f64> {
    let n = x.first().map_or(0, |c| c.len());
    let trees: Vec<Lockstep> = b.trees.iter().map(Lockstep::new).collect();
    let mut out = vec![b.init_score; n];
    out.par_chunks_mut(TASK_BLOCKS * BLOCK)
        .enumerate()
        .for_each(|(k, chunk)| {
            for (bi, block) in chunk.chunks_mut(BLOCK).enumerate() {
                let base = k * TASK_BLOCKS * BLOCK + bi * BLOCK;
                // The block's rows, row-major: one row's features are adjacent.
                let m = block.len();
                let nf = x.len();
                let mut rows = vec![0.0; m * nf];
                for (f, c) in x.iter().enumerate() {
                    for (j, v) in c[base..base + m].iter().enumerate() {
                        rows[j * nf + f] = *v;
                    }
                }
                let mut at = [0u32; BLOCK];
                for t in &trees {
                    let at = &mut at[..m];
                    at.fill(0);
                    for _ in 0..t.depth {
                        for (row, i) in rows.chunks_exact(nf).zip(at.iter_mut()) {
                            let nd = &t.nodes[*i as usize];
                            let v = row[nd.feature as usize];
                            *i = nd.next[usize::from(!(v <= nd.threshold))];
                        }
                    }
                    for (o, i) in block.iter_mut().zip(at.iter()) {
                        *o += t.value[*i as usize];
                    }
                }
            }
        });
    out
}

/// The rank of a NaN: above every threshold's rank, so NaN goes right at every split.
const NAN_RANK: u8 = 255;

/// One or more boosters over ranks. `cuts[f]` are the distinct thresholds their trees split
/// feature `f` on, increasing; a value's rank is the number of cuts below it, so
/// `x <= cuts[f][k]` exactly when `rank(x) <= k`. At most 254 cuts per feature, so every rank of
/// a cut is below [`NAN_RANK`].
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Ranked {
    cuts: Vec<Vec<f64>>,
    /// `cuts`, for counting how many lie below a value.
    sorted: Vec<Sorted>,
    /// The boosters' trees, one booster after another.
    trees: Vec<RankTree>,
    /// Where each booster's trees end in `trees`.
    ends: Vec<usize>,
}

/// One tree of at most 64 nodes as tables indexed by node number. The right child of an
/// internal node is its left child plus one (the booster adds children in pairs). A leaf is its
/// own left child and its rank is 255, which no value exceeds, so a row at a leaf stays there.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct RankTree {
    feature: [u8; BLOCK],
    rank: [u8; BLOCK],
    left: [u8; BLOCK],
    /// Each leaf node's number among the leaves (at most 32: a tree of 64 nodes has 32 leaves).
    leaf: [u8; BLOCK],
    /// The leaves' values by leaf number.
    value: [f64; LEAVES],
    /// `levels[d]`: the features split on by the internal nodes at depth `d`. After `d` steps
    /// every row is at such a node or at a leaf, so step `d` reads only these features' ranks.
    levels: Vec<Vec<u8>>,
}

/// The most leaves a tree of [`BLOCK`] nodes has.
const LEAVES: usize = BLOCK / 2;

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Ranked {
    /// `None` when the boosters do not fit the layout: a tree of more than 64 nodes or 32 leaves,
    /// children not in pairs or numbered before their parent, a NaN threshold, more than 254
    /// distinct thresholds on a feature (all boosters together), or more than 255 features.
    fn new(bs: &[&Booster], n_features: usize) -> Option<Ranked> {
        if n_features > 255 {
            return None;
        }
        let mut cuts: Vec<Vec<f64>> = vec![Vec::new(); n_features];
        for t in bs.iter().flat_map(|b| &b.trees) {
            let m = t.left.len();
            if m > BLOCK || t.left.iter().filter(|l| **l < 0).count() > LEAVES {
                return None;
            }
            for i in 0..m {
                if t.left[i] >= 0 {
                    let (f, l) = (t.feature[i] as usize, t.left[i] as usize);
                    // Children after their parent, so that depths are known in node order.
                    if f >= n_features
                        || l <= i
                        || l + 1 >= m
                        || t.right[i] != t.left[i] + 1
                        || t.threshold[i].is_nan()
                    {
                        return None;
                    }
                    cuts[f].push(t.threshold[i]);
                }
            }
        }
        for c in &mut cuts {
            c.sort_unstable_by(f64::total_cmp);
            c.dedup_by(|a, b| a == b);
            if c.len() >= usize::from(NAN_RANK) {
                return None;
            }
        }
        let trees = bs
            .iter()
            .flat_map(|b| &b.trees)
            .map(|t| {
                let mut r = RankTree {
                    feature: [0; BLOCK],
                    rank: [NAN_RANK; BLOCK],
                    left: [0; BLOCK],
                    leaf: [0; BLOCK],
                    value: [0.0; LEAVES],
                    levels: Vec::new(),
                };
                // Nodes by depth from the root, to collect each depth's features.
                let mut depth = vec![0usize; t.left.len()];
                let mut leaves = 0;
                for i in 0..t.left.len() {
                    if t.left[i] >= 0 {
                        let f = t.feature[i] as usize;
                        r.feature[i] = f as u8;
                        r.rank[i] = cuts[f].partition_point(|c| *c < t.threshold[i]) as u8;
                        r.left[i] = t.left[i] as u8;
                        let (l, d) = (t.left[i] as usize, depth[i]);
                        depth[l] = d + 1;
                        depth[l + 1] = d + 1;
                        if r.levels.len() <= d {
                            r.levels.resize(d + 1, Vec::new());
                        }
                        if !r.levels[d].contains(&(f as u8)) {
                            r.levels[d].push(f as u8);
                        }
                    } else {
                        r.left[i] = i as u8;
                        r.leaf[i] = leaves as u8;
                        r.value[leaves] = t.value[i];
                        leaves += 1;
                    }
                }
                r
            })
            .collect();
        let sorted = cuts.iter().map(|c| Sorted::new(c)).collect();
        let ends = bs
            .iter()
            .scan(0, |end, b| {
                *end += b.trees.len();
                Some(*end)
            })
            .collect();
        Some(Ranked {
            cuts,
            sorted,
            trees,
            ends,
        })
    }

    /// Each booster's raw scores (`init[b]` plus its trees' leaf values), the rows ranked once.
    #[cfg(target_arch = "x86_64")]
    fn raw(&self, init: &[f64], x: &[&[f64]]) -> Vec<Vec<f64>> {
        let n = x.first().map_or(0, |c| c.len());
        let mut outs: Vec<Vec<f64>> = init.iter().map(|&i| vec![i; n]).collect();
        let nf = x.len();
        let task = TASK_BLOCKS * BLOCK;
        let group = simd::GROUP * BLOCK;
        // Each task's rows in every booster's scores.
        let mut tasks: Vec<Vec<&mut [f64]>> = (0..n.div_ceil(task))
            .map(|_| Vec::with_capacity(outs.len()))
            .collect();
        for out in &mut outs {
            for (t, rows) in tasks.iter_mut().zip(out.chunks_mut(task)) {
                t.push(rows);
            }
        }
        tasks.into_par_iter().enumerate().for_each(|(k, mut outs)| {
            // `ranks[g * nf + f][j]`: the rank of row `j` of block `g` in feature `f`.
            let mut ranks = vec![[0u8; BLOCK]; simd::GROUP * nf];
            let len = outs[0].len();
            for start in (0..len).step_by(group) {
                let end = (start + group).min(len);
                for (g, from) in (start..end).step_by(BLOCK).enumerate() {
                    let (m, base) = ((end - from).min(BLOCK), k * task + from);
                    let ranks = &mut ranks[g * nf..(g + 1) * nf];
                    for (((col, cuts), sorted), r) in
                        x.iter().zip(&self.cuts).zip(&self.sorted).zip(ranks)
                    {
                        // A feature no tree splits on is never read.
                        if !cuts.is_empty() {
                            sorted.count_below(
                                &col[base..base + m],
                                &mut r[..m],
                                NAN_RANK,
                                NAN_RANK,
                            );
                        }
                    }
                }
                let mut first = 0;
                for (out, &last) in outs.iter_mut().zip(&self.ends) {
                    // SAFETY: `raw` runs this path only when `simd::available()`.
                    unsafe {
                        simd::walk(&self.trees[first..last], &ranks, nf, &mut out[start..end])
                    };
                    first = last;
                }
            }
        });
        outs
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{RankTree, BLOCK};
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vbmi")
    }

    /// Blocks of 64 rows walked together: their steps are independent, so one block's
    /// instructions fill the other's latencies.
    pub const GROUP: usize = 2;

    /// Adds every tree's leaf value to `out` (at most `GROUP` blocks of 64 rows);
    /// `ranks[g * nf + f][j]` is the rank of row `j` of block `g` in feature `f`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VBMI ([`available`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub unsafe fn walk(trees: &[RankTree], ranks: &[[u8; BLOCK]], nf: usize, out: &mut [f64]) {
        debug_assert!(out.len() <= GROUP * BLOCK);
        // SAFETY: the caller's.
        unsafe {
            if out.len() > BLOCK {
                walk_blocks::<GROUP>(trees, ranks, nf, out)
            } else {
                walk_blocks::<1>(trees, ranks, nf, out)
            }
        }
    }

    /// [`walk`] of `B` blocks (the last possibly partial).
    ///
    /// A step of a block: three byte permutes give each row's node's feature, threshold rank and
    /// left child; the row's rank in its node's feature is picked from the ranks of the features
    /// of this depth's nodes only (one feature: no picking; several: one masked load each, joined
    /// by OR, the masks being disjoint); a compare and an add move the row on. At the end each
    /// row's leaf number indexes the leaf values, eight rows at a time (two-register permutes of
    /// 16 values), and the values are added to the rows' sums in tree order, as before. The sums
    /// stay in registers from the first tree to the last (eight per block) and are stored once:
    /// loading and storing them at every tree was a tenth of the walk's instructions. Lanes past
    /// the last row walk stale ranks to some leaf and are never stored.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    unsafe fn walk_blocks<const B: usize>(
        trees: &[RankTree],
        ranks: &[[u8; BLOCK]],
        nf: usize,
        out: &mut [f64],
    ) {
        // SAFETY (loads and stores): every pointer is to a 64-byte array, or to at most eight
        // values of `out`, masked to the ones it has.
        let load = |p: &[u8; BLOCK]| unsafe { _mm512_loadu_si512(p.as_ptr().cast()) };
        let len = out.len();
        let lanes = move |from: usize| -> __mmask8 {
            let left = len.saturating_sub(from).min(8);
            ((1u16 << left) - 1) as __mmask8
        };
        debug_assert!(ranks.len() >= B * nf && out.len() <= B * BLOCK);
        let one = _mm512_set1_epi8(1);
        let sixteen = _mm512_set1_epi64(16);
        let mut sums = [[_mm512_setzero_pd(); 8]; B];
        for (g, sums) in sums.iter_mut().enumerate() {
            for (q, s) in sums.iter_mut().enumerate() {
                let from = g * BLOCK + q * 8;
                // SAFETY: see above; a mask of no lanes reads nothing.
                *s = unsafe {
                    _mm512_maskz_loadu_pd(lanes(from), out.as_ptr().add(from.min(out.len())))
                };
            }
        }
        for t in trees {
            let (feature, rank, left) = (load(&t.feature), load(&t.rank), load(&t.left));
            let mut node = [_mm512_setzero_si512(); B];
            for level in &t.levels {
                for (g, node) in node.iter_mut().enumerate() {
                    let ranks = &ranks[g * nf..(g + 1) * nf];
                    let k = _mm512_permutexvar_epi8(*node, rank);
                    let l = _mm512_permutexvar_epi8(*node, left);
                    // Each row's rank in its node's feature; rows at leaves get any value, which
                    // never exceeds their rank 255.
                    let v = match level.as_slice() {
                        [u] => load(&ranks[usize::from(*u)]),
                        us => {
                            let f = _mm512_permutexvar_epi8(*node, feature);
                            let pick = |u: u8| {
                                let here = _mm512_cmpeq_epi8_mask(f, _mm512_set1_epi8(u as i8));
                                // SAFETY: a 64-byte array; the masked load reads its lanes.
                                unsafe {
                                    _mm512_maskz_loadu_epi8(
                                        here,
                                        ranks[usize::from(u)].as_ptr().cast(),
                                    )
                                }
                            };
                            let mut parts = us.chunks(2).map(|p| match p {
                                [a, b] => _mm512_or_si512(pick(*a), pick(*b)),
                                [a] => pick(*a),
                                _ => unreachable!("chunks of two"),
                            });
                            let first = parts.next().unwrap_or(_mm512_setzero_si512());
                            parts.fold(first, |acc, p| _mm512_or_si512(acc, p))
                        }
                    };
                    let right = _mm512_cmpgt_epu8_mask(v, k);
                    *node = _mm512_mask_add_epi8(l, right, l, one);
                }
            }
            let leaf = load(&t.leaf);
            // SAFETY: 32 values in four 64-byte loads.
            let vals: [__m512d; 4] =
                std::array::from_fn(|q| unsafe { _mm512_loadu_pd(t.value.as_ptr().add(8 * q)) });
            for (node, sums) in node.iter().zip(sums.iter_mut()) {
                let leaves = _mm512_permutexvar_epi8(*node, leaf);
                // The block's 64 leaf numbers, 16 bytes at a time, eight of them per sum.
                let quarters = [
                    _mm512_extracti32x4_epi32::<0>(leaves),
                    _mm512_extracti32x4_epi32::<1>(leaves),
                    _mm512_extracti32x4_epi32::<2>(leaves),
                    _mm512_extracti32x4_epi32::<3>(leaves),
                ];
                for (pair, x) in sums.chunks_exact_mut(2).zip(quarters) {
                    for (s, bytes) in pair.iter_mut().zip([x, _mm_srli_si128::<8>(x)]) {
                        let i = _mm512_cvtepu8_epi64(bytes);
                        let lo = _mm512_permutex2var_pd(vals[0], i, vals[1]);
                        let hi = _mm512_permutex2var_pd(vals[2], i, vals[3]);
                        let v = _mm512_mask_blend_pd(_mm512_test_epi64_mask(i, sixteen), lo, hi);
                        *s = _mm512_add_pd(*s, v);
                    }
                }
            }
        }
        for (g, sums) in sums.iter().enumerate() {
            for (q, s) in sums.iter().enumerate() {
                let from = g * BLOCK + q * 8;
                // SAFETY: see above; a mask of no lanes writes nothing.
                unsafe {
                    _mm512_mask_storeu_pd(
                        out.as_mut_ptr().add(from.min(out.len())),
                        lanes(from),
                        *s,
                    )
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gbdt::{train, Objective, Params};

    /// Features with ties, exact threshold values, NaNs and signed zeros.
    fn features(n: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = crate::generate::Rng::new(seed);
        vec![
            (0..n).map(|_| rng.uniform() * 4.0 - 2.0).collect(),
            (0..n).map(|_| (rng.uniform() * 5.0).floor()).collect(),
            (0..n)
                .map(|i| match i % 7 {
                    0 => f64::NAN,
                    1 => -0.0,
                    _ => rng.normal(),
                })
                .collect(),
        ]
    }

    #[test]
    fn ranked_scoring_equals_the_lockstep_walk_bit_for_bit() {
        let x = features(5_000, 5);
        let views: Vec<&[f64]> = x.iter().map(|c| c.as_slice()).collect();
        let y: Vec<f64> = (0..5_000)
            .map(|i| views[0][i] * views[0][i] + views[1][i] + views[2][i].max(0.0))
            .map(|v| if v.is_nan() { 1.0 } else { v })
            .collect();
        let b = train(
            &views,
            &y,
            Objective::SquaredError,
            &Params {
                n_trees: 40,
                ..Default::default()
            }
            .check()
            .unwrap(),
        );
        let ranked = Ranked::new(&[&b], 3).expect("31-leaf trees fit the ranked layout");
        // Rows exactly at every threshold, just below and just above it, and NaN.
        let mut probe = features(3_001, 9);
        for t in &b.trees {
            for i in 0..t.left.len() {
                if t.left[i] >= 0 {
                    let f = t.feature[i] as usize;
                    let v = t.threshold[i];
                    for (g, col) in probe.iter_mut().enumerate() {
                        col.push(if g == f { v } else { f64::NAN });
                        col.push(if g == f { v.next_down() } else { 0.0 });
                        col.push(if g == f { v.next_up() } else { -0.0 });
                    }
                }
            }
        }
        let pv: Vec<&[f64]> = probe.iter().map(|c| c.as_slice()).collect();
        let slow = lockstep(&b, &pv);
        assert_eq!(raw(&b, &pv), slow);
        #[cfg(target_arch = "x86_64")]
        if simd::available() {
            assert_eq!(ranked.raw(&[b.init_score], &pv), vec![slow]);
        } else {
            eprintln!("this CPU has no AVX-512 VBMI: only the lockstep walk was checked");
        }
        let _ = ranked;
    }

    #[test]
    fn boosters_scored_together_equal_each_scored_alone_bit_for_bit() {
        let x = features(6_000, 7);
        let views: Vec<&[f64]> = x.iter().map(|c| c.as_slice()).collect();
        let fit = |y: &[f64], num_leaves: usize| {
            let p = Params {
                n_trees: 30,
                num_leaves,
                ..Default::default()
            };
            train(&views, y, Objective::SquaredError, &p.check().unwrap())
        };
        let ya: Vec<f64> = views[0].iter().map(|v| v.abs()).collect();
        let yb: Vec<f64> = views[0]
            .iter()
            .zip(views[1])
            .map(|(a, b)| a * a + b)
            .collect();
        // Fitted on the same features: the same bin bounds, one ranked layout for both.
        let (a, b) = (fit(&ya, 31), fit(&yb, 31));
        #[cfg(target_arch = "x86_64")]
        if simd::available() {
            assert!(Ranked::new(&[&a, &b], 3).is_some());
        }
        let probe = features(2_777, 8);
        let pv: Vec<&[f64]> = probe.iter().map(|c| c.as_slice()).collect();
        assert_eq!(raw_many(&[&a, &b], &pv), vec![raw(&a, &pv), raw(&b, &pv)]);
        assert_eq!(raw_many(&[&a, &b], &pv)[1], lockstep(&b, &pv));
        // One booster that fits no ranked layout: each is scored alone.
        let wide = fit(&yb, 40);
        assert!(Ranked::new(&[&a, &wide], 3).is_none());
        assert_eq!(
            raw_many(&[&a, &wide], &pv),
            vec![raw(&a, &pv), lockstep(&wide, &pv)]
        );
        assert_eq!(raw_many(&[], &pv), Vec::<Vec<f64>>::new());
    }

    #[test]
    fn boosters_that_do_not_fit_the_ranked_layout_use_the_lockstep_walk() {
        let x = features(4_000, 6);
        let views: Vec<&[f64]> = x.iter().map(|c| c.as_slice()).collect();
        let y: Vec<f64> = views[0].iter().map(|v| v.sin()).collect();
        let b = train(
            &views,
            &y,
            Objective::SquaredError,
            &Params {
                n_trees: 5,
                num_leaves: 40,
                ..Default::default()
            }
            .check()
            .unwrap(),
        );
        assert!(b.trees.iter().any(|t| t.left.len() > BLOCK));
        assert!(Ranked::new(&[&b], 3).is_none());
        assert_eq!(raw(&b, &views), lockstep(&b, &views));
    }
}
