"""The `predict` pipeline: an exported classifier's predictions for its task's unlabelled test data. GLUE: the
leaderboard's files (WORKDIR/SST-2.tsv, MNLI-m.tsv and MNLI-mm.tsv, ...: `index` and the label as GLUE writes it).
task=custom: test.predictions.csv beside the test file (`row`, the 0-based example, and the predicted label or
score)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import ml_collections
import numpy as np

from tinybert_jax import distributed, report
from tinybert_jax.data import custom, glue
from tinybert_jax.data.prepare import load_tokenizer
from tinybert_jax.distill.spec import compute_dtype
from tinybert_jax.errors import InputError
from tinybert_jax.task import catalog, classifier
from tinybert_jax.task.arrays import bucket_lengths
from tinybert_jax.task.evaluate import predict
from tinybert_jax.task.kinds import kind_of, seq_len_for
from tinybert_jax.task.spec import Task


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    task = catalog.get_task(config)
    if not kind_of(task).predicts:
        raise InputError(f"task={task.name}: predict writes GLUE leaderboard files and custom-task predictions; "
                         f"use the exported {kind_of(task).auto_class} with transformers for {task.name}")
    model_dir, cfg, params, permutation = classifier.load_classifier(config.model.path, "model.path", task)
    cfg = cfg.replace(dtype=compute_dtype(config))
    tokenizer, seq_len = load_tokenizer(str(model_dir)), seq_len_for(task, config.data.seq_len)

    def logits_of(examples: glue.TaskExamples) -> np.ndarray:
        return predict(cfg, params, glue.encode(examples, tokenizer, seq_len), config.eval.batch_size, permutation,
                       bucket_lengths(config.data.buckets, seq_len))

    rows = []
    if task.name == custom.NAME:
        examples = custom.read_split(task, config.data.source, "test", labelled=False)
        out = custom.data_file(config.data.source, "test").with_name("test.predictions.csv")
        labels = predicted_labels(task, logits_of(examples))
        write_rows(out, [("row", "prediction")] + list(enumerate(labels)), ",")
        rows.append((str(out), f"{len(labels)} predictions"))
    else:
        if config.data.source == glue.TFDS_SOURCE:
            raise InputError("data.source=tfds: leaderboard predictions read the GLUE download's test TSV files; "
                             "give its directory")
        for split, name in task.leaderboard:
            ids, examples = glue.read_test_split(task, config.data.source, split)
            out = Path(workdir) / f"{name}.tsv"
            labels = glue.leaderboard_labels(task, logits_of(examples))
            write_rows(out, [("index", "prediction")] + list(zip(ids, labels)), "\t")
            rows.append((str(out), f"{len(ids)} predictions ({split})"))
    report.print_table(f"predictions of {model_dir} on {task.name}", rows)


def predicted_labels(task: Task, logits: np.ndarray) -> list[str]:
    """The label names of the predictions, or the scores of a regression."""
    if task.is_regression:
        return [f"{score:.6g}" for score in logits[:, 0]]
    return [task.labels[i] for i in np.argmax(logits, axis=-1)]


def write_rows(path: Path, rows: list, delimiter: str) -> None:
    """Written beside, then moved into place: an interrupted run leaves no half file (process 0 only)."""
    if not distributed.is_leader():
        return
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", newline="") as f:
            csv.writer(f, delimiter=delimiter, lineterminator="\n").writerows(rows)
        os.replace(tmp, path)
    except OSError as e:
        raise InputError(f"{path}: cannot write the predictions ({e.strerror})") from e
