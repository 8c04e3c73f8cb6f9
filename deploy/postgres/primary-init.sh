#!/usr/bin/env bash
# Runs once, when the postgres:15 image initialises an empty data directory
# (/docker-entrypoint-initdb.d), as the postgres user against the not-yet-public server.
# Makes what the compose stack needs: the replication role and the replica's slot, and the
# application's role and database (app/app, the DATABASE_URL of the example app).
# No `set -u`: the image sources (rather than runs) a script that lost its executable bit, and
# -u would then leak into the image's entrypoint.
set -eo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set=repl_password="${REPLICATION_PASSWORD:?set REPLICATION_PASSWORD}" <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'repl_password';
SELECT pg_create_physical_replication_slot('replica1');
CREATE ROLE app WITH LOGIN PASSWORD 'app';
CREATE DATABASE app OWNER app;
SQL

# The image's pg_hba.conf admits "host all all all scram-sha-256"; "all" does not cover
# replication connections, which need a line of their own.
echo "host replication replicator all scram-sha-256" >>"$PGDATA/pg_hba.conf"
