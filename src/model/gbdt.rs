//! Histogram-based gradient-boosted trees, grown leaf-wise as LightGBM grows them: features are
//! bucketed into at most 255 bins once; each tree starts from the gradient/hessian histograms of
//! all rows and repeatedly splits the leaf with the largest gain, building the histogram of the
//! smaller child and deriving the larger one by subtraction. No sampling, so training is
//! deterministic: the same data and parameters give the same trees, bit for bit.

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
    fn predict_row(&self, x: &[&[f64]], r: usize) -> f64 {
        let mut i = 0usize;
        while self.left[i] >= 0 {
            let v = x[self.feature[i] as usize][r];
            i = if v <= self.threshold[i] {
                self.left[i]
            } else {
                self.right[i]
            } as usize;
        }
        self.value[i]
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
    /// Raw scores of column-major features (`x[feature][row]`).
    pub fn raw(&self, x: &[&[f64]]) -> Vec<f64> {
        let n = x.first().map_or(0, |c| c.len());
        let mut out = vec![self.init_score; n];
        out.par_chunks_mut(4096).enumerate().for_each(|(k, chunk)| {
            let base = k * 4096;
            for (j, o) in chunk.iter_mut().enumerate() {
                for t in &self.trees {
                    *o += t.predict_row(x, base + j);
                }
            }
        });
        out
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
    s.sort_unstable_by(f64::total_cmp);
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

#[derive(Clone, Copy, Default)]
struct Bin {
    g: f64,
    h: f64,
    n: u32,
}

#[derive(Clone, Copy, Debug)]
struct Split {
    gain: f64,
    feature: usize,
    bin: usize,
    gl: f64,
    hl: f64,
    nl: u32,
}

struct Leaf {
    start: usize,
    end: usize,
    g: f64,
    h: f64,
    depth: usize,
    hist: Vec<Bin>,
    split: Option<Split>,
    node: usize,
}

/// Features bucketed once: a row-major matrix of bin numbers (one byte per feature), so that one
/// pass over a leaf's rows fills every feature's histogram.
struct Binned {
    /// `row_major[r * n_features + f]` is the bin of row `r` in feature `f`.
    row_major: Vec<u8>,
    n_features: usize,
    bounds: Vec<Vec<f64>>,
    offsets: Vec<usize>,
    total_bins: usize,
}

impl Binned {
    fn bin(&self, r: usize, f: usize) -> u8 {
        self.row_major[r * self.n_features + f]
    }
}

fn bin_features(x: &[&[f64]], max_bins: usize) -> Binned {
    let bounds: Vec<Vec<f64>> = x.par_iter().map(|c| bin_bounds(c, max_bins)).collect();
    let n = x.first().map_or(0, |c| c.len());
    let nf = x.len();
    let mut row_major = vec![0u8; n * nf];
    row_major
        .par_chunks_mut(nf.max(1) * 4096)
        .enumerate()
        .for_each(|(k, chunk)| {
            let base = k * 4096;
            for (j, row) in chunk.chunks_mut(nf).enumerate() {
                for f in 0..nf {
                    let v = x[f][base + j];
                    let b = &bounds[f];
                    row[f] = b.partition_point(|ub| *ub < v).min(b.len() - 1) as u8;
                }
            }
        });
    let mut offsets = Vec::with_capacity(bounds.len());
    let mut total = 0;
    for b in &bounds {
        offsets.push(total);
        total += b.len();
    }
    Binned {
        row_major,
        n_features: nf,
        bounds,
        offsets,
        total_bins: total,
    }
}

/// Rows per histogram task: enough work per task, few partial histograms to add up.
const HIST_CHUNK: usize = 32 * 1024;

fn build_hist(b: &Binned, rows: &[u32], g: &[f64], h: &[f64]) -> Vec<Bin> {
    let nf = b.n_features;
    let fill = |chunk: &[u32]| {
        let mut hist = vec![Bin::default(); b.total_bins];
        for &r in chunk {
            let r = r as usize;
            let (gr, hr) = (g[r], h[r]);
            let bins = &b.row_major[r * nf..(r + 1) * nf];
            for (f, &bin) in bins.iter().enumerate() {
                let e = &mut hist[b.offsets[f] + bin as usize];
                e.g += gr;
                e.h += hr;
                e.n += 1;
            }
        }
        hist
    };
    if rows.len() <= HIST_CHUNK {
        return fill(rows);
    }
    // Partial histograms in chunk order, added in that order: the sums do not depend on how the
    // work was scheduled, so training stays deterministic.
    let parts: Vec<Vec<Bin>> = rows.par_chunks(HIST_CHUNK).map(fill).collect();
    let mut out = parts[0].clone();
    for p in &parts[1..] {
        for (o, e) in out.iter_mut().zip(p) {
            o.g += e.g;
            o.h += e.h;
            o.n += e.n;
        }
    }
    out
}

fn best_split(b: &Binned, hist: &[Bin], g: f64, h: f64, n: u32, p: &Params) -> Option<Split> {
    let lambda = p.lambda_l2;
    let parent = g * g / (h + lambda);
    let mut best: Option<Split> = None;
    for f in 0..b.bounds.len() {
        let off = b.offsets[f];
        let nb = b.bounds[f].len();
        let (mut gl, mut hl, mut nl) = (0.0, 0.0, 0u32);
        for bin in 0..nb.saturating_sub(1) {
            let e = hist[off + bin];
            gl += e.g;
            hl += e.h;
            nl += e.n;
            let nr = n - nl;
            if (nl as usize) < p.min_data_in_leaf {
                continue;
            }
            if (nr as usize) < p.min_data_in_leaf {
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
                    nl,
                });
            }
        }
    }
    best
}

