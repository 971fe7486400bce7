"""Task data in memory: encoded GLUE splits as numpy arrays, a checkpointable Grain iterator over them, and
fixed-size evaluation batches. GLUE sets are small (MNLI train: 393k pairs, ~600 MB at 128 tokens)."""
from __future__ import annotations

from typing import Iterator, Optional

import grain
import ml_collections
import numpy as np

from tinybert_jax.data import glue, tasks
from tinybert_jax.data.loader import global_batches
from tinybert_jax.errors import InputError

Arrays = dict[str, np.ndarray]  # input_ids, token_type_ids, attention_mask [N, T], labels [N], ...
SINGLE_SENTENCE_SEQ_LEN, PAIR_SEQ_LEN = 64, 128


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


def seq_len_for(task: glue.GlueTask, configured: int) -> int:
    """data.seq_len, or when 0 TinyBERT's task lengths (docs/data.md): 64 for single sentences, 128 for pairs."""
    return configured or (SINGLE_SENTENCE_SEQ_LEN if len(task.text_columns) == 1 else PAIR_SEQ_LEN)


def load_dev_sets(task: glue.GlueTask, data: ml_collections.ConfigDict, tokenizer, seq_len: int) -> dict[str, Arrays]:
    """Every dev split of the task (MNLI: matched and mismatched), encoded."""
    return {split: glue.encode(tasks.read_split(task, data, split), tokenizer, seq_len) for split in task.dev_splits}
