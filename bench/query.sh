#!/usr/bin/env bash
# The query benchmark: twinhub's query engine, its REST API and PostgreSQL (jsonb + GIN) over the same
# synthetic twins. Makes sure a PostgreSQL server answers on 127.0.0.1:5432 (installing and starting the
# Debian package when it does not), then runs the release build. Arguments go to the benchmark, e.g.
#   bench/query.sh --twins 100000,1000000 --runs 30 --json target/query-bench.json
#   bench/query.sh --skip-postgres
# See docs/query-benchmark.md.
set -euo pipefail
cd "$(dirname "$0")/.."

needs_postgres=1
for arg in "$@"; do
    [ "$arg" = "--skip-postgres" ] && needs_postgres=0
done

if [ "$needs_postgres" = 1 ] && ! pg_isready -h 127.0.0.1 -q 2>/dev/null; then
    echo "PostgreSQL is not answering on 127.0.0.1: installing and starting it" >&2
    if ! command -v pg_ctlcluster >/dev/null; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
    fi
    version=$(ls /etc/postgresql | sort -V | tail -1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do
        pg_isready -h 127.0.0.1 -q && break
        sleep 1
    done
    pg_isready -h 127.0.0.1 || { echo "PostgreSQL did not start" >&2; exit 1; }
    # The benchmark connects as postgres to database test over TCP without a password.
    hba=$(su postgres -c "psql -tAc 'SHOW hba_file'")
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
        sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
        su postgres -c "psql -qc 'SELECT pg_reload_conf()'"
    fi
    su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname = 'test'\"" | grep -q 1 ||
        su postgres -c "createdb test"
fi

exec cargo run --release -p twinhub --example query_bench -- "$@"
