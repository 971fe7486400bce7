"""Every task an experiment can name: the GLUE tasks (data/glue.py), `custom` (your own files, data/custom.py),
SQuAD v1.1 / v2.0 (data/squad.py, answer spans) and CoNLL-2003 NER (data/conll.py, word tags), and the reader of
each task's labelled examples. What a task's kind means for every stage is in task/kinds.py."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from tinybert_jax.data import conll, custom, glue, squad
from tinybert_jax.errors import InputError
from tinybert_jax.task.spec import Task

if TYPE_CHECKING:  # annotations only; the accelerator benchmark imports this module on hosts without it
    import ml_collections

# Task.reader -> (task, data config, split) -> the split's labelled examples: glue.TaskExamples,
# squad.SquadExamples or conll.TaggedExamples
READERS: dict[str, Callable[[Task, Any, str], Any]] = {
    "glue": lambda task, data, split: glue.read_split(task, data.source, split, data.tfds_data_dir),
    "custom": lambda task, data, split: custom.read_split(task, data.source, split),
    "squad": lambda task, data, split: squad.read_split(task.name, data.source, split, data.tfds_data_dir),
    "conll": lambda task, data, split: conll.read_split(data.source, split, data.tfds_data_dir),
}

# SQuAD: the two outputs are the answer's start and end; v2.0 adds questions without an answer in the context.
_SQUAD = dict(labels=("start", "end"), text_columns=("question", "context"), kind="span", reader="squad",
              main_metric="f1")
TASKS = {task.name: task for task in (
    Task("squad_v1", metrics=("exact_match", "f1"), **_SQUAD),
    Task("squad_v2", metrics=("exact_match", "f1", "has_answer_f1", "no_answer_f1", "no_answer_threshold"),
         **_SQUAD),
    Task("conll2003", labels=conll.TAGS, text_columns=("tokens",), kind="token", reader="conll",
         label_column="ner", metrics=("f1", "precision", "recall", "accuracy"), main_metric="f1"),
)}


def get_task(config: ml_collections.ConfigDict) -> Task:
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


def read_split(task: Task, data: ml_collections.ConfigDict, split: str):
    """The labelled examples of `split` (train or a dev split) from data.source."""
    return READERS[task.reader](task, data, split)
