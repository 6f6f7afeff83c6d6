#!/usr/bin/env bash
# Set up kqi-hub with its test tools and run the tests (lint, then pytest).
# Arguments go to pytest, e.g. ./setup-and-test.sh -k layout
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/pytest "$@"
