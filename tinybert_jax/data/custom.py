"""Your own labelled data as a task (`task=custom`): a directory with train.{csv,tsv,jsonl} and dev.{csv,tsv,jsonl}
(docs/data.md, "Your own data"), described by the data.* keys:

  text_columns  one or two column names (a list, or one string with ',' between names); default "text"
  label_column  default "label"
  labels        the label strings in id order (a list or a ','-string); default: the distinct values of the
                training file, sorted (numerically when every one is a number); becomes the export's id2label
  regression    True: the label column holds a float score, and there are no labels
  metric        accuracy | f1 (binary F1 of label 1, macro F1 over more labels) | matthews | pearson_spearman

CSV and TSV files start with a header row and may quote fields (Python's csv dialect); JSONL files hold one JSON
object per line. Every bad row is one error naming file, line and value.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence, Union

import numpy as np

from tinybert_jax.data.glue import TaskExamples, parse_score
from tinybert_jax.errors import InputError
from tinybert_jax.task.spec import Task

if TYPE_CHECKING:  # annotations only; the accelerator benchmark imports this module on hosts without it
    import ml_collections

NAME = "custom"
FORMATS = ("csv", "tsv", "jsonl")
SPLITS = ("train", "dev")
# data.metric -> the metric that selects the best checkpoint on dev
METRICS = {"accuracy": "accuracy", "f1": "f1", "matthews": "matthews_corr", "pearson_spearman": "pearson_spearman_mean"}


def names(value: Union[str, Sequence]) -> tuple[str, ...]:
    """A list setting, given as a list (experiment files) or one string with ',' between items (the command line:
    ml_collections overrides no list field), as stripped strings; also the task pipeline's `seeds`."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(item).strip() for item in items if str(item).strip())


def custom_task(data: ml_collections.ConfigDict) -> Task:
    """The task data.* describes; without data.labels its labels are read from the training file."""
    text_columns = names(data.text_columns)
    if len(text_columns) not in (1, 2):
        raise InputError(f"data.text_columns={data.text_columns!r}: give one or two column names")
    if data.metric not in METRICS:
        raise InputError(f"data.metric={data.metric!r}; use one of {', '.join(METRICS)}")
    regression = bool(data.regression)
    if regression != (data.metric == "pearson_spearman"):
        raise InputError(f"data.metric={data.metric!r} with data.regression={regression}: pearson_spearman is the "
                         f"metric of regression tasks, and only theirs")
    labels = () if regression else names(data.labels) or _labels_in(data.source, data.label_column)
    if not regression and len(labels) < 2:
        raise InputError(f"data.labels={list(labels)}: a classification task needs at least 2 labels")
    if not regression and len(set(labels)) != len(labels):
        raise InputError(f"data.labels={list(labels)}: a label is given twice")
    metric = METRICS[data.metric]
    if metric == "f1" and len(labels) > 2:
        metric = "macro_f1"
    metrics = ((metric, "pearson", "spearman") if regression else
               (metric,) + (("accuracy",) if metric != "accuracy" else ()))
    return Task(NAME, labels=labels, text_columns=text_columns, reader="custom", label_column=data.label_column,
                tsv_labels=labels, metrics=metrics, main_metric=metric)


def read_split(task: Task, source: str, split: str, labelled: bool = True) -> TaskExamples:
    """The examples of `split`, label ids in task.labels' order (float scores for regression); labelled=False
    reads only the texts (an unlabelled test file; a label column is ignored) and gives zero labels."""
    path = data_file(source, split)
    texts: list[list[str]] = [[] for _ in task.text_columns]
    labels: list = []
    for line, row in _rows(path):
        for column, name in zip(texts, task.text_columns):
            column.append(_field(path, line, row, name))
        labels.append(_label(task, path, line, _field(path, line, row, task.label_column)) if labelled else 0)
    if not labels:
        raise InputError(f"{path}: no examples")
    dtype = np.float32 if task.is_regression else np.int32
    return TaskExamples(texts[0], texts[1] if len(texts) > 1 else None, np.asarray(labels, dtype))


def data_file(source: str, split: str) -> Path:
    """The one SPLIT.{csv,tsv,jsonl} in the directory `source`."""
    directory = Path(source)
    if not directory.is_dir():
        raise InputError(f"data.source={source!r}: no such directory; for task=custom give a directory with "
                         f"train.csv|tsv|jsonl and dev.csv|tsv|jsonl")
    found = [directory / f"{split}.{suffix}" for suffix in FORMATS if (directory / f"{split}.{suffix}").is_file()]
    if len(found) != 1:
        what = "no" if not found else "more than one"
        raise InputError(f"{directory}: {what} {split} file ({', '.join(f'{split}.{s}' for s in FORMATS)}); "
                         f"keep exactly one")
    return found[0]


def _labels_in(source: str, label_column: str) -> tuple[str, ...]:
    path = data_file(source, "train")
    values = {_field(path, line, row, label_column) for line, row in _rows(path)}
    try:
        return tuple(sorted(values, key=float))
    except ValueError:
        return tuple(sorted(values))


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, {column: value}) of every example row."""
    try:
        # utf-8-sig: spreadsheet programs start a UTF-8 file with a byte-order mark, which is no part of the
        # first column's name
        with open(path, encoding="utf-8-sig", newline="") as f:
            if path.suffix == ".jsonl":
                for line, text in enumerate(f, start=1):
                    if text.strip():
                        yield line, _json_object(path, line, text)
                return
            reader = csv.reader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
            header = next(reader, None)
            if not header:
                raise InputError(f"{path}: empty, expected a header row and examples")
            for fields in reader:
                line = reader.line_num
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise InputError(f"{path}:{line}: {len(fields)} fields, expected {len(header)} "
                                     f"({', '.join(header)})")
                yield line, dict(zip(header, fields))
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise InputError(f"{path}: {e}") from None


def _json_object(path: Path, line: int, text: str) -> dict:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{line}: not a JSON object ({e.msg})") from None
    if not isinstance(row, dict):
        raise InputError(f"{path}:{line}: a JSON {type(row).__name__}, expected an object")
    return row


def _field(path: Path, line: int, row: dict, name: str) -> str:
    if name not in row:
        raise InputError(f"{path}:{line}: no column {name!r} (columns: {', '.join(row)}); set data.text_columns / "
                         f"data.label_column")
    value = row[name]
    return value if isinstance(value, str) else json.dumps(value)


def _label(task: Task, path: Path, line: int, value: str) -> int | float:
    if task.is_regression:
        score = parse_score(value)
        if not math.isfinite(score):
            raise InputError(f"{path}:{line}: score {value!r} is not a finite number (data.regression=True)")
        return score
    if value not in task.labels:
        raise InputError(f"{path}:{line}: label {value!r} is not one of data.labels {list(task.labels)}")
    return task.labels.index(value)
