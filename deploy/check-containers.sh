#!/usr/bin/env bash
# check-containers.sh: build the Dockerfile and run docker-compose.yml on a real Docker engine,
# check what they promise, and tear everything down again.
#
#   deploy/check-containers.sh            exit 0: every check held, or skipped (see below)
#                                         exit 1: a check failed (each is printed ok/FAIL)
#
# Steps:
#   1. A Docker engine: the running one, else dockerd started here (installing docker.io first
#      when root and it is missing) and stopped again at the end. Compose: the `docker compose`
#      plugin, else docker-compose (v1, Debian's package; installed when root and missing).
#   2. Base images (FROM lines of the Dockerfile, image: lines of docker-compose.yml): used when
#      present, else pulled; when the public registry cannot be reached, local stand-ins are made
#      from Debian's packages (deploy/standins/: debian:bookworm(-slim) from a debootstrap
#      minbase tarball cached in $PGSHIFT_CONTAINER_CACHE, postgres:15, prom/prometheus, and
#      rust:1-bookworm with this machine's Rust toolchain). Stand-ins stay in the engine as a
#      cache and are rebuilt only when their recipe changes. The Dockerfile and compose file are
#      used as shipped: only the image names resolve to the stand-ins.
#   3. `compose build` (the pgshift image), then checks on the image: non-root USER, HEALTHCHECK.
#   4. `compose up` under a project name of its own, with the host ports moved to free ones
#      (HOST_PORT_PROXY, HOST_PORT_ADMIN, HOST_PORT_PROMETHEUS, which docker-compose.yml reads
#      with the usual defaults 6432/6480/9090), then the checks: all services running, pgshift's
#      HEALTHCHECK healthy, its process non-root as seen from the host, the replica streaming, the
#      example app's writes on the primary and its reads on the replica through pgshift
#      (app log, /metrics pgshift_backend_routed_total per role, /stats with the admin token, the
#      servers' pg_stat_activity), TLS verify-full through the published port, Prometheus
#      scraping pgshift (/api/v1/targets, up, a pgshift metric) with docs/alerts.yml loaded.
#   5. Always (EXIT trap): `compose down -v`, then a check that no container, volume or network
#      of the project is left; dockerd stopped if this script started it.
#
# Skip: "SKIPPED: no Docker engine could be started" and exit 0 when there is no engine and none
# can be installed or started here (not root, no dockerd, or dockerd fails to come up, as in an
# unprivileged container). PGSHIFT_REQUIRE_CONTAINERS=1 turns that skip into a failure.
# Env: PGSHIFT_CONTAINER_CACHE (default /var/cache/pgshift-containers), PGSHIFT_DEBIAN_MIRROR
# (default http://deb.debian.org/debian), PGSHIFT_KEEP_DOCKERD=1 (leave a dockerd started here
# running, for repeated runs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/ports.sh
source "$ROOT/scripts/ports.sh"
cd "$ROOT"

CACHE="${PGSHIFT_CONTAINER_CACHE:-/var/cache/pgshift-containers}"
MIRROR="${PGSHIFT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PROJECT="pgshiftcheck$$"
T0=$SECONDS
PASSED=0 FAILED=0
STARTED_DOCKERD="" DOCKERD_PID="" HAD_DOCKER0=0 UP=0 WORK=""
COMPOSE=()

say() { printf '[containers] %s\n' "$*"; }
ok() { PASSED=$((PASSED + 1)); printf '[containers] ok: %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf '[containers] FAIL: %s\n' "$*"; }
# A failure after which nothing else can be checked.
die() { fail "$*"; exit 1; }
skip() {
  if [[ "${PGSHIFT_REQUIRE_CONTAINERS:-0}" == 1 ]]; then die "$* (PGSHIFT_REQUIRE_CONTAINERS=1)"; fi
  say "SKIPPED: $*"
  SKIPPED=1
  exit 0
}
SKIPPED=0
elapsed() { printf '%ds' $((SECONDS - T0)); }
as_root_ok() { ((EUID == 0)) && command -v apt-get >/dev/null 2>&1; }
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1; }
}
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" "$@"; }

