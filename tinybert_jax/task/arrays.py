"""Task data in memory: encoded splits as numpy arrays, a checkpointable Grain iterator over them, fixed-size
evaluation batches, and dev sets with their metric. Task sets are small (MNLI train: 393k pairs, ~600 MB at 128
tokens; SQuAD train: ~88k windows of 384 tokens).

Length buckets (`data.buckets`, README "Length buckets"): every array is encoded padded to seq_len, and a batch of
examples no longer than bucket length L is cut to L tokens (padding sits at the end), so a step or forward
computes only up to the longest example's bucket. Arrays with a token axis are listed in TOKEN_AXIS."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import numpy as np

from tinybert_jax.data.loader import bucketed_batches, global_batches
from tinybert_jax.errors import InputError

if TYPE_CHECKING:  # annotations only; the accelerator benchmark imports this module on hosts without it
    import grain

Arrays = dict[str, np.ndarray]  # input_ids, token_type_ids, attention_mask [N, T], labels [N], ...
# arrays whose axis 1 is the token axis when they have this many axes (per-token labels and teacher logits of
# the token and span heads; a sequence task's labels [N] and logits [N, C] have none)
TOKEN_AXIS = {"input_ids": 2, "token_type_ids": 2, "attention_mask": 2, "labels": 2, "teacher_logits": 3,
              "offsets": 3}
BUCKET_STEP, MAX_AUTO_BUCKETS = 8, 16


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


def bucket_lengths(setting, seq_len: int, key: str = "data.buckets") -> Optional[tuple[int, ...]]:
    """The padded lengths of `setting`: None (fixed padding to seq_len) for "" or 0; "auto" multiples of 8 up to
    seq_len, the step doubled until there are at most 16; a number N its multiples; a list (or "16,32,64")
    exactly those. seq_len is always the last."""
    text = ",".join(str(item) for item in setting) if isinstance(setting, (list, tuple)) else str(setting).strip()
    if text in ("", "0", "none", "None"):
        return None
    if text == "auto":
        step = BUCKET_STEP
        while -(-seq_len // step) > MAX_AUTO_BUCKETS:
            step *= 2
        return tuple(range(step, seq_len, step)) + (seq_len,)
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise InputError(f"{key}={setting!r}: give auto, a step such as 8, or padded lengths such as 16,32,64 "
                         f"(0 or empty: every batch padded to seq_len {seq_len})")
    if len(values) == 1:
        return tuple(range(values[0], seq_len, values[0])) + (seq_len,)
    if max(values) > seq_len:
        raise InputError(f"{key}={setting!r}: {max(values)} is longer than data.seq_len {seq_len}")
    return tuple(sorted(set(values) - {seq_len})) + (seq_len,)


def example_buckets(arrays: Arrays, buckets: tuple[int, ...]) -> np.ndarray:
    """The bucket of each example: the first whose length holds its real tokens."""
    return np.searchsorted(np.asarray(buckets), arrays["attention_mask"].sum(axis=1), side="left")


def cut_rows(arrays: Arrays, indices: np.ndarray, length: Optional[int]) -> Arrays:
    """Rows `indices` of every array, the token axis cut to `length` (None: whole)."""
    return {name: values[indices, :length] if length and TOKEN_AXIS.get(name) == values.ndim else values[indices]
            for name, values in arrays.items()}


def batches_per_epoch(arrays: Arrays, global_batch_size: int, buckets: Optional[tuple[int, ...]]) -> float:
    """Global batches in one pass over the examples: a bucketed epoch is whole batches (`loader.bucketed_batches`:
    ceil(N / B), the last one completed with repeats); without buckets batches straddle epochs (N / B)."""
    examples = count(arrays)
    return float(-(-examples // global_batch_size)) if buckets is not None else examples / global_batch_size


def batch_shapes(arrays: Arrays, global_batch_size: int,
                 buckets: Optional[tuple[int, ...]]) -> list[dict[str, tuple[tuple[int, ...], np.dtype]]]:
    """{name: (shape, dtype)} of every global batch shape training can meet: one per bucket that can form a batch
    (one holding examples, and the last, which takes the remainders); one shape without buckets."""
    if buckets is None:
        return [{name: ((global_batch_size,) + values.shape[1:], values.dtype) for name, values in arrays.items()}]
    used = sorted(set(example_buckets(arrays, buckets).tolist()) | {len(buckets) - 1})
    return [{name: ((global_batch_size,) + ((buckets[b],) + values.shape[2:] if TOKEN_AXIS.get(name) == values.ndim
                                            else values.shape[1:]), values.dtype)
             for name, values in arrays.items()} for b in used]


def train_iterator(arrays: Arrays, global_batch_size: int, seed: int, rows: Optional[slice] = None,
                   buckets: Optional[tuple[int, ...]] = None) -> grain.DatasetIterator:
    """Endless shuffled batches of this process's `rows` of every global batch (default: all of them), position
    checkpointable. Without buckets: reshuffled each epoch, batches may straddle epochs (`loader.global_batches`);
    with buckets: each batch from one bucket, cut to its length (`loader.bucketed_batches`)."""
    import grain  # here, not at the top: the accelerator benchmark imports this module on hosts without grain

    rows = rows or slice(0, global_batch_size)
    options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)
    try:
        if buckets is not None:
            return bucketed_batches(example_buckets(arrays, buckets), len(buckets), global_batch_size, seed, rows,
                                    lambda indices, bucket: cut_rows(arrays, indices, buckets[bucket]), options)

        def stack(examples: list[dict]) -> Arrays:
            return {name: np.stack([example[name] for example in examples]) for name in examples[0]}

        return global_batches(ArrayRows(arrays), global_batch_size, seed, rows, stack, options)
    except InputError as e:
        raise InputError(f"the training set: {e}") from e


def eval_batches(arrays: Arrays, batch_size: int,
                 buckets: Optional[tuple[int, ...]] = None) -> Iterator[tuple[Arrays, np.ndarray]]:
    """(batch, the indices of its real rows) covering every example once; a bucket's last batch is padded by
    repeating its last row so shapes stay fixed. With buckets, examples are grouped by bucket (shortest first)
    and each batch is cut to its bucket's length."""
    if buckets is None:
        groups = [(np.arange(count(arrays)), None)]
    else:
        which = example_buckets(arrays, buckets)
        groups = [(np.flatnonzero(which == bucket), length) for bucket, length in enumerate(buckets)]
    for members, length in groups:
        for start in range(0, len(members), batch_size):
            real = members[start:start + batch_size]
            padded = np.concatenate([real, np.full(batch_size - len(real), real[-1])])
            yield cut_rows(arrays, padded, length), real


@dataclasses.dataclass
class DevSet:
    """A dev split: the model inputs (plus what its metric reads) and its metric on the model's logits."""
    arrays: Arrays
    metrics: Callable[[np.ndarray], dict[str, float]]  # logits in the task's label order -> {metric: value}
    chance: float  # the main metric of a model that ignores its input
    buckets: Optional[tuple[int, ...]] = None  # the padded lengths its forwards run at
