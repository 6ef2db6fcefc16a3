#!/usr/bin/env bash
# The test suite: real kernels, the real bubblewrap sandbox, real DuckDB files, the PostgreSQL on
# 127.0.0.1:5432 and a real dagster-webserver. Fails (never skips) when PostgreSQL is unreachable.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python - <<'PY'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", 5432), timeout=5).close()
except OSError as err:
    sys.exit(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({err}); the warehouse tests need it. "
             "Start it (pg_ctlcluster <version> main start) and run again.")
PY
exec .venv/bin/python -m pytest "$@"