# ---- teardown, always ----------------------------------------------------------------------
# shellcheck disable=SC2317 # invoked by the EXIT trap
project_leftovers() {
  local kind
  for kind in container volume network; do
    case "$kind" in
      container) docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" ;;
      *) docker "$kind" ls -q --filter "label=com.docker.compose.project=$PROJECT" ;;
    esac | sed "s/^/$kind /"
  done
}
# shellcheck disable=SC2317
teardown() {
  local left
  ((UP)) || return 0
  UP=0
  say "teardown: compose down -v"
  if ! timeout 180 "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" down -v --remove-orphans --timeout 45 \
    >"$WORK/down.log" 2>&1; then
    fail "compose down -v: $(tail -n 5 "$WORK/down.log")"
  fi
  left="$(project_leftovers)"
  if [[ -z "$left" ]]; then
    ok "compose down -v left no container, volume or network of project $PROJECT"
  else
    fail "left behind after compose down -v: $(tr '\n' ' ' <<<"$left")"
    # Remove them anyway: a failed check must not leave the machine dirty.
    awk '$1 == "container" {print $2}' <<<"$left" | xargs -r docker rm -f >/dev/null 2>&1 || true
    awk '$1 == "volume" {print $2}' <<<"$left" | xargs -r docker volume rm -f >/dev/null 2>&1 || true
    awk '$1 == "network" {print $2}' <<<"$left" | xargs -r docker network rm >/dev/null 2>&1 || true
  fi
}
# shellcheck disable=SC2317
stop_dockerd() {
  local i
  [[ -n "$STARTED_DOCKERD" && -n "$DOCKERD_PID" ]] || return 0
  if [[ "${PGSHIFT_KEEP_DOCKERD:-0}" == 1 ]]; then say "leaving dockerd (pid $DOCKERD_PID) running"; return 0; fi
  kill -TERM "$DOCKERD_PID" 2>/dev/null || return 0
  for ((i = 0; i < 300; i++)); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$DOCKERD_PID" 2>/dev/null; then kill -KILL "$DOCKERD_PID" 2>/dev/null || true; fi
  # dockerd leaves its default bridge behind when it stops: remove it if it made it.
  if ((!HAD_DOCKER0)) && ip link show docker0 >/dev/null 2>&1; then ip link delete docker0 2>/dev/null || true; fi
  say "stopped the dockerd started here"
}
# shellcheck disable=SC2317
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((UP)); then
    # Logs first: they are what explains a failure.
    if ((FAILED)) || ((rc != 0)); then
      say "last lines of each service's log:"
      compose logs --no-color --tail 15 2>&1 | sed 's/^/    /' || true
    fi
    teardown || true
  fi
  stop_dockerd || true
  if [[ -n "$WORK" && -d "$WORK" ]]; then rm -rf "$WORK"; fi
  ((SKIPPED)) && exit 0
  if ((FAILED)) && ((rc == 0)); then rc=1; fi
  if ((rc == 0)); then
    say "all $PASSED checks passed in $(elapsed)"
  elif ((rc == 130 || rc == 143)); then
    say "interrupted (exit $rc) after $(elapsed), $PASSED checks passed, $FAILED failed; torn down"
  else
    say "FAILED: $FAILED of $((PASSED + FAILED)) checks failed (exit $rc) after $(elapsed)"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgshift-containers.XXXXXX")"

# ---- 1. engine and compose -----------------------------------------------------------------
if ! command -v docker >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1; then
  if ! docker info >/dev/null 2>&1; then
    as_root_ok || skip "no Docker engine could be started: no docker/dockerd here, and installing docker.io needs root and apt-get"
    say "installing docker.io (apt-get)"
    apt_install docker.io || skip "no Docker engine could be started: apt-get install docker.io failed"
  fi
fi
if ! docker info >/dev/null 2>&1; then
  ((EUID == 0)) || skip "no Docker engine could be started: none answers and starting dockerd needs root"
  command -v dockerd >/dev/null 2>&1 || skip "no Docker engine could be started: no dockerd"
  say "starting dockerd (log: $CACHE/dockerd.log)"
  if ip link show docker0 >/dev/null 2>&1; then HAD_DOCKER0=1; fi
  mkdir -p "$CACHE"
  # nice: builds and containers inherit it, and this machine's cores are shared.
  nice -n 10 dockerd >"$CACHE/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  STARTED_DOCKERD=1
  for ((i = 0; i < 120; i++)); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
  done
  if ! docker info >/dev/null 2>&1; then
    tail -n 5 "$CACHE/dockerd.log" | sed 's/^/    /'
    stop_dockerd
    STARTED_DOCKERD=""
    skip "no Docker engine could be started: dockerd did not come up (log above)"
  fi
