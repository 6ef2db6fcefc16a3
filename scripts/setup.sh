#!/usr/bin/env bash
# Install everything dagster-bento needs on a fresh machine (idempotent): bubblewrap for the sandbox,
# and a virtualenv with the pinned Dagster stack. Used by scripts/demo.sh, scripts/test.sh and CI.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v bwrap >/dev/null 2>&1 || ! ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2'; then
  echo "setup: installing bubblewrap and libseccomp (the notebook sandbox and its seccomp filter)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq bubblewrap libseccomp2 >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.bento-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing dagster-bento and its pinned dependencies"
  .venv/bin/pip install -q -U pip
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
# Import smoke test: an unpinned install silently picks 2021 releases of the Dagster libraries.
.venv/bin/python - <<'PY'
import dagster, dagster_docker, dagstermill, dagster_webserver
assert dagster.__version__ == "1.13.27", dagster.__version__
assert dagstermill.__version__ == "0.29.27" and dagster_docker.__version__ == "0.29.27"
PY
