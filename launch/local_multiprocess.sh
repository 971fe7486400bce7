#!/usr/bin/env bash
# Try the multi-host path on one machine: N processes on 127.0.0.1, each with D fake CPU devices, joined through
# JAX's distributed runtime exactly as hosts of a TPU slice or GPU cluster are.
#
#   bash launch/local_multiprocess.sh N [--devices D] [--port P] [--logs DIR] [--dry-run] -- MAIN_ARGS...
#   bash launch/local_multiprocess.sh 2 --devices 2 -- --config=configs/demo.py --workdir=workdirs/demo_mp
#
# Process 0 prints to the console (it alone shows progress and writes logs and exports); process i > 0 writes to
# DIR/process_i.log (default: ./logs). SIGTERM/SIGINT are passed on to every process, which checkpoint and stop.
# The exit status is the first non-zero one among the processes. --dry-run prints the commands without running.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() { sed -n '2,11p' "$0" >&2; exit 2; }
[[ $# -ge 1 && "$1" =~ ^[1-9][0-9]*$ ]] || usage
num_processes=$1; shift
devices=2; port=12355; logs=logs; dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --devices) devices=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --logs) logs=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (options: --devices, --port, --logs, --dry-run, then -- MAIN_ARGS)" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "error: no arguments for tinybert_jax.main after --" >&2; exit 2; }
python=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}

# XLA flags already set (e.g. by the test suite) are kept; the device count is added to them.
xla_flags=$(printf '%q' "${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices")
commands=()
for ((i = 0; i < num_processes; i++)); do
  commands+=("env JAX_PLATFORMS=cpu XLA_FLAGS=$xla_flags \
JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=$num_processes JAX_PROCESS_ID=$i \
$python -m tinybert_jax.main $(printf '%q ' "$@")")
done
if [[ $dry_run == 1 ]]; then
  for ((i = 0; i < num_processes; i++)); do
    if ((i == 0)); then echo "${commands[$i]}"; else echo "${commands[$i]}> $logs/process_$i.log 2>&1"; fi
  done
  exit 0
fi

mkdir -p "$logs"
pids=()
for ((i = num_processes - 1; i >= 0; i--)); do
  if ((i == 0)); then
    eval "exec ${commands[$i]}" & pids+=($!)
  else
    eval "exec ${commands[$i]}" > "$logs/process_$i.log" 2>&1 & pids+=($!)
  fi
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
wait_all "${pids[@]}"
exit "$exit_status"
