"""Task data in memory: encoded splits as numpy arrays, a checkpointable Grain iterator over them, fixed-size
evaluation batches, and dev sets with their metric. Task sets are small (MNLI train: 393k pairs, ~600 MB at 128
tokens; SQuAD train: ~88k windows of 384 tokens)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Optional

import grain
import ml_collections
import numpy as np

from tinybert_jax.data import conll, glue, squad, tasks
from tinybert_jax.data.loader import global_batches
from tinybert_jax.errors import InputError
from tinybert_jax.task import glue_metrics, span_metrics, tag_metrics

Arrays = dict[str, np.ndarray]  # input_ids, token_type_ids, attention_mask [N, T], labels [N], ...
SINGLE_SENTENCE_SEQ_LEN, PAIR_SEQ_LEN = 64, 128
# Defaults of the token and span tasks (docs/data.md): CoNLL sentences, and SQuAD windows as BERT's SQuAD runs.
TOKEN_SEQ_LEN, SPAN_SEQ_LEN = 128, 384


class ArrayRows:
    """Row i of every array, as Grain's random-access source protocol wants (len + getitem)."""

    def __init__(self, arrays: Arrays):
        self._arrays = arrays
        self._count = len(next(iter(arrays.values())))

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {name: values[index] for name, values in self._arrays.items()}


def count(arrays: Arrays) -> int:
    return len(next(iter(arrays.values())))


def train_iterator(arrays: Arrays, global_batch_size: int, seed: int,
                   rows: Optional[slice] = None) -> grain.DatasetIterator:
    """Endless shuffled batches (reshuffled each epoch; batches may straddle epochs) of this process's `rows` of
    every global batch (default: all of them), position checkpointable (`loader.global_batches`)."""
    def stack(examples: list[dict]) -> Arrays:
        return {name: np.stack([example[name] for example in examples]) for name in examples[0]}

    try:
        return global_batches(ArrayRows(arrays), global_batch_size, seed, rows or slice(0, global_batch_size), stack,
                              grain.ReadOptions(num_threads=2, prefetch_buffer_size=8))
    except InputError as e:
        raise InputError(f"the training set: {e}") from e


def eval_batches(arrays: Arrays, batch_size: int) -> Iterator[tuple[Arrays, int]]:
    """(batch, real rows) in order; the last batch is padded by repeating its last row so shapes stay fixed."""
    total = count(arrays)
    for start in range(0, total, batch_size):
        rows = min(batch_size, total - start)
        index = np.minimum(np.arange(start, start + batch_size), total - 1)
        yield {name: values[index] for name, values in arrays.items()}, rows


@dataclasses.dataclass
class DevSet:
    """A dev split: the model inputs (plus what its metric reads) and its metric on the model's logits."""
    arrays: Arrays
    metrics: Callable[[np.ndarray], dict[str, float]]  # logits in the task's label order -> {metric: value}
    chance: float  # the main metric of a model that ignores its input


def seq_len_for(task: glue.GlueTask, configured: int) -> int:
    """data.seq_len, or when 0 TinyBERT's task lengths (docs/data.md): 64 for single sentences, 128 for pairs;
    128 for CoNLL sentences and 384 for SQuAD windows."""
    if configured:
        return configured
    if task.head != "sequence":
        return TOKEN_SEQ_LEN if task.head == "token" else SPAN_SEQ_LEN
    return SINGLE_SENTENCE_SEQ_LEN if len(task.text_columns) == 1 else PAIR_SEQ_LEN


def encode_train(task: glue.GlueTask, examples, tokenizer, seq_len: int, data: ml_collections.ConfigDict) -> Arrays:
    """The training arrays: inputs and the targets the task head trains on (labels; SQuAD start_positions and
    end_positions, one row per context window)."""
    if task.head == "span":
        return squad.encode(examples, tokenizer, seq_len, data.doc_stride, data.max_query_len, train=True)
    if task.head == "token":
        arrays = conll.encode(examples, tokenizer, seq_len)
        return {name: values for name, values in arrays.items() if name != "word_positions"}
    return glue.encode(examples, tokenizer, seq_len)


def load_dev_sets(task: glue.GlueTask, data: ml_collections.ConfigDict, tokenizer, seq_len: int) -> dict[str, DevSet]:
    """Every dev split of the task (MNLI: matched and mismatched), encoded, with its metric."""
    return {split: dev_set(task, tasks.read_split(task, data, split), tokenizer, seq_len, data)
            for split in task.dev_splits}


def dev_set(task: glue.GlueTask, examples, tokenizer, seq_len: int, data: ml_collections.ConfigDict) -> DevSet:
    if task.head == "span":  # answers from the best start/end pair over all windows of a question
        arrays = squad.encode(examples, tokenizer, seq_len, data.doc_stride, data.max_query_len, train=False)
        golds = [[text for text, _ in answers] for answers in examples.answers]

        def span_scores(logits: np.ndarray) -> dict[str, float]:
            answers, null_margin = span_metrics.best_spans(logits[..., 0], logits[..., 1], arrays["offsets"],
                                                           arrays["example_index"], examples.contexts)
            return span_metrics.squad_scores(answers, null_margin, golds, with_no_answer=task.name == "squad_v2")

        # v2.0: answering nothing everywhere scores the share of unanswerable questions
        no_answer_share = float(np.mean([not gold for gold in golds])) if task.name == "squad_v2" else 0.0
        return DevSet(arrays, span_scores, chance=no_answer_share)
    if task.head == "token":  # entity F1 over every word; words cut off by seq_len count as predicted O
        arrays = conll.encode(examples, tokenizer, seq_len)
        gold = [[task.labels[tag] for tag in tags] for tags in examples.tags]

        def tag_scores(logits: np.ndarray) -> dict[str, float]:
            predicted = tag_metrics.word_predictions(logits, arrays["word_positions"], [len(w) for w in gold],
                                                     task.labels)
            return tag_metrics.entity_scores(gold, predicted)

        return DevSet(arrays, tag_scores, chance=0.0)
    arrays = glue.encode(examples, tokenizer, seq_len)
    labels = arrays["labels"]
    return DevSet(arrays, lambda logits: glue_metrics.task_metrics(task, logits, labels),
                  chance=glue_metrics.chance_score(task, labels))