fi
say "engine: Docker $(docker version --format '{{.Server.Version}}' 2>/dev/null)${STARTED_DOCKERD:+ (dockerd started here)}"

if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
elif as_root_ok && apt_install docker-compose && command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
else
  skip "no compose: neither the docker compose plugin nor docker-compose, and it cannot be installed here"
fi
say "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?'))"

# ---- 2. base images ------------------------------------------------------------------------
STANDINS="$ROOT/deploy/standins"
REGISTRY="" # "", "up" or "down": learnt from the first pull
# The recipe's hash, kept as a label: a stand-in is rebuilt when its recipe changes.
recipe_hash() { cat "$@" | sha256sum | cut -c1-16; }
image_label() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

ROOTFS="" # set by debian_rootfs
debian_rootfs() {
  local tarball="$CACHE/debian-bookworm-minbase.tar.gz" dir
  ROOTFS="$tarball"
  if [[ -s "$tarball" ]]; then return 0; fi
  mkdir -p "$CACHE"
  command -v debootstrap >/dev/null 2>&1 || { as_root_ok && apt_install debootstrap; } ||
    die "debootstrap is missing and cannot be installed"
  dir="$CACHE/rootfs.tmp"
  rm -rf "$dir"
  say "debootstrap --variant=minbase bookworm from $MIRROR (once; cached as $tarball)"
  nice debootstrap --variant=minbase bookworm "$dir" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -n 20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
  # The image's apt: the mirror with updates and security, and the host's proxy and
  # Release-date settings, so that apt-get inside reaches what the host reaches.
  rm -f "$dir/etc/apt/sources.list"
  cat >"$dir/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apt-config dump 2>/dev/null | grep -E '^Acquire::((https?|ftp)::Proxy|Check-Valid-Until|Check-Date) ' \
    >"$dir/etc/apt/apt.conf.d/90host" || true
  rm -rf "${dir:?}"/var/cache/apt/archives/*.deb "${dir:?}"/var/lib/apt/lists/*
  tar -C "$dir" --numeric-owner -cf - . | gzip -1 >"$tarball.tmp"
  mv "$tarball.tmp" "$tarball"
  rm -rf "$dir"
}

standin_debian() { # debian:bookworm and debian:bookworm-slim, one image
  local id
  debian_rootfs
  id="$(docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'LABEL org.pgshift.standin="debian:bookworm from debootstrap --variant=minbase"' \
    --change 'CMD ["bash"]' "$ROOTFS")"
  docker tag "$id" debian:bookworm
  docker tag "$id" debian:bookworm-slim
}

# The build's proxy variables, if the host has any, for apt and cargo inside.
PROXY_ARGS=()
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  if [[ -n "${!v:-}" ]]; then PROXY_ARGS+=(--build-arg "$v"); fi
done

standin_build() { # NAME DOCKERFILE CONTEXT HASH
  ensure_image debian:bookworm
  nice docker build -q "${PROXY_ARGS[@]}" --label "org.pgshift.standin.recipe=$4" -t "$1" -f "$2" "$3" \
    >"$WORK/standin.log" 2>&1 || { tail -n 30 "$WORK/standin.log"; die "building the $1 stand-in"; }
}

standin_rust() {
  local sysroot ctx
  command -v rustc >/dev/null 2>&1 || die "rust:1-bookworm stand-in: no rustc on this machine to copy"
  sysroot="$(rustc --print sysroot)"
  ctx="$WORK/rust-context"
  mkdir -p "$ctx/toolchain"
  # Hard links where the cache and the toolchain share a file system; the docs stay out.
  for d in bin lib libexec etc; do
    if [[ -d "$sysroot/$d" ]]; then
      cp -al "$sysroot/$d" "$ctx/toolchain/" 2>/dev/null || cp -a "$sysroot/$d" "$ctx/toolchain/"
    fi
  done
  # The crates of Cargo.lock, fetched here (the host reaches crates.io), for cargo offline inside.
  say "cargo fetch --locked (the crates the image build needs, for the offline stand-in)"
  cargo fetch --locked --manifest-path "$ROOT/Cargo.toml" >"$WORK/fetch.log" 2>&1 ||
    { tail -n 10 "$WORK/fetch.log"; die "cargo fetch --locked"; }
  local home="${CARGO_HOME:-$HOME/.cargo}"
  mkdir -p "$ctx/registry"
  for d in index cache; do
    cp -al "$home/registry/$d" "$ctx/registry/" 2>/dev/null || cp -a "$home/registry/$d" "$ctx/registry/"
  done
  standin_build rust:1-bookworm "$STANDINS/rust.Dockerfile" "$ctx" "$1"
  rm -rf "$ctx"
}

# Present (and, for a stand-in, made from the current recipe), else pulled, else a stand-in.
declare -A ENSURED=()
ensure_image() {
  local name="$1" hash="" have old_id=""
  [[ -z "${ENSURED[$name]:-}" ]] || return 0
  ENSURED[$name]=1
  case "$name" in
    postgres:15) hash="$(recipe_hash "$STANDINS/postgres.Dockerfile" "$STANDINS/postgres-entrypoint.sh")" ;;
    prom/prometheus | prom/prometheus:latest) hash="$(recipe_hash "$STANDINS/prometheus.Dockerfile")" ;;
    # Cargo.lock: the offline registry inside must hold its crates.
    rust:1-bookworm) hash="$(recipe_hash "$STANDINS/rust.Dockerfile" Cargo.lock; rustc --version 2>/dev/null)" ;;
    debian:bookworm | debian:bookworm-slim) ;;
    *) die "no stand-in recipe for base image $name (add one in deploy/standins/)" ;;
  esac
  if docker image inspect "$name" >/dev/null 2>&1; then
    have="$(image_label "$name" org.pgshift.standin)"
    if [[ -z "$have" ]]; then say "image $name: present"; return 0; fi
    if [[ -z "$hash" || "$(image_label "$name" org.pgshift.standin.recipe)" == "$hash" ]]; then
      say "image $name: stand-in present ($have)"
      return 0
    fi
    say "image $name: stand-in recipe changed, rebuilding"
    old_id="$(docker image inspect --format '{{.Id}}' "$name")"
  elif [[ "$REGISTRY" != down ]]; then
    if timeout 600 docker pull -q "$name" >"$WORK/pull.log" 2>&1; then
      REGISTRY=up
      say "image $name: pulled"
      return 0
    fi
    REGISTRY=down
    say "the public image registry cannot be reached ($(tail -n1 "$WORK/pull.log")): making local stand-ins"
  fi
  local t=$SECONDS
  case "$name" in
    debian:*) standin_debian ;;
    rust:1-bookworm) standin_rust "$hash" ;;
    postgres:15) standin_build "$name" "$STANDINS/postgres.Dockerfile" "$STANDINS" "$hash" ;;
    prom/prometheus*) standin_build "$name" "$STANDINS/prometheus.Dockerfile" "$STANDINS" "$hash" ;;
  esac
  say "image $name: stand-in made in $((SECONDS - t))s ($(image_label "$name" org.pgshift.standin))"
  # The stand-in it replaces, if nothing uses it any more: repeated runs must not fill the disk.
  if [[ -n "$old_id" ]]; then docker rmi "$old_id" >/dev/null 2>&1 || true; fi
}

T_IMAGES=$SECONDS
mapfile -t BASES < <(
  {
    awk 'toupper($1) == "FROM" { print $2 }' Dockerfile
    sed -nE 's/^ +image: *"?([^" ]+)"?.*/\1/p' docker-compose.yml
  } | grep -vx 'pgshift:dev' | awk '!seen[$0]++'
)
for b in "${BASES[@]}"; do ensure_image "$b"; done
say "base images ready in $((SECONDS - T_IMAGES))s: ${BASES[*]}"

