"""Fine-tune a pre-trained BERT on a GLUE task: the teacher for task distillation (configs/task.py).

python -m tinybert_jax.main --config=configs/finetune.py --workdir=DIR --config.task=sst2 \
    --config.data.source=glue_data/SST-2 [--config.teacher.path=bert-base-uncased]
Writes DIR/export (Hugging Face BertForSequenceClassification + tokenizer + label names) and DIR/report.json.
configs/finetune.py:smoke trains a few short steps (the paths still come from the command line).
"""
import ml_collections

from configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
    smoke = common.variant(arg, "configs/finetune.py") == "smoke"
    c = common.base("finetune", keep=2)
    # cola | sst2 | mrpc | stsb | qqp | mnli | qnli | rte | wnli, custom (your own files), squad_v1 | squad_v2
    # (answer spans) or conll2003 (named entities)
    c.task = "sst2"
    # the pre-trained BERT to fine-tune (it becomes the teacher of task distillation): HF dir or hub id
    c.teacher = ml_collections.ConfigDict(dict(path="bert-base-uncased"))
    c.data = common.task_data()
    # num_epochs passes (BERT's 3), raised to min_steps updates on a small data set; dev evaluation and early
    # stopping as in common.task_eval: the run ends at its plateau on dev and the best-on-dev model is exported
    # (README, "Stage lengths")
    c.train = ml_collections.ConfigDict(dict(batch_size=32, num_epochs=3.0, num_steps=0, min_steps=2000))
    c.optimizer = common.optimizer(2e-5)
    c.eval = common.task_eval()
    if smoke:
        c.train.update(batch_size=16, num_steps=20)
        c.optimizer.learning_rate = 1e-3
        c.eval.update(every_steps=10, batch_size=32)
        c.checkpoint.every_steps = 10
        c.log.every_steps = 5
    return c
