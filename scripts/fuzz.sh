#!/usr/bin/env bash
# fuzz.sh: run pgshift's libFuzzer targets (fuzz/, cargo fuzz) for a fixed time each.
# Usage: scripts/fuzz.sh [--ci] [SECONDS_PER_TARGET] [TARGET...]   (see --help)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ALL_TARGETS=(frame startup sql relay)

usage() {
  cat <<'EOF'
Usage: scripts/fuzz.sh [--ci] [SECONDS_PER_TARGET] [TARGET...]

Builds the cargo-fuzz targets in fuzz/ (nightly toolchain, installing
cargo-fuzz if missing) and runs each TARGET (default: all of frame startup
sql relay) for SECONDS_PER_TARGET seconds (default 60), one job at a time,
under nice. Prints executions and exec/s per target and whether it crashed;
exits 1 if any target crashed, hung or ran out of memory (the input is saved
under fuzz/artifacts/TARGET/). New corpus entries go to fuzz/corpus/TARGET/
(ignored by git); fuzz/seeds/TARGET/ is the committed seed corpus.

  scripts/fuzz.sh                  every target, 60 s each
  scripts/fuzz.sh 600 sql frame    10 minutes each for sql and frame
  scripts/fuzz.sh --ci 20          the CI smoke run (scripts/test.sh)

--ci: only a crash fails. A missing nightly toolchain, a cargo-fuzz that
cannot be installed, a build that fails or takes longer than
FUZZ_CI_BUILD_TIMEOUT seconds (default 480) print "SKIP" and exit 0.

Environment: PGSHIFT_FUZZ_TARGET_DIR (where the targets are built, default
~/.cache/pgshift/fuzz-target, kept across clones), FUZZ_NICE (default 10), FUZZ_MAX_LEN (default 4096 bytes per
input), FUZZ_TIMEOUT (seconds one input may take, default 30),
FUZZ_RSS_LIMIT_MB (default 2048).
EOF
}

say() { printf '[fuzz] %s\n' "$*"; }

CI=0
SECS=60
TARGETS=()
while (($#)); do
  case "$1" in
    --ci) CI=1 ;;
    -h | --help) usage; exit 0 ;;
    '' | *[!0-9]*)
      if [[ " ${ALL_TARGETS[*]} " == *" $1 "* ]]; then TARGETS+=("$1"); else
        say "unknown target or argument: $1 (targets: ${ALL_TARGETS[*]})"; exit 2
      fi ;;
    *) SECS="$1" ;;
  esac
  shift
done
((${#TARGETS[@]})) || TARGETS=("${ALL_TARGETS[@]}")
NICE="${FUZZ_NICE:-10}"

# A problem that is not a crash: fatal when run by hand, a skip under --ci.
not_a_crash() {
  if ((CI)); then
    say "SKIP: $* (fuzzing not run; not a failure in --ci mode)"
    exit 0
  fi
  say "error: $*"
  exit 1
}

cd "$ROOT" || exit 1
command -v rustup >/dev/null 2>&1 || not_a_crash "rustup is not installed (cargo fuzz needs a nightly toolchain)"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  not_a_crash "the nightly toolchain is missing: rustup toolchain install nightly"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  say "cargo-fuzz not found: cargo install cargo-fuzz --locked"
  nice -n "$NICE" cargo install cargo-fuzz --locked -j 1 >/dev/null 2>&1 ||
    not_a_crash "cannot install cargo-fuzz (cargo install cargo-fuzz --locked failed)"
fi

# The same flags for build and run, so `run` finds the build and does not rebuild. No sanitizer:
# pgshift forbids unsafe code, and without ASan the targets run several times faster; overflow
# checks and debug assertions stay on (cargo fuzz's default release build).
FUZZ_FLAGS=(+nightly fuzz)
# Outside the checkout, so a fresh clone on the same machine (CI) reuses what was built before.
FUZZ_TARGET_DIR="${PGSHIFT_FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pgshift/fuzz-target}"
mkdir -p "$FUZZ_TARGET_DIR"
BUILD_FLAGS=(--sanitizer none --target-dir "$FUZZ_TARGET_DIR")

T0=$(date +%s)
say "building fuzz targets: ${TARGETS[*]}"
BUILD_LOG="$(mktemp "${TMPDIR:-/tmp}/pgshift-fuzz-build.XXXXXX")"
trap 'rm -f "$BUILD_LOG"' EXIT
# All targets in one cargo call: they share the build of pgshift and its dependencies.
BUILD=(nice -n "$NICE" cargo "${FUZZ_FLAGS[@]}" build "${BUILD_FLAGS[@]}")
if ((CI)); then
  BUILD_TIMEOUT="${FUZZ_CI_BUILD_TIMEOUT:-480}"
  timeout --kill-after=10 "$BUILD_TIMEOUT" "${BUILD[@]}" >"$BUILD_LOG" 2>&1
  rc=$?
  if ((rc == 124 || rc == 137)); then
    not_a_crash "building the fuzz targets took longer than ${BUILD_TIMEOUT}s (FUZZ_CI_BUILD_TIMEOUT; a warm build (PGSHIFT_FUZZ_TARGET_DIR, default ~/.cache/pgshift/fuzz-target) takes seconds, and what was built is kept for the next run)"
  fi
else
  "${BUILD[@]}" >"$BUILD_LOG" 2>&1
  rc=$?
fi
if ((rc != 0)); then
  tail -n 30 "$BUILD_LOG"
  not_a_crash "building the fuzz targets failed (exit $rc, log above)"
fi
say "build took $(($(date +%s) - T0))s"

RESULTS=()
FAILED=0
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" "fuzz/seeds/$t"
  log="fuzz/artifacts/$t/last-run.log"
  before="$(find "fuzz/artifacts/$t" -type f ! -name '*.log' | wc -l)"
  say "running $t for ${SECS}s"
  t1=$(date +%s)
  nice -n "$NICE" cargo "${FUZZ_FLAGS[@]}" run "${BUILD_FLAGS[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$SECS" -max_len="${FUZZ_MAX_LEN:-4096}" -timeout="${FUZZ_TIMEOUT:-30}" \
    -rss_limit_mb="${FUZZ_RSS_LIMIT_MB:-2048}" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  wall=$(($(date +%s) - t1))
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  [[ -n "$execs" ]] || execs="$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)"
  execs="${execs:-0}"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  after="$(find "fuzz/artifacts/$t" -type f ! -name '*.log' | wc -l)"
  if ((rc == 0)); then
    verdict="ok"
  elif ((after > before)) || grep -qE '^(==[0-9]+== ?ERROR: libFuzzer|SUMMARY: libFuzzer|thread .* panicked)' "$log"; then
    verdict="CRASH"
    FAILED=1
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written|artifact' "$log" | head -n 8 | sed 's/^/    /'
  else
    verdict="error (exit $rc, no crash input; see $log)"
    if ((!CI)); then FAILED=1; fi
    tail -n 5 "$log" | sed 's/^/    /'
  fi
  RESULTS+=("$(printf '%-8s %12s execs %6ss %8s exec/s  %s' "$t" "$execs" "$wall" "${rate:-?}" "$verdict")")
  say "$t: $execs executions in ${wall}s: $verdict"
done

say "summary (log of each run: fuzz/artifacts/TARGET/last-run.log):"
printf '  %s\n' "${RESULTS[@]}"
say "total $(($(date +%s) - T0))s"
exit "$FAILED"
