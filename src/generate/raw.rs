//! `mlpipe generate --raw`: what a product database exports, from which the flat `customers`
//! table is derived with SQL (README, "Raw data and SQL stages").
//!
//! - `raw/profiles/`: one row per account: `signup_date`, `birth_year`, plan, region, device,
//!   gender, `features_used`, `email_open_rate`, `discount_pct`, `updated_at`, `is_test`.
//! - `raw/events/event_date=YYYY-MM-DD/`: one row per session, login, payment, failed payment
//!   and support ticket (`event_id`, `customer_id`, `event_time`, `event_type`, `minutes` for a
//!   session, `amount` for a payment), partitioned by the event's UTC date.
//! - `raw/labels/`: the targets observed later (`engagement_score`, `churned`, `ltv_12m`).
//!
//! The events are drawn so that the flat table's features are exact aggregates of them at the
//! snapshot time T (`as_of`): `sessions_30d` counts sessions in (T − 30 d, T];
//! `avg_session_minutes` is the mean session length over (T − 90 d, T] rounded to cents (every
//! customer has a session there; the customers whose flat value is null have no lengths
//! recorded); `days_since_last_login` is whole days from the last login to T;
//! `support_tickets_90d` and `payment_failures_90d` count their events in (T − 90 d, T];
//! `monthly_spend` sums payments in (T − 30 d, T]; `tenure_months` is whole months of 30.4375
//! days from `signup_date` to T's date; `age` is T's year minus `birth_year`. Events outside
//! the windows (older sessions, tickets and payments) are there to be filtered out.
//!
//! A pre-cleanup has something to do: test accounts (`is_test`, ids starting with `T`, with
//! events and labels) and events delivered twice (identical rows, same `event_id`) are counted
//! in `truth.json`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::*;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;

use super::{Cols, Rng, CHUNK};
use crate::config::ColumnType;
use crate::data::adapt::canonical_type;
use crate::error::Result;
use crate::storage::Store;

const DAY: i64 = 86_400;
/// Customers whose events are held in memory and written together (about 30 M events).
const BATCH: usize = 1 << 20;
/// One event in this many is delivered twice.
const DUPLICATE_EVERY: f64 = 500.0;
/// `tenure_months` counts months of 30.4375 days (365.25 / 12) = 487 / 16.
const MONTH_DAYS_NUM: i64 = 487;
const MONTH_DAYS_DEN: i64 = 16;

/// What `truth.json` records about the raw tables.
#[derive(Debug, Default, Serialize)]
pub struct RawTruth {
    pub profiles: usize,
    pub test_accounts: usize,
    pub events: usize,
    /// Events written twice (the second copy is the duplicate).
    pub duplicate_events: usize,
    /// Events per type, duplicates included.
    pub event_types: BTreeMap<String, usize>,
    /// Events of test accounts, duplicates included.
    pub test_account_events: usize,
    pub labels: usize,
    /// Date partitions of `events/`.
    pub event_days: usize,
    pub files: Vec<String>,
}

/// The event columns of a batch of customers, with each event's day before T (its partition).
#[derive(Default)]
struct Events {
    event_id: Vec<i64>,
    customer: Vec<u32>,
    time_s: Vec<i64>,
    kind: Vec<u8>,
    minutes: Vec<Option<f64>>,
    amount: Vec<Option<f64>>,
    duplicates: usize,
}

const KINDS: [&str; 5] = [
    "session",
    "login",
    "payment",
    "payment_failed",
    "support_ticket",
];

impl Events {
    fn push(
        &mut self,
        id: i64,
        row: u32,
        t: i64,
        kind: u8,
        minutes: Option<f64>,
        amount: Option<f64>,
    ) {
        self.event_id.push(id);
        self.customer.push(row);
        self.time_s.push(t);
        self.kind.push(kind);
        self.minutes.push(minutes);
        self.amount.push(amount);
    }

    fn append(&mut self, o: Events) {
        self.event_id.extend(o.event_id);
        self.customer.extend(o.customer);
        self.time_s.extend(o.time_s);
        self.kind.extend(o.kind);
        self.minutes.extend(o.minutes);
        self.amount.extend(o.amount);
        self.duplicates += o.duplicates;
    }
}

