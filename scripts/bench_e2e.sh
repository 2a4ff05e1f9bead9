#!/usr/bin/env bash
# End-to-end benchmark against the Python peer (a pandas + LightGBM + scikit-learn + scipy +
# fairlearn script doing the same stages, given by PEER): for each size,
# generates customers with a fixed seed, then runs `mlpipe run` (release build) and the peer on
# the same files in the same session, and prints wall time, peak memory and model metrics side
# by side with their ratios.
#
#   scripts/bench_e2e.sh [N ...]          default: 100000 1000000 10000000
#   PEER=path/to/peer_pipeline.py         required: the peer script
#   PEER_PYTHON=python                    default: a venv in $BENCH_VENV (created on first use)
#   RUNS=k                                mlpipe runs per size (median reported; default 1)
#   SKIP_PEER_ABOVE=N                     run the peer only up to N customers (default: always)
#   PEER_AT="N ..."                       run the peer only at these sizes (default: every size)
#
# Each size also prints the time per customer (µs), so that growth between sizes reads directly.
#
# Machines here are shared and noisy: quote the ratios, which come from the same session.
set -euo pipefail
cd "$(dirname "$0")/.."
PEER=${PEER:-}
BENCH_VENV=${BENCH_VENV:-/tmp/mlpipe-peer-venv}
RUNS=${RUNS:-1}
SKIP_PEER_ABOVE=${SKIP_PEER_ABOVE:-0}
PEER_AT=${PEER_AT:-}
sizes=("$@"); [ ${#sizes[@]} -eq 0 ] && sizes=(100000 1000000 10000000)

if [ -z "${PEER_PYTHON:-}" ]; then
  if [ ! -x "$BENCH_VENV/bin/python" ]; then
    echo "== creating the peer's virtualenv in $BENCH_VENV" >&2
    python3 -m venv "$BENCH_VENV"
    "$BENCH_VENV/bin/pip" install --quiet pandas pyarrow scikit-learn scipy lightgbm fairlearn
  fi
  PEER_PYTHON="$BENCH_VENV/bin/python"
fi
[ -n "$PEER" ] && [ -f "$PEER" ] || { echo "error: set PEER to the Python peer script (pandas + LightGBM + scikit-learn + scipy + fairlearn); '$PEER' is not a file" >&2; exit 1; }

cargo build --release --quiet
BIN=$PWD/target/release/mlpipe
work=${BENCH_WORK:-$(mktemp -d)}
trap '[ -z "${BENCH_WORK:-}" ] && rm -rf "$work"' EXIT

# metric NAME FILE: a model metric from mlpipe's metrics.json.
metric() { python3 -c "import json,sys; print('%.4f' % json.load(open(sys.argv[1]))['metrics'][sys.argv[2]])" "$2" "$1"; }
# per_customer TOOL WALL_S N: the time a customer, in µs.
per_customer() { python3 -c "import sys; print('          %s: %.2f µs per customer' % (sys.argv[1], float(sys.argv[2]) / int(sys.argv[3]) * 1e6))" "$@"; }

printf '%-9s %-7s %9s %9s %8s %8s %8s\n' rows tool wall_s peak_mb eng_r2 churn_auc ltv_r2
for n in "${sizes[@]}"; do
  data="$work/d$n"
  if [ ! -d "$data/customers" ]; then
    "$BIN" generate --rows "$n" --seed 11 --out "$data" >/dev/null
  fi
  walls=()
  for i in $(seq "$RUNS"); do
    rm -rf "$work/r$n"
    /usr/bin/time -f "%e %M" -o "$work/t" "$BIN" run --force --log-format json \
      --set "storage.data=\"$data\"" --set "storage.artifacts=\"$work/r$n/runs\"" \
      --set "storage.registry=\"$work/r$n/models\"" >"$work/log" 2>&1 || {
        code=$?; [ $code -eq 1 ] || { tail -5 "$work/log" >&2; exit $code; }
      }
    read -r w m <"$work/t"; walls+=("$w $m")
  done
  read -r ours_w ours_m < <(printf '%s\n' "${walls[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")
  run=$(ls -t "$work/r$n/runs" | grep -v -e LATEST -e _cache | head -1)
  eng=$(metric r2 "$work/r$n/runs/$run/train_engagement/metrics.json")
  churn=$(metric auc "$work/r$n/runs/$run/train_churn/metrics.json")
  ltv=$(metric r2 "$work/r$n/runs/$run/train_ltv/metrics.json")
  printf '%-9s %-7s %9.2f %9d %8s %8s %8s\n' "$n" mlpipe "$ours_w" $((ours_m / 1024)) "$eng" "$churn" "$ltv"
  per_customer mlpipe "$ours_w" "$n"

  if [ "$SKIP_PEER_ABOVE" -gt 0 ] && [ "$n" -gt "$SKIP_PEER_ABOVE" ]; then
    echo "$n        peer    (not run: SKIP_PEER_ABOVE=$SKIP_PEER_ABOVE)"
    continue
  fi
  if [ -n "$PEER_AT" ] && ! [[ " $PEER_AT " == *" $n "* ]]; then
    echo "$n        peer    (not run: PEER_AT=$PEER_AT)"
    continue
  fi
  /usr/bin/time -f "%e %M" -o "$work/t" "$PEER_PYTHON" "$PEER" "$data" "$work/peer$n" >"$work/peer.json" 2>"$work/peer.err" || {
    tail -5 "$work/peer.err" >&2; echo "$n        peer    failed (see above)"; continue; }
  read -r peer_w peer_m <"$work/t"
  read -r peng pchurn pltv < <(python3 -c "
import json,sys; m=json.load(open(sys.argv[1]))['metrics']
print('%.4f %.4f %.4f' % (m['engagement']['r2'], m['churn']['auc'], m['ltv']['r2']))" "$work/peer.json")
  printf '%-9s %-7s %9.2f %9d %8s %8s %8s\n' "$n" peer "$peer_w" $((peer_m / 1024)) "$peng" "$pchurn" "$pltv"
  per_customer peer "$peer_w" "$n"
  python3 -c "
import sys; ow, om, pw, pm = map(float, sys.argv[1:5]); q = [float(x) for x in sys.argv[5:]]
print('%-9s %-7s %8.2fx %8.2fx %+8.4f %+8.4f %+8.4f' % (sys.argv[0] if False else '', 'ratio', pw / ow, pm / om, q[0]-q[3], q[1]-q[4], q[2]-q[5]))
" "$ours_w" "$ours_m" "$peer_w" "$peer_m" "$eng" "$churn" "$ltv" "$peng" "$pchurn" "$pltv"
  grep -o '"stage":"[a-z_]*","status":"[a-z]*","message":"stage finished","seconds":[0-9.]*' "$work/log" |
    sed -E 's/"stage":"([a-z_]*)".*"seconds":([0-9.]*)/\1=\2/' | awk '{printf "%s ", $0} END {print ""}' |
    sed 's/^/          mlpipe stages (s): /'
  python3 -c "
import json,sys; s=json.load(open(sys.argv[1]))['seconds']
print('          peer stages (s):   ' + ' '.join('%s=%s' % kv for kv in s.items()))" "$work/peer.json"
done
echo "ratio row: peer ÷ mlpipe for time and memory (above 1 = mlpipe faster/smaller); metric differences are mlpipe − peer"
