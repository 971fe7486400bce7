#!/usr/bin/env bash
# Run tinybert_jax.main on a Cloud TPU VM, one host or a multi-host slice: create it, copy the code and set up .venv
# on every worker, run the same command on all workers (JAX finds the slice itself), fetch the logs, delete it.
#
#   bash launch/tpu_vm.sh --name NAME --zone ZONE --accelerator-type TYPE [--version V] [--project P] [--spot]
#                         [--keep] [--logs DIR] [--prepare CMD] [--dry-run] -- MAIN_ARGS...
#   bash launch/tpu_vm.sh --name tb-v4 --zone us-central2-b --accelerator-type v4-8 -- \
#       --config=configs/general.py --workdir=/mnt/shared/workdirs/general
#
# Flags can come from the environment instead: TPU_NAME, ZONE, ACCELERATOR_TYPE, RUNTIME_VERSION, PROJECT, SPOT=1,
# KEEP=1, LOG_DIR, PREPARE. The runtime version defaults by family: v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5,
# v5litepod v2-alpha-tpuv5-lite, v2-v4 tpu-ubuntu2204-base. The workdir must be storage all workers share (NFS,
# Filestore, gcsfuse); --prepare runs a shell command on every worker after the set-up, e.g. to mount it. The code
# sent is the tracked files of this checkout with uncommitted edits (git add new files). A TPU VM of that name that
# already exists (one kept with --keep) is reused. For multi-host slices run `ssh-add ~/.ssh/google_compute_engine`
# first. Worker i's output goes to DIR/worker_i.log (default DIR: logs/NAME). The TPU VM is deleted at the end, also
# when a step fails, unless --keep. SIGTERM/SIGINT: the job checkpoints on every worker and stops before the TPU VM is
# deleted; the same command again resumes from the workdir. --dry-run prints the gcloud commands instead of running.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() { sed -n '2,18p' "$0" >&2; exit 2; }
die() { echo "error: $*" >&2; exit 2; }


name=${TPU_NAME:-}; zone=${ZONE:-}; type=${ACCELERATOR_TYPE:-}; version=${RUNTIME_VERSION:-}; project=${PROJECT:-}
spot=${SPOT:-0}; keep=${KEEP:-0}; logs=${LOG_DIR:-}; prepare=${PREPARE:-}; dry_run=0
while [[ $# -gt 0 ]]; do
  arg=$1; shift
  case "$arg" in
    --name=*|--zone=*|--accelerator-type=*|--version=*|--project=*|--logs=*|--prepare=*)
      set -- "${arg#*=}" "$@"; arg=${arg%%=*} ;;
  esac
  case "$arg" in
    --name|--zone|--accelerator-type|--version|--project|--logs|--prepare)
      [[ $# -gt 0 ]] || die "$arg needs a value"
      case "$arg" in
        --name) name=$1 ;; --zone) zone=$1 ;; --accelerator-type) type=$1 ;; --version) version=$1 ;;
        --project) project=$1 ;; --logs) logs=$1 ;; --prepare) prepare=$1 ;;
      esac
      shift ;;
    --spot) spot=1 ;;
    --keep) keep=1 ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage ;;
    --) break ;;
    *) die "unknown option $arg (options: --name, --zone, --accelerator-type, --version, --project, --spot, --keep," \
           "--logs, --prepare, --dry-run, then -- MAIN_ARGS)" ;;
  esac
done
[[ -n $name ]] || die "--name (or TPU_NAME) is required"
[[ -n $zone ]] || die "--zone (or ZONE) is required"
[[ -n $type ]] || die "--accelerator-type (or ACCELERATOR_TYPE) is required, e.g. v4-8 or v5litepod-16"
[[ $# -gt 0 ]] || die "no arguments for tinybert_jax.main after --"
[[ $type =~ ^([a-z0-9]+)-([1-9][0-9]*)$ ]] \
  || die "--accelerator-type $type is not FAMILY-SIZE, e.g. v4-8 or v5litepod-16"
size=${BASH_REMATCH[2]}
# scp cannot download from several workers at once, so the logs are fetched per worker and the count is needed:
# sizes count TensorCores (8 per host) up to v5p, and chips (4 per host beyond a single 8-chip host) from v5e on.
case "${BASH_REMATCH[1]}" in
  v2|v3|v4) default_version='tpu-ubuntu2204-base'; workers=$(( size > 8 ? size / 8 : 1 )) ;;
  v5p) default_version='v2-alpha-tpuv5'; workers=$(( size > 8 ? size / 8 : 1 )) ;;
  v5litepod|v5e) default_version='v2-alpha-tpuv5-lite'; workers=$(( size > 8 ? size / 4 : 1 )) ;;
  v6e) default_version='v2-alpha-tpuv6e'; workers=$(( size > 8 ? size / 4 : 1 )) ;;
  *) die "unknown TPU family in --accelerator-type $type (known: v2, v3, v4, v5p, v5litepod, v6e)" ;;
