#!/usr/bin/env bash
# Install what kqi-hub needs on a Debian/Ubuntu machine, idempotently:
#   apt: git, bubblewrap, node + npm (when missing);  .venv with this package;
#   configurable-http-proxy from npm into .venv.
# Usage: scripts/setup.sh [--test]   (--test adds the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
apt_extra=()  # more apt packages for later capabilities
if [[ "${1:-}" == "--test" ]]; then
  extras="[test,kubernetes${KQI_SETUP_EXTRAS:+,$KQI_SETUP_EXTRAS}]"  # kubernetes: KqiKubeSpawner
fi

need=()
command -v git >/dev/null || need+=(git)
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [[ -n "$extras" ]]; then
  command -v lmp >/dev/null || need+=(lammps)  # tests: LAMMPS is on the culler's watch list
  [[ -x /usr/bin/chromium ]] || need+=(chromium)  # browser tests (Playwright drives it)
  command -v tmux >/dev/null || need+=(tmux)  # tests: a tmux server is not a watched program
  command -v pgrep >/dev/null || need+=(procps)  # tests: jobs that wait for their children
fi
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
need+=("${apt_extra[@]}")
if ((${#need[@]})); then
  echo "setup: installing ${need[*]} with apt-get"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

python3 - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"setup: kqi-hub needs Python 3.10 or newer, found {sys.version.split()[0]}")
PY

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "setup: installing kqi-hub${extras} into .venv"
.venv/bin/python -m pip install -q -e ".${extras}"

if [[ ! -x .venv/node_modules/.bin/configurable-http-proxy ]]; then
  echo "setup: installing configurable-http-proxy (npm) into .venv"
  npm install --prefix .venv --no-fund --no-audit --loglevel=error configurable-http-proxy@5 >/dev/null
fi
# the JupyterLab extension: built with npm when missing or older than its sources (the wheel
# ships the built copy); this environment's JupyterLab loads it from the source tree by a link
ext=labextension/kqi_hub_labextension
if [[ ! -f $ext/package.json ]] || [[ -n $(find labextension/src labextension/style \
    labextension/schema labextension/package.json -newer $ext/package.json -print -quit) ]]; then
  echo "setup: building the JupyterLab extension (npm install + npm run build)"
  log=$(mktemp)
  if ! (cd labextension && export PATH="$PWD/../.venv/bin:$PATH" \
      && npm install --no-fund --no-audit --loglevel=error && npm run clean && npm run build) \
      >"$log" 2>&1; then
    tail -40 "$log"; echo "setup: building the JupyterLab extension failed"; exit 1
  fi
  rm -f "$log"
fi
labext=.venv/share/jupyter/labextensions/kqi-hub-labextension
if [[ "$(readlink "$labext" 2>/dev/null)" != "$PWD/$ext" ]]; then
  rm -rf "$labext" && mkdir -p "$(dirname "$labext")" && ln -s "$PWD/$ext" "$labext"
fi
echo "setup: done"
