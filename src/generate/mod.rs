//! `mlpipe generate`: synthetic customer data with the statistical story of real engagement data
//! (README, "Synthetic data").
//!
//! A latent activity level drives sessions, recency, feature use, spend and the three targets;
//! customers aged 18–24 churn somewhat more; `drift` shifts three features of the `current`
//! snapshot; `defects` injects a known number of nulls, duplicates, out-of-domain values and
//! outliers into `customers` and lists every one in `truth.json`. The generator uses its own
//! PRNG (xoshiro256**) and samplers, and derives one stream per chunk of rows from the seed, so
//! the same seed gives the same bytes on any machine, thread count or crate version.

use std::sync::Arc;

use arrow::array::*;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::storage::Store;

pub mod raw;

/// What to generate.
#[derive(Debug, Clone)]
pub struct Options {
    pub rows: usize,
    pub seed: u64,
    pub out: String,
    /// Shift of the `current` snapshot (0 = none, 1 = strong).
    pub drift: f64,
    pub defects: bool,
    /// The snapshot time: `updated_at` falls in the 20 hours before it.
    pub as_of: DateTime<Utc>,
    pub rows_per_file: usize,
    /// Also write the raw tables `customers` is derived from (see [`raw`]).
    pub raw: bool,
}

/// The default snapshot time, fixed so that output depends only on the options.
pub const DEFAULT_AS_OF: &str = "2026-11-20T06:00:00Z";

/// Features that `drift` shifts; every other feature of `current` keeps its distribution.
pub const DRIFTED: [&str; 3] = ["sessions_30d", "days_since_last_login", "monthly_spend"];

const CHUNK: usize = 1 << 16;
const GENDERS: [(&str, f64); 4] = [
    ("female", 0.48),
    ("male", 0.47),
    ("other", 0.03),
    ("unknown", 0.02),
];
const REGIONS: [(&str, f64); 5] = [
    ("north", 0.2),
    ("south", 0.25),
    ("east", 0.2),
    ("west", 0.2),
    ("central", 0.15),
];
const DEVICES: [(&str, f64); 3] = [("ios", 0.4), ("android", 0.42), ("web", 0.18)];
const PLANS: [&str; 4] = ["free", "basic", "pro", "enterprise"];

// ---------------------------------------------------------------------------------------------
// Random numbers

/// xoshiro256** seeded through SplitMix64.
#[derive(Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    pub fn poisson(&mut self, lambda: f64) -> i32 {
        if lambda < 30.0 {
            let limit = (-lambda).exp();
            let (mut k, mut p) = (0, self.uniform());
            while p > limit {
                k += 1;
                p *= self.uniform();
            }
            k
        } else {
            (lambda + lambda.sqrt() * self.normal()).round().max(0.0) as i32
        }
    }

    pub fn binomial(&mut self, n: u32, p: f64) -> i32 {
        (0..n).filter(|_| self.uniform() < p).count() as i32
    }

    pub fn pick<'a>(&mut self, weights: &[(&'a str, f64)]) -> &'a str {
        let mut u = self.uniform();
        for (v, w) in weights {
            if u < *w {
                return v;
            }
            u -= w;
        }
        weights[weights.len() - 1].0
    }

    /// An index in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        // The product is below n except when rounding makes it n: what `% n` would wrap to 0,
        // without a division.
        let i = (self.uniform() * n as f64) as usize;
        if i >= n {
            0
        } else {
            i
        }
    }
}

/// The generator as a `rand` source, for `rand_distr`'s distributions (the fairness bootstrap's
/// binomial draws): the same stream as [`Rng::next_u64`].
impl rand_core::TryRng for Rng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok((Rng::next_u64(self) >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(Rng::next_u64(self))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let w = Rng::next_u64(self).to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
        Ok(())
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let m = 10f64.powi(decimals);
    (x * m).round() / m
}

/// A unique, unguessable-looking customer id for row `i` (a bijection on 40 bits).
fn customer_id(i: u64, seed: u64) -> String {
    const MASK: u64 = (1 << 40) - 1;
    let mixed = (i.wrapping_mul(0x9E37_79B9_7F4B)
        ^ (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) & MASK))
        & MASK;
    format!("C{mixed:010x}")
}

// ---------------------------------------------------------------------------------------------
// Columns