/// A uniform whole number of seconds in `lo..hi`.
fn offset(rng: &mut Rng, lo: i64, hi: i64) -> i64 {
    lo + rng.below((hi - lo) as usize) as i64
}

/// Appends one customer's events with consecutive ids, each delivered twice with probability
/// 1 / [`DUPLICATE_EVERY`].
struct Emitter<'a> {
    e: &'a mut Events,
    row: u32,
    next_id: i64,
}

impl Emitter<'_> {
    fn put(&mut self, rng: &mut Rng, at: i64, kind: u8, m: Option<f64>, a: Option<f64>) {
        let id = self.next_id;
        self.next_id += 1;
        self.e.push(id, self.row, at, kind, m, a);
        if rng.uniform() * DUPLICATE_EVERY < 1.0 {
            self.e.push(id, self.row, at, kind, m, a);
            self.e.duplicates += 1;
        }
    }
}

/// The events of customers `rows` (indices into `c`), from one RNG stream per chunk; `base` is
/// the first row's number in the whole population (for the event ids, 1024 per customer).
fn events_of(c: &Cols, rows: std::ops::Range<usize>, base: u64, seed: u64, t: i64) -> Events {
    let mut rng = Rng::new(
        seed ^ 0x00E7_E075 ^ (base + rows.start as u64).wrapping_mul(0xA24B_AED4_963E_E407),
    );
    let mut e = Events::default();
    for r in rows {
        let first = ((base + r as u64) << 10) as i64;
        let mut out = Emitter {
            e: &mut e,
            row: r as u32,
            next_id: first,
        };
        // Sessions: those of the last 30 days, at least one more in the 60 days before, with
        // lengths in cents averaging exactly the flat value.
        let recent = c.sessions_30d[r].max(0) as usize;
        let older = 1 + rng.poisson(0.5 * recent as f64) as usize;
        let cents = c.avg_session_minutes[r].map(|m| (m * 100.0).round() as i64);
        let mut lengths: Vec<Option<i64>> = vec![cents; recent + older];
        if let Some(mean) = cents {
            // Pairs moved apart by the same amount keep the sum, and so the mean.
            for k in (0..lengths.len() / 2 * 2).step_by(2) {
                let d = rng.below(mean.clamp(1, 600) as usize) as i64;
                lengths[k] = Some(mean + d);
                lengths[k + 1] = Some(mean - d);
            }
        }
        for (k, len) in lengths.into_iter().enumerate() {
            let at = if k < recent {
                t - offset(&mut rng, 0, 30 * DAY)
            } else {
                t - offset(&mut rng, 30 * DAY, 90 * DAY)
            };
            out.put(&mut rng, at, 0, len.map(|c| c as f64 / 100.0), None);
        }
        // Logins: the last one `days_since_last_login` whole days before T, some before it.
        let days = i64::from(c.days_since_last_login[r]);
        let at = t - days * DAY - offset(&mut rng, 0, DAY);
        out.put(&mut rng, at, 1, None, None);
        for _ in 0..rng.poisson(2.0) {
            let at = t - (days + 1) * DAY - offset(&mut rng, 0, 60 * DAY);
            out.put(&mut rng, at, 1, None, None);
        }
        // Payments: this month's is the monthly spend; the two before vary around it.
        let spend = c.monthly_spend[r];
        if spend > 0.0 {
            let at = t - offset(&mut rng, 0, 30 * DAY);
            out.put(&mut rng, at, 2, None, Some(spend));
            for m in 1..3 {
                let a = super::round_to((spend * (1.0 + 0.1 * rng.normal())).max(0.01), 2);
                let at = t - offset(&mut rng, m * 30 * DAY, (m + 1) * 30 * DAY);
                out.put(&mut rng, at, 2, None, Some(a));
            }
        }
        for _ in 0..c.payment_failures_90d[r] {
            let at = t - offset(&mut rng, 0, 90 * DAY);
            out.put(&mut rng, at, 3, None, None);
        }
        // Support tickets: those of the last 90 days, and some older.
        for _ in 0..c.support_tickets_90d[r] {
            let at = t - offset(&mut rng, 0, 90 * DAY);
            out.put(&mut rng, at, 4, None, None);
        }
        for _ in 0..rng.poisson(0.3) {
            let at = t - offset(&mut rng, 90 * DAY, 180 * DAY);
            out.put(&mut rng, at, 4, None, None);
        }
        assert!(
            out.next_id - first <= 1024,
            "over 1024 events for one customer"
        );
    }
    e
}

