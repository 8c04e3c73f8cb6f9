#!/usr/bin/env bash
# The example application: everything it knows about the database is DATABASE_URL, which points
# at pgshift. Once a second it writes a row (primary) and reads (a replica when the statement is a
# plain read), printing which server answered. APP_ITERATIONS=N stops after N rounds (checks).
set -uo pipefail
: "${DATABASE_URL:?}"
APP_ITERATIONS="${APP_ITERATIONS:-0}"

until psql "$DATABASE_URL" -X -q -c 'SELECT 1' >/dev/null 2>&1; do
  echo "app: waiting for pgshift"
  sleep 1
done
psql "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 \
  -c 'CREATE TABLE IF NOT EXISTS visits (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())'

for ((i = 1; APP_ITERATIONS == 0 || i <= APP_ITERATIONS; i++)); do
  psql "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 -c 'INSERT INTO visits DEFAULT VALUES' ||
    echo "app: write failed"
  psql "$DATABASE_URL" -X -At -v ON_ERROR_STOP=1 \
    -c "SELECT 'visits=' || count(*) || ' served_by=' || coalesce(inet_server_addr()::text, 'local') || ' in_recovery=' || pg_is_in_recovery() FROM visits" ||
    echo "app: read failed"
  if ((i != APP_ITERATIONS)); then sleep 1; fi
done
