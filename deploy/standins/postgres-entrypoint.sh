#!/usr/bin/env bash
# Entrypoint of the postgres:15 stand-in (postgres.Dockerfile): what the official image's
# docker-entrypoint.sh does for `postgres ...` on an empty or an initialised PGDATA.
#   - as root: make PGDATA and the socket directory the postgres user's, re-run as postgres;
#   - empty PGDATA: initdb --username=$POSTGRES_USER with $POSTGRES_PASSWORD and
#     $POSTGRES_INITDB_ARGS, "host all all all scram-sha-256" in pg_hba.conf, a server on the
#     Unix socket only, CREATE DATABASE $POSTGRES_DB, then /docker-entrypoint-initdb.d/* (*.sh
#     run when executable, else sourced; *.sql through psql), then stop it;
#   - exec the command (postgres -c ...). Any other command runs as given.
# No `set -u`: initdb scripts are sourced (as in the official image) and may expect unset
# variables to be empty.
set -Eeo pipefail

if [[ "${1:0:1}" == - ]]; then set -- postgres "$@"; fi
if [[ "$1" != postgres ]]; then exec "$@"; fi

if [[ "$(id -u)" == 0 ]]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups env HOME=/var/lib/postgresql "${BASH_SOURCE[0]}" "$@"
fi

POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  if [[ -z "${POSTGRES_PASSWORD:-}" && "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]]; then
    echo "error: database is uninitialized and POSTGRES_PASSWORD is not set" >&2
    exit 1
  fi
  mkdir -p "$PGDATA"
  chmod 0700 "$PGDATA"
  # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a word list, as in the official image
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
    $POSTGRES_INITDB_ARGS
  printf '\nhost all all all %s\n' "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >>"$PGDATA/pg_hba.conf"

  export PGPASSWORD="${PGPASSWORD:-${POSTGRES_PASSWORD:-}}"
  PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
  psql_base=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
  if [[ "$POSTGRES_DB" != postgres ]]; then
    "${psql_base[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh)
        if [[ -x "$f" ]]; then
          echo "$0: running $f"
          "$f"
        else
          echo "$0: sourcing $f"
          # shellcheck disable=SC1090
          . "$f"
        fi
        ;;
      *.sql) echo "$0: running $f"; "${psql_base[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
      *) if [[ -e "$f" ]]; then echo "$0: ignoring $f"; fi ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop
  unset PGPASSWORD
  echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@"
