#!/usr/bin/env bash
# Install what scripts/local_slurm.sh needs, when missing: munge, slurmctld, slurmd and
# slurm-client from apt, and snakemake-executor-plugin-slurm (+ jobstep) into a private
# folder (the project venv is left alone). Prints that folder (for PYTHONPATH) on stdout.
# Exit 3: apt failed, 4: pip failed (the cause is on stderr); both are outside the project.
#   Env: PYTHON (default .venv/bin/python), SLURM_PLUGIN_VERSION (default 2.8.0),
#   SLURM_PLUGIN_DIR (default ~/.cache/cliptune/slurm-plugin-$SLURM_PLUGIN_VERSION).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
VERSION=${SLURM_PLUGIN_VERSION:-2.8.0}
PLUGIN_DIR=${SLURM_PLUGIN_DIR:-$HOME/.cache/cliptune/slurm-plugin-$VERSION}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  echo "[slurm_packages] installing munge slurmctld slurmd slurm-client" >&2
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -qq munge slurmctld slurmd slurm-client; } >"$OUT" 2>&1; then
    echo "apt-get could not install munge slurmctld slurmd slurm-client:" >&2
    tail -n 5 "$OUT" >&2
    exit 3
  fi
fi
if ! PYTHONPATH=$PLUGIN_DIR "$PYTHON" -c "import snakemake_executor_plugin_slurm" 2>/dev/null; then
  echo "[slurm_packages] installing snakemake-executor-plugin-slurm==$VERSION into $PLUGIN_DIR" >&2
  if ! "$PYTHON" -m pip install -q --no-deps --target "$PLUGIN_DIR" \
      "snakemake-executor-plugin-slurm==$VERSION" \
      "snakemake-executor-plugin-slurm-jobstep" >"$OUT" 2>&1; then
    echo "pip could not install snakemake-executor-plugin-slurm==$VERSION:" >&2
    tail -n 5 "$OUT" >&2
    exit 4
  fi
fi
echo "$PLUGIN_DIR"
