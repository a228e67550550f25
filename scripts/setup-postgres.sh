#!/usr/bin/env bash
# Installs (if absent) and starts a PostgreSQL cluster for a Prefect server under load, then makes the role
# `cicd` (password `cicd`) and the database named by $1 (default `prefect`) owned by it.
# Idempotent: safe to run before every `make serve-pg` and test session. Loopback only (Debian's default
# listen_addresses). The last line of stdout is the SQLAlchemy URL to give the Prefect server as
# PREFECT_API_DATABASE_CONNECTION_URL.
set -euo pipefail

DB="${1:-prefect}"
ROLE=cicd
PASSWORD=cicd
PORT="${CICD_PG_PORT:-5432}"

case "$DB" in
  *[!a-zA-Z0-9_]* | "") echo "setup-postgres: database name must be letters, digits and _: $DB" >&2; exit 2 ;;
esac

need_root() { [ "$(id -u)" = 0 ] || { echo "setup-postgres: must run as root to install/start PostgreSQL" >&2; exit 1; }; }
as_postgres() { if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi; }
psql_q() { as_postgres psql -p "$PORT" -v ON_ERROR_STOP=1 -qtAX "$@"; }

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  need_root
  echo "setup-postgres: installing postgresql" >&2
  apt-get update -qq
  # policy-rc.d may forbid starting services during the install (containers): the cluster is started below.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

VERSION=$(ls /usr/lib/postgresql | sort -V | tail -1)
if [ ! -d "/etc/postgresql/$VERSION/main" ]; then
  need_root
  echo "setup-postgres: creating cluster $VERSION/main" >&2
  pg_createcluster "$VERSION" main --port "$PORT" >/dev/null
fi

if ! pg_lsclusters -h "$VERSION" main | grep -q online; then
  need_root
  echo "setup-postgres: starting cluster $VERSION/main" >&2
  # pg_ctlcluster works without systemd (containers, CI) and as root.
  pg_ctlcluster "$VERSION" main start
fi
for _ in $(seq 1 60); do
  as_postgres pg_isready -q -p "$PORT" && break
  sleep 0.5
done
as_postgres pg_isready -q -p "$PORT" || { echo "setup-postgres: cluster $VERSION/main not ready" >&2; exit 1; }

if [ "$(psql_q -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
  psql_q -c "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD'"
fi
if [ "$(psql_q -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
  psql_q -c "CREATE DATABASE $DB OWNER $ROLE"
fi
echo "setup-postgres: cluster $VERSION/main up on 127.0.0.1:$PORT, database $DB owned by $ROLE" >&2
echo "postgresql+asyncpg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