/// Generated columns of one dataset (targets empty for `current`).
#[derive(Default, Clone)]
struct Cols {
    customer_id: Vec<String>,
    gender: Vec<Option<&'static str>>,
    age: Vec<Option<i32>>,
    region: Vec<Option<&'static str>>,
    plan: Vec<&'static str>,
    device: Vec<&'static str>,
    tenure_months: Vec<i32>,
    sessions_30d: Vec<i32>,
    avg_session_minutes: Vec<Option<f64>>,
    days_since_last_login: Vec<i32>,
    features_used: Vec<i32>,
    support_tickets_90d: Vec<i32>,
    payment_failures_90d: Vec<i32>,
    monthly_spend: Vec<f64>,
    email_open_rate: Vec<Option<f64>>,
    discount_pct: Vec<f64>,
    updated_offset_s: Vec<i64>,
    engagement_score: Vec<f64>,
    churned: Vec<bool>,
    ltv_12m: Vec<f64>,
    /// The true churn probability `churned` was drawn from (not written).
    churn_p: Vec<f64>,
}

impl Cols {
    fn len(&self) -> usize {
        self.customer_id.len()
    }

    fn append(&mut self, o: Cols) {
        macro_rules! ext { ($($f:ident),*) => { $( self.$f.extend(o.$f); )* } }
        ext!(
            customer_id,
            gender,
            age,
            region,
            plan,
            device,
            tenure_months,
            sessions_30d,
            avg_session_minutes,
            days_since_last_login,
            features_used,
            support_tickets_90d,
            payment_failures_90d,
            monthly_spend,
            email_open_rate,
            discount_pct,
            updated_offset_s,
            engagement_score,
            churned,
            ltv_12m,
            churn_p
        );
    }

    /// Appends a copy of row `r`.
    fn push_copy(&mut self, r: usize, labelled: bool) {
        macro_rules! cp { ($($f:ident),*) => { $( let v = self.$f[r].clone(); self.$f.push(v); )* } }
        cp!(
            customer_id,
            gender,
            age,
            region,
            plan,
            device,
            tenure_months,
            sessions_30d,
            avg_session_minutes,
            days_since_last_login,
            features_used,
            support_tickets_90d,
            payment_failures_90d,
            monthly_spend,
            email_open_rate,
            discount_pct,
            updated_offset_s
        );
        if labelled {
            cp!(engagement_score, churned, ltv_12m, churn_p);
        }
    }
}