/// Trains a booster on column-major features `x[feature][row]` and targets `y` (0/1 for
/// logistic).
pub fn train(x: &[&[f64]], y: &[f64], objective: Objective, p: &Params) -> Booster {
    let n = y.len();
    let binned = bin_features(x, p.max_bins);
    let init_score = match objective {
        Objective::SquaredError => y.iter().sum::<f64>() / n as f64,
        Objective::Logistic => {
            let m = (y.iter().sum::<f64>() / n as f64).clamp(1e-15, 1.0 - 1e-15);
            (m / (1.0 - m)).ln()
        }
    };
    let mut score = vec![init_score; n];
    let mut g = vec![0.0; n];
    let mut h = vec![0.0; n];
    let mut rows: Vec<u32> = (0..n as u32).collect();
    let mut scratch: Vec<u32> = vec![0; n];
    let mut trees = Vec::with_capacity(p.n_trees);
    let mut importance = vec![0.0; x.len()];
    for _ in 0..p.n_trees {
        match objective {
            Objective::SquaredError => {
                g.par_iter_mut()
                    .zip(&score)
                    .zip(y)
                    .for_each(|((gi, s), yi)| *gi = s - yi);
                h.iter_mut().for_each(|v| *v = 1.0);
            }
            Objective::Logistic => {
                g.par_iter_mut()
                    .zip(h.par_iter_mut())
                    .zip(&score)
                    .zip(y)
                    .for_each(|(((gi, hi), s), yi)| {
                        let q = sigmoid(*s);
                        *gi = q - yi;
                        *hi = (q * (1.0 - q)).max(1e-16);
                    });
            }
        }
        let tree = grow(
            &binned,
            &mut rows,
            &mut scratch,
            &g,
            &h,
            p,
            &mut score,
            &mut importance,
        );
        trees.push(tree);
    }
    Booster {
        objective,
        init_score,
        trees,
        gain_importance: importance,
    }
}

#[allow(clippy::too_many_arguments)]
fn grow(
    b: &Binned,
    rows: &mut [u32],
    scratch: &mut [u32],
    g: &[f64],
    h: &[f64],
    p: &Params,
    score: &mut [f64],
    importance: &mut [f64],
) -> Tree {
    let n = rows.len();
    let (gs, hs): (f64, f64) = (g.iter().sum(), h.iter().sum());
    let hist = build_hist(b, rows, g, h);
    let split = best_split(b, &hist, gs, hs, n as u32, p);
    let mut tree = Tree {
        feature: vec![0],
        threshold: vec![0.0],
        left: vec![-1],
        right: vec![-1],
        value: vec![0.0],
    };
    let mut leaves = vec![Leaf {
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
        // Stable partition of the leaf's rows: left then right.
        let seg = &mut rows[leaf.start..leaf.end];
        let (mut l, mut r) = (0usize, 0usize);
        let tmp = &mut scratch[..seg.len()];
        for i in 0..seg.len() {
            let row = seg[i];
            if (b.bin(row as usize, s.feature) as usize) <= s.bin {
                seg[l] = row;
                l += 1;
            } else {
                tmp[r] = row;
                r += 1;
            }
        }
        seg[l..].copy_from_slice(&tmp[..r]);
        let mid = leaf.start + l;
        let (gl, hl, gr, hr) = (s.gl, s.hl, leaf.g - s.gl, leaf.h - s.hl);
        // Histogram of the smaller child; the other is the parent's minus it.
        let (small, small_is_left) = if l <= r {
            (&rows[leaf.start..mid], true)
        } else {
            (&rows[mid..leaf.end], false)
        };
        let small_hist = build_hist(b, small, g, h);
        let big_hist: Vec<Bin> = leaf
            .hist
            .iter()
            .zip(&small_hist)
            .map(|(p, c)| Bin {
                g: p.g - c.g,
                h: p.h - c.h,
                n: p.n - c.n,
            })
            .collect();
        let (hist_l, hist_r) = if small_is_left {
            (small_hist, big_hist)
        } else {
            (big_hist, small_hist)
        };
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
        let split_l = best_split(b, &hist_l, gl, hl, s.nl, p);
        let split_r = best_split(b, &hist_r, gr, hr, (leaf.end - mid) as u32, p);
        leaves.push(Leaf {
            start: leaf.start,
            end: mid,
            g: gl,
            h: hl,
            depth: leaf.depth + 1,
            hist: hist_l,
            split: split_l,
            node: ln,
        });
        leaves.push(Leaf {
            start: mid,
            end: leaf.end,
            g: gr,
            h: hr,
            depth: leaf.depth + 1,
            hist: hist_r,
            split: split_r,
            node: rn,
        });
    }
    for leaf in &leaves {
        let v = -leaf.g / (leaf.h + p.lambda_l2) * p.learning_rate;
        tree.value[leaf.node] = v;
        for &r in &rows[leaf.start..leaf.end] {
            score[r as usize] += v;
        }
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

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