# ---- 3. the pgshift image ------------------------------------------------------------------
# Host ports: free ones, so that a pgshift, PgBouncer or Prometheus already listening on this
# machine does not clash (users get 6432/6480/9090: docker-compose.yml's defaults).
HOST_PORT_PROXY="$(pick_port)"
HOST_PORT_ADMIN="$(pick_port "$HOST_PORT_PROXY")"
HOST_PORT_PROMETHEUS="$(pick_port "$HOST_PORT_PROXY $HOST_PORT_ADMIN")"
export HOST_PORT_PROXY HOST_PORT_ADMIN HOST_PORT_PROMETHEUS

T_BUILD=$SECONDS
OLD_IMAGE="$(docker image inspect --format '{{.Id}}' pgshift:dev 2>/dev/null || true)"
say "building the pgshift image (compose build; log in the output on failure)"
if ! nice timeout 3600 "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml build --force-rm pgshift >"$WORK/build.log" 2>&1; then
  tail -n 40 "$WORK/build.log" | sed 's/^/    /'
  die "compose build pgshift"
fi
NEW_IMAGE="$(docker image inspect --format '{{.Id}}' pgshift:dev)"
ok "image pgshift:dev built from the Dockerfile in $((SECONDS - T_BUILD))s ($(docker image inspect --format '{{.Size}}' pgshift:dev | awk '{printf "%d MB", $1 / 1e6}'))"
# The image it replaces, when unused: repeated runs must not fill the disk.
if [[ -n "$OLD_IMAGE" && "$OLD_IMAGE" != "$NEW_IMAGE" ]]; then docker rmi "$OLD_IMAGE" >/dev/null 2>&1 || true; fi

