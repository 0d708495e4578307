#!/usr/bin/env bash
# Starts the machine's PostgreSQL cluster (installed, not running, on these machines) and makes
# sure a `mesh` role that may create databases exists. Prints the URL tests use.
set -euo pipefail

if ! command -v pg_lsclusters >/dev/null; then
    echo "postgres: pg_lsclusters not found; install PostgreSQL (apt-get install postgresql)" >&2
    exit 1
fi
read -r version cluster port status _ < <(pg_lsclusters --no-header | head -n 1)
if [ "$status" != "online" ]; then
    pg_ctlcluster "$version" "$cluster" start >&2
fi
for _ in $(seq 1 50); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.2
done
as_postgres() { if [ "$(id -u)" = 0 ]; then su postgres -c "$1"; else sudo -u postgres sh -c "$1"; fi; }
if ! as_postgres "psql -p $port -tAc \"SELECT 1 FROM pg_roles WHERE rolname = 'mesh'\"" | grep -q 1; then
    as_postgres "psql -p $port -qc \"CREATE ROLE mesh LOGIN CREATEDB PASSWORD 'mesh'\"" >&2
fi
echo "postgres://mesh:mesh@127.0.0.1:$port/postgres"
