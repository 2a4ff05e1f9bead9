//! The Parquet reader and schema adapter on arbitrary bytes: the input is stored as the one file
//! of the `customers` dataset of the shipped pipeline (in a memory:// store) and read the way the
//! load stage reads it, adapting every column to its declared type. Any input gives a table or
//! an error, never a panic. Seeds: Parquet files in the physical variants the adapter accepts
//! (fuzz/corpus/parquet_file).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mlpipe::config::{compile_str, Overrides, Pipeline};
use mlpipe::storage::Store;

const PIPELINE: &str = include_str!("../../pipelines/engagement.toml");

fn setup() -> &'static (tokio::runtime::Runtime, Pipeline, Store) {
    static S: OnceLock<(tokio::runtime::Runtime, Pipeline, Store)> = OnceLock::new();
    S.get_or_init(|| {
        // libfuzzer-sys aborts on any panic through its hook, even one the reader catches and
        // turns into an error (it guards the parquet crate's assertions); keep the default hook,
        // so only a panic that escapes `read_dataset` fails the target.
        let _ = std::panic::take_hook();
        let ov = Overrides {
            set: vec![("storage.data".into(), "\"memory://fuzz-parquet/data\"".into())],
            ..Default::default()
        };
        let p = compile_str(PIPELINE, "engagement.toml", &ov).expect("the shipped pipeline compiles");
        let store = Store::open("memory://fuzz-parquet/data").expect("memory store");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        (rt, p, store)
    })
}

fuzz_target!(|data: &[u8]| {
    let (rt, p, store) = setup();
    let ds = &p.datasets["customers"];
    rt.block_on(async {
        store
            .put("customers/part-0.parquet", bytes::Bytes::copy_from_slice(data))
            .await
            .unwrap();
        let located = mlpipe::data::reader::locate(&p.storage.data, &ds.location)
            .await
            .unwrap();
        let _ = mlpipe::data::reader::read_dataset(ds, &located, None).await;
    });
});