user="$(docker image inspect --format '{{.Config.User}}' pgshift:dev)"
if [[ -n "$user" && "${user%%:*}" != 0 && "${user%%:*}" != root ]]; then
  ok "image USER is $user (not root)"
else
  fail "image USER is '${user:-<unset, root>}'"
fi
hc="$(docker image inspect --format '{{json .Config.Healthcheck.Test}}' pgshift:dev)"
if [[ "$hc" == *healthcheck* ]]; then ok "image HEALTHCHECK: $hc"; else fail "image HEALTHCHECK: $hc"; fi
version="$(docker run --rm --entrypoint pgshift pgshift:dev --version 2>&1)" || true
if [[ "$version" == pgshift* ]]; then ok "docker run pgshift:dev pgshift --version: $version"; else fail "pgshift --version in the image: $version"; fi

# ---- 4. the stack ---------------------------------------------------------------------------
T_UP=$SECONDS
say "compose up (project $PROJECT; host ports proxy $HOST_PORT_PROXY, admin $HOST_PORT_ADMIN, prometheus $HOST_PORT_PROMETHEUS)"
UP=1
if ! timeout 600 "${COMPOSE[@]}" -p "$PROJECT" -f docker-compose.yml up -d >"$WORK/up.log" 2>&1; then
  tail -n 20 "$WORK/up.log" | sed 's/^/    /'
  die "compose up -d"
fi
ok "compose up -d: started in $((SECONDS - T_UP))s"

cid() { compose ps -q "$1" 2>/dev/null | head -n1; }
declare -A CID=()
for s in primary replica pgshift app prometheus; do
  CID[$s]="$(cid "$s")"
  state="$( [[ -n "${CID[$s]}" ]] && docker inspect --format '{{.State.Status}}' "${CID[$s]}" 2>/dev/null || echo missing)"
  if [[ "$state" == running ]]; then ok "service $s running"; else fail "service $s: $state"; fi
done
[[ -n "${CID[pgshift]}" ]] || die "no pgshift container"

# Waits up to $1 seconds for the command to succeed.
wait_for() {
  local limit=$1 end
  shift
  end=$((SECONDS + limit))
  until "$@"; do
    ((SECONDS < end)) || return 1
    sleep 1
  done
}
health() { docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$1" 2>/dev/null; }
is_healthy() { [[ "$(health "$1")" == healthy ]]; }
if wait_for 90 is_healthy "${CID[pgshift]}"; then
  ok "pgshift's HEALTHCHECK: healthy"
else
  fail "pgshift's HEALTHCHECK: $(health "${CID[pgshift]}"): $(docker inspect --format '{{json .State.Health.Log}}' "${CID[pgshift]}" | tail -c 400)"
fi

# Non-root as the kernel sees it: the uids of the container's main process, read on the host.
pid="$(docker inspect --format '{{.State.Pid}}' "${CID[pgshift]}")"
uids="$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status" 2>/dev/null || true)"
comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
if [[ "$comm" == pgshift && -n "$uids" && " $uids " != *" 0 "* ]]; then
  ok "pgshift runs as uid $(cut -d' ' -f1 <<<"$uids") (real/effective/saved/fs: $uids; host pid $pid)"
else
  fail "pgshift's process (host pid $pid, '$comm') has uids '$uids'"
fi

