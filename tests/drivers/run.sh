#!/usr/bin/env bash
# run.sh: real-driver tests of pgshift in transaction-pooling mode (psycopg 3, asyncpg,
# node-postgres, pgJDBC, pgbench -M prepared). Run `tests/drivers/run.sh --help`.
set -euo pipefail

DRV="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$DRV/../.." && pwd)"
# shellcheck source=scripts/ports.sh
source "$ROOT/scripts/ports.sh"
PGBED="$ROOT/scripts/pgbed.sh"
ALL_SUITES=(psycopg asyncpg node jdbc pgbench)
POOL_SIZE=4          # server connections per backend for the driver suites: far fewer than clients
PGBENCH_POOL_SIZE=10 # pgbench: 64 clients on a pool of 10
SUITE_TIMEOUT="${PGSHIFT_DRV_SUITE_TIMEOUT:-150}"
JDBC_JAR="${PGSHIFT_DRV_JDBC_JAR:-/usr/share/java/postgresql.jar}"

usage() {
  cat <<'EOF'
Usage: tests/drivers/run.sh [--no-install] [SUITE[:TEST,TEST...]...]

Starts pgshift (transaction pooling, read/write split over the bed's primary and
replicas, default_pool_size = 4) and runs real client drivers through it; the driver
suites also get a pgshift with one server connection to the primary alone.
SUITE: psycopg asyncpg node jdbc pgbench (default: all). SUITE:TEST,TEST runs only those
tests of a suite (names as printed in its output), e.g. run.sh psycopg:listen_notify.

  --no-install   do not install anything (fail if something is missing)

Environment:
  PGSHIFT_BIN                 use this pgshift binary (skips cargo build --release)
  PGSHIFT_TEST_PRIMARY_PORT   bed primary port; unset: a bed is started (scripts/pgbed.sh)
  PGSHIFT_TEST_REPLICA_PORTS  the bed's replica ports, space separated
  PGSHIFT_LOG                 pgshift log filter (e.g. pgshift=trace); logs are printed
                              for failing suites
  PGSHIFT_DRV_KEEP=1          keep the work dir (configs, logs) instead of deleting it
  PGSHIFT_DRV_SUITE_TIMEOUT   seconds per suite (default 150)
EOF
}

say() { printf '[drivers] %s\n' "$*"; }
die() { printf '[drivers] error: %s\n' "$*" >&2; exit 1; }
now_ms() { local t; t="$(date +%s%N)"; printf '%s' "$((t / 1000000))"; }
secs() { printf '%d.%01d' $(($1 / 1000)) $((($1 % 1000) / 100)); }
as_root() { if ((EUID == 0)); then "$@"; else sudo -n -- "$@"; fi; }

INSTALL=1
SUITES=()
declare -A TESTS_OF=() # suite -> comma-separated test names (SUITE:TEST,TEST)
while (($#)); do
  case "$1" in
    --no-install) INSTALL=0; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; exit 2 ;;
    *)
      [[ " ${ALL_SUITES[*]} " == *" ${1%%:*} "* ]] || die "unknown suite '${1%%:*}' (one of: ${ALL_SUITES[*]})"
      SUITES+=("${1%%:*}")
      if [[ "$1" == *:* ]]; then TESTS_OF["${1%%:*}"]="${1#*:}"; fi
      shift ;;
  esac
