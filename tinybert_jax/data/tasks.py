"""The task of an experiment: a GLUE task by name, or `custom` (your own files, data/custom.py)."""
from __future__ import annotations

import ml_collections

from tinybert_jax.data import custom, glue


def get_task(config: ml_collections.ConfigDict) -> glue.GlueTask:
    if config.task.strip().lower() == custom.NAME:
        return custom.custom_task(config.data)
    return glue.get_task(config.task)


def read_split(task: glue.GlueTask, data: ml_collections.ConfigDict, split: str) -> glue.TaskExamples:
    """The labelled examples of `split` (train or a dev split) from data.source."""
    if task.name == custom.NAME:
        return custom.read_split(task, data.source, split)
    return glue.read_split(task, data.source, split, data.tfds_data_dir)