esac
version=${version:-$default_version}
logs=${logs:-logs/$name}
repo=$(cd "$(dirname "$0")/.." && pwd)
tarball=${TMPDIR:-/tmp}/tinybert_jax-$name.tar.gz

tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
if [[ -n $project ]]; then where+=(--project="$project"); fi
create=("${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$type" --version="$version")
if [[ $spot == 1 ]]; then create+=(--spot); fi

# The runtime images are Ubuntu 22.04 (Python 3.10) and the pinned jax needs 3.11, which apt has.
setup="set -e; rm -f ~/tinybert_jax.pid; mkdir -p ~/tinybert_jax; cd ~/tinybert_jax; tar -xzf ~/tinybert_jax.tar.gz; \
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
sudo apt-get -qq -o DPkg::Lock::Timeout=600 update; \
sudo DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=600 install -y python3.11 python3.11-venv; \
export PYTHON=python3.11; fi; bash launch/setup_env.sh --accel=tpu"
if [[ -n $prepare ]]; then setup+="; $prepare"; fi
# The pid file lets a stop request reach the job; pipefail keeps its exit status; tee -p keeps writing the log when
# the ssh client goes away, instead of dying and taking the job's stdout with it.
run="cd ~/tinybert_jax && set -o pipefail && { .venv/bin/python -m tinybert_jax.main $(quote "$@") \
& echo \$! > ~/tinybert_jax.pid; wait \$!; } 2>&1 | tee -p ~/tinybert_jax.log"
# shellcheck disable=SC2016  # expanded by the workers' shell
stop='{ pid=$(cat ~/tinybert_jax.pid) && kill -TERM $pid && while kill -0 $pid; do sleep 2; done; } 2>/dev/null; true'

step() { if [[ $dry_run == 1 ]]; then quote "$@"; else "$@"; fi; }
fetch_logs() {
  local i
  for ((i = 0; i < workers; i++)); do
    step "${tpu[@]}" scp "$name:tinybert_jax.log" "$logs/worker_$i.log" "${where[@]}" --worker="$i" \
      || echo "warning: no log from worker $i" >&2
  done
}
delete_tpu() {
  step "${tpu[@]}" delete "$name" "${where[@]}" --quiet \
    || echo "warning: could not delete $name; see: gcloud compute tpus tpu-vm list --zone=$zone" >&2
}

if [[ $dry_run == 1 ]]; then
  step "${create[@]}"
  step "${tpu[@]}" scp "$tarball" "$name:tinybert_jax.tar.gz" "${where[@]}" --worker=all
  step "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$setup"
  step "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$run"
  fetch_logs
  if [[ $keep != 1 ]]; then delete_tpu; fi
  exit 0
fi

created=0; started=0; stopping=0; run_pid=
# shellcheck disable=SC2329  # finish and on_signal run from traps
finish() {
  local status=$?
  # Clean-up must not be cut short: an interrupted delete leaves a TPU VM billing.
  trap '' INT TERM
  if [[ $started == 1 ]]; then mkdir -p "$logs"; fetch_logs; fi
  if [[ $created == 1 && $keep != 1 ]]; then delete_tpu; fi
  rm -f "$tarball"
  exit "$status"
}
# shellcheck disable=SC2329
on_signal() {
  if [[ $started == 1 ]]; then
    if [[ $stopping == 0 ]]; then
      stopping=1
      echo "stopping: tinybert_jax.main checkpoints and exits on every worker" >&2
      step "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$stop" || true
    fi
    # The main flow still waits for the run. A bare return would give the interrupted wait's status to set -e.
    return 0
  fi
  exit "$1"
}
trap finish EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# Set before create so that a create that fails half-way is cleaned up too.
created=1
if "${tpu[@]}" describe "$name" "${where[@]}" > /dev/null 2>&1; then
  echo "reusing the existing TPU VM $name" >&2
else
  step "${create[@]}"
fi
commit=$(git -C "$repo" stash create)
git -C "$repo" archive --format=tar.gz -o "$tarball" "${commit:-HEAD}"
step "${tpu[@]}" scp "$tarball" "$name:tinybert_jax.tar.gz" "${where[@]}" --worker=all
step "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$setup"
started=1
# In the background: bash runs a trap only between commands, and wait is the one that a signal interrupts.
"${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$run" & run_pid=$!
while kill -0 "$run_pid" 2>/dev/null; do wait "$run_pid" || true; done
set +e; wait "$run_pid"; status=$?; set -e
exit "$status"