done
((${#SUITES[@]})) || SUITES=("${ALL_SUITES[@]}")
want() { [[ " ${SUITES[*]} " == *" $1 "* ]]; }

T0="$(now_ms)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgshift-drivers.XXXXXX")"
chmod 0755 "$WORK"
OWN_BED=""
PROXY_PIDS=() # the running pgshift instances (those of one suite)

# Stops the running pgshift instances (SIGINT: at once), waiting for each to exit.
stop_proxies() {
  local pid i
  for pid in "${PROXY_PIDS[@]}"; do
    kill -INT "$pid" 2>/dev/null || continue
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PROXY_PIDS=()
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_proxies
  if [[ -n "$OWN_BED" ]]; then "$PGBED" destroy "$OWN_BED" >/dev/null || rc=1; fi
  if [[ "${PGSHIFT_DRV_KEEP:-0}" == 1 ]]; then say "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 1. tools -------------------------------------------------------------------------------

APT_UPDATED=0
apt_install() {
  local log="$WORK/apt.log"
  ((INSTALL)) || die "missing: $* (and --no-install was given)"
  say "installing with apt-get: $*"
  export DEBIAN_FRONTEND=noninteractive
  if ((!APT_UPDATED)); then
    as_root apt-get update -qq >>"$log" 2>&1 || { cat "$log" >&2; die "apt-get update failed"; }
    APT_UPDATED=1
  fi
  as_root apt-get install -y -qq --no-install-recommends "$@" >>"$log" 2>&1 ||
    { tail -n 30 "$log" >&2; die "apt-get install $* failed"; }
}

install_tools() {
  local pkgs=() want_sha have_sha venv="$DRV/.venv"
  if [[ -z "${PGSHIFT_TEST_PRIMARY_PORT:-}" ]]; then
    ((INSTALL)) || [[ -x /usr/lib/postgresql/15/bin/initdb ]] || die "PostgreSQL 15 missing (--no-install)"
    "$PGBED" install >/dev/null
  fi
  command -v psql >/dev/null || pkgs+=(postgresql-client)
  if want pgbench && ! command -v pgbench >/dev/null; then pkgs+=(postgresql-client); fi
  if want psycopg || want asyncpg; then
    command -v python3 >/dev/null || pkgs+=(python3)
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then pkgs+=(python3-venv); fi
  fi
  if want node; then command -v npm >/dev/null || pkgs+=(nodejs npm); fi
  if want jdbc; then
    command -v javac >/dev/null || pkgs+=(default-jdk-headless)
    [[ -f "$JDBC_JAR" ]] || pkgs+=(libpostgresql-jdbc-java)
  fi
  if ((${#pkgs[@]})); then
    mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
    apt_install "${pkgs[@]}"
  fi

  # Python drivers, into tests/drivers/.venv, reinstalled when requirements.txt changes.
  if want psycopg || want asyncpg; then
    want_sha="$(sha256sum "$DRV/requirements.txt" | cut -d' ' -f1)"
    have_sha="$(cat "$venv/.requirements.sha256" 2>/dev/null || true)"
    if [[ ! -x "$venv/bin/python" || "$want_sha" != "$have_sha" ]]; then
      ((INSTALL)) || die "the Python venv is missing or stale (--no-install)"
      say "installing Python drivers into tests/drivers/.venv"
      [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
      "$venv/bin/pip" install -q --disable-pip-version-check -r "$DRV/requirements.txt" >"$WORK/pip.log" 2>&1 ||
        { tail -n 30 "$WORK/pip.log" >&2; die "pip install failed"; }
      printf '%s\n' "$want_sha" >"$venv/.requirements.sha256"
    fi
  fi

  # node-postgres, into tests/drivers/node_modules, from package-lock.json.
  if want node; then
    want_sha="$(sha256sum "$DRV/package-lock.json" | cut -d' ' -f1)"
    have_sha="$(cat "$DRV/node_modules/.lock.sha256" 2>/dev/null || true)"
    if [[ "$want_sha" != "$have_sha" ]]; then
      ((INSTALL)) || die "node_modules is missing or stale (--no-install)"
      say "installing node-postgres into tests/drivers/node_modules (npm ci)"
      (cd "$DRV" && npm ci --no-audit --no-fund --loglevel=error) >"$WORK/npm.log" 2>&1 ||
        { tail -n 30 "$WORK/npm.log" >&2; die "npm ci failed"; }
      printf '%s\n' "$want_sha" >"$DRV/node_modules/.lock.sha256"
    fi
  fi
}

install_tools

# ---- 2. pgshift -----------------------------------------------------------------------------

if [[ -n "${PGSHIFT_BIN:-}" ]]; then
  BIN="$PGSHIFT_BIN"
else
  command -v cargo >/dev/null || die "cargo is not installed (or set PGSHIFT_BIN)"
  say "cargo build --release"
  (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
  TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
  [[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
  BIN="$TARGET_DIR/release/pgshift"
fi
[[ -x "$BIN" ]] || die "pgshift binary not found: $BIN"

# ---- 3. the bed -----------------------------------------------------------------------------

if [[ -z "${PGSHIFT_TEST_PRIMARY_PORT:-}" ]]; then
  OWN_BED="$WORK/bed"
  say "PGSHIFT_TEST_PRIMARY_PORT unset: starting a bed (primary + 2 replicas) in $OWN_BED"
  "$PGBED" start "$OWN_BED" --replicas 2 >"$WORK/pgbed.log" 2>&1 || { cat "$WORK/pgbed.log" >&2; die "pgbed start failed"; }
  PRIMARY_PORT="" REPLICA_PORTS=""
  # shellcheck source=/dev/null
  source "$OWN_BED/ports.env"
  export PGSHIFT_TEST_PRIMARY_PORT="$PRIMARY_PORT" PGSHIFT_TEST_REPLICA_PORTS="$REPLICA_PORTS"
fi
PRIMARY="$PGSHIFT_TEST_PRIMARY_PORT"
read -r -a REPLICAS <<<"${PGSHIFT_TEST_REPLICA_PORTS:-}"
export PGPASSWORD=app PGCONNECT_TIMEOUT=5

psql_at() { # PORT SQL: one value, as user app
  psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U app -d app -c "$2"
}

# Waits until every replica has replayed the primary's current WAL position.
wait_replicas() {
  local lsn r i
  ((${#REPLICAS[@]})) || return 0
  lsn="$(psql_at "$PRIMARY" "select pg_current_wal_insert_lsn()")"
  for r in "${REPLICAS[@]}"; do
    for ((i = 0; i < 200; i++)); do
      [[ "$(psql_at "$r" "select pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn")" == t ]] && break
      sleep 0.05
    done
    ((i < 200)) || die "replica on port $r did not replay $lsn within 10 s"
  done
}

# ---- 4. proxies -----------------------------------------------------------------------------

# Roles whose SCRAM passwords need SASLprep, as NAME PASSWORD pairs (UTF-8 bytes): a combining
# acute accent (SASLprep composes "e" + U+0301 into U+00E9) and a no-break space U+00A0 (mapped
# to a space). The suites create the roles with these passwords (drvcommon.py SASL_ROLES,
# test_node.js, JdbcTest.java hold the same list); pgshift's config holds them as typed.
SASL_ROLES=(drv_sasl_accent $'cafe\xcc\x81-pw' drv_sasl_nbsp $'open\xc2\xa0sesame')

# start_proxy NAME POOL_SIZE [primary-only]: starts pgshift in front of the bed (the primary
# and the replicas, or the primary alone); sets PROXY_PORT.
start_proxy() {
  local name="$1" pool="$2" conf="$WORK/$1.toml" r pid i replicas=("${REPLICAS[@]}")
  if [[ "${3:-}" == primary-only ]]; then replicas=(); fi
  for _ in 1 2 3; do
    PROXY_PORT="$(pick_port)"
    {
      printf '[proxy]\nlisten = "127.0.0.1:%s"\npool_mode = "transaction"\n' "$PROXY_PORT"
      printf 'default_pool_size = %s\nquery_wait_timeout = "60s"\n' "$pool"
      printf '[auth]\ntype = "scram-sha-256"\n[[auth.users]]\nname = "app"\npassword = "app"\n'
      for ((i = 0; i < ${#SASL_ROLES[@]}; i += 2)); do
        printf '[[auth.users]]\nname = "%s"\npassword = "%s"\n' "${SASL_ROLES[i]}" "${SASL_ROLES[i + 1]}"
      done
      printf '[primary]\nhost = "127.0.0.1"\nport = %s\n' "$PRIMARY"
      for r in "${replicas[@]}"; do printf '[[replicas]]\nhost = "127.0.0.1"\nport = %s\n' "$r"; done
      if ((${#replicas[@]})); then printf '[routing]\nread_write_split = true\n'; fi
      printf '[admin]\nlisten = ""\n'
    } >"$conf"
    "$BIN" --check-config --config "$conf" >"$WORK/$name.check" 2>&1 ||
      { cat "$WORK/$name.check" >&2; die "pgshift rejected $conf"; }
    NO_COLOR=1 PGSHIFT_LOG="${PGSHIFT_LOG:-info}" "$BIN" --config "$conf" >"$WORK/$name.log" 2>&1 &
    pid=$!
    PROXY_PIDS+=("$pid")
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      if port_in_use "$PROXY_PORT" && psql_at "$PROXY_PORT" "select 1" >/dev/null 2>&1; then
        return 0
      fi
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset 'PROXY_PIDS[-1]'
    if ! grep -qi 'address already in use\|addrinuse' "$WORK/$name.log"; then break; fi
  done
  tail -n 30 "$WORK/$name.log" >&2
  die "pgshift ($name) did not start"
}


# ---- 5. suites ------------------------------------------------------------------------------

PASSED=0 FAILED=0
SUMMARY=()
# run_suite NAME CMD...: runs one suite (each bounds its own time), prints its output indented.
run_suite() {
  local name="$1" t rc=0 d verdict
  shift
  t="$(now_ms)"
  "$@" >"$WORK/suite-$name.log" 2>&1 || rc=$?
  d=$(($(now_ms) - t))
  if ((rc == 0)); then
    verdict=PASS; PASSED=$((PASSED + 1))
  else
    verdict=FAIL; FAILED=$((FAILED + 1))
    ((rc == 124 || rc == 137)) && verdict="FAIL (timed out after ${SUITE_TIMEOUT}s)"
  fi
  say "---- $name: $verdict in $(secs "$d")s (pgshift on port $PROXY_PORT)"
  sed 's/^/    /' "$WORK/suite-$name.log"
  SUMMARY+=("$(printf '%-8s %-4s %6ss  %s' "$name" "${verdict%% *}" "$(secs "$d")" \
    "$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$WORK/suite-$name.log" | tail -n 1 || true)")")
  return 0
}

bounded() { timeout -k 10 "$SUITE_TIMEOUT" "$@"; }

suite_pgbench() {
  local out rc args
  pgbench -i -q -s 1 -h 127.0.0.1 -p "$PRIMARY" -U app app >"$WORK/pgbench-init.log" 2>&1 ||
    { cat "$WORK/pgbench-init.log"; echo "pgbench -i failed"; return 1; }
  wait_replicas
  rc=0
  for args in "-S -T 10" "-T 5"; do
    # shellcheck disable=SC2086 # $args is a list of options
    out="$(bounded pgbench -n -M prepared -c 64 -j 2 $args -h 127.0.0.1 -p "$PGSHIFT_DRV_PORT" -U app app 2>&1)" || {
      echo "pgbench -M prepared $args: exit $?"
      rc=1
    }
    printf 'pgbench -n -M prepared -c 64 -j 2 %s: %s, %s, %s\n' "$args" \
      "$(grep -o 'number of transactions actually processed: [0-9/]*' <<<"$out" || echo '?')" \
      "$(grep -o 'number of failed transactions: [0-9]*' <<<"$out" || echo 'failed: ?')" \
      "$(grep -o 'tps = [0-9.]*' <<<"$out" | head -n 1 || echo 'tps ?')"
    if ! grep -q 'number of failed transactions: 0 ' <<<"$out" ||
      ! grep -Eq 'actually processed: [1-9]' <<<"$out"; then
      printf '%s\n' "$out" | tail -n 40
      rc=1
    fi
  done
  if ((rc == 0)); then echo "2 passed, 0 failed"; else echo "0 passed, 1 failed"; fi
  return "$rc"
}

suite_jdbc() {
  mkdir -p "$WORK/jdbc"
  bounded javac -nowarn -d "$WORK/jdbc" -cp "$JDBC_JAR" "$DRV/JdbcTest.java" "$DRV/JdbcParity.java" || { echo "javac failed"; return 1; }
  bounded java -cp "$WORK/jdbc:$JDBC_JAR" JdbcTest "$@"
}

export PGSHIFT_DRV_PRIMARY_PORT="$PRIMARY" PGSHIFT_DRV_REPLICA_PORTS="${REPLICAS[*]:-}"
export PGSHIFT_DRV_POOL_SIZE="$POOL_SIZE"
say "setup done in $(secs $(($(now_ms) - T0)))s; suites: ${SUITES[*]}"
say "each suite gets its own pgshift: transaction pooling, read/write split over primary $PRIMARY and replicas ${REPLICAS[*]:-none}, default_pool_size $POOL_SIZE (pgbench: $PGBENCH_POOL_SIZE)"

# Each suite gets its own pgshift, so that what one suite leaves on pooled server connections
# cannot fail another. The driver suites get a second one with one server connection, to the
# primary alone (PGSHIFT_DRV_ONE_PORT), on which a test sees every statement pgshift prepared.
PY="$DRV/.venv/bin/python"
for s in "${SUITES[@]}"; do
  ONLY=()
  if [[ -n "${TESTS_OF[$s]:-}" ]]; then IFS=, read -r -a ONLY <<<"${TESTS_OF[$s]}"; fi
  if [[ "$s" == pgbench ]]; then
    start_proxy "$s" "$PGBENCH_POOL_SIZE"
  else
    start_proxy "$s-one" 1 primary-only
    export PGSHIFT_DRV_ONE_PORT="$PROXY_PORT"
    start_proxy "$s" "$POOL_SIZE"
  fi
  export PGSHIFT_DRV_PORT="$PROXY_PORT" DATABASE_URL="postgresql://app:app@127.0.0.1:$PROXY_PORT/app"
  case "$s" in
    psycopg) run_suite psycopg bounded "$PY" "$DRV/test_psycopg.py" "${ONLY[@]}" ;;
    asyncpg) run_suite asyncpg bounded "$PY" "$DRV/test_asyncpg.py" "${ONLY[@]}" ;;
    node) run_suite node bounded node "$DRV/test_node.js" "${ONLY[@]}" ;;
    jdbc) run_suite jdbc suite_jdbc "${ONLY[@]}" ;;
    pgbench) run_suite pgbench suite_pgbench ;;
  esac
  stop_proxies
  for log in "$s" "$s-one"; do
    if [[ "${SUMMARY[-1]}" != "$s "*PASS* && -f "$WORK/$log.log" ]] && grep -q ' WARN \| ERROR ' "$WORK/$log.log"; then
      say "     pgshift ($log) warnings and errors, last 20:"
      grep ' WARN \| ERROR ' "$WORK/$log.log" | tail -n 20 | cut -c1-240 | sed 's/^/    /'
    fi
  done
done

say "summary (total $(secs $(($(now_ms) - T0)))s):"
for line in "${SUMMARY[@]}"; do say "  $line"; done
echo "drivers: $PASSED passed, $FAILED failed"
((FAILED == 0))
