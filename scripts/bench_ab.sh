#!/usr/bin/env bash
# Two or more builds of mlpipe on the same default pipeline, run after one another in turn, so
# that the VM's drift (15-20 % within minutes) falls on all of them alike (docs/PERFORMANCE.md,
# "How to measure"). Each argument is a binary, optionally with the pipeline file it runs
# (`BIN:PIPELINE`, for a build from before a pipeline-file change); the first is the reference.
#   scripts/bench_ab.sh [-n PAIRS] [-r ROWS] BIN[:PIPELINE] BIN[:PIPELINE] ...
# Prints each run (wall seconds, peak KB, user and system seconds, stage durations), then per
# binary the median time and the median of its runs' ratios to the reference's run of the same
# round. Keep the machine otherwise idle; 8 rounds or more: single pairs vary by ±15 %.
set -euo pipefail
ROUNDS=8
ROWS=1000000
while getopts "n:r:" o; do
  case $o in
    n) ROUNDS=$OPTARG ;;
    r) ROWS=$OPTARG ;;
    *) sed -n 2,9p "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ $# -lt 2 ]; then
  sed -n 2,9p "$0" >&2
  exit 2
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${BENCH_AB_DIR:-/tmp/mlpipe-bench-ab}
DATA=$WORK/data-$ROWS
FIRST=${1%%:*}
[ -d "$DATA/customers" ] || "$FIRST" generate --rows "$ROWS" --seed 11 --out "$DATA"
cd "$REPO"
LOG=$WORK/runs.tsv
: > "$LOG"
for round in $(seq "$ROUNDS"); do
  for i in $(seq $#); do
    arg=${!i}
    bin=${arg%%:*}
    pf=pipelines/engagement.toml
    [ "$arg" != "$bin" ] && pf=${arg#*:}
    rm -rf "$WORK/out"
    /usr/bin/time -f "%e %M %U %S" -o "$WORK/time" "$bin" run "$pf" --force --log-format json \
      --set "storage.data=\"$DATA\"" --set "storage.artifacts=\"$WORK/out/runs\"" \
      --set "storage.registry=\"$WORK/out/models\"" > "$WORK/log" 2>&1 ||
      { echo "run $round of $arg failed: see $WORK/log" >&2; exit 1; }
    stages=$(python3 -c "
import json, glob
m = json.load(open(glob.glob('$WORK/out/runs/*/manifest.json')[0]))
print(' '.join(f'{k}={v.get(\"duration_s\") or 0:.2f}' for k, v in m['stages'].items()))")
    printf '%s\t%s\t%s\t%s\n' "$round" "$i" "$(cat "$WORK/time")" "$stages" | tee -a "$LOG"
  done
done
python3 - "$LOG" "$@" <<'PY'
import statistics, sys
log, names = sys.argv[1], sys.argv[2:]
runs = {}
for line in open(log):
    rnd, i, t = line.split("\t")[:3]
    runs.setdefault(int(i), {})[int(rnd)] = float(t.split()[0])
ref = runs[1]
for i, name in enumerate(names, 1):
    ts = runs[i]
    ratios = [ts[r] / ref[r] for r in ts]
    print(f"{name}: median {statistics.median(ts.values()):.2f} s over {len(ts)} runs; "
          f"median ratio to the first {statistics.median(ratios):.3f} "
          f"({min(ratios):.3f}-{max(ratios):.3f})")
PY