psql_in() { # SERVICE DB SQL: psql as postgres inside a PostgreSQL container
  docker exec "${CID[$1]}" psql -X -At -v ON_ERROR_STOP=1 -U postgres -d "$2" -c "$3" 2>&1
}
streaming() { [[ "$(psql_in primary postgres "SELECT state || ' ' || slot_name FROM pg_stat_replication JOIN pg_replication_slots ON active_pid = pid")" == "streaming replica1" ]]; }
if wait_for 60 streaming; then
  ok "replica streams from the primary through slot replica1 (pg_stat_replication)"
else
  fail "replica not streaming: $(psql_in primary postgres 'SELECT * FROM pg_stat_replication')"
fi
in_recovery="$(psql_in replica postgres 'SELECT pg_is_in_recovery()')"
if [[ "$in_recovery" == t ]]; then ok "replica is a hot standby (pg_is_in_recovery)"; else fail "replica pg_is_in_recovery: $in_recovery"; fi

# The app: a write (INSERT) and a read (SELECT count) once a second through pgshift.
app_rounds() { docker logs "${CID[app]}" 2>&1 | grep -c '^visits=' || true; }
if wait_for 60 bash -c "(( \$(docker logs ${CID[app]} 2>&1 | grep -c '^visits=') >= 5 ))"; then
  applog="$(docker logs "${CID[app]}" 2>&1)"
  reads="$(grep -c '^visits=' <<<"$applog")"
  on_replica="$(grep -c 'in_recovery=true' <<<"$applog" || true)"
  failures="$(grep -c 'failed' <<<"$applog" || true)"
  replica_ip="$(docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "${CID[replica]}")"
  if ((failures == 0 && on_replica >= reads - 1)) && grep -Eq "served_by=${replica_ip}[/ ]" <<<"$applog"; then
    ok "app: $reads reads, $on_replica answered by the replica ($replica_ip, in recovery), no failed write or read; last: $(grep '^visits=' <<<"$applog" | tail -n1)"
  else
    fail "app log: $reads reads, $on_replica on the replica ($replica_ip), $failures failures: $(tail -n 5 <<<"$applog" | tr '\n' '|')"
  fi
else
  fail "app: fewer than 5 rounds in 60 s: $(docker logs "${CID[app]}" 2>&1 | tail -n 5 | tr '\n' '|')"
fi
visits="$(psql_in primary app 'SELECT count(*) FROM visits')"
if [[ "$visits" =~ ^[0-9]+$ ]] && ((visits >= 5)); then
  ok "writes landed on the primary: $visits rows in app.visits there"
else
  fail "primary app.visits: $visits"
fi
# pgshift's own server connections on each side (not the app's: it talks only to pgshift).
pgshift_ip="$(docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "${CID[pgshift]}")"
conns() { psql_in "$1" postgres "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND usename = 'app' AND client_addr = '$pgshift_ip'"; }
p_conns="$(conns primary)" r_conns="$(conns replica)"
if [[ "$r_conns" =~ ^[1-9][0-9]*$ && "$p_conns" =~ ^[1-9][0-9]*$ ]]; then
  ok "pg_stat_activity: pgshift ($pgshift_ip) holds $p_conns app connection(s) on the primary and $r_conns on the replica"
else
  fail "pg_stat_activity from pgshift ($pgshift_ip): primary '$p_conns', replica '$r_conns'"
fi

# pgshift's admin port through the published host port.
http_get() { # URL [TOKEN]: body on stdout; non-2xx fails
  python3 - "$@" <<'PY'
import sys, urllib.request
req = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    req.add_header("Authorization", "Bearer " + sys.argv[2])
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        sys.stdout.write(r.read().decode())
except Exception as e:  # one line, not a traceback: it ends up in a FAIL message
    sys.exit(f"GET {sys.argv[1]}: {e}")
PY
}
ADMIN="http://127.0.0.1:$HOST_PORT_ADMIN"
if body="$(http_get "$ADMIN/health" 2>&1)"; then ok "GET /health through host port $HOST_PORT_ADMIN: $body"; else fail "GET /health: $body"; fi
metrics="$(http_get "$ADMIN/metrics" 2>&1 || true)"
routed() { awk -v r="role=\"$1\"" '$1 ~ /^pgshift_backend_routed_total\{/ && index($1, r) { s += $2 } END { print s + 0 }' <<<"$metrics"; }
r_primary="$(routed primary)" r_replica="$(routed replica)"
if ((r_primary > 0 && r_replica > 0)); then
  ok "/metrics: pgshift_backend_routed_total primary $r_primary, replica $r_replica"
