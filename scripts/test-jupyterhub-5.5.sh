#!/usr/bin/env bash
# The spawn tests again on JupyterHub 5.5, what the zero-to-jupyterhub chart ships (the main
# suite runs on the newest JupyterHub), and the activity route, whose browser-access tracking
# leans on the hub's auth in the server. Needs scripts/setup.sh --test to have run first.
# Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-jupyterhub-5.5
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
fi
$venv/bin/python -m pip install -q --upgrade pip
$venv/bin/python -m pip install -q "jupyterhub==5.5.*" -e ".[test]"
ln -sfn "$PWD/.venv/node_modules" "$venv/node_modules"  # the same configurable-http-proxy
exec $venv/bin/pytest -p no:cacheprovider tests/test_spawn_layout.py tests/test_spawn_refusals.py \
  tests/test_spawn_form.py tests/test_commands.py tests/test_activity.py "$@"
