#!/usr/bin/env bash
# The SQL engine comparison (benches/sql_engines/README.md): DataFusion, polars and DuckDB on the
# raw pipeline's feature query, same files, same machine, one after the other.
#   scripts/bench_sql_engines.sh [ROWS] [DATA_DIR]
# Needs python3 with duckdb and pyarrow (a virtualenv is made in /tmp/sqlbench-venv).
set -euo pipefail
ROWS=${1:-1000000}
DATA=${2:-/tmp/sqlbench-raw-$ROWS}
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=/tmp/sqlbench-venv
[ -x $VENV/bin/python ] || { python3 -m venv $VENV && $VENV/bin/pip install -q duckdb pyarrow; }
if [ ! -f "$DATA/truth.json" ]; then
  (cd "$REPO" && cargo run --release -q -- generate --rows "$ROWS" --raw --out "$DATA")
fi
for engine in datafusion polars; do
  dir=$REPO/benches/sql_engines/$engine
  if [ ! -x "$dir/target/release/sql-bench-$engine" ]; then
    start=$(date +%s)
    (cd "$dir" && CARGO_TARGET_DIR=$dir/target cargo build --release -q)
    echo "$engine: clean release build $(( $(date +%s) - start )) s, binary $(du -h "$dir/target/release/sql-bench-$engine" | cut -f1)"
  fi
done
# polars runs its own variant of the SQL (benches/sql_engines/polars/sql/ says why).
sqldir() { if [ "$1" = polars ]; then echo "$REPO/benches/sql_engines/polars/sql"; else echo "$REPO/pipelines/sql"; fi; }
for i in 1 2 3; do
  for engine in datafusion polars; do
    /usr/bin/time -f "  peak %M KB" "$REPO/benches/sql_engines/$engine/target/release/sql-bench-$engine" "$DATA" "$(sqldir $engine)" 2>&1 || echo "  $engine failed"
  done
  /usr/bin/time -f "  peak %M KB" $VENV/bin/python "$REPO/scripts/reference/raw_features.py" "$DATA" "$REPO/pipelines/sql" --time-only 2>&1
done
