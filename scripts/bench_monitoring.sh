#!/usr/bin/env bash
# The production-accuracy figures at scale (docs/PERFORMANCE.md): a two-month story of ROWS
# customers; month 1 trains and scores (the estimates' cost is `estimate_seconds` in the score
# stage's summary), month 2 scores with the production models and joins ROWS outcomes with the
# month-1 cohort (the `evaluate` stage's duration).
#   scripts/bench_monitoring.sh [ROWS] [DIR]
set -euo pipefail
ROWS=${1:-1000000}
DIR=${2:-/tmp/mlpipe-bench-monitoring-$ROWS}
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${MLPIPE_BIN:-$REPO/target/release/mlpipe}
[ -x "$BIN" ] || (cd "$REPO" && cargo build --release -q)
rm -rf "$DIR/runs" "$DIR/models"
[ -f "$DIR/story/truth.json" ] || "$BIN" generate --rows "$ROWS" --months 2 --out "$DIR/story"
cd "$REPO"
month() {
  local m=$1 pf=$2
  local as_of current outcomes
  as_of=$(python3 -c "import json;print(json.load(open('$DIR/story/truth.json'))['months'][$m-1]['as_of'])")
  current=$(python3 -c "import json;print(json.load(open('$DIR/story/truth.json'))['months'][$m-1]['current'])")
  outcomes=$(python3 -c "import json;o=json.load(open('$DIR/story/truth.json'))['months'][$m-1]['outcomes'];print(o['location'] if o else '')")
  local args=(run $pf --as-of "$as_of" --run-id "month-$m" --set "storage.data=\"$DIR/story\""
    --set "storage.artifacts=\"$DIR/runs\"" --set "storage.registry=\"$DIR/models\""
    --input "current=$DIR/story/$current" --log-format json)
  [ -n "$outcomes" ] && args+=(--input "outcomes=$DIR/story/$outcomes")
  /usr/bin/time -f "%e s, peak %M KB" "$BIN" "${args[@]}" > "$DIR/month-$m.log" 2>&1 || true
  tail -1 "$DIR/month-$m.log"
  python3 - "$DIR/runs/month-$m/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for name, st in m["stages"].items():
    s = st.get("summary") or {}
    extra = ""
    if name == "score":
        sc = s.get("score", s)
        est = {k: v.get("estimate_seconds") for k, v in (sc.get("models") or {}).items()} if isinstance(sc, dict) else {}
        extra = f" estimate_seconds {est}"
    if name == "evaluate":
        ms = s.get("evaluate", s).get("models") or {}
        extra = " matched " + ", ".join(f"{k} {v['counts']['matched']}/{v['counts']['outcomes']}" for k, v in ms.items())
    print(f"  {name:18} {st.get('status'):10} {st.get('duration_s') or 0:7.2f} s{extra}")
PY
}
month 1 pipelines/engagement.toml
month 2 pipelines/monitor.toml
