"""GLUE tasks: canonical label orders, metrics, readers for the GLUE TSV files and TFDS glue, and encoding.

Label ids everywhere (TSV, TFDS, teacher logits after `label_permutation`, predictions) are in the canonical
order, which is TFDS glue's, so both sources agree. Splits are "train" and the task's `dev_splits` ("dev"; MNLI:
"dev_matched", "dev_mismatched", the first being the one model selection uses). GLUE test splits carry no labels
and are not read.

Sources (`read_split(task, source, split)`):
- "tfds": the TFDS dataset glue/<task>, prepared by the user in ArrayRecord form and read with tfds.data_source
  (splits train, validation; MNLI validation_matched, validation_mismatched). Labels of -1 (test data) are refused.
- anything else: a local directory in the layout of the GLUE download (download_glue_data.py): <split>.tsv,
  i.e. train.tsv and dev.tsv, for MNLI dev_matched.tsv and dev_mismatched.tsv. The files are tab-separated and
  not quoted (a field may contain quote characters), UTF-8, and apart from CoLA start with a header row:
    CoLA   no header: source, label (0/1), original notation, sentence
    SST-2  sentence, label (0/1)
    MRPC   Quality (0/1), #1 ID, #2 ID, #1 String, #2 String   (the header starts with a UTF-8 byte-order mark)
    STS-B  index, genre, filename, year, old_index, source1, source2, sentence1, sentence2, score (0..5)
    QQP    id, qid1, qid2, question1, question2, is_duplicate (0/1)
    MNLI   index, promptID, pairID, genre, sentence1_binary_parse, sentence2_binary_parse, sentence1_parse,
           sentence2_parse, sentence1, sentence2, label1, gold_label (dev files: label1..label5, gold_label);
           labels are names (entailment, neutral, contradiction)
    QNLI   index, question, sentence, label (entailment / not_entailment)
    RTE    index, sentence1, sentence2, label (entailment / not_entailment)
    WNLI   index, sentence1, sentence2, label (0/1; 1 = entailment)
  Columns are found by header name, so only the text and label columns must be present; every row must have as
  many fields as the header.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinybert_jax.data import corpus
from tinybert_jax.errors import InputError
from tinybert_jax.task.spec import Task

TFDS_SOURCE = "tfds"
ENCODE_BATCH = 2048
STSB_SCORE_RANGE = (0.0, 5.0)
_TFDS_SPLITS = {"train": "train", "dev": "validation", "dev_matched": "validation_matched",
                "dev_mismatched": "validation_mismatched"}
_TASK_ALIASES = {"sst-2": "sst2", "sts-b": "stsb"}
# Checkpoint label names that mean a canonical one; names are compared lower-case with spaces/hyphens as "_".
_LABEL_ALIASES = {"contradictory": "contradiction", "non_entailment": "not_entailment"}
_GENERIC_LABEL = re.compile(r"label_\d+")  # transformers' default id2label: the checkpoint did not name them


_DIGITS = ("0", "1")  # binary tasks whose TSV files write the canonical label ids
_NLI = ("entailment", "not_entailment")

# Main metrics: CoLA's Matthews correlation and accuracy elsewhere, as GLUE reports them; F1 for MRPC and QQP
# (GLUE's headline figure for them, and the one that is not inflated by their class imbalance); for STS-B the mean
# of Pearson and Spearman, the selection metric of the original TinyBERT code. MNLI selects on matched accuracy.
TASKS: dict[str, Task] = {task.name: task for task in (
    Task("cola", labels=("unacceptable", "acceptable"), text_columns=("sentence",), label_column="label",
             tsv_labels=_DIGITS, tfds_text_features=("sentence",), metrics=("matthews_corr", "accuracy"),
             main_metric="matthews_corr", headerless_columns=("source", "label", "original_notation", "sentence"),
             leaderboard=(("test", "CoLA"),)),
    Task("sst2", labels=("negative", "positive"), text_columns=("sentence",), label_column="label",
             tsv_labels=_DIGITS, tfds_text_features=("sentence",), leaderboard=(("test", "SST-2"),)),
    Task("mrpc", labels=("not_equivalent", "equivalent"), text_columns=("#1 String", "#2 String"),
             label_column="Quality", tsv_labels=_DIGITS, tfds_text_features=("sentence1", "sentence2"),
             metrics=("f1", "accuracy"), main_metric="f1", leaderboard=(("test", "MRPC"),)),
    Task("stsb", labels=(), text_columns=("sentence1", "sentence2"), label_column="score", tsv_labels=(),
             tfds_text_features=("sentence1", "sentence2"), metrics=("pearson_spearman_mean", "pearson", "spearman"),
             main_metric="pearson_spearman_mean", leaderboard=(("test", "STS-B"),)),
    Task("qqp", labels=("not_duplicate", "duplicate"), text_columns=("question1", "question2"),
             label_column="is_duplicate", tsv_labels=_DIGITS, tfds_text_features=("question1", "question2"),
             metrics=("f1", "accuracy"), main_metric="f1", leaderboard=(("test", "QQP"),)),
    Task("mnli", labels=("entailment", "neutral", "contradiction"), text_columns=("sentence1", "sentence2"),
             label_column="gold_label", tsv_labels=("entailment", "neutral", "contradiction"),
             tfds_text_features=("premise", "hypothesis"), dev_splits=("dev_matched", "dev_mismatched"),
             leaderboard=(("test_matched", "MNLI-m"), ("test_mismatched", "MNLI-mm"))),
    Task("qnli", labels=_NLI, text_columns=("question", "sentence"), label_column="label", tsv_labels=_NLI,
             tfds_text_features=("question", "sentence"), leaderboard=(("test", "QNLI"),)),
    Task("rte", labels=_NLI, text_columns=("sentence1", "sentence2"), label_column="label", tsv_labels=_NLI,
             tfds_text_features=("sentence1", "sentence2"), leaderboard=(("test", "RTE"),)),
    Task("wnli", labels=("not_entailment", "entailment"), text_columns=("sentence1", "sentence2"),
             label_column="label", tsv_labels=_DIGITS, tfds_text_features=("sentence1", "sentence2"),
             leaderboard=(("test", "WNLI"),)),
)}


def get_task(name: str) -> Task:
    """The task called `name`, case-insensitively; "sst-2" and "sts-b" are accepted too."""
    key = name.strip().lower()
    task = TASKS.get(_TASK_ALIASES.get(key, key))
    if task is None:
        raise InputError(f"unknown GLUE task {name!r}; valid tasks: {', '.join(TASKS)}")
    return task


@dataclasses.dataclass
class TaskExamples:
    """The examples of one split: texts and canonical labels (int32 ids, or float32 scores for STS-B)."""
    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.text_a)


def read_split(task: Task, source: str, split: str, tfds_data_dir: str = "") -> TaskExamples:
    """The labelled examples of `split` from a GLUE TSV directory or, for source "tfds", from TFDS glue."""
    if split not in task.splits:
        raise InputError(f"task {task.name} has no split {split!r}; valid splits: {', '.join(task.splits)} "
                         f"(GLUE test splits have no labels)")
    if source == TFDS_SOURCE:
        texts, labels, where = _read_tfds(task, split, tfds_data_dir)
    else:
        texts, labels, where = _read_tsv(task, source, split)
    if not labels:
        raise InputError(f"{where}: no examples in split {split!r} of task {task.name}")
    dtype = np.float32 if task.is_regression else np.int32
    return TaskExamples(texts[0], texts[1] if len(texts) > 1 else None, np.asarray(labels, dtype))


# ------------------------------------------------------------------------------------------------ TSV
def _read_tsv(task: Task, directory: str, split: str) -> tuple[list[list[str]], list, str]:
    files = ", ".join(f"{name}.tsv" for name in task.splits)
    if not Path(directory).is_dir():
        raise InputError(f"GLUE source {directory!r}: no such directory; give a directory with {files} "
                         f"(the GLUE download layout) or {TFDS_SOURCE!r}")
    path = Path(directory) / f"{split}.tsv"
    if not path.is_file():
        raise InputError(f"{path}: not found; a GLUE {task.name} directory holds {files}")
    texts: list[list[str]] = [[] for _ in task.text_columns]
    labels: list = []
    with open(path, "rb") as f:
        lines = enumerate(f, start=1)
        columns = task.headerless_columns
        if not columns:
            _, header = next(lines, (1, b""))
            if not header.strip():
                raise InputError(f"{path}: empty, expected a header row and examples of GLUE {task.name}")
            columns = tuple(_tsv_fields(path, 1, header))
        text_index, label_index = _column_indices(task, path, columns)
        for line_number, raw in lines:
            fields = _tsv_fields(path, line_number, raw)
            if fields == [""]:
                continue  # a blank line, e.g. at the end of the file
            if len(fields) != len(columns):
                raise InputError(f"{path}:{line_number}: {len(fields)} tab-separated fields, expected "
                                 f"{len(columns)} ({', '.join(columns)})")
            for column, index in zip(texts, text_index):
                column.append(fields[index])
            labels.append(_tsv_label(task, path, line_number, fields[label_index]))
    return texts, labels, str(path)


def _tsv_fields(path: Path, line_number: int, raw: bytes) -> list[str]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}:{line_number}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if line_number == 1:
        line = line.removeprefix("\ufeff")  # MRPC's files start with a byte-order mark
    return line.rstrip("\r\n").split("\t")


def _column_indices(task: Task, path: Path, columns: tuple[str, ...]) -> tuple[list[int], int]:
    missing = [name for name in task.text_columns + (task.label_column,) if name not in columns]
    if missing:
        raise InputError(f"{path}: header has no column {', '.join(map(repr, missing))} (header: "
                         f"{', '.join(columns)}); expected a GLUE {task.name} file with columns "
                         f"{', '.join(task.text_columns + (task.label_column,))}")
    return [columns.index(name) for name in task.text_columns], columns.index(task.label_column)


def parse_score(value: str) -> float:
    """The number a score field holds; NaN when it holds none (callers check their own range, naming the line)."""
    try:
        return float(value)
    except ValueError:
        return math.nan


def _tsv_label(task: Task, path: Path, line_number: int, value: str) -> int | float:
    if task.is_regression:
        score = parse_score(value)
        if not STSB_SCORE_RANGE[0] <= score <= STSB_SCORE_RANGE[1]:
            raise InputError(f"{path}:{line_number}: score {value!r} is not a number in "
                             f"[{STSB_SCORE_RANGE[0]}, {STSB_SCORE_RANGE[1]}]")
        return score
    if value not in task.tsv_labels:
        raise InputError(f"{path}:{line_number}: label {value!r} is not one of {task.name}'s labels "
                         f"{', '.join(task.tsv_labels)}")
    return task.tsv_labels.index(value)


def read_test_split(task: Task, directory: str, split: str) -> tuple[list[str], TaskExamples]:
    """The ids (the file's `index` or `id` column, else the row number) and texts of an unlabelled GLUE test file
    (test.tsv; MNLI test_matched.tsv / test_mismatched.tsv). Test files have a header row, CoLA's too."""
    path = Path(directory) / f"{split}.tsv"
    if not path.is_file():
        raise InputError(f"{path}: not found; GLUE {task.name} test predictions read "
                         f"{', '.join(f'{name}.tsv' for name, _ in task.leaderboard)}")
    with open(path, "rb") as f:
        rows = [(line, _tsv_fields(path, line, raw)) for line, raw in enumerate(f, start=1)]
    rows = [(line, fields) for line, fields in rows if fields != [""]]
    if len(rows) < 2:
        raise InputError(f"{path}: expected a header row and examples of GLUE {task.name}")
    columns = tuple(rows[0][1])
    missing = [name for name in task.text_columns if name not in columns]
    if missing:
        raise InputError(f"{path}: header has no column {', '.join(map(repr, missing))} (header: "
                         f"{', '.join(columns)})")
    id_column = next((columns.index(name) for name in ("index", "id") if name in columns), None)
    ids, texts = [], [[] for _ in task.text_columns]
    for number, (line, fields) in enumerate(rows[1:]):
        if len(fields) != len(columns):
            raise InputError(f"{path}:{line}: {len(fields)} tab-separated fields, expected {len(columns)} "
                             f"({', '.join(columns)})")
        ids.append(fields[id_column] if id_column is not None else str(number))
        for column, name in zip(texts, task.text_columns):
            column.append(fields[columns.index(name)])
    labels = np.zeros(len(ids), np.float32 if task.is_regression else np.int32)
    return ids, TaskExamples(texts[0], texts[1] if len(texts) > 1 else None, labels)


def leaderboard_labels(task: Task, logits: np.ndarray) -> list[str]:
    """Predictions as the leaderboard writes them: the label as in the task's TSV files, or the score in
    [0, 5] for STS-B."""
    if task.is_regression:
        return [f"{score:.3f}" for score in np.clip(logits[:, 0], *STSB_SCORE_RANGE)]
    return [task.tsv_labels[i] for i in np.argmax(logits, axis=-1)]


# ----------------------------------------------------------------------------------------------- TFDS
def _read_tfds(task: Task, split: str, data_dir: str) -> tuple[list[list[str]], list, str]:
    # Registers the glue builder by itself: tfds' lazy lookup imports every text dataset, which needs TensorFlow.
    import tensorflow_datasets.text.glue  # noqa: F401

    where = f"tfds glue/{task.name} {_TFDS_SPLITS[split]}"
    records = corpus.open_tfds(f"tfds:glue/{task.name}:{_TFDS_SPLITS[split]}", data_dir)
    texts: list[list[str]] = [[] for _ in task.tfds_text_features]
    labels: list = []
    for index in tqdm(range(len(records)), desc=f"read {where}", unit="ex", smoothing=0.1):
        record = records[index]
        for column, feature in zip(texts, task.tfds_text_features):
            if feature not in record:
                raise InputError(f"{where}: records have no feature {feature!r} (features: "
                                 f"{', '.join(sorted(record))}); expected TFDS glue/{task.name}")
            text = record[feature]
            column.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
        labels.append(_tfds_label(task, where, index, record["label"]))
    return texts, labels, where


def _tfds_label(task: Task, where: str, index: int, value) -> int | float:
    if task.is_regression:
        score = float(value)
        if not STSB_SCORE_RANGE[0] <= score <= STSB_SCORE_RANGE[1]:
            raise InputError(f"{where}: record {index} has score {score}, outside [{STSB_SCORE_RANGE[0]}, "
                             f"{STSB_SCORE_RANGE[1]}] (-1 marks unlabelled test data)")
        return score
    label = int(value)
    if label == -1:
        raise InputError(f"{where}: record {index} has no label (-1, as in GLUE test data); only labelled train "
                         f"and dev splits can be read")
    if not 0 <= label < task.num_labels:
        raise InputError(f"{where}: record {index} has label {label}, expected 0..{task.num_labels - 1} "
                         f"({', '.join(task.labels)})")
    return label


# --------------------------------------------------------------------------------------- teacher labels
def label_permutation(task: Task, id2label: dict | None) -> np.ndarray | None:
    """`perm` with `canonical_logits = teacher_logits[..., perm]`, from a checkpoint's config.json id2label.

    None when no reordering is needed or possible to know: regression, no id2label, transformers' generic names
    (LABEL_0, ...: the checkpoint is taken to be in canonical order), or names already in canonical order.
    Names are matched case-insensitively, with spaces and hyphens as underscores, plus `_LABEL_ALIASES`.
    Named labels that are not the task's labels one to one are an InputError: never a silent guess.
    """
    if task.is_regression or not id2label:
        return None
    try:
        by_id = {int(key): str(name) for key, name in id2label.items()}
    except (TypeError, ValueError):
        raise InputError(f"teacher id2label {id2label}: keys must be label ids 0..{len(id2label) - 1}") from None
    if sorted(by_id) != list(range(len(by_id))):
        raise InputError(f"teacher id2label {id2label}: keys must be label ids 0..{len(by_id) - 1}")
    names = [_canonical_label_name(by_id[i]) for i in range(len(by_id))]
    if all(_GENERIC_LABEL.fullmatch(name) for name in names):
        return None
    wanted = [_canonical_label_name(label) for label in task.labels]
    if sorted(names) != sorted(wanted):
        raise InputError(f"teacher labels {[by_id[i] for i in range(len(by_id))]} do not match task {task.name}'s "
                         f"labels {list(task.labels)} one to one; fix id2label in the teacher's config.json")
    perm = np.array([names.index(label) for label in wanted], np.int32)
    return None if (perm == np.arange(len(perm))).all() else perm


def _canonical_label_name(name: str) -> str:
    key = re.sub(r"[\s-]+", "_", name.strip().lower())
    return _LABEL_ALIASES.get(key, key)


# ------------------------------------------------------------------------------------------- encoding
def encode(examples: TaskExamples, tokenizer, seq_len: int) -> dict[str, np.ndarray]:
    """int32 input_ids, token_type_ids, attention_mask [N, seq_len] ([CLS] a [SEP] (b [SEP]), longest text
    trimmed first, padded) and the labels, tokenised in batches with the (fast) tokenizer."""
    pair = examples.text_b is not None
    if seq_len <= tokenizer.num_special_tokens_to_add(pair=pair):
        raise InputError(f"seq_len {seq_len} leaves no room for text after the special tokens")
    count = len(examples)
    arrays = {name: np.zeros((count, seq_len), np.int32)
              for name in ("input_ids", "token_type_ids", "attention_mask")}
    with tqdm(total=count, desc="tokenise", unit="ex", smoothing=0.1) as bar:
        for start in range(0, count, ENCODE_BATCH):
            stop = min(start + ENCODE_BATCH, count)
            encoded = tokenizer(examples.text_a[start:stop], examples.text_b[start:stop] if pair else None,
                                truncation="longest_first", max_length=seq_len, padding="max_length",
                                return_token_type_ids=True, return_attention_mask=True, return_tensors="np")
            for name, values in arrays.items():
                values[start:stop] = encoded[name]
            bar.update(stop - start)
    return {**arrays, "labels": examples.labels}
