#!/usr/bin/env bash
# test.sh: run pgshift's whole test suite against throwaway PostgreSQL 15
# clusters. Usage: scripts/test.sh [--cargo-test] [ARGS...]   (see --help)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGBED="$ROOT/scripts/pgbed.sh"

usage() {
  cat <<'EOF'
Usage: scripts/test.sh [--cargo-test] [ARGS...]

Runs the whole pgshift test suite: installs PostgreSQL 15 if missing, starts
two throwaway clusters (scripts/pgbed.sh), runs `cargo nextest run
--no-fail-fast ARGS...` (or `cargo test --no-fail-fast ARGS...` with
--cargo-test or when cargo-nextest is missing), then tests/drivers/run.sh if it
exists and is executable, then (whole-suite runs only, i.e. without ARGS) a
20 s-per-target fuzzing smoke run, `scripts/fuzz.sh --ci 20`, and always tears
the clusters down. The fuzzing run fails the suite only on a crash; it skips,
saying why, without a nightly toolchain or cargo-fuzz, or when building
fuzz/target takes more than 200 s (a cold build). PGSHIFT_SKIP_FUZZ=1 leaves it out.
Last (whole-suite runs only), deploy/check-containers.sh builds the Dockerfile and
runs docker-compose.yml on a real Docker engine (starting dockerd, and making
local stand-ins for the base images when the public registry is unreachable),
checks the image and the stack, and tears it all down; a failed check fails the
suite, a machine where no Docker engine can be started prints SKIPPED.
PGSHIFT_SKIP_CONTAINERS=1 leaves it out.

  scripts/test.sh                      everything
  scripts/test.sh -- routing           only tests whose name contains "routing"
  scripts/test.sh --test proxy_auth    one integration test file
  scripts/test.sh --cargo-test -- x    use cargo test instead of nextest

Clusters ("bed"), exported to the tests:
  PGSHIFT_TEST_PRIMARY_PORT    source primary (2 streaming replicas)
  PGSHIFT_TEST_REPLICA_PORTS   the source replicas' ports, space separated
  PGSHIFT_TEST_TARGET_PORT     target primary (no replica), for migrations
  PGSHIFT_TEST_BED             the bed's temp dir
Each has role app/app (superuser, scram-sha-256) and database app; postgres
is trusted over 127.0.0.1.
EOF
}

say() { printf '[test] %s\n' "$*"; }
now_ms() { local t; t="$(date +%s%N)"; printf '%s' "$((t / 1000000))"; }
PHASE_T0="$(now_ms)"
TOTAL_T0="$PHASE_T0"
# Print how long the phase that just ended took, and start the next one.
phase_done() {
  local t d
  t="$(now_ms)"; d=$((t - PHASE_T0)); PHASE_T0="$t"
  printf '[test] %-28s %d.%03ds\n' "$1" $((d / 1000)) $((d % 1000))
}

USE_NEXTEST=1
ARGS=()
while (($#)); do
  case "$1" in
    --cargo-test) USE_NEXTEST=0; shift ;;
    -h | --help) usage; exit 0 ;;
    --) ARGS+=("$@"); break ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

