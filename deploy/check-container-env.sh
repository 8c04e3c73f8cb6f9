#!/usr/bin/env bash
# check-container-env.sh: run target/release/pgshift the way the container image runs it, without
# a Docker engine. Read from the Dockerfile (so this follows it): the runtime stage's ENV, WORKDIR,
# USER, the proxy.toml it copies to /etc/pgshift, CMD and the HEALTHCHECK command. They are
# reproduced in a temp "rootfs" with a clean environment (env -i), as uid/gid USER when run as
# root, in front of a throwaway PostgreSQL 15 primary + replica (scripts/pgbed.sh), with what a
# deployer adds at `docker run` (-e PGSHIFT_PRIMARY_URL, PGSHIFT_REPLICAS, PGSHIFT_ADMIN_TOKEN_FILE
# pointing at a mounted secret).
#
# Checks: without an admin token the image refuses to start (exit 2, admin port beyond loopback);
# --check-config --print shows the image's listen addresses; the HEALTHCHECK command exits 0 once
# pgshift serves; psql runs a write and a read through the proxy as an app would; SIGTERM (the
# STOPSIGNAL) exits 0; the HEALTHCHECK command then exits 1. Everything is stopped and removed at
# the end, also on failure or Ctrl-C.
#
# What it cannot check: the image build itself (no Docker engine here), the base images' contents,
# container networking. docs/operator-guide.md ("Running in a container") says what was not run.
#
# Usage: deploy/check-container-env.sh      Env: PGSHIFT_BIN=/path/to/pgshift (default: build
# target/release/pgshift if missing). Ports: the image's 6432/6480 when free, else free ones
# (said on stdout; the listen variables and the healthcheck URL are then adjusted).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/ports.sh
source "$ROOT/scripts/ports.sh"
PGBED="$ROOT/scripts/pgbed.sh"
say() { printf '[container-env] %s\n' "$*"; }
die() { printf '[container-env] FAIL: %s\n' "$*" >&2; exit 1; }
ok() { printf '[container-env] ok: %s\n' "$*"; }

# ---- what the Dockerfile says ------------------------------------------------------------------
# Parsed by python (JSON-form CMD/HEALTHCHECK, ENV key=value lists, line continuations) and
# printed as shell assignments.
FACTS="$(python3 - "$ROOT/Dockerfile" <<'PY'
import json, shlex, sys
lines, cur = [], ""
for raw in open(sys.argv[1]):
    s = raw.rstrip("\n")
    if not cur and (not s.strip() or s.lstrip().startswith("#")):
        continue
    if s.lstrip().startswith("#"):
        continue  # a comment inside a continued instruction
    if s.endswith("\\"):
        cur += s[:-1] + " "
        continue
    lines.append(cur + s)
    cur = ""
stage = []
for l in lines:
    if l.split()[0].upper() == "FROM":
        stage = []
    stage.append(l)
out = {"ENVS": [], "WORKDIR": "/", "USER": "", "CMD": [], "HC": [], "CONFIG_DEST": ""}
for l in stage:  # the last (runtime) stage only
    op, _, rest = l.strip().partition(" ")
    op, rest = op.upper(), rest.strip()
    if op == "ENV":
        out["ENVS"] += shlex.split(rest)
    elif op == "WORKDIR":
        out["WORKDIR"] = rest
    elif op == "USER":
        out["USER"] = rest
    elif op == "CMD":
        out["CMD"] = json.loads(rest)
    elif op == "HEALTHCHECK":
        out["HC"] = json.loads(rest[rest.index("CMD") + 3:])
    elif op == "COPY" and not rest.startswith("--from") and rest.split()[0] == "proxy.toml":
        out["CONFIG_DEST"] = rest.split()[1]
for k, v in out.items():
    if isinstance(v, list):
        print(f"{k}=({' '.join(shlex.quote(x) for x in v)})")
    else:
        print(f"{k}={shlex.quote(v)}")
