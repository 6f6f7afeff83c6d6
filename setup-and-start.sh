#!/usr/bin/env bash
# Set up kqi-hub on this machine and start it on http://127.0.0.1:8000.
# Arguments go to kqi-hub (and on to JupyterHub), e.g. ./setup-and-start.sh --port 8080
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/kqi-hub "$@"
