//! `mlpipe generate`: deterministic for a seed.

use crate::common::*;

#[test]
fn same_seed_gives_byte_identical_files() {
    let p = Project::new(false);
    p.ok(&[
        "generate",
        "--rows",
        "70000",
        "--seed",
        "3",
        "--out",
        "a",
        "--defects",
        "--drift",
        "0.5",
        "--rows-per-file",
        "40000",
    ]);
    p.ok(&[
        "generate",
        "--rows",
        "70000",
        "--seed",
        "3",
        "--out",
        "b",
        "--defects",
        "--drift",
        "0.5",
        "--rows-per-file",
        "40000",
    ]);
    p.ok(&[
        "generate",
        "--rows",
        "70000",
        "--seed",
        "4",
        "--out",
        "c",
        "--defects",
        "--drift",
        "0.5",
        "--rows-per-file",
        "40000",
    ]);
    let a = parquet_files(&p.path("a"));
    assert_eq!(a.len(), 4, "two datasets of two files each");
    for f in &a {
        let rel = f.strip_prefix(p.path("a")).unwrap();
        assert!(
            std::fs::read(f).unwrap() == std::fs::read(p.path("b").join(rel)).unwrap(),
            "{rel:?} differs"
        );
        assert!(
            std::fs::read(f).unwrap() != std::fs::read(p.path("c").join(rel)).unwrap(),
            "{rel:?} ignores the seed"
        );
    }
    assert!(
        std::fs::read(p.path("a/truth.json")).unwrap()
            == std::fs::read(p.path("b/truth.json")).unwrap()
    );
}

#[test]
fn shipped_fixtures_are_what_the_generator_makes() {
    // data/ is `mlpipe generate --rows 20000 --seed 42 --out data`; regenerating gives the same bytes.
    let p = Project::new(false);
    p.ok(&[
        "generate", "--rows", "20000", "--seed", "42", "--out", "regen",
    ]);
    // The shipped tables (not an export a README step may have generated under data/export).
    let shipped = ["customers", "current"].map(|d| std::path::Path::new(REPO).join("data").join(d));
    for f in shipped.iter().flat_map(|d| parquet_files(d)) {
        let rel = f
            .strip_prefix(std::path::Path::new(REPO).join("data"))
            .unwrap();
        assert!(
            std::fs::read(&f).unwrap() == std::fs::read(p.path("regen").join(rel)).unwrap(),
            "{rel:?} differs"
        );
    }
}
