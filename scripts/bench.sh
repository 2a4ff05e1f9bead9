#!/usr/bin/env bash
# End-to-end benchmark: generates N customers and times `mlpipe generate` and `mlpipe run`
# (release build), printing wall time and peak memory. Usage: scripts/bench.sh [N ...]
# (default 100000 1000000). Timings on shared machines are noisy: compare within one run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=target/release/mlpipe
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sizes=("$@"); [ ${#sizes[@]} -eq 0 ] && sizes=(100000 1000000)
printf '%-10s %-10s %10s %12s\n' rows step wall_s peak_mb
for n in "${sizes[@]}"; do
  /usr/bin/time -f "%e %M" -o "$work/t" "$BIN" generate --rows "$n" --seed 11 --out "$work/d$n" >/dev/null
  read -r w m < "$work/t"; printf '%-10s %-10s %10s %12d\n' "$n" generate "$w" $((m / 1024))
  for i in 1 2 3; do
    /usr/bin/time -f "%e %M" -o "$work/t" "$BIN" run --force --log-format json \
      --set "storage.data=\"$work/d$n\"" --set "storage.artifacts=\"$work/r$n\"" >/dev/null
    read -r w m < "$work/t"; printf '%-10s %-10s %10s %12d\n' "$n" "run#$i" "$w" $((m / 1024))
  done
done