/// Generates rows `start..start+n` of a dataset with one RNG stream per chunk. `concept` (0..1)
/// moves the targets towards another relation with the same features (see [`concept_shift`]).
fn gen_chunk(
    seed: u64,
    stream: u64,
    start: usize,
    n: usize,
    labelled: bool,
    drift: f64,
    concept: f64,
) -> Cols {
    let mut rng = Rng::new(
        seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03)
            ^ (start as u64).wrapping_mul(0x8CB9_2BA7_2F3D_8DD7),
    );
    let mut c = Cols::default();
    for i in start..start + n {
        let a = rng.normal();
        c.customer_id.push(customer_id(i as u64, seed));
        c.age.push(Some(
            (41.0 + 13.0 * rng.normal()).round().clamp(18.0, 90.0) as i32
        ));
        c.gender.push(Some(rng.pick(&GENDERS)));
        c.region.push(Some(rng.pick(&REGIONS)));
        c.device.push(rng.pick(&DEVICES));
        let s = 0.8 * a + 0.6 * rng.normal();
        let plan_i = if s < -0.6 {
            0
        } else if s < 0.4 {
            1
        } else if s < 1.2 {
            2
        } else {
            3
        };
        c.plan.push(PLANS[plan_i]);
        c.tenure_months
            .push((26.0 + 8.0 * a + 12.0 * rng.normal()).round().max(0.0) as i32);
        let sessions_lambda = (14.0 + 6.0 * a).max(0.5) * (1.0 - 0.35 * drift);
        c.sessions_30d.push(rng.poisson(sessions_lambda.max(0.2)));
        let minutes = (14.0 + 3.0 * a + 4.0 * rng.normal()).max(0.5);
        c.avg_session_minutes
            .push((rng.uniform() >= 0.004).then(|| round_to(minutes, 2)));
        let days = (18.0 - 9.0 * a + 7.0 * rng.normal() + 10.0 * drift)
            .round()
            .clamp(0.0, 365.0) as i32;
        c.days_since_last_login.push(days);
        c.features_used
            .push(rng.binomial(20, sigmoid(0.9 * a - 0.2)));
        c.support_tickets_90d
            .push(rng.poisson(0.6 + 0.5 * (-a).max(0.0)));
        c.payment_failures_90d
            .push(rng.poisson(if plan_i == 0 { 0.05 } else { 0.25 }));
        let base = [12.0, 24.0, 36.0, 50.0][plan_i];
        let spend = (base + 5.0 * a + 7.0 * rng.normal()).max(0.0) * (1.0 + 0.25 * drift);
        c.monthly_spend.push(round_to(spend, 2));
        let email = sigmoid(-0.4 + 0.5 * a + 0.5 * rng.normal());
        c.email_open_rate
            .push((rng.uniform() >= 0.005).then(|| round_to(email, 4)));
        c.discount_pct.push(if rng.uniform() < 0.72 {
            0.0
        } else {
            [5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0][rng.below(8)]
        });
        c.updated_offset_s
            .push((rng.uniform() * 20.0 * 3600.0) as i64);
        if labelled {
            let r = c.len() - 1;
            let z_sessions = ((1.0 + c.sessions_30d[r] as f64).ln() - 2.6) / 0.5;
            let z_features = (c.features_used[r] as f64 - 10.0) / 3.5;
            let z_days = (days as f64 - 18.0) / 10.0;
            let z_minutes = (minutes - 14.0) / 5.0;
            let z_email = (email - 0.4) / 0.15;
            let premium = if plan_i >= 2 { 1.0 } else { 0.0 };
            let mut f = 0.38 * z_sessions + 0.28 * z_features - 0.30 * z_days
                + 0.12 * z_minutes
                + 0.10 * z_email
                + 0.25 * premium * z_features.max(0.0)
                - 0.35 * f64::from(days > 30);
            if concept > 0.0 {
                f = concept_shift(f, concept, z_sessions, z_features, z_days, z_email);
            }
            c.engagement_score
                .push(round_to(sigmoid(0.9 * f + 0.42 * rng.normal()), 4));
            let young = c.age[r].is_some_and(|x| x < 25);
            let logit = -1.9 - 1.25 * f
                + 0.45 * (c.support_tickets_90d[r] as f64 - 0.8)
                + 0.7 * c.payment_failures_90d[r] as f64
                + 0.3 * f64::from(young)
                - 0.015 * (c.tenure_months[r] as f64 - 26.0)
                + 0.35 * f64::from(plan_i == 0);
            let p = sigmoid(logit);
            c.churn_p.push(p);
            c.churned.push(rng.uniform() < p);
            let ltv = spend * 12.0 * (1.0 - p).powf(1.5) * (0.25 * rng.normal()).exp();
            c.ltv_12m.push(round_to(ltv.max(0.0), 2));
        }
    }
    c
}

/// The engagement factor after a concept change of strength `concept`: the same features, read
/// another way. Heavy use no longer means engaged (customers automate, or a competitor's
/// integration drives sessions); email opens and logging in recently now do. Every target
/// follows the factor, so all three models, trained before, go wrong together.
fn concept_shift(
    f: f64,
    concept: f64,
    z_sessions: f64,
    z_features: f64,
    z_days: f64,
    z_email: f64,
) -> f64 {
    let new = -0.30 * z_sessions - 0.25 * z_features - 0.40 * z_days + 0.45 * z_email;
    (1.0 - concept) * f + concept * new
}

fn gen_dataset(seed: u64, stream: u64, rows: usize, labelled: bool, drift: f64) -> Cols {
    gen_dataset_with(seed, stream, rows, labelled, drift, 0.0)
}

