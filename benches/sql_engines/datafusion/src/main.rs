#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[path = "../../common.rs"]
mod common;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::*;

#[tokio::main]
async fn main() -> datafusion::error::Result<()> {
    let (data, sql, out) = common::args();
    let ctx = SessionContext::new();
    ctx.register_parquet("profiles", format!("{data}/raw/profiles/"), ParquetReadOptions::default()).await?;
    ctx.register_parquet("labels", format!("{data}/raw/labels/"), ParquetReadOptions::default()).await?;
    let ev = ParquetReadOptions::default().table_partition_cols(vec![("event_date".to_string(), DataType::Utf8)]);
    ctx.register_parquet("events", format!("{data}/raw/events/"), ev).await?;
    let t = std::time::Instant::now();
    let cleanup = common::render(&std::fs::read_to_string(format!("{sql}/cleanup.sql"))?);
    ctx.sql(&format!("CREATE VIEW events_clean AS {cleanup}")).await?;
    let q = common::render(&std::fs::read_to_string(format!("{sql}/features.sql"))?);
    let df = ctx.sql(&q).await?;
    if out.is_empty() {
        let b = df.collect().await?;
        let n: usize = b.iter().map(|b| b.num_rows()).sum();
        println!("datafusion rows {n} in {:.3} s", t.elapsed().as_secs_f64());
    } else {
        df.write_parquet(&out, datafusion::dataframe::DataFrameWriteOptions::new().with_single_file_output(true), None).await?;
        println!("datafusion wrote {out} in {:.3} s", t.elapsed().as_secs_f64());
    }
    Ok(())
}
