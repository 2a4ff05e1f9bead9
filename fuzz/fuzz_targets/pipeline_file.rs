//! The pipeline-file parser and compiler on arbitrary text: any input gives a pipeline or an
//! error, never a panic, a hang or unbounded memory. Seeds: the shipped pipeline and the test
//! suite's broken variants (fuzz/corpus/pipeline_file).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlpipe::config::{compile_str, Overrides};

fuzz_target!(|data: &[u8]| {
    if let Ok(src) = std::str::from_utf8(data) {
        let _ = compile_str(src, "fuzz.toml", &Overrides::default());
    }
});
