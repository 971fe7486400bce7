#!/usr/bin/env bash
# Multi-node NVIDIA GPU run: one tinybert_jax.main process per node driving all of its GPUs, joined through JAX's
# distributed runtime (2 nodes x 8 GPUs: 2 processes of 8 local devices, 16 devices in all).
#
#   bash launch/gpu_multinode.sh slurm [--nodes N] [--gpus-per-node G] [--port P] [--partition X] [--time T]
#                                      [--dry-run] -- MAIN_ARGS...
#   bash launch/gpu_multinode.sh ssh --hosts HOST1,HOST2,... [--port P] [--dir DIR] [--logs DIR] [--dry-run]
#                                    -- MAIN_ARGS...
#
# Every node needs the repository with its .venv (bash launch/setup_env.sh --accel=cuda12) at the same path, and the
# workdir on storage all nodes share. PYTHON sets the interpreter (default .venv/bin/python); P defaults to 12355.
#
# slurm: one srun step, one task per node; the first node of the step is the coordinator. Run it from the repository
# root, inside an allocation (sbatch, salloc: N and G default to the allocation's) or outside one (srun asks for it;
# N defaults to 1, G to 8). srun passes SIGTERM on to the tasks, which checkpoint and exit. An sbatch file:
#     #!/bin/bash
#     #SBATCH --nodes=2
#     #SBATCH --gpus-per-node=8
#     #SBATCH --time=24:00:00
#     #SBATCH --signal=TERM@300    # the job checkpoints 5 minutes before the limit; submitting it again resumes
#     cd /shared/tinybert_jax
#     bash launch/gpu_multinode.sh slurm -- --config=configs/general.py --workdir=/shared/workdirs/general
#
# ssh: process i runs on HOSTi over key-based ssh in DIR (default: this directory); HOST1 (its name as the other hosts
# resolve it) is the coordinator. Process 0 prints to the console, process i > 0 to ./logs/process_i.log (--logs).
# SIGTERM/SIGINT are passed on as a SIGTERM sent over a second ssh, so every process checkpoints and exits (killing
# the ssh clients would not reach them without a terminal, and with ssh -tt would kill them before a checkpoint).
# The exit status is the first non-zero one among the processes. --dry-run prints the commands without running them.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() { sed -n '2,28p' "$0" >&2; exit 2; }
die() { echo "error: $*" >&2; exit 2; }


[[ $# -ge 1 ]] || usage
form=$1; shift
case "$form" in
  slurm|ssh) ;;
  -h|--help) usage ;;
  *) die "unknown form '$form' (use: slurm or ssh, then options, then -- MAIN_ARGS)" ;;
esac
nodes=${SLURM_JOB_NUM_NODES:-1}; gpus=${SLURM_GPUS_PER_NODE:-8}; port=12355; partition=; time_limit=
hosts_list=; dir=$PWD; logs=logs; dry_run=0
while [[ $# -gt 0 ]]; do
  arg=$1; shift
  case "$arg" in
    --*=*) set -- "${arg#*=}" "$@"; arg=${arg%%=*} ;;
  esac
  case "$form:$arg" in
    slurm:--nodes|slurm:--gpus-per-node|slurm:--partition|slurm:--time|ssh:--hosts|ssh:--dir|ssh:--logs|*:--port)
      [[ $# -gt 0 ]] || die "$arg needs a value"
      case "$arg" in
        --nodes) nodes=$1 ;; --gpus-per-node) gpus=$1 ;; --partition) partition=$1 ;; --time) time_limit=$1 ;;
        --hosts) hosts_list=$1 ;; --dir) dir=$1 ;; --logs) logs=$1 ;; --port) port=$1 ;;
      esac
      shift ;;
    *:--dry-run) dry_run=1 ;;
    *:-h|*:--help) usage ;;
    *:--) break ;;
    slurm:*) die "unknown option $arg for slurm (options: --nodes, --gpus-per-node, --port, --partition, --time," \
                 "--dry-run, then -- MAIN_ARGS)" ;;
    ssh:*) die "unknown option $arg for ssh (options: --hosts, --port, --dir, --logs, --dry-run, then -- MAIN_ARGS)" ;;
  esac