fn gen_dataset_with(
    seed: u64,
    stream: u64,
    rows: usize,
    labelled: bool,
    drift: f64,
    concept: f64,
) -> Cols {
    let chunks: Vec<usize> = (0..rows).step_by(CHUNK).collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(chunks.len().max(1));
    let mut parts: Vec<Option<Cols>> = vec![None; chunks.len()];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let chunks = &chunks;
                s.spawn(move || {
                    (t..chunks.len())
                        .step_by(threads)
                        .map(|k| {
                            (
                                k,
                                gen_chunk(
                                    seed,
                                    stream,
                                    chunks[k],
                                    CHUNK.min(rows - chunks[k]),
                                    labelled,
                                    drift,
                                    concept,
                                ),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (k, c) in h.join().expect("generator thread") {
                parts[k] = Some(c);
            }
        }
    });
    let mut all = Cols::default();
    for p in parts.into_iter().flatten() {
        all.append(p);
    }
    all
}

// ---------------------------------------------------------------------------------------------
// Defects and truth

/// What `truth.json` records about one dataset, computed from the generated values.
#[derive(Debug, Serialize)]
pub struct DatasetTruth {
    pub rows: usize,
    /// Nulls per column (nullable columns included).
    pub nulls: std::collections::BTreeMap<String, usize>,
    /// Records with at least one schema violation.
    pub schema_violations: usize,
    /// Rows repeating an earlier key (with other values, or identical).
    pub duplicates: usize,
    pub duplicate_keys: usize,
    pub identical_rows: usize,
    /// Outliers per numeric column by Tukey's fences with k = 1.5, over all rows.
    pub outliers: std::collections::BTreeMap<String, usize>,
    /// Every row a validator must reject, with its reasons in the validator's order.
    pub rejected: Vec<(usize, Vec<String>)>,
}

fn inject_defects(c: &mut Cols, seed: u64) -> Vec<(usize, Vec<String>)> {
    let n = c.len();
    let k = (n / 1000).max(4);
    let mut rng = Rng::new(seed ^ 0xDEFEC7);
    // Distinct victims: a partial Fisher–Yates shuffle of the row numbers.
    let mut idx: Vec<usize> = (0..n).collect();
    let want = (5 * k).min(n);
    for i in 0..want {
        let j = i + rng.below(n - i);
        idx.swap(i, j);
    }
    let mut victims = idx[..want].iter().copied();
    let mut take = |m: usize| -> Vec<usize> { (&mut victims).take(m).collect() };
    let mut rejected: Vec<(usize, Vec<String>)> = Vec::new();
    let mut reject = |r: usize, why: &str| rejected.push((r, vec![why.to_string()]));

    // Nulls in nullable columns: counted, not rejected.
    for r in take(k / 2) {
        c.avg_session_minutes[r] = None;
    }
    // Nulls in non-nullable columns.
    for r in take(k / 4) {
        c.age[r] = None;
        reject(r, "null:age");
    }
    for r in take(k / 4) {
        c.region[r] = None;
        reject(r, "null:region");
    }
    // Out-of-domain values.
    for r in take(k / 4) {
        c.age[r] = Some(150);
        reject(r, "out_of_domain:age");
    }
    for r in take(k / 4) {
        c.gender[r] = Some("M");
        reject(r, "out_of_domain:gender");
    }
    for r in take(k / 4) {
        c.email_open_rate[r] = Some(1.7);
        reject(r, "out_of_domain:email_open_rate");
    }
    for r in take(k / 4) {
        c.monthly_spend[r] = -20.0;
        reject(r, "out_of_domain:monthly_spend");
    }
    for r in take(k / 4) {
        c.features_used[r] = 35;
        reject(r, "out_of_domain:features_used");
    }
    // Outliers: extreme but valid values.
    for (j, r) in take(k / 2).into_iter().enumerate() {
        c.monthly_spend[r] = 5000.0 + j as f64;
    }
    for r in take(k / 2) {
        c.sessions_30d[r] = 500;
    }
    // Duplicates of untouched rows, appended: identical copies, then same key with other values.
    for r in take(k / 2) {
        c.push_copy(r, true);
        reject(c.len() - 1, "duplicate_row");
    }
    for r in take(k / 4) {
        c.push_copy(r, true);
        let last = c.len() - 1;
        c.sessions_30d[last] += 1;
        reject(last, "duplicate_key");
    }
    rejected.sort();
    rejected
}

fn truth_of(c: &Cols, rejected: Vec<(usize, Vec<String>)>, labelled: bool) -> DatasetTruth {
    use std::collections::BTreeMap;
    let n = c.len();
    let mut nulls = BTreeMap::new();
    nulls.insert("age".into(), c.age.iter().filter(|v| v.is_none()).count());
    nulls.insert(
        "gender".into(),
        c.gender.iter().filter(|v| v.is_none()).count(),
    );
    nulls.insert(
        "region".into(),
        c.region.iter().filter(|v| v.is_none()).count(),
    );
    nulls.insert(
        "avg_session_minutes".into(),
        c.avg_session_minutes.iter().filter(|v| v.is_none()).count(),
    );
    nulls.insert(
        "email_open_rate".into(),
        c.email_open_rate.iter().filter(|v| v.is_none()).count(),
    );
    let mut outliers = BTreeMap::new();
    let mut count = |name: &str, v: Vec<f64>| {
        let mut w = v.clone();
        if let Some((lo, hi)) = crate::stats::iqr_fences(&mut w, 1.5) {
            outliers.insert(
                name.to_string(),
                v.iter().filter(|&&x| x < lo || x > hi).count(),
            );
        }
    };
    let ints = |v: &[i32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    count("age", c.age.iter().flatten().map(|&x| x as f64).collect());
    count("tenure_months", ints(&c.tenure_months));
    count("sessions_30d", ints(&c.sessions_30d));
    count(
        "avg_session_minutes",
        c.avg_session_minutes.iter().flatten().copied().collect(),
    );
    count("days_since_last_login", ints(&c.days_since_last_login));
    count("features_used", ints(&c.features_used));
    count("support_tickets_90d", ints(&c.support_tickets_90d));
    count("payment_failures_90d", ints(&c.payment_failures_90d));
    count("monthly_spend", c.monthly_spend.clone());
    count(
        "email_open_rate",
        c.email_open_rate.iter().flatten().copied().collect(),
    );
    count("discount_pct", c.discount_pct.clone());
    if labelled {
        count("engagement_score", c.engagement_score.clone());
        count("ltv_12m", c.ltv_12m.clone());
    }
    let has = |why: &str| {
        rejected
            .iter()
            .filter(|(_, r)| r.iter().any(|x| x == why))
            .count()
    };
    let duplicate_keys = has("duplicate_key");
    let identical_rows = has("duplicate_row");
    DatasetTruth {
        rows: n,
        nulls,
        schema_violations: rejected.len() - duplicate_keys - identical_rows,
        duplicates: duplicate_keys + identical_rows,
        duplicate_keys,
        identical_rows,
        outliers,
        rejected,
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

fn batch(
    c: &Cols,
    range: std::ops::Range<usize>,
    labelled: bool,
    as_of: DateTime<Utc>,
) -> RecordBatch {
    let r = range.clone();
    let s = |v: &[&'static str]| Arc::new(StringArray::from(v[r.clone()].to_vec())) as ArrayRef;
    let so =
        |v: &[Option<&'static str>]| Arc::new(StringArray::from(v[r.clone()].to_vec())) as ArrayRef;
    let i = |v: &[i32]| Arc::new(Int32Array::from(v[r.clone()].to_vec())) as ArrayRef;
    let f = |v: &[f64]| Arc::new(Float64Array::from(v[r.clone()].to_vec())) as ArrayRef;
    let fo = |v: &[Option<f64>]| Arc::new(Float64Array::from(v[r.clone()].to_vec())) as ArrayRef;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    let day = (as_of.date_naive() - epoch).num_days() as i32;
    let as_of_s = as_of.timestamp();
    let n = r.len();
    let updated: TimestampMicrosecondArray = c.updated_offset_s[r.clone()]
        .iter()
        .map(|o| Some((as_of_s - o) * 1_000_000))
        .collect::<TimestampMicrosecondArray>()
        .with_timezone("UTC");
    let mut fields = vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("snapshot_date", DataType::Date32, false),
        Field::new(
            "updated_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("gender", DataType::Utf8, true),
        Field::new("age", DataType::Int32, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("plan", DataType::Utf8, false),
        Field::new("device", DataType::Utf8, false),
        Field::new("tenure_months", DataType::Int32, false),
        Field::new("sessions_30d", DataType::Int32, false),
        Field::new("avg_session_minutes", DataType::Float64, true),
        Field::new("days_since_last_login", DataType::Int32, false),
        Field::new("features_used", DataType::Int32, false),
        Field::new("support_tickets_90d", DataType::Int32, false),
        Field::new("payment_failures_90d", DataType::Int32, false),
        Field::new("monthly_spend", DataType::Float64, false),
        Field::new("email_open_rate", DataType::Float64, true),
        Field::new("discount_pct", DataType::Float64, false),
    ];
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(c.customer_id[r.clone()].to_vec())),
        Arc::new(Date32Array::from(vec![day; n])),
        Arc::new(updated),
        so(&c.gender),
        Arc::new(Int32Array::from(c.age[r.clone()].to_vec())),
        so(&c.region),
        s(&c.plan),
        s(&c.device),
        i(&c.tenure_months),
        i(&c.sessions_30d),
        fo(&c.avg_session_minutes),
        i(&c.days_since_last_login),
        i(&c.features_used),
        i(&c.support_tickets_90d),
        i(&c.payment_failures_90d),
        f(&c.monthly_spend),
        fo(&c.email_open_rate),
        f(&c.discount_pct),
    ];
    if labelled {
        fields.push(Field::new("engagement_score", DataType::Float64, false));
        fields.push(Field::new("churned", DataType::Boolean, false));
        fields.push(Field::new("ltv_12m", DataType::Float64, false));
        cols.push(f(&c.engagement_score));
        cols.push(Arc::new(BooleanArray::from(c.churned[r.clone()].to_vec())));
        cols.push(f(&c.ltv_12m));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
        .expect("generated columns match the schema")
}

async fn write(
    store: &Store,
    name: &str,
    c: &Cols,
    labelled: bool,
    o: &Options,
) -> Result<Vec<String>> {
    write_at(store, name, c, labelled, o, o.as_of).await
}

async fn write_at(
    store: &Store,
    name: &str,
    c: &Cols,
    labelled: bool,
    o: &Options,
    as_of: DateTime<Utc>,
) -> Result<Vec<String>> {
    let mut files = Vec::new();
    let per = o.rows_per_file.max(1);
    for (k, start) in (0..c.len().max(1)).step_by(per).enumerate() {
        let end = (start + per).min(c.len());
        let b = batch(c, start..end, labelled, as_of);
        let bytes = crate::data::writer::to_parquet(&[b])?;
        let rel = format!("{name}/part-{k:05}.parquet");
        store.put(&rel, bytes).await?;
        files.push(rel);
    }
    Ok(files)
}

/// What `generate` wrote.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Where the files went (not written to truth.json, which must not depend on the location).
    #[serde(skip)]
    pub out: String,
    pub seed: u64,
    pub as_of: String,
    pub drift: f64,
    pub drifted_features: Vec<String>,
    pub defects: bool,
    pub files: Vec<String>,
    pub customers: DatasetTruth,
    pub current: DatasetTruth,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<raw::RawTruth>,
}

/// Generates `customers/` and `current/` (and `truth.json`) under `o.out`.
pub async fn generate(o: &Options) -> Result<Summary> {
    if o.rows == 0 {
        return Err(Error::Usage("--rows must be at least 1".into()));
    }
    if !(0.0..=5.0).contains(&o.drift) {
        return Err(Error::Usage(format!("--drift {} is outside 0..5", o.drift)));
    }
    if o.raw && o.defects {
        return Err(Error::Usage(
            "--raw and --defects cannot be combined: the raw tables are derived from defect-free customers (they have defects of their own: test accounts and duplicate events)".into(),
        ));
    }
    let store = Store::open(&o.out)?;
    let (seed, rows, drift) = (o.seed, o.rows, o.drift);
    let (mut customers, current) = tokio::task::spawn_blocking(move || {
        (
            gen_dataset(seed, 1, rows, true, 0.0),
            gen_dataset(seed, 2, rows, false, drift),
        )
    })
    .await
    .map_err(|e| Error::Infra(format!("generator failed: {e}")))?;
    let rejected = if o.defects {
        inject_defects(&mut customers, o.seed)
    } else {
        Vec::new()
    };
    let mut files = write(&store, "customers", &customers, true, o).await?;
    files.extend(write(&store, "current", &current, false, o).await?);
    let raw = if o.raw {
        Some(raw::write(&store, &customers, o.seed, o.as_of).await?)
    } else {
        None
    };
    let summary = Summary {
        out: store.url().to_string(),
        seed: o.seed,
        as_of: o.as_of.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        drift: o.drift,
        drifted_features: if o.drift > 0.0 {
            DRIFTED.iter().map(|s| s.to_string()).collect()
        } else {
            Vec::new()
        },
        defects: o.defects,
        files,
        customers: truth_of(&customers, rejected, true),
        current: truth_of(&current, Vec::new(), false),
        raw,
    };
    store.put_json("truth.json", &summary).await?;
    Ok(summary)
}

// ---------------------------------------------------------------------------------------------
// The monthly story

/// A sequence of monthly snapshots: a labelled training snapshot, then each month the customers
/// to score and the outcomes of those scored the month before.
#[derive(Debug, Clone)]
pub struct Story {
    pub months: usize,
    /// From this month (1-based), the same features predict the targets differently.
    pub concept_change: Option<usize>,
    /// The covariate shift added each month (the `drift` of month m is `(m − 1) ×` this).
    pub shift_per_month: f64,
}

/// Each month's outcomes leave out this share of the customers scored the month before (not
/// observed yet) ...
const UNOBSERVED_EVERY: usize = 25;
/// ... and add this many keys per thousand that were never scored.
const UNKNOWN_PER_THOUSAND: usize = 10;

/// The snapshot time of month `m` (1-based): `as_of`, then one calendar month later each month.
pub fn month_as_of(as_of: DateTime<Utc>, m: usize) -> DateTime<Utc> {
    as_of + chrono::Months::new((m - 1) as u32)
}

/// What `truth.json` says of one month.
#[derive(Debug, Serialize)]
pub struct MonthTruth {
    pub month: usize,
    pub as_of: String,
    /// The customers to score this month.
    pub current: String,
    pub covariate_shift: f64,
    pub concept_changed: bool,
    /// The outcomes that arrive this month: those of the customers scored last month.
    pub outcomes: Option<OutcomesTruth>,
}

/// The outcomes file of one month.
#[derive(Debug, Serialize)]
pub struct OutcomesTruth {
    pub location: String,
    /// The month whose scored customers these are.
    pub cohort_month: usize,
    pub observed_at: String,
    /// Rows in the file: the cohort's customers observed, and keys never scored.
    pub rows: usize,
    pub observed: usize,
    pub unknown_keys: usize,
    /// Over the observed customers of the cohort.
    pub churn_rate: f64,
    pub mean_engagement_score: f64,
    pub mean_ltv_12m: f64,
    /// ROC AUC of the true churn probability: what a model that knew the relation in force
    /// would realize (a concept change does not lower it; a stale model falls below it).
    pub oracle_churn_auc: f64,
}

/// What `generate --months` wrote.
#[derive(Debug, Serialize)]
pub struct StorySummary {
    #[serde(skip)]
    pub out: String,
    pub seed: u64,
    pub rows: usize,
    pub shift_per_month: f64,
    pub concept_change_month: Option<usize>,
    pub training: String,
    pub months: Vec<MonthTruth>,
}

/// The outcomes of a labelled month's customers as observed at `observed_at`: all but every
/// [`UNOBSERVED_EVERY`]th customer, then [`UNKNOWN_PER_THOUSAND`] keys per thousand that were
/// never scored (with a scored customer's values).
fn outcomes_batch(
    c: &Cols,
    seed: u64,
    observed_at: DateTime<Utc>,
) -> (RecordBatch, usize, Vec<usize>) {
    let observed: Vec<usize> = (0..c.len()).filter(|i| i % UNOBSERVED_EVERY != 7).collect();
    let unknown = c.len() * UNKNOWN_PER_THOUSAND / 1000;
    let mut ids: Vec<String> = observed.iter().map(|&i| c.customer_id[i].clone()).collect();
    let mut rows = observed.clone();
    for j in 0..unknown {
        // Ids of another seed's population: never scored here.
        ids.push(format!("U{}", customer_id(j as u64, seed ^ 0x5EED_0F_0DD)));
        rows.push(j % c.len().max(1));
    }
    let n = ids.len();
    let at = observed_at.timestamp_micros();
    let b = RecordBatch::try_from_iter(vec![
        ("customer_id", Arc::new(StringArray::from(ids)) as ArrayRef),
        (
            "observed_at",
            Arc::new(TimestampMicrosecondArray::from(vec![at; n]).with_timezone("UTC")) as ArrayRef,
        ),
        (
            "churned",
            Arc::new(BooleanArray::from(
                rows.iter().map(|&r| c.churned[r]).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        (
            "ltv_12m",
            Arc::new(Float64Array::from(
                rows.iter().map(|&r| c.ltv_12m[r]).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        (
            "engagement_score",
            Arc::new(Float64Array::from(
                rows.iter()
                    .map(|&r| c.engagement_score[r])
                    .collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
    ])
    .expect("outcome columns match");
    (b, unknown, observed)
}

/// Writes the monthly story under `o.out`: `customers/` (the labelled training snapshot, as of
/// month 1), and per month `month-MM/current/` and, from month 2, `month-MM/outcomes/`, with
/// `truth.json`.
pub async fn generate_story(o: &Options, story: &Story) -> Result<StorySummary> {
    if o.rows == 0 {
        return Err(Error::Usage("--rows must be at least 1".into()));
    }
    if story.months < 2 {
        return Err(Error::Usage(format!(
            "--months {} tells no story; give at least 2 (outcomes arrive a month after scoring)",
            story.months
        )));
    }
    if let Some(k) = story.concept_change {
        if k == 0 || k > story.months {
            return Err(Error::Usage(format!(
                "--concept-change {k} is not one of the months 1..{}",
                story.months
            )));
        }
    }
    if !(0.0..=1.0).contains(&story.shift_per_month) {
        return Err(Error::Usage(format!(
            "--shift-per-month {} is outside 0..1",
            story.shift_per_month
        )));
    }
    let store = Store::open(&o.out)?;
    let (seed, rows) = (o.seed, o.rows);
    let training = tokio::task::spawn_blocking(move || gen_dataset(seed, 1, rows, true, 0.0))
        .await
        .map_err(|e| Error::Infra(format!("generator failed: {e}")))?;
    write_at(
        &store,
        "customers",
        &training,
        true,
        o,
        month_as_of(o.as_of, 1),
    )
    .await?;
    let mut months = Vec::new();
    let mut previous: Option<(usize, Cols)> = None;
    for m in 1..=story.months {
        let as_of = month_as_of(o.as_of, m);
        let drift = story.shift_per_month * (m - 1) as f64;
        let concept = match story.concept_change {
            Some(k) if m >= k => 1.0,
            _ => 0.0,
        };
        let stream = 100 + m as u64;
        let cols = tokio::task::spawn_blocking(move || {
            gen_dataset_with(seed, stream, rows, true, drift, concept)
        })
        .await
        .map_err(|e| Error::Infra(format!("generator failed: {e}")))?;
        let dir = format!("month-{m:02}");
        write_at(&store, &format!("{dir}/current"), &cols, false, o, as_of).await?;
        let outcomes = match previous.take() {
            None => None,
            Some((pm, pc)) => {
                // Observed an hour before this month's snapshot.
                let observed_at = as_of - chrono::Duration::hours(1);
                let (b, unknown, observed) = outcomes_batch(&pc, seed, observed_at);
                let location = format!("{dir}/outcomes");
                let bytes = crate::data::writer::to_parquet(&[b.clone()])?;
                store
                    .put(&format!("{location}/part-00000.parquet"), bytes)
                    .await?;
                let k = observed.len() as f64;
                let yb: Vec<bool> = observed.iter().map(|&i| pc.churned[i]).collect();
                let po: Vec<f64> = observed.iter().map(|&i| pc.churn_p[i]).collect();
                Some(OutcomesTruth {
                    location: format!("{location}/"),
                    cohort_month: pm,
                    observed_at: observed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    rows: b.num_rows(),
                    observed: observed.len(),
                    unknown_keys: unknown,
                    churn_rate: yb.iter().filter(|x| **x).count() as f64 / k,
                    mean_engagement_score: observed
                        .iter()
                        .map(|&i| pc.engagement_score[i])
                        .sum::<f64>()
                        / k,
                    mean_ltv_12m: observed.iter().map(|&i| pc.ltv_12m[i]).sum::<f64>() / k,
                    oracle_churn_auc: crate::metrics::roc_auc(&yb, &po).unwrap_or(f64::NAN),
                })
            }
        };
        months.push(MonthTruth {
            month: m,
            as_of: as_of.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            current: format!("{dir}/current/"),
            covariate_shift: drift,
            concept_changed: concept > 0.0,
            outcomes,
        });
        previous = Some((m, cols));
    }
    let summary = StorySummary {
        out: store.url().to_string(),
        seed: o.seed,
        rows: o.rows,
        shift_per_month: story.shift_per_month,
        concept_change_month: story.concept_change,
        training: "customers/".into(),
        months,
    };
    store.put_json("truth.json", &summary).await?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
    }

    #[test]
    fn ids_are_unique() {
        let ids: std::collections::HashSet<String> =
            (0..200_000).map(|i| customer_id(i, 9)).collect();
        assert_eq!(ids.len(), 200_000);
    }

    #[test]
    fn chunks_do_not_depend_on_thread_count() {
        let a = gen_dataset(5, 1, CHUNK + 10, true, 0.0);
        let b = gen_chunk(5, 1, CHUNK, 10, true, 0.0, 0.0);
        assert_eq!(a.customer_id[CHUNK..], b.customer_id[..]);
        assert_eq!(a.ltv_12m[CHUNK..], b.ltv_12m[..]);
    }
}
