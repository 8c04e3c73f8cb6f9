#!/usr/bin/env bash
# A streaming replica from the postgres:15 image: on first start (empty $PGDATA) clone the
# primary with pg_basebackup; -R writes standby.signal and primary_conninfo (with the slot), so
# PostgreSQL starts as a hot standby. Later starts reuse the data directory.
# Env: PRIMARY_HOST, PRIMARY_PORT (5432), REPLICATION_SLOT, PGPASSWORD (the replicator role's),
# PGDATA; PGPORT, if set, is the port this server listens on (PostgreSQL's own default is 5432).
set -euo pipefail
: "${PGDATA:?}" "${PRIMARY_HOST:?}" "${REPLICATION_SLOT:?}"
PRIMARY_PORT="${PRIMARY_PORT:-5432}"

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  until pg_isready -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U replicator -q; do
    echo "replica: waiting for $PRIMARY_HOST:$PRIMARY_PORT"
    sleep 1
  done
  rm -rf "$PGDATA"
  echo "replica: pg_basebackup from $PRIMARY_HOST (slot $REPLICATION_SLOT)"
  pg_basebackup -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U replicator -D "$PGDATA" \
    -X stream -S "$REPLICATION_SLOT" -R -c fast --no-password --progress
  chmod 0700 "$PGDATA"
  # Belt and braces: what -R is meant to have written.
  test -f "$PGDATA/standby.signal"
  grep -q primary_conninfo "$PGDATA/postgresql.auto.conf"
fi

exec postgres -c hot_standby=on -c hot_standby_feedback=on