/// The events of all of `c`'s rows in `batch`, one stream per chunk, chunks on all cores.
fn events_parallel(
    c: &Cols,
    batch: std::ops::Range<usize>,
    base: u64,
    seed: u64,
    t: i64,
) -> Events {
    let chunks: Vec<usize> = batch.clone().step_by(CHUNK).collect();
    let parts: Vec<Events> = {
        use rayon::prelude::*;
        chunks
            .par_iter()
            .map(|&s| events_of(c, s..(s + CHUNK).min(batch.end), base, seed, t))
            .collect()
    };
    let mut all = Events::default();
    for p in parts {
        all.append(p);
    }
    all
}

fn profiles_batch(c: &Cols, test: bool, as_of: DateTime<Utc>, seed: u64) -> RecordBatch {
    let n = c.len();
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    let today = (as_of.date_naive() - epoch).num_days();
    let mut rng = Rng::new(seed ^ 0x51_6E_D0 ^ u64::from(test));
    let signup: Vec<i32> = c
        .tenure_months
        .iter()
        .map(|&m| {
            let m = i64::from(m.max(0));
            // Days d with floor(d / 30.4375) = m.
            let lo = (MONTH_DAYS_NUM * m + MONTH_DAYS_DEN - 1) / MONTH_DAYS_DEN;
            let hi = (MONTH_DAYS_NUM * (m + 1) + MONTH_DAYS_DEN - 1) / MONTH_DAYS_DEN;
            (today - offset(&mut rng, lo, hi)) as i32
        })
        .collect();
    let year = as_of.year();
    let as_of_us = as_of.timestamp() * 1_000_000;
    let schema = Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("is_test", DataType::Boolean, false),
        Field::new("signup_date", DataType::Date32, false),
        Field::new("birth_year", DataType::Int32, true),
        Field::new("gender", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("plan", DataType::Utf8, false),
        Field::new("device", DataType::Utf8, false),
        Field::new("features_used", DataType::Int32, false),
        Field::new("email_open_rate", DataType::Float64, true),
        Field::new("discount_pct", DataType::Float64, false),
        Field::new("updated_at", canonical_type(ColumnType::Timestamp), false),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(&c.customer_id)),
        Arc::new(BooleanArray::from(vec![test; n])),
        Arc::new(Date32Array::from(signup)),
        Arc::new(Int32Array::from(
            c.age
                .iter()
                .map(|a| a.map(|a| year - a))
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(c.gender.clone())),
        Arc::new(StringArray::from(c.region.clone())),
        Arc::new(StringArray::from(c.plan.clone())),
        Arc::new(StringArray::from(c.device.clone())),
        Arc::new(Int32Array::from(c.features_used.clone())),
        Arc::new(Float64Array::from(c.email_open_rate.clone())),
        Arc::new(Float64Array::from(c.discount_pct.clone())),
        Arc::new(
            TimestampMicrosecondArray::from(
                c.updated_offset_s
                    .iter()
                    .map(|o| as_of_us - o * 1_000_000)
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(Arc::new(schema), cols).expect("profile columns match the schema")
}

fn labels_batch(c: &Cols) -> RecordBatch {
    RecordBatch::try_from_iter(vec![
        (
            "customer_id",
            Arc::new(StringArray::from_iter_values(&c.customer_id)) as ArrayRef,
        ),
        (
            "engagement_score",
            Arc::new(Float64Array::from(c.engagement_score.clone())) as ArrayRef,
        ),
        (
            "churned",
            Arc::new(BooleanArray::from(c.churned.clone())) as ArrayRef,
        ),
        (
            "ltv_12m",
            Arc::new(Float64Array::from(c.ltv_12m.clone())) as ArrayRef,
        ),
    ])
    .expect("label columns match")
}

fn events_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Int64, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("event_time", canonical_type(ColumnType::Timestamp), false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("minutes", DataType::Float64, true),
        Field::new("amount", DataType::Float64, true),
    ]))
}

