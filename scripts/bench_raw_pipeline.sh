#!/usr/bin/env bash
# The raw pipeline's sql stages (pipelines/raw.toml: cleanup, then features) against DuckDB doing
# the same work on the same files (the cleaned events and the features written as Parquet),
# alternated three times; wall time and peak memory of each (docs/PERFORMANCE.md).
#   scripts/bench_raw_pipeline.sh [ROWS] [DATA_DIR]
# Needs python3 with duckdb and pyarrow (a virtualenv is made in /tmp/sqlbench-venv).
set -euo pipefail
ROWS=${1:-1000000}
DATA=${2:-/tmp/sqlbench-raw-$ROWS}
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=/tmp/sqlbench-venv
[ -x $VENV/bin/python ] || { python3 -m venv $VENV && $VENV/bin/pip install -q duckdb pyarrow; }
(cd "$REPO" && cargo build --release -q)
BIN=${MLPIPE_BIN:-$REPO/target/release/mlpipe}
if [ ! -f "$DATA/truth.json" ]; then
  "$BIN" generate --rows "$ROWS" --raw --out "$DATA"
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/pipelines" "$WORK/duck"
cp -r "$REPO/pipelines/." "$WORK/pipelines/"
for i in 1 2 3; do
  rm -rf "$WORK/runs"
  (cd "$WORK" && /usr/bin/time -f "  mlpipe peak %M KB, wall %e s" "$BIN" --log-format json run pipelines/raw.toml \
      --set storage.data="$DATA" --to features --run-id "b$i" >/dev/null 2>"$WORK/err" || { cat "$WORK/err"; exit 1; })
  tail -1 "$WORK/err"
  python3 - "$WORK/runs/raw/b$i/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
parts = []
for st in ("cleanup", "features"):
    s = m["stages"][st]
    q = s["summary"]
    read = ", ".join(f"{t} {r['rows_in']}" for t, r in q["inputs"].items())
    mb = sum(r["bytes_scanned"] for r in q["inputs"].values()) / 1e6
    parts.append(f"{st} {s['duration_s']:.2f} s (read {read}; {mb:.0f} MB scanned; {q['rows_out']} rows out)")
print("  mlpipe: " + "; ".join(parts))
PY
  rm -f "$WORK/duck/"*
  /usr/bin/time -f "  duckdb peak %M KB, wall %e s" $VENV/bin/python "$REPO/scripts/reference/raw_features.py" \
      "$DATA" "$REPO/pipelines/sql" "$WORK/duck" --materialize 2>&1
done