BED=""
SOURCE=""
TARGET=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$? d
  trap - EXIT INT TERM
  if [[ -n "$BED" && -d "$BED" ]]; then
    PHASE_T0="$(now_ms)"
    # The two shared clusters, and any private cluster a test left behind.
    for d in "$SOURCE" "$TARGET" "$BED"/private/*; do
      if [[ -n "$d" && -f "$d/.pgbed" ]]; then "$PGBED" destroy "$d" >/dev/null || rc=1; fi
    done
    rm -rf "$BED" || rc=1
    phase_done "teardown"
  fi
  d=$(($(now_ms) - TOTAL_T0))
  say "total $((d / 1000)).$(printf '%03d' $((d % 1000)))s, exit $rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cd "$ROOT"

# 1. Tools a fresh machine may lack.
"$PGBED" install
command -v cargo >/dev/null || { say "error: cargo is not installed"; exit 1; }
# The admin tests parse /metrics with the Prometheus project's Python parser; they skip (saying
# so) if it cannot be installed.
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
  python3 -m pip install --quiet prometheus_client >/dev/null 2>&1 ||
    say "warning: cannot install Python prometheus_client: the /metrics parser test will skip"
fi
# tests/fleet.rs runs HAProxy in front of three pgshift instances; it skips (saying so) without it.
if ! command -v haproxy >/dev/null 2>&1; then
  say "haproxy not found: installing it with apt-get"
  as_root() { if ((EUID == 0)); then "$@"; else sudo -n -- "$@"; fi; }
  { as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy ||
    { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; }; } \
    >/dev/null 2>&1 || say "warning: cannot install haproxy: the HAProxy fleet test will skip"
fi
if ((USE_NEXTEST)) && ! cargo nextest --version >/dev/null 2>&1; then
  say "cargo-nextest not found: falling back to cargo test"
  USE_NEXTEST=0
fi
phase_done "tools"

# 2. The bed: source cluster (primary + 2 replicas) and target cluster.
BED="$(mktemp -d "${TMPDIR:-/tmp}/pgshift-test.XXXXXX")"
chmod 0755 "$BED" # the postgres user must reach the clusters inside
mkdir -p "$BED/private" # PrivateCluster dirs of the tests (tests/common)
SOURCE="$BED/source"
TARGET="$BED/target"
"$PGBED" start "$SOURCE" --replicas 2 | sed 's/^\[pgbed\]/[pgbed source]/'
"$PGBED" start "$TARGET" --replicas 0 | sed 's/^\[pgbed\]/[pgbed target]/'
PRIMARY_PORT="" REPLICA_PORTS=""
# shellcheck source=/dev/null
source "$SOURCE/ports.env"
export PGSHIFT_TEST_PRIMARY_PORT="$PRIMARY_PORT"
export PGSHIFT_TEST_REPLICA_PORTS="$REPLICA_PORTS"
# shellcheck source=/dev/null
source "$TARGET/ports.env"
export PGSHIFT_TEST_TARGET_PORT="$PRIMARY_PORT"
export PGSHIFT_TEST_BED="$BED"
say "bed: primary $PGSHIFT_TEST_PRIMARY_PORT, replicas $PGSHIFT_TEST_REPLICA_PORTS, target $PGSHIFT_TEST_TARGET_PORT"
phase_done "start clusters"

# 3. Rust tests.
if ((USE_NEXTEST)); then
  # --no-tests=warn: a crate (or a filter) with no test is not a failure.
  CMD=(cargo nextest run --no-fail-fast --no-tests=warn "${ARGS[@]}")
else
  CMD=(cargo test --no-fail-fast "${ARGS[@]}")
fi
say "running: ${CMD[*]}"
STATUS=0
"${CMD[@]}" || STATUS=$?
phase_done "cargo tests (exit $STATUS)"

# 4. Driver tests (Python/Node/Java clients), when present.
DRIVERS="$ROOT/tests/drivers/run.sh"
if [[ -x "$DRIVERS" ]]; then
  say "running: tests/drivers/run.sh"
  DSTATUS=0
  # The cargo tests just built the debug binary: the drivers use it instead of a release build.
  if [[ -z "${PGSHIFT_BIN:-}" && -x "$ROOT/target/debug/pgshift" ]]; then
    export PGSHIFT_BIN="$ROOT/target/debug/pgshift"
  fi
  "$DRIVERS" || DSTATUS=$?
  phase_done "driver tests (exit $DSTATUS)"
  if ((STATUS == 0)); then STATUS="$DSTATUS"; fi
fi

# 5. A short fuzzing run of every libFuzzer target (fuzz/). Only a crash fails it: no nightly,
# no cargo-fuzz, or a cold build too slow for CI make it print SKIP and exit 0.
if ((${#ARGS[@]} == 0)) && [[ "${PGSHIFT_SKIP_FUZZ:-0}" != 1 ]]; then
  say "running: scripts/fuzz.sh --ci 20"
  FSTATUS=0
  "$ROOT/scripts/fuzz.sh" --ci 20 || FSTATUS=$?
  phase_done "fuzz smoke run (exit $FSTATUS)"
  if ((STATUS == 0)); then STATUS="$FSTATUS"; fi
fi

# 6. The image and the compose stack on a real Docker engine: build, start, check, tear down.
# Only a failed check fails it; where no engine can be started it prints SKIPPED and exits 0.
if ((${#ARGS[@]} == 0)) && [[ "${PGSHIFT_SKIP_CONTAINERS:-0}" != 1 ]]; then
  say "running: deploy/check-containers.sh"
  CSTATUS=0
  "$ROOT/deploy/check-containers.sh" || CSTATUS=$?
  phase_done "containers (exit $CSTATUS)"
  if ((STATUS == 0)); then STATUS="$CSTATUS"; fi
fi

exit "$STATUS"
