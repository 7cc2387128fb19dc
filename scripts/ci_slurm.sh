#!/usr/bin/env bash
# The real-SLURM test for CI (make test-slurm-ci): the package setup is time-boxed,
# and when it fails for a reason outside the project (not root, no apt, a mirror or
# PyPI unreachable or too slow) this prints "SKIP test-slurm: <cause>" and exits 0.
# Once the packages are there, any failure (the cluster not starting included) fails.
#   Env: PYTHON (default .venv/bin/python), SLURM_SETUP_LIMIT (seconds, default 300).
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHON=${PYTHON:-$REPO/.venv/bin/python}
LIMIT=${SLURM_SETUP_LIMIT:-300}
T0=$(date +%s)
SETUP_LOG=$(mktemp)
trap 'rm -f "$SETUP_LOG"' EXIT

skip() { echo "SKIP test-slurm: $*"; exit 0; }

[[ $(id -u) == 0 ]] || skip "needs root (it installs packages and starts slurmd)"
command -v apt-get >/dev/null || skip "no apt-get here (munge/SLURM come from Debian packages)"
timeout "$LIMIT" bash "$REPO/scripts/slurm_packages.sh" >/dev/null 2>"$SETUP_LOG"
rc=$?
case $rc in
  0) ;;
  124) skip "installing munge/SLURM/the executor plugin took over ${LIMIT}s (slow mirror?)" ;;
  3|4) skip "$(grep -v '^\[slurm_packages\]' "$SETUP_LOG" | tr '\n' ' ')" ;;
  *) cat "$SETUP_LOG" >&2; echo "scripts/slurm_packages.sh failed ($rc)" >&2; exit "$rc" ;;
esac
echo "test-slurm: packages ready after $(( $(date +%s) - T0 ))s"
CLIPTUNE_SLURM_TEST=1 "$PYTHON" -m pytest -q "$REPO/tests/test_slurm.py"
