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
# polars runs a variant of the shipped SQL, derived here: its SQL cannot write a time-zone-aware
# literal ("`timestamp` with timezone is not (yet) supported") nor compare a UTC column with a
# naive one, so the events lose their (UTC) zone in the cleanup and the snapshot time is a
# literal without zone; and it cannot take EXTRACT(EPOCH ...) of a DATE ("`nanosecond` operation
# not supported for dtype `date`"), so dates are cast to TIMESTAMP first.
PL_SQL=$DATA/polars-sql
mkdir -p "$PL_SQL"
sed 's/e\.event_time, e\.event_type/CAST(e.event_time AS TIMESTAMP) AS event_time, e.event_type/' \
  "$REPO/pipelines/sql/cleanup.sql" > "$PL_SQL/cleanup.sql"
sed -e 's/EXTRACT(EPOCH FROM {{ as_of_date }})/EXTRACT(EPOCH FROM CAST({{ as_of_date }} AS TIMESTAMP))/' \
  -e 's/EXTRACT(EPOCH FROM p\.signup_date)/EXTRACT(EPOCH FROM CAST(p.signup_date AS TIMESTAMP))/' \
  -e "s/{{ as_of }}/TIMESTAMP '2026-11-20 06:00:00'/g" -e "s/{{ as_of_date }}/DATE '2026-11-20'/g" \
  "$REPO/pipelines/sql/features.sql" > "$PL_SQL/features.sql"
sqldir() { if [ "$1" = polars ]; then echo "$PL_SQL"; else echo "$REPO/pipelines/sql"; fi; }
for i in 1 2 3; do
  for engine in datafusion polars; do
    /usr/bin/time -f "  peak %M KB" "$REPO/benches/sql_engines/$engine/target/release/sql-bench-$engine" "$DATA" "$(sqldir $engine)" 2>&1 || echo "  $engine failed"
  done
  /usr/bin/time -f "  peak %M KB" $VENV/bin/python "$REPO/scripts/reference/raw_features.py" "$DATA" "$REPO/pipelines/sql" --time-only 2>&1
done
