"""Offline end-to-end demo on 2 CPU cores: pre-train a small BERT teacher by masked-LM on the embedded corpus
(standard-library docstrings), then run TinyBERT general distillation from it into a smaller student.

python -m tinybert_jax.main --config=configs/demo.py --workdir=DIR   (configs/demo.py:smoke: seconds)
Every key of configs/general.py applies to the distillation stage; teacher_training.* sizes the teacher.
"""
import ml_collections

from configs import common, general


def get_config(arg=None) -> ml_collections.ConfigDict:
    if common.variant(arg, "configs/demo.py") == "smoke":
        return general.get_config("smoke")
    c = general.get_config()
    c.pipeline = "demo"
    c.teacher.path = ""  # set by the pipeline to WORKDIR/teacher/export
    c.data.seq_len = 64
    c.teacher_training = common.teacher_training(smoke=False)
    # Student: half the teacher's depth, half its width, same head count (attention maps are compared per head).
    c.student.update(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
    c.train.update(batch_size=32, num_steps=400)
    c.optimizer.update(learning_rate=1e-3, warmup_ratio=0.05)
    c.checkpoint.every_steps = 200
    c.log.every_steps = 20
    return c
