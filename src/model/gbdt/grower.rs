//! Growing one tree leaf-wise, as LightGBM's `src/treelearner/serial_tree_learner.cpp`: the leaf
//! with the largest gain is split next; the smaller child's histogram is built from its rows and
//! the larger one's is the parent's minus it.

use rayon::prelude::*;

use super::bin::{big_vec, Binned};
use super::histogram::{build_hist, grad_sums, FeatureHist, Rows, COUNT, HIST_CHUNK};
use super::objective::Grad;
use super::params::Params;
use super::partition::{partition, partition_par, PARTITION_CHUNK};
use super::split::{best_split, Split};
use super::Tree;

pub(super) struct Leaf<const N: usize> {
    /// Which of the grower's row buffers holds the rows, at `start..end`; unless `ordered`.
    pub(super) buf: usize,
    /// The rows are `start..end` themselves, in order, in no buffer: the root, and the children
    /// of an ordered leaf split on a feature the rows are sorted by there (see [`Grower::grow`]).
    pub(super) ordered: bool,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) g: f64,
    pub(super) h: f64,
    pub(super) depth: usize,
    pub(super) hist: Vec<FeatureHist<N>>,
    pub(super) split: Option<Split>,
    pub(super) node: usize,
}

/// What stays the same across the trees of one booster: the bins, the parameters, and the
/// row buffers the leaves partition into (see [`partition`]).
pub(super) struct Grower<'a> {
    pub(super) b: &'a Binned,
    pub(super) p: &'a Params,
    /// Three row buffers: a leaf's rows are in one of them at its places, and the other two are
    /// free there. A serial partition leaves the left child in the leaf's buffer and the right
    /// in the next; [`partition_par`] leaves both in the third (allocated on first use).
    pub(super) bufs: [Vec<u32>; 3],
    /// Each row's leaf in the tree just grown, when there are at most 256 leaves (else empty).
    pub(super) leaf_of: Vec<u8>,
    /// Whether a large partition may run on every core now ([`FitRunning::alone`]).
    pub(super) share_cores: fn() -> bool,
    /// How many partitions did ([`partition_par`]).
    pub(super) shared: usize,
}

/// Where a tree's root histogram comes from.
pub(super) enum Root<'a, const N: usize> {
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
    pub(super) fn grow<const N: usize, G: Grad>(
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
    pub(super) fn add_leaf_values(&mut self, leaves: &[LeafRows], score: &mut [f64]) {
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
pub(super) type LeafRows = (f64, Option<usize>, std::ops::Range<usize>);

/// The grower's row buffers in the order `order` (0, 1 and 2 in some order), each borrowed on
/// its own.
pub(super) fn buffers(bufs: &mut [Vec<u32>; 3], order: [usize; 3]) -> [&mut Vec<u32>; 3] {
    let mut each = bufs.each_mut().map(Some);
    order.map(|i| each[i].take().expect("0, 1 and 2 in some order"))
}

/// A leaf's rows for [`add_leaf_values`]: a list, or the rows of a range.
#[derive(Clone)]
pub(super) enum Span<'a> {
    List(&'a [u32]),
    Range(std::ops::Range<usize>),
}

/// Adds each leaf's value to the scores of its rows. With `leaf_of` (one place a row, at most 256
/// leaves) each row's leaf is noted in a byte and the scores are updated in row order: adding to
/// the scores of each leaf's rows in place is a cache miss a row once the scores outgrow the
/// cache, while a byte a row of leaf numbers is an eighth of the memory. With an empty
/// `leaf_of`, in place. Each row gets one addition either way, so the scores are the same.
pub(super) fn add_leaf_values(leaves: &[(f64, Span)], score: &mut [f64], leaf_of: &mut [u8]) {
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
    use crate::model::gbdt::bin::{bin_columns, reorder_columns, row_order};
    use crate::model::gbdt::boosting::train_binned;
    use crate::model::gbdt::objective::Objective;
    use crate::model::gbdt::testutil::assert_same_trees;
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
            assert_same_trees(&moved, &kept, &format!("{objective:?}"));
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
}
