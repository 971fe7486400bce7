"""What a named task is: its labels, where its examples are read from, its metrics and dev splits, and its kind
(task/kinds.py: sequence classification or regression, token classification, answer spans), which says how it
is encoded, trained, scored and exported. The tasks themselves are in task/catalog.py."""
from __future__ import annotations

import dataclasses

TRAIN = "train"


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: a GLUE task, your own files (`custom`), SQuAD or CoNLL-2003."""
    name: str
    labels: tuple[str, ...]  # canonical order (for GLUE TFDS glue's); empty for regression; span tasks: start, end
    text_columns: tuple[str, ...]  # the names of the one or two text fields in the task's files
    kind: str = "sequence"  # a key of task/kinds.py KINDS
    reader: str = "glue"  # a key of task/catalog.py READERS: the files (or TFDS dataset) its examples come from
    label_column: str = ""  # the file column that holds the label
    tsv_labels: tuple[str, ...] = ()  # how each canonical label is written in the files
    tfds_text_features: tuple[str, ...] = ()  # TFDS feature names of the text fields, in text_columns' order
    metrics: tuple[str, ...] = ("accuracy",)  # the dev metrics the kind's scoring reports
    main_metric: str = "accuracy"  # selects the best checkpoint, on dev_splits[0]
    dev_splits: tuple[str, ...] = ("dev",)
    headerless_columns: tuple[str, ...] = ()  # column names of TSV files without a header row (CoLA)
    # (unlabelled test split, the GLUE leaderboard's file name for its predictions)
    leaderboard: tuple[tuple[str, str], ...] = ()

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1

    @property
    def splits(self) -> tuple[str, ...]:
        return (TRAIN,) + self.dev_splits
