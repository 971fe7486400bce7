#!/usr/bin/env bash
# The accelerator benchmark in one command (README, "Performance": accelerators):
#
#   bash benchmarks/accelerator.sh OUT_DIR
#
# writes OUT_DIR/accelerator.json: the bf16 distillation step (BERT-base -> TinyBERT4, 128 tokens) at batch 256 and
# the largest that fits, with its MFU; the student's inference speed-up at batch 128 and 1; batched augmentation vs
# one mask per forward; the task step with and without length buckets. Under 5 minutes on one GPU or TPU host;
# without an accelerator it runs tiny sizes on the CPU (under 2 minutes) and says so in the JSON's "device".
# It uses the Python environment it finds: .venv (launch/setup_env.sh --accel=...) or else python3 ($PYTHON wins).
set -euo pipefail
[[ $# -eq 1 ]] || { sed -n '4p' "$0" >&2; exit 2; }
out=$1
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
mkdir -p "$out"
PYTHONUNBUFFERED=1 "$python" -m tinybert_jax.bench.accelerator --out "$out/accelerator.json"
