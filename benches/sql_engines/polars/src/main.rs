#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[path = "../../common.rs"]
mod common;
use polars::prelude::*;
use polars::sql::SQLContext;

fn main() -> PolarsResult<()> {
    let (data, sql, out) = common::args();
    let mut ctx = SQLContext::new();
    let scan = |p: String, hive: bool| {
        let mut a = ScanArgsParquet::default();
        if hive {
            a.hive_options = HiveOptions::new_enabled();
        }
        LazyFrame::scan_parquet(PlRefPath::new(p), a)
    };
    ctx.register("profiles", scan(format!("{data}/raw/profiles/*.parquet"), false)?);
    ctx.register("labels", scan(format!("{data}/raw/labels/*.parquet"), false)?);
    ctx.register("events", scan(format!("{data}/raw/events/**/*.parquet"), true)?);
    let t = std::time::Instant::now();
    let cleanup = common::render(&std::fs::read_to_string(format!("{sql}/cleanup.sql")).unwrap());
    let ec = ctx.execute(&cleanup)?;
    ctx.register("events_clean", ec);
    let q = common::render(&std::fs::read_to_string(format!("{sql}/features.sql")).unwrap());
    let mut df = ctx.execute(&q)?.collect()?;
    if out.is_empty() {
        println!("polars rows {} in {:.3} s", df.height(), t.elapsed().as_secs_f64());
    } else {
        let f = std::fs::File::create(&out).unwrap();
        ParquetWriter::new(f).finish(&mut df)?;
        println!("polars wrote {out} in {:.3} s", t.elapsed().as_secs_f64());
    }
    Ok(())
}
