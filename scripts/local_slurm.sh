#!/usr/bin/env bash
# Run the demo workflow through profiles/slurm on a throw-away single-node SLURM
# cluster on this machine (Debian/Ubuntu, root, no systemd needed), then stop it.
#
#   scripts/local_slurm.sh [RUN_DIR]        # or: make test-slurm
#
# RUN_DIR holds the workflow run; a config.yaml there is used as is, otherwise a
# tiny demo config is written. Installs munge, slurmctld, slurmd and slurm-client
# from apt when missing, and snakemake-executor-plugin-slurm into a private
# folder on PYTHONPATH (scripts/slurm_packages.sh; the project venv is left alone). Daemons are started in
# the foreground, tracked by pid and stopped on exit; the only change outside
# temp folders is a symlink /etc/slurm/slurm.conf (when none exists), removed on exit.
# On exit every job's record (`scontrol show job --oneliner`) is left in
# RUN_DIR/slurm_jobs.txt. Env: PYTHON (default .venv/bin/python), KEEP=1 keeps the
# state folder, SLURM_STATE (the state folder; default a new temp folder, so a caller
# can reach the cluster with SLURM_CONF=$SLURM_STATE/slurm.conf), RETRIES (snakemake
# --retries, default 0), SLURM_PLUGIN_VERSION (default 2.8.0).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
RUN_DIR=${1:-$(mktemp -d /tmp/cliptune-slurm-run.XXXX)}
STATE=${SLURM_STATE:-$(mktemp -d /tmp/cliptune-slurm.XXXX)}
mkdir -p "$STATE"
PIDS=()
T0=$(date +%s)

