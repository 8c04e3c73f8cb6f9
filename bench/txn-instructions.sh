#!/usr/bin/env bash
# txn-instructions.sh — instructions pgshift executes per transaction, counted by callgrind
# (repeatable on a noisy machine, unlike time). Runs pgshift under valgrind twice, with N and 2N
# pgbench transactions; the difference divided by N cancels start-up (config, SCRAM, pools).
#
#   usage: bench/txn-instructions.sh [MODE]     MODE: simple (default) | extended | prepared
#   knobs: N=2000 CLIENTS=4 REPLICAS=0 PGSHIFT_BIN=path
#          SCRIPT=select (pgbench -S, the default) | tpcb (pgbench's TPC-B-like transaction)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=${1:-simple}
N=${N:-2000}
CLIENTS=${CLIENTS:-4}
REPLICAS=${REPLICAS:-0}
SCRIPT=${SCRIPT:-select}
case "$SCRIPT" in
    select) SCRIPT_ARGS=(-S) ;;
    tpcb) SCRIPT_ARGS=() ;;
    *) echo "SCRIPT must be select or tpcb" >&2; exit 2 ;;
esac
BIN=${PGSHIFT_BIN:-$ROOT/target/release/pgshift}
[[ -x "$BIN" ]] || (cd "$ROOT" && cargo build --release --quiet)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgshift-instr.XXXXXX")"
chmod 0755 "$WORK"
cleanup() { pkill -f "callgrind.*$WORK" 2>/dev/null || true; "$ROOT/scripts/pgbed.sh" destroy "$WORK/bed" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
"$ROOT/scripts/pgbed.sh" start "$WORK/bed" --replicas "$REPLICAS" >/dev/null
PRIMARY_PORT="" REPLICA_PORTS=""
# shellcheck source=/dev/null
source "$WORK/bed/ports.env"
export PGPASSWORD=app
pgbench -i -q -s 1 -h 127.0.0.1 -p "$PRIMARY_PORT" -U app app >/dev/null 2>&1
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
{
    printf '[proxy]\nlisten = "127.0.0.1:%s"\ndefault_pool_size = %s\nworkers = 1\n' "$PORT" "$CLIENTS"
    printf '[auth]\n[[auth.users]]\nname = "app"\npassword = "app"\n[primary]\nport = %s\n[admin]\nlisten = ""\n' "$PRIMARY_PORT"
    for r in $REPLICA_PORTS; do printf '[[replicas]]\nport = %s\n' "$r"; done
} >"$WORK/proxy.toml"
count() { # transactions per client -> total instructions
    local out="$WORK/cg.$1"
    valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" --config "$WORK/proxy.toml" >/dev/null 2>&1 &
    local vg=$!
    for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p "$PORT" && break; sleep 0.2; done
    pgbench -n "${SCRIPT_ARGS[@]}" -M "$MODE" -c "$CLIENTS" -j 1 -t "$1" -h 127.0.0.1 -p "$PORT" -U app app >/dev/null 2>&1
    kill -INT "$vg"; wait "$vg" 2>/dev/null || true
    grep -m1 '^summary:' "$out" | awk '{print $2}'
}
a=$(count "$N")
b=$(count $((2 * N)))
per=$(( (b - a) / (N * CLIENTS) ))
echo "pgbench ${SCRIPT_ARGS[*]:-(TPC-B)} -M $MODE, $CLIENTS clients, replicas $REPLICAS: $per instructions per transaction ($a for $N/client, $b for $((2 * N))/client)"