else
  fail "/metrics routed: primary $r_primary, replica $r_replica: $(grep '^pgshift_backend' <<<"$metrics" | head -n 6 | tr '\n' '|')"
fi
token="$(tr -d '\n' <deploy/secrets/pgshift_admin_token)"
if stats="$(http_get "$ADMIN/stats" "$token" 2>&1)" && python3 -c 'import json, sys; json.loads(sys.argv[1])' "$stats" 2>/dev/null; then
  ok "GET /stats with the token from deploy/secrets/: $(wc -c <<<"$stats") bytes of JSON"
else
  fail "GET /stats with the token: $(head -c 300 <<<"$stats")"
fi

# A client on the host, through the published proxy port: TLS with the dev CA, a write and a read.
if command -v psql >/dev/null 2>&1; then
  url="postgres://app:app@127.0.0.1:$HOST_PORT_PROXY/app?sslmode=verify-full&sslrootcert=$ROOT/certs/ca.crt"
  if out="$(PGCONNECT_TIMEOUT=10 psql -X -At -v ON_ERROR_STOP=1 "$url" \
    -c "SELECT 'verified'" 2>&1)" && [[ "$out" == verified ]]; then
    # verify-full: the login succeeds only over TLS with a certificate that certs/ca.crt signed
    # for 127.0.0.1 (pgshift's server side stays plain: server_mode = "disable").
    ok "psql from the host through port $HOST_PORT_PROXY: TLS login with sslmode=verify-full and certs/ca.crt"
  else
    fail "psql verify-full through port $HOST_PORT_PROXY: $out"
  fi
else
  say "not run: TLS login from the host (no psql here)"
fi

# Prometheus: the pgshift target up, a pgshift series stored, the alert rules loaded.
PROM="http://127.0.0.1:$HOST_PORT_PROMETHEUS"
target_up() {
  http_get "$PROM/api/v1/targets" 2>/dev/null | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except ValueError:
    sys.exit(1)
t = [x for x in d["data"]["activeTargets"] if x["labels"].get("job") == "pgshift"]
sys.exit(0 if t and all(x["health"] == "up" for x in t) else 1)'
}
# The first scrape comes within one scrape_interval (15 s) of Prometheus' start.
if wait_for 60 target_up; then
  ok "Prometheus /api/v1/targets: job pgshift (pgshift:6480/metrics) health up"
else
  fail "Prometheus targets: $(http_get "$PROM/api/v1/targets" 2>&1 | head -c 600)"
fi
prom_query() { # QUERY -> the first sample's value, or nothing
  python3 - "$PROM" "$1" <<'PY'
import json, sys, urllib.parse, urllib.request
u = sys.argv[1] + "/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[2]})
try:
    r = json.load(urllib.request.urlopen(u, timeout=10))["data"]["result"]
except Exception as e:
    sys.exit(f"query {sys.argv[2]}: {e}")
print(r[0]["value"][1] if r else "")
PY
}
up="$(prom_query 'up{job="pgshift"}' 2>&1 || true)"
if [[ "$up" == 1 ]]; then ok "Prometheus query up{job=\"pgshift\"} = 1"; else fail "Prometheus up{job=\"pgshift\"}: '$up'"; fi
routed_series="$(prom_query 'sum(pgshift_backend_routed_total{role="replica"})' 2>&1 || true)"
if [[ "$routed_series" =~ ^[0-9.e+]+$ ]]; then
  ok "Prometheus stores pgshift's series: sum(pgshift_backend_routed_total{role=\"replica\"}) = $routed_series"
else
  fail "Prometheus pgshift_backend_routed_total: '$routed_series'"
fi
rules="$(http_get "$PROM/api/v1/rules" 2>/dev/null | python3 -c '
import json, sys
try:
    g = json.load(sys.stdin)["data"]["groups"]
except ValueError as e:
    sys.exit(f"/api/v1/rules: {e}")
print(sum(len(x["rules"]) for x in g))' 2>&1 || true)"
if [[ "$rules" =~ ^[1-9][0-9]*$ ]]; then ok "Prometheus loaded $rules alert rules (docs/alerts.yml)"; else fail "Prometheus rules: '$rules'"; fi

# ---- 5. down -------------------------------------------------------------------------------
if ((FAILED)); then
  say "last lines of each service's log:"
  compose logs --no-color --tail 15 2>&1 | sed 's/^/    /' || true
fi
teardown