PY
)"
ENVS=() CMD=() HC=() WORKDIR="" USER="" CONFIG_DEST=""
eval "$FACTS"
if ! ((${#ENVS[@]} && ${#CMD[@]} && ${#HC[@]})) || [[ -z "$CONFIG_DEST" ]]; then
  die "could not read ENV, CMD, HEALTHCHECK and COPY proxy.toml from the Dockerfile"
fi
say "Dockerfile: ENV ${ENVS[*]}; WORKDIR $WORKDIR; USER ${USER:-root}; CMD ${CMD[*]}; HEALTHCHECK ${HC[*]}"

# ---- ports -----------------------------------------------------------------------------------
# The image's values, moved to free ports if this machine uses them already.
declare -A IMAGE_ENV=()
for kv in "${ENVS[@]}"; do IMAGE_ENV["${kv%%=*}"]="${kv#*=}"; done
PROXY_PORT="${IMAGE_ENV[PGSHIFT_PROXY_LISTEN]##*:}"
ADMIN_PORT="${IMAGE_ENV[PGSHIFT_ADMIN_LISTEN]##*:}"
HEALTH_URL=""
if port_in_use "$PROXY_PORT"; then
  PROXY_PORT="$(pick_port)"
  IMAGE_ENV[PGSHIFT_PROXY_LISTEN]="0.0.0.0:$PROXY_PORT"
  say "port 6432 is busy here: the proxy listens on $PROXY_PORT instead"
fi
if port_in_use "$ADMIN_PORT"; then
  ADMIN_PORT="$(pick_port "$PROXY_PORT")"
  IMAGE_ENV[PGSHIFT_ADMIN_LISTEN]="0.0.0.0:$ADMIN_PORT"
  HEALTH_URL="http://127.0.0.1:$ADMIN_PORT/health"
  say "port 6480 is busy here: the admin port listens on $ADMIN_PORT instead (PGSHIFT_HEALTHCHECK_URL set)"
fi

# ---- the binary and the rootfs ---------------------------------------------------------------
BIN="${PGSHIFT_BIN:-$ROOT/target/release/pgshift}"
if [[ -z "${PGSHIFT_BIN:-}" && ! -x "$BIN" ]]; then
  say "building pgshift (cargo build --release)"
  (cd "$ROOT" && cargo build --release)
fi
[[ -x "$BIN" ]] || die "$BIN is not an executable"

WORK="" PID=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  if [[ -n "$WORK" && -d "$WORK" ]]; then
    if [[ -f "$WORK/cluster/.pgbed" ]]; then "$PGBED" destroy "$WORK/cluster" >/dev/null || rc=1; fi
    rm -rf "$WORK"
  fi
  if ((rc == 0)); then say "all checks passed; everything stopped and removed"; else say "failed (exit $rc); everything stopped and removed"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$PGBED" install >/dev/null
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgshift-cenv.XXXXXX")"
chmod 0755 "$WORK"
RFS="$WORK/rootfs"
mkdir -p "$RFS/usr/local/bin" "$RFS$WORKDIR" "$RFS$(dirname "$CONFIG_DEST")" "$RFS/var/lib/pgshift" "$RFS/run/secrets"
install -m 0755 "$BIN" "$RFS/usr/local/bin/pgshift"
install -m 0644 "$ROOT/proxy.toml" "$RFS$CONFIG_DEST"
printf 'check-%s-token\n' "$RANDOM$RANDOM" >"$RFS/run/secrets/pgshift_admin_token"
chmod 0444 "$RFS/run/secrets/pgshift_admin_token"

# As the image's USER when we are root (the image never runs as root).
AS_USER=()
if ((EUID == 0)) && [[ -n "$USER" ]]; then
  AS_USER=(setpriv --reuid="${USER%%:*}" --regid="${USER##*:}" --clear-groups)
  chown "$USER" "$RFS/var/lib/pgshift"
fi

"$PGBED" start "$WORK/cluster" --replicas 1 >"$WORK/pgbed.log" 2>&1 || { cat "$WORK/pgbed.log" >&2; die "pgbed start"; }
PRIMARY_PORT="" REPLICA_PORTS=""
# shellcheck source=/dev/null
source "$WORK/cluster/ports.env"
say "throwaway cluster: primary 127.0.0.1:$PRIMARY_PORT, replica 127.0.0.1:$REPLICA_PORTS"

# The container's environment: nothing from this shell, the image's ENV, then `docker run -e`.
image_env=()
for k in "${!IMAGE_ENV[@]}"; do image_env+=("$k=${IMAGE_ENV[$k]}"); done
run_env=(
  "PGSHIFT_PRIMARY_URL=postgres://127.0.0.1:$PRIMARY_PORT"
  "PGSHIFT_REPLICAS=127.0.0.1:${REPLICA_PORTS%% *}"
)
token_env=("PGSHIFT_ADMIN_TOKEN_FILE=$RFS/run/secrets/pgshift_admin_token")
if [[ -n "$HEALTH_URL" ]]; then run_env+=("PGSHIFT_HEALTHCHECK_URL=$HEALTH_URL"); fi
base_env=(env -i "PATH=$RFS/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "HOME=/var/lib/pgshift")
# CMD with /etc/pgshift/... mapped into the rootfs.
cmd=()
for a in "${CMD[@]}"; do if [[ "$a" == /* ]]; then cmd+=("$RFS$a"); else cmd+=("$a"); fi; done
# Runs a command as the container would. It cds and execs, so call it only in a subshell: "$(...)",
# "(...)" or "... &", where the exec makes $! pgshift's own pid (so signals reach it).
in_container() { cd "$RFS$WORKDIR" && exec "${AS_USER[@]}" "${base_env[@]}" "${image_env[@]}" "${run_env[@]}" "$@"; }

# 1. No admin token: the image must refuse to start (its admin port is beyond loopback).
set +e
out="$(in_container timeout 20 "${cmd[@]}" 2>&1)"
rc=$?
set -e
if ((rc != 2)) || [[ "$out" != *"token is required"* ]]; then
  die "without a token: want exit 2 naming the token, got $rc: $out"
fi
ok "without PGSHIFT_ADMIN_TOKEN(_FILE) the image refuses to start (exit 2: $(grep -o '\[admin\] token[^"]*' <<<"$out" | head -n1))"

run_env+=("${token_env[@]}")

# 2. The effective configuration as the container sees it.
printed="$(in_container "${cmd[@]}" --check-config --print 2>&1)" || die "--check-config: $printed"
grep -q "^listen = \"${IMAGE_ENV[PGSHIFT_PROXY_LISTEN]}\"" <<<"$printed" || die "proxy listen not from ENV: $printed"
grep -q "^listen = \"${IMAGE_ENV[PGSHIFT_ADMIN_LISTEN]}\"" <<<"$printed" || die "admin listen not from ENV: $printed"
grep -q 'token = "<redacted>"' <<<"$printed" || die "token from PGSHIFT_ADMIN_TOKEN_FILE not applied"
grep -q "^port = ${REPLICA_PORTS%% *}" <<<"$printed" || die "PGSHIFT_REPLICAS not applied"
ok "--check-config --print: listen ${IMAGE_ENV[PGSHIFT_PROXY_LISTEN]}, admin ${IMAGE_ENV[PGSHIFT_ADMIN_LISTEN]}, token from file, replica from PGSHIFT_REPLICAS"

# 3. Start it as CMD does; the HEALTHCHECK command must turn healthy.
in_container "${cmd[@]}" >"$WORK/pgshift.log" 2>&1 &
PID=$!
deadline=$((SECONDS + 30))
until (in_container "${HC[@]}") >/dev/null 2>&1; do
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/pgshift.log" >&2; die "pgshift exited"; }
  ((SECONDS < deadline)) || { cat "$WORK/pgshift.log" >&2; die "HEALTHCHECK did not pass within 30 s"; }
  sleep 0.3
done
ok "HEALTHCHECK (${HC[*]}) exits 0 while pgshift serves"

# 4. An application's queries through it (DATABASE_URL=postgres://app:app@<host>:6432/app).
URL="postgres://app:app@127.0.0.1:$PROXY_PORT/app"
q() { PGCONNECT_TIMEOUT=5 psql -X -At -v ON_ERROR_STOP=1 "$URL" -c "$1"; }
q "CREATE TABLE IF NOT EXISTS container_check (id int PRIMARY KEY, note text)" >/dev/null || die "psql: create"
# Write and read back in one session: read-your-writes holds per client, and a new connection may
# be served by a replica that has not replayed the write yet.
got="$(PGCONNECT_TIMEOUT=5 psql -X -At -q -v ON_ERROR_STOP=1 "$URL" \
  -c "INSERT INTO container_check VALUES (1, 'through pgshift') ON CONFLICT (id) DO NOTHING" \
  -c "SELECT note FROM container_check WHERE id = 1")" || die "psql: insert and read back"
[[ "$got" == "through pgshift" ]] || die "psql read back '$got'"
served_by="$(q "SELECT inet_server_port()")"
ok "psql $URL: write on the primary, read back ('$got'); a plain SELECT was served by port $served_by"

# 5. STOPSIGNAL SIGTERM drains and exits 0.
kill -TERM "$PID"
set +e
wait "$PID"
rc=$?
set -e
PID=""
((rc == 0)) || { cat "$WORK/pgshift.log" >&2; die "exit status after SIGTERM: $rc"; }
ok "SIGTERM: exit 0"

# 6. And the HEALTHCHECK now fails.
if (in_container "${HC[@]}") >/dev/null 2>&1; then die "HEALTHCHECK passed with pgshift stopped"; fi
ok "HEALTHCHECK exits 1 once pgshift is gone"
