"""Predictions of an exported classifier on its task's unlabelled test data: the GLUE leaderboard files, or a
predictions CSV beside a custom task's test file.

python -m tinybert_jax.main --config=configs/predict.py --workdir=DIR --config.task=mnli \
    --config.data.source=glue_data/MNLI --config.model.path=workdirs/mnli-tinybert/export
"""
import ml_collections

from configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
    smoke = common.variant(arg, "configs/predict.py") == "smoke"
    c = ml_collections.ConfigDict()
    c.pipeline = "predict"
    c.dtype = "float32"  # compute dtype of the matrix products, as in training
    c.task = "sst2"  # a GLUE task, or custom (data.* as when the model was trained)
    # the exported classifier (a finetune/task export, or any Hugging Face BertForSequenceClassification)
    c.model = ml_collections.ConfigDict(dict(path=""))
    c.data = common.task_data()  # GLUE: the download's directory (test.tsv); custom: a directory with test.*
    c.eval = ml_collections.ConfigDict(dict(batch_size=32 if smoke else 64))
    return c
