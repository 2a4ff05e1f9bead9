//! `mlpipe generate`: synthetic customers (and `truth.json`).

use super::GenerateArgs;
use crate::error::{Error, Result};

pub async fn generate(a: GenerateArgs) -> Result<i32> {
    let as_of = crate::time::parse_timestamp(&a.as_of)
        .ok_or_else(|| Error::Usage(format!("--as-of `{}` is not a timestamp", a.as_of)))?;
    let o = crate::generate::Options {
        rows: a.rows,
        seed: a.seed,
        out: a.out.clone(),
        drift: a.drift,
        defects: a.defects,
        as_of,
        rows_per_file: a.rows_per_file,
        raw: a.raw,
    };
    if a.raw && a.months.is_some() {
        return Err(Error::Usage(
            "--raw cannot be combined with --months".into(),
        ));
    }
    let t0 = std::time::Instant::now();
    if let Some(months) = a.months {
        let story = crate::generate::Story {
            months,
            concept_change: a.concept_change,
            shift_per_month: a.shift_per_month,
        };
        let s = crate::generate::generate_story(&o, &story).await?;
        println!(
            "wrote a story of {months} months of {} customers to {} in {:.2} s (seed {}, shift {} a month, concept change {}); truth.json says what each month holds",
            a.rows,
            s.out,
            t0.elapsed().as_secs_f64(),
            s.seed,
            s.shift_per_month,
            s.concept_change_month.map_or("none".to_string(), |m| format!("from month {m}"))
        );
        return Ok(0);
    }
    if a.concept_change.is_some() {
        return Err(Error::Usage("--concept-change needs --months".into()));
    }
    let s = crate::generate::generate(&o).await?;
    if let Some(r) = &s.raw {
        println!(
            "wrote raw tables to {}/raw: {} profiles ({} test accounts), {} events over {} days ({} delivered twice), {} labels",
            s.out, r.profiles, r.test_accounts, r.events, r.event_days, r.duplicate_events, r.labels
        );
    }
    println!(
        "wrote {} customers ({} rows with duplicates) and {} current rows to {} in {:.2} s (seed {}, drift {}, defects {})",
        a.rows,
        s.customers.rows,
        s.current.rows,
        s.out,
        t0.elapsed().as_secs_f64(),
        s.seed,
        s.drift,
        if s.defects { format!("{} rejected rows listed in truth.json", s.customers.rejected.len()) } else { "none".into() }
    );
    Ok(0)
}
