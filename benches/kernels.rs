//! Criterion benchmarks of the kernels, on data from the generator with a fixed seed:
//! Parquet load (read + schema adaptation), the data-quality checks, Parquet write and the
//! booster's fit.
//!
//! `cargo bench --bench kernels` (set MLPIPE_BENCH_ROWS to change the size; default 200 000).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use mlpipe::config::{compile_file, Overrides};

fn rows() -> usize {
    std::env::var("MLPIPE_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000)
}

fn kernels(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap().to_string();
    let n = rows();
    let opts = mlpipe::generate::Options {
        rows: n,
        seed: 11,
        out: out.clone(),
        drift: 0.0,
        defects: true,
        as_of: mlpipe::config::compile::parse_timestamp(mlpipe::generate::DEFAULT_AS_OF).unwrap(),
        rows_per_file: 1_000_000,
    };
    rt.block_on(mlpipe::generate::generate(&opts)).unwrap();
    let pipeline = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/engagement.toml");
    let ov = Overrides {
        set: vec![("storage.data".into(), format!("\"{out}\""))],
        ..Default::default()
    };
    let p = compile_file(pipeline, &ov).unwrap();
    let ds = p.datasets["customers"].clone();
    let located = rt
        .block_on(mlpipe::data::reader::locate(&p.storage.data, &ds.location))
        .unwrap();

    let mut g = c.benchmark_group(format!("customers_{n}"));
    g.sample_size(10);
    g.bench_function("parquet_load", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(mlpipe::data::reader::read_dataset(&ds, &located, None))
                    .unwrap(),
            )
        })
    });
    let table = rt
        .block_on(mlpipe::data::reader::read_dataset(&ds, &located, None))
        .unwrap();
    let as_of = p.as_of.unwrap_or_else(chrono::Utc::now);
    g.bench_function("quality_checks", |b| {
        b.iter(|| black_box(mlpipe::quality::check(&ds, &table, &p.quality, as_of)))
    });
    g.bench_function("parquet_write", |b| {
        b.iter(|| {
            black_box(mlpipe::data::writer::to_parquet(std::slice::from_ref(&table.batch)).unwrap())
        })
    });
    // The booster on the default pipeline's features, 50 trees (the default pipeline uses 200).
    let features = p.models["churn"].features.clone();
    let rows: Vec<u32> = (0..table.num_rows() as u32).collect();
    let transform =
        mlpipe::model::transform::Transform::fit(&table.batch, &features, &rows).unwrap();
    let matrix = transform.apply(&table.batch).unwrap();
    let y = mlpipe::model::target(
        &table.batch,
        "ltv_12m",
        mlpipe::config::Task::Regression,
        None,
    )
    .unwrap();
    let params = mlpipe::model::gbdt::Params {
        n_trees: 50,
        ..Default::default()
    };
    g.bench_function("gbdt_fit_50_trees", |b| {
        b.iter(|| {
            black_box(mlpipe::model::gbdt::train(
                &matrix.views(),
                &y,
                mlpipe::model::gbdt::Objective::SquaredError,
                &params,
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