/// The events of `rows`, one batch per UTC day (in time order within a day), keyed by the date.
fn events_by_day(e: &Events, ids: &[String]) -> Vec<(chrono::NaiveDate, RecordBatch)> {
    let mut order: Vec<u32> = (0..e.time_s.len() as u32).collect();
    order.sort_by_key(|&i| (e.time_s[i as usize], e.event_id[i as usize]));
    let mut out = Vec::new();
    let schema = events_schema();
    let mut start = 0;
    while start < order.len() {
        let day = e.time_s[order[start] as usize].div_euclid(DAY);
        let mut end = start;
        while end < order.len() && e.time_s[order[end] as usize].div_euclid(DAY) == day {
            end += 1;
        }
        let rows = &order[start..end];
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|&i| e.event_id[i as usize]),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter()
                    .map(|&i| ids[e.customer[i as usize] as usize].as_str()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    rows.iter().map(|&i| e.time_s[i as usize] * 1_000_000),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|&i| KINDS[e.kind[i as usize] as usize]),
            )),
            Arc::new(Float64Array::from_iter(
                rows.iter().map(|&i| e.minutes[i as usize]),
            )),
            Arc::new(Float64Array::from_iter(
                rows.iter().map(|&i| e.amount[i as usize]),
            )),
        ];
        let date = chrono::DateTime::from_timestamp(day * DAY, 0)
            .expect("an event date")
            .date_naive();
        out.push((
            date,
            RecordBatch::try_new(schema.clone(), cols).expect("event columns match the schema"),
        ));
        start = end;
    }
    out
}

/// Test accounts: as many as one in a thousand customers (at least 3), drawn like customers
/// from their own stream, with ids starting with `T`.
pub(super) fn test_accounts(seed: u64, customers: usize) -> Cols {
    let n = (customers / 1000).max(3);
    let mut c = super::gen_dataset(seed ^ 0x7E57, 3, n, true, 0.0);
    for id in &mut c.customer_id {
        id.replace_range(0..1, "T");
    }
    c
}

/// Writes `raw/` under `store` for the labelled `customers` (without defects) at `as_of`.
pub(super) async fn write(
    store: &Store,
    customers: &Cols,
    seed: u64,
    as_of: DateTime<Utc>,
) -> Result<RawTruth> {
    let mut truth = RawTruth::default();
    let tests = test_accounts(seed, customers.len());
    let t = as_of.timestamp();
    let mut days = std::collections::BTreeSet::new();
    // Profiles and labels: customers, then the test accounts.
    for (k, (c, test)) in [(customers, false), (&tests, true)].into_iter().enumerate() {
        let p = profiles_batch(c, test, as_of, seed);
        let l = labels_batch(c);
        truth.profiles += p.num_rows();
        truth.labels += l.num_rows();
        for (dir, b) in [("profiles", p), ("labels", l)] {
            let rel = format!("raw/{dir}/part-{k:05}.parquet");
            store
                .put(&rel, crate::data::writer::to_parquet(&[b])?)
                .await?;
            truth.files.push(rel);
        }
    }
    truth.test_accounts = tests.len();
    // Events: customers in batches, then the test accounts (numbered after the customers).
    let mut part = 0usize;
    let mut batches: Vec<(&Cols, std::ops::Range<usize>, u64)> = (0..customers.len())
        .step_by(BATCH)
        .map(|s| (customers, s..(s + BATCH).min(customers.len()), 0))
        .collect();
    batches.push((&tests, 0..tests.len(), customers.len() as u64));
    for (c, range, base) in batches {
        // Computed on rayon's threads while this task waits: nothing else runs in `generate`.
        let e = events_parallel(c, range.clone(), base, seed, t);
        truth.events += e.time_s.len();
        truth.duplicate_events += e.duplicates;
        if base > 0 {
            truth.test_account_events += e.time_s.len();
        }
        for &k in &e.kind {
            *truth
                .event_types
                .entry(KINDS[k as usize].to_string())
                .or_default() += 1;
        }
        let by_day = events_by_day(&e, &c.customer_id);
        drop(e);
        for (date, b) in by_day {
            days.insert(date);
            let rel = format!("raw/events/event_date={date}/part-{part:05}.parquet");
            store
                .put(&rel, crate::data::writer::to_parquet(&[b])?)
                .await?;
        }
        part += 1;
    }
    truth.event_days = days.len();
    truth.files.push("raw/events/".into());
    Ok(truth)
}
