#!/usr/bin/env bash
# Soak a pytest selection: run it N times in a row, then report per test how many runs it passed.
# Usage: scripts/soak.sh N [--load] [pytest args...]   (scripts/soak.sh -h for more)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat <<'EOF'
Usage: scripts/soak.sh N [--load] [pytest args...]

Runs `.venv/bin/pytest -p no:cacheprovider [pytest args...]` N times in a row from the repo root
(relative paths are taken from there), showing each run's output. Then prints, per test id, how
many of the N runs it passed (failing ones first; errors count as failures), a total line and
each run's wall time. Exits 0 only when every test passed in every run and each run collected
at least one test (pytest exit code 5, no tests, is a failure).

  --load      keep one CPU core busy for the whole soak (a busy loop at the tests' own
              priority, not niced), to imitate a shared, slow CI machine
  -h, --help  show this help

KQI_SOAK_KEEP=1 keeps the temporary folder with each run's junit XML.
Example: scripts/soak.sh 5 --load -q tests/test_culler.py -k uptime
EOF
}

case ${1:-} in -h | --help) usage && exit 0 ;; esac
n=${1:-}
if [[ ! $n =~ ^[1-9][0-9]*$ ]]; then
  echo "soak: N must be a positive integer, got '$n'" >&2
  usage >&2
  exit 2
fi
shift
load=0
if [[ ${1:-} == --load ]]; then load=1 && shift; fi
if [[ ! -x $root/.venv/bin/pytest ]]; then
  echo "soak: $root/.venv/bin/pytest is missing; run scripts/setup.sh --test" >&2
  exit 2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kqi-soak.XXXXXX")
load_pid=""
cleanup() {
  if [[ -n $load_pid ]]; then
    kill "$load_pid" 2>/dev/null
    wait "$load_pid" 2>/dev/null
    echo "soak: load stopped"
  fi
  if [[ ${KQI_SOAK_KEEP:-} == 1 ]]; then echo "soak: kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT  # Ctrl-C: pytest stops itself, then the EXIT trap stops the load
trap 'exit 143' TERM
trap 'exit 129' HUP

cd "$root" || exit 2
if ((load)); then
  # the marker argument (the shell's $0) makes the process easy to spot in ps
  sh -c 'while :; do :; done' kqi-soak-load &
  load_pid=$!
  echo "soak: --load is on: a busy loop (pid $load_pid) keeps one CPU core busy"
fi

for ((i = 1; i <= n; i++)); do
  echo "=== soak: run $i of $n ==="
  start=$EPOCHREALTIME
  .venv/bin/pytest -p no:cacheprovider -o junit_family=xunit1 --junitxml="$tmp/run$i.xml" "$@"
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$i" "$rc" "$start" "$EPOCHREALTIME" >>"$tmp/runs.tsv"
done

echo "=== soak: $n runs of pytest $*${load_pid:+ (under --load)} ==="
.venv/bin/python scripts/soak_report.py "$tmp" "$n"
exit $?
