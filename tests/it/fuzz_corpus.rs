//! The fuzz targets' corpora replayed as ordinary tests: every input in `fuzz/corpus/` (the
//! seeds and every input fuzzing found worth keeping, the crashing ones included) goes through
//! the code the target drives, the way the target drives it, and must give a result or an error,
//! never a panic. Timed fuzzing, which finds new inputs, is `scripts/fuzz.sh`.

use std::path::PathBuf;

use mlpipe::config::{compile_str, Overrides};
use mlpipe::storage::Store;

use crate::common::REPO;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(REPO).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

/// `fuzz/fuzz_targets/pipeline_file.rs`: the pipeline-file compiler on each input.
#[test]
fn the_pipeline_file_corpus_compiles_or_is_refused_without_a_panic() {
    let mut compiled = 0;
    for f in corpus("pipeline_file") {
        let bytes = std::fs::read(&f).unwrap();
        let Ok(src) = std::str::from_utf8(&bytes) else {
            continue;
        };
        let r = std::panic::catch_unwind(|| compile_str(src, "fuzz.toml", &Overrides::default()));
        let r = r.unwrap_or_else(|_| panic!("{} panicked the compiler", f.display()));
        compiled += usize::from(r.is_ok());
    }
    // The shipped pipeline is in the corpus and compiles.
    assert!(compiled >= 1);
}

/// `fuzz/fuzz_targets/parquet_file.rs`: each input stored as the one file of the shipped
/// pipeline's `customers` dataset and read the way the load stage reads it.
#[tokio::test]
async fn the_parquet_corpus_reads_or_is_refused_without_a_panic() {
    let pipeline = std::fs::read_to_string(format!("{REPO}/pipelines/engagement.toml")).unwrap();
    let mut read = 0;
    for (i, f) in corpus("parquet_file").into_iter().enumerate() {
        let root = format!("memory://fuzz-corpus-{i}/data");
        let ov = Overrides {
            set: vec![("storage.data".into(), format!("\"{root}\""))],
            ..Default::default()
        };
        let p = compile_str(&pipeline, "engagement.toml", &ov).unwrap();
        let ds = &p.datasets["customers"];
        let store = Store::open(&root).unwrap();
        let bytes = bytes::Bytes::from(std::fs::read(&f).unwrap());
        store.put("customers/part-0.parquet", bytes).await.unwrap();
        let located = mlpipe::data::reader::locate(&p.storage.data, &ds.location)
            .await
            .unwrap();
        let r = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
            mlpipe::data::reader::read_dataset(ds, &located, None),
        ))
        .await
        .unwrap_or_else(|_| panic!("{} panicked the reader", f.display()));
        read += usize::from(r.is_ok());
    }
    // The canonical files are in the corpus and read.
    assert!(read >= 1);
}
