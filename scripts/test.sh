#!/usr/bin/env bash
# Runs every test of the project. Idempotent; installs what the tests need first.
# Used by the README and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed; install Rust from https://rustup.rs (stable toolchain)" >&2
  exit 1
fi
# rustfmt ships with the toolchain; install it if a minimal profile left it out.
if ! cargo fmt --version >/dev/null 2>&1; then
  rustup component add rustfmt
fi

echo "== format"
cargo fmt --all -- --check

echo "== unit and integration tests"
cargo test --all-targets --no-fail-fast

echo "== benchmarks compile and run once (smoke)"
MLPIPE_BENCH_ROWS=20000 cargo bench --bench kernels -- --test