log() { echo "[local_slurm $(( $(date +%s) - T0 ))s] $*" >&2; }

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if command -v scancel >/dev/null && [[ -f $STATE/slurm.conf ]]; then
    # Every job's record (rule in Comment, Restarts, granted GPUs) for the test to read.
    [[ -d $RUN_DIR ]] && SLURM_CONF=$STATE/slurm.conf timeout 10 scontrol show job --oneliner \
      > "$RUN_DIR/slurm_jobs.txt" 2>/dev/null
    SLURM_CONF=$STATE/slurm.conf scancel --user="$(id -un)" 2>/dev/null
  fi
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null && log "stopped pid $pid"
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  done
  if [[ $rc -ne 0 ]]; then
    for f in "$STATE"/*.log; do echo "== $f"; tail -n 30 "$f"; done >&2
  fi
  [[ -n ${ETC_LINK:-} && -L $ETC_LINK ]] && rm -f "$ETC_LINK"
  [[ ${KEEP:-0} == 1 ]] && log "state kept in $STATE" || rm -rf "$STATE"
  log "finished with status $rc"
  exit $rc
}
trap cleanup EXIT INT TERM

[[ $(id -u) == 0 ]] || { echo "local_slurm.sh must run as root (it starts slurmd)" >&2; exit 2; }

# --- packages (apt + the executor plugin, when missing) -------------------------
PLUGIN_DIR=$(PYTHON=$PYTHON bash "$REPO/scripts/slurm_packages.sh")
export PYTHONPATH=$PLUGIN_DIR${PYTHONPATH:+:$PYTHONPATH}

# --- munge ------------------------------------------------------------------
mkdir -p "$STATE"/{munge,spool,ctld,dev}
chmod 755 "$STATE"  # munged runs as user munge and must reach its socket folder
chown munge:munge "$STATE/munge"
chmod 700 "$STATE/munge"
runuser -u munge -- mungekey --create --keyfile="$STATE/munge/munge.key" 2>/dev/null \
  || { dd if=/dev/urandom bs=1 count=1024 of="$STATE/munge/munge.key" 2>/dev/null;
       chown munge:munge "$STATE/munge/munge.key"; }
chmod 400 "$STATE/munge/munge.key"
SOCKET=$STATE/munge/munge.socket
runuser -u munge -- munged --foreground --key-file="$STATE/munge/munge.key" \
  --socket="$SOCKET" --pid-file="$STATE/munge/munged.pid" \
  --log-file="$STATE/munged.log" --seed-file="$STATE/munge/seed" --force &
PIDS+=($!)

# --- slurm.conf: one node, fake GPUs (gres files point at /dev/null) ----------
HOST=$(hostname -s)
# More CPUs than the machine has (config_overrides): the toy jobs mostly wait on
# Python start-up, so letting them overlap shortens the run; GPUs still cap the GPU jobs.
CPUS=$(( $(nproc) > 8 ? $(nproc) : 8 ))
MEM=$(awk '/MemTotal/ {print int($2 / 1024 * 0.85)}' /proc/meminfo)
NGPU=2
for i in $(seq 0 $((NGPU - 1))); do ln -sf /dev/null "$STATE/dev/nvidia$i"; done
cat > "$STATE/slurm.conf" <<CONF
ClusterName=cliptune
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldPort=6917
SlurmdPort=6918
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# No slurmdbd: the executor polls with squeue, which needs finished jobs kept visible
# (and the test reads every job's record at the end).
MinJobAge=3600
ReturnToService=2
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:$NGPU State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
{
  echo "AutoDetect=off"
  for i in $(seq 0 $((NGPU - 1))); do echo "NodeName=$HOST Name=gpu File=$STATE/dev/nvidia$i"; done
} > "$STATE/gres.conf"
export SLURM_CONF=$STATE/slurm.conf
# Job steps (srun inside a job) ignore SLURM_CONF and read the default path:
# link it for the duration of the test when no real cluster config is there.
ETC_LINK=
if [[ ! -e /etc/slurm/slurm.conf ]]; then
  mkdir -p /etc/slurm
  ln -s "$SLURM_CONF" /etc/slurm/slurm.conf
  ETC_LINK=/etc/slurm/slurm.conf
fi

for _ in $(seq 50); do [[ -S $SOCKET ]] && break; sleep 0.1; done
[[ -S $SOCKET ]] || { log "munged did not start (see $STATE/munged.log)"; exit 1; }
PIDS+=("$(cat "$STATE/munge/munged.pid")")  # munged itself, not only the runuser wrapper
slurmctld -D -i &
PIDS+=($!)
sleep 1
slurmd -D &
PIDS+=($!)
for _ in $(seq 60); do
  state=$(timeout 5 sinfo -h -N -o %T 2>/dev/null | head -1 || true)
  [[ $state == idle ]] && break
  sleep 0.5
done
[[ ${state:-} == idle ]] || { log "node did not become idle (state: ${state:-none})"; exit 1; }
log "cluster up: $(sinfo -h -N -o '%N %T %c CPUs %m MB %G')"

# --- the workflow through the profile ------------------------------------------
mkdir -p "$RUN_DIR"
if [[ ! -f $RUN_DIR/config.yaml ]]; then
  cat > "$RUN_DIR/config.yaml" <<'CONF'
dataset:
  name: tiny
  source: demo
  demo: {train_images: 64, val_images: 32, image_size: 40, seed: 1}
image_size: 32
text_encoder: {model: offline-minilm, max_length: 32}
model: {backbone: resnet18, weights: null, attention_heads: 4, head: {hidden_dim: 32}}
train: {epochs: 1, batch_size: 16, lr: 0.001}
eval: {score_memory_mb: 0.02}
variants: {baseline: {}}
include_untrained: false
CONF
fi
cd "$RUN_DIR"
log "running snakemake --profile profiles/slurm in $RUN_DIR"
# Overrides for a small test node: squeue status polling (no slurmdbd), fast
# polls, small memory/CPU requests. Every rule sets its own mem_mb/runtime (sized
# for COCO), so each is lowered here by name (all the workflow's rules, listed by
# snakemake itself); GPU counts stay the rules' own.
RULES=$("$PYTHON" -m snakemake -s "$REPO/Snakefile" --directory "$RUN_DIR" \
  --configfile "$RUN_DIR/config.yaml" --list-rules | grep -E '^[A-Za-z_][A-Za-z0-9_]*$' || true)
[[ -n $RULES ]] || { log "snakemake --list-rules listed no rules"; exit 1; }
SMALL=()
for rule in $RULES; do
  SMALL+=("$rule:mem_mb=1000" "$rule:runtime=20")
done
"$PYTHON" -m snakemake -s "$REPO/Snakefile" --directory "$RUN_DIR" \
  --configfile "$RUN_DIR/config.yaml" --profile "$REPO/profiles/slurm" \
  --slurm-status-command squeue --slurm-init-seconds-before-status-checks 3 \
  --latency-wait 5 --retries "${RETRIES:-0}" --jobs 8 --max-threads 1 \
  --slurm-keep-successful-logs \
  --set-resources "${SMALL[@]}" train:cpus_per_gpu=1 evaluate:cpus_per_gpu=1 \
    text_embeddings:cpus_per_gpu=1 backbone_features:cpus_per_gpu=1
ls "$RUN_DIR"/.snakemake/slurm_logs >/dev/null 2>&1 || { log "no SLURM job logs: nothing was submitted"; exit 1; }
log "workflow finished through SLURM; job logs in $RUN_DIR/.snakemake/slurm_logs"
