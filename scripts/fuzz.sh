#!/usr/bin/env bash
# Timed fuzzing of the pipeline-file compiler and the Parquet reader (cargo fuzz, libFuzzer).
# The corpora in fuzz/corpus are replayed by the ordinary tests (tests/it/fuzz_corpus.rs); this
# script looks for new inputs. Needs the nightly toolchain (libFuzzer's sanitizer flags) and
# cargo-fuzz; installs both when missing. New inputs go to a temporary folder; a crashing input
# is written under fuzz/artifacts/<target>/ — add it to fuzz/corpus/<target>/ once fixed, so the
# tests replay it from then on.
#
#   scripts/fuzz.sh [SECONDS]     each target for SECONDS (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== installing cargo-fuzz (cargo install, about 1 minute)"
  cargo install cargo-fuzz@0.13.2 --locked --quiet
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "== installing the nightly toolchain (for cargo fuzz)"
  rustup toolchain install nightly --profile minimal
fi

for target in pipeline_file parquet_file; do
  found=$(mktemp -d) log=$(mktemp)
  if ! (cd fuzz && cargo +nightly fuzz run -O "$target" "$found" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "error: fuzz target $target failed; the input that broke it is under fuzz/artifacts/$target" >&2
    exit 1
  fi
  echo "$target: $(grep -E '^stat::number_of_executed_units' "$log" | tr -d ' ') in ${seconds}s, no failure"
  rm -rf "$found" "$log"
done
