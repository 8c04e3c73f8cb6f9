#!/usr/bin/env bash
# bench/isolation.sh: what the session reset costs. pgbench through pgshift with three scripts,
# interleaved in one run on one bed:
#   pure    SELECT abalance FROM pgbench_accounts WHERE aid = :aid  (proven pure: no reset)
#   impure  SELECT iso_bench_balance(:aid)  (a user function returning the same row: the server is
#           reset after every transaction)
#   always  the pure script with server_reset_query_always = true (every transaction reset)
# Per run: TPS, the latency average, and pgshift's resets per transaction (SHOW POOLS-equivalent
# admin /stats counter session_resets). Appends a section to bench/RESULTS.md (unless RESULTS=none).
#
# Knobs: CLIENTS="1 16"  DURATION=10 (s)  REPEATS=2  SCALE=10  and bench/lib.sh's (POOL_SIZE, ...)
set -uo pipefail

BENCH_NAME="isolation"
case "${1:-}" in -h | --help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;; "") ;; *) echo "isolation.sh: no arguments (see --help)" >&2; exit 2 ;; esac
REPLICAS=0
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CLIENTS=${CLIENTS:-"1 16"}
DURATION=${DURATION:-10}
REPEATS=${REPEATS:-2}
SCALE=${SCALE:-10}

raise_nofile
ensure_postgres
ensure_pgshift
install_trap
start_bed
init_pgbench "$SCALE"
psql -X -q -p "$PRIMARY_PORT" -c "CREATE OR REPLACE FUNCTION iso_bench_balance(a int) RETURNS int LANGUAGE sql STABLE AS \$\$ SELECT abalance FROM pgbench_accounts WHERE aid = a \$\$" >/dev/null ||
  die "cannot create the benchmark function"
start_pgshift_as auto_reset false 1
# server_reset_query_always is a [proxy] key: write it through the environment override.
PGSHIFT_PROXY_SERVER_RESET_QUERY_ALWAYS=true start_pgshift_as always_reset false 1

SCRIPTS="$WORK/scripts"
mkdir -p "$SCRIPTS"
rows=$((100000 * SCALE))
printf '\\set aid random(1, %d)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n' "$rows" >"$SCRIPTS/pure.sql"
printf '\\set aid random(1, %d)\nSELECT iso_bench_balance(:aid);\n' "$rows" >"$SCRIPTS/impure.sql"

resets_of() { # instance -> summed session_resets from the admin /stats
  curl -s -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:${PGS_ADMIN[$1]}/stats" |
    python3 -c 'import json,sys
d=json.load(sys.stdin)
print(sum(b.get("resets",0) for g in d.get("pools",[]) for b in g.get("backends",[])))' 2>/dev/null || echo 0
}

OUT="$WORK/isolation.tsv"
printf 'case\tclients\trepeat\ttps\tlat_ms\tresets_per_tx\n' >"$OUT"
run_case() { # case instance script clients repeat
  local before after log="$WORK/pgbench-$1-$4-$5.log" tps lat tx
  before=$(resets_of "$2")
  PGPASSWORD=app pgbench -n -h 127.0.0.1 -p "${PGS_PORT[$2]}" -U app -c "$4" -j "$(( $4 < 2 ? 1 : 2 ))" -T "$DURATION" \
    -M simple -f "$SCRIPTS/$3.sql" app >"$log" 2>&1 || { cat "$log" >&2; die "pgbench $1 failed"; }
  after=$(resets_of "$2")
  tps=$(awk '/^tps = /{print $3; exit}' "$log")
  lat=$(awk '/^latency average = /{print $4; exit}' "$log")
  tx=$(awk '/^number of transactions actually processed: /{print $6; exit}' "$log")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$4" "$5" "$tps" "$lat" \
    "$(awk -v a="$after" -v b="$before" -v t="$tx" 'BEGIN{printf "%.3f", (t>0)?(a-b)/t:0}')" >>"$OUT"
  say "$1 c=$4 r=$5: $tps tps, $lat ms, resets $((after - before)) / $tx tx"
}
for r in $(seq 1 "$REPEATS"); do
  for c in $CLIENTS; do
    run_case pure auto_reset pure "$c" "$r"
    run_case impure auto_reset impure "$c" "$r"
    run_case always always_reset pure "$c" "$r"
  done
done

if [[ "${RESULTS:-bench/RESULTS.md}" != none ]]; then
  {
    printf '\n## Session reset cost (bench/isolation.sh, %s)\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'pgbench -M simple, %s s per run, %s repeats, pool %s, scale %s, release build; same bed, interleaved.\n' \
      "$DURATION" "$REPEATS" "$POOL_SIZE" "$SCALE"
    printf '`pure`: proven-pure SELECT (no reset); `impure`: the same row through a user SQL function (reset after\n'
    printf 'every transaction); `always`: the pure script with `server_reset_query_always = true`.\n\n'
    printf '| case | clients | TPS (mean) | latency ms (mean) | resets per tx | TPS vs pure |\n|---|---|---|---|---|---|\n'
    awk -F'\t' 'NR>1{k=$1"\t"$2; n[k]++; t[k]+=$4; l[k]+=$5; r[k]+=$6; if(!(k in seen)){seen[k]=1; order[++m]=k}}
      END{for(i=1;i<=m;i++){k=order[i]; split(k,a,"\t"); p=a[2]; base=t["pure\t"p]/n["pure\t"p];
        printf "| %s | %s | %.0f | %.3f | %.2f | %.2fx |\n", a[1], a[2], t[k]/n[k], l[k]/n[k], r[k]/n[k], (t[k]/n[k])/base}}' "$OUT"
  } >>"${RESULTS:-bench/RESULTS.md}"
  say "appended to ${RESULTS:-bench/RESULTS.md}"
fi
