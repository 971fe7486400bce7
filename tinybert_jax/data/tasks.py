"""The task of an experiment, by name: a GLUE task, `custom` (your own files, data/custom.py), SQuAD v1.1 / v2.0
(data/squad.py, answer spans) or CoNLL-2003 NER (data/conll.py, word tags). A task type is a reader, a model
head, a dev metric (task/data.py) and an export class; every pipeline runs them all."""
from __future__ import annotations

from typing import TYPE_CHECKING

from tinybert_jax.data import conll, custom, glue, squad
from tinybert_jax.errors import InputError

if TYPE_CHECKING:  # annotations only; the accelerator benchmark imports this module on hosts without it
    import ml_collections

# SQuAD: the two outputs are the answer's start and end; v2.0 adds questions without an answer in the context.
_SQUAD = dict(labels=("start", "end"), text_columns=("question", "context"), label_column="", tsv_labels=(),
              tfds_text_features=(), main_metric="f1", head="span")
TASKS = {task.name: task for task in (
    glue.GlueTask("squad_v1", metrics=("exact_match", "f1"), **_SQUAD),
    glue.GlueTask("squad_v2", metrics=("exact_match", "f1", "has_answer_f1", "no_answer_f1",
                                       "no_answer_threshold"), **_SQUAD),
    glue.GlueTask("conll2003", labels=conll.TAGS, text_columns=("tokens",), label_column="ner", tsv_labels=(),
                  tfds_text_features=(), metrics=("f1", "precision", "recall", "accuracy"), main_metric="f1",
                  head="token"),
)}


def get_task(config: ml_collections.ConfigDict) -> glue.GlueTask:
    name = config.task.strip().lower()
    if name == custom.NAME:
        return custom.custom_task(config.data)
    if name in TASKS:
        return TASKS[name]
    try:
        return glue.get_task(config.task)
    except InputError:
        raise InputError(f"task={config.task!r}: unknown task; valid tasks: {', '.join(glue.TASKS)}, "
                         f"{', '.join(TASKS)} or {custom.NAME} (your own files)") from None


def read_split(task: glue.GlueTask, data: ml_collections.ConfigDict, split: str):
    """The labelled examples of `split` (train or a dev split) from data.source: glue.TaskExamples,
    squad.SquadExamples or conll.TaggedExamples."""
    if task.name == custom.NAME:
        return custom.read_split(task, data.source, split)
    if task.head == "span":
        return squad.read_split(task.name, data.source, split, data.tfds_data_dir)
    if task.head == "token":
        return conll.read_split(data.source, split, data.tfds_data_dir)
    return glue.read_split(task, data.source, split, data.tfds_data_dir)