done
[[ $port =~ ^[1-9][0-9]*$ ]] || die "--port $port is not a port number"
python=${PYTHON:-.venv/bin/python}

if [[ $form == slurm ]]; then
  [[ $nodes =~ ^[1-9][0-9]*$ ]] || die "--nodes $nodes is not a positive number"
  [[ -n $gpus ]] || die "--gpus-per-node needs a value"
  [[ $# -gt 0 ]] || die "no arguments for tinybert_jax.main after --"
  # --ntasks as well: srun would otherwise take the task count of an enclosing sbatch from SLURM_NTASKS. Process 0
  # runs on the step's first node, which is the job's first only when the step spans the whole allocation.
  # --kill-on-bad-exit: a process that fails would otherwise leave the others blocked in a collective.
  task="export JAX_COORDINATOR_ADDRESS=\"\$(scontrol show hostnames \"\${SLURM_STEP_NODELIST:-\$SLURM_JOB_NODELIST}\" \
| head -n1):$port\" JAX_NUM_PROCESSES=\"\$SLURM_NTASKS\" JAX_PROCESS_ID=\"\$SLURM_PROCID\"; \
exec $(quote "$python") -m tinybert_jax.main $(quote "$@")"
  srun=(srun --nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1 --gpus-per-node="$gpus" --kill-on-bad-exit=1)
  if [[ -n $partition ]]; then srun+=(--partition="$partition"); fi
  if [[ -n $time_limit ]]; then srun+=(--time="$time_limit"); fi
  srun+=(bash -c "$task")
  if [[ $dry_run == 1 ]]; then quote "${srun[@]}"; exit 0; fi
  exec "${srun[@]}"
fi

[[ -n $hosts_list ]] || die "--hosts HOST1,HOST2,... is required"
IFS=, read -r -a hosts <<< "$hosts_list"
for host in "${hosts[@]}"; do [[ -n $host ]] || die "--hosts $hosts_list has an empty entry"; done
[[ $# -gt 0 ]] || die "no arguments for tinybert_jax.main after --"
num_processes=${#hosts[@]}
coordinator=${hosts[0]##*@}:$port  # user@host is ssh's business, not the address
commands=(); stops=()
for ((i = 0; i < num_processes; i++)); do
  # The pid file (per port and process: hosts may repeat) is how a stop request reaches the process.
  pid_file=/tmp/tinybert_jax-$port-$i.pid
  commands+=("cd $(quote "$dir") && echo \$\$ > $pid_file && exec env JAX_COORDINATOR_ADDRESS=$(quote "$coordinator") \
JAX_NUM_PROCESSES=$num_processes JAX_PROCESS_ID=$i $(quote "$python") -m tinybert_jax.main $(quote "$@")")
  stops+=("kill -TERM \"\$(cat $pid_file)\" 2>/dev/null")
done
if [[ $dry_run == 1 ]]; then
  for ((i = 0; i < num_processes; i++)); do
    line=$(quote ssh "${hosts[$i]}" "${commands[$i]}")
    if ((i == 0)); then echo "$line"; else echo "$line > $(quote "$logs/process_$i.log") 2>&1"; fi
  done
  exit 0
fi

mkdir -p "$logs"
pids=()
# shellcheck disable=SC2029  # the commands are built to be expanded remotely
for ((i = 0; i < num_processes; i++)); do
  if ((i == 0)); then
    ssh "${hosts[$i]}" "${commands[$i]}" & pids+=($!)
  else
    ssh "${hosts[$i]}" "${commands[$i]}" > "$logs/process_$i.log" 2>&1 & pids+=($!)
  fi
done
stopping=0
# shellcheck disable=SC2029,SC2329  # remote expansion; called by the trap
on_signal() {
  [[ $stopping == 0 ]] || return 0
  stopping=1
  echo "stopping: every process checkpoints and exits" >&2
  local i stop_pids=()
  for ((i = 0; i < num_processes; i++)); do ssh "${hosts[$i]}" "${stops[$i]}" & stop_pids+=($!); done
  wait "${stop_pids[@]}" || true
}
trap on_signal TERM INT
wait_all "${pids[@]}"
exit "$exit_status"
