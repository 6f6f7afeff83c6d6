#!/usr/bin/env bash
# Set up kqi-hub with its test and benchmark tools, the anchors' own environment
# (.venv-anchors: jupyter-scheduler, kept apart because it adds a server extension to every
# server of its environment), then run every benchmark and print the table.
# Arguments go to the runner, e.g. ./run-benchmarks.sh culler --runs 3  (--help lists them)
set -euo pipefail
cd "$(dirname "$0")"
KQI_SETUP_EXTRAS=bench scripts/setup.sh --test
if [[ ! -x .venv-anchors/bin/python ]]; then
  echo "bench: creating .venv-anchors (jupyter-scheduler, the jobs anchor)"
  python3 -m venv .venv-anchors
  .venv-anchors/bin/python -m pip install -q --upgrade pip
fi
# the same jsonschema bound as ours (pyproject.toml): 4.24+ takes seconds to import, and the
# anchor should not pay for that where we do not
.venv-anchors/bin/python -m pip install -q "jupyter-scheduler==2.12.1" ipykernel "jsonschema<4.24"
exec .venv/bin/python -m tests.bench "$@"
