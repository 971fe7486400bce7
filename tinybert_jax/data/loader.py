"""The Grain loader for prepared pre-training data: global shuffled batches, each process reading its rows.

Reads the directory written by `tinybert_jax.data.prepare` (record layout in its module docstring).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from tinybert_jax.data import shards
from tinybert_jax.errors import InputError
from tinybert_jax.files import is_empty_dir, read_json

if TYPE_CHECKING:  # the iterators below import grain when called: see _grain
    import grain

METADATA_FILE = "metadata.json"
TOKEN_COUNTS_FILE = "token_counts.npy"  # int64 [vocab_size]: occurrences of each token id in the sequences
FORMAT_VERSION = 1
_REQUIRED_KEYS = ("format_version", "source", "seq_len", "seed", "tokenizer", "count", "shards")


def read_metadata(prepared_dir: str | Path) -> dict:
    """metadata.json of a prepared directory, checked for the keys the loader and `ensure_prepared` rely on."""
    path = Path(prepared_dir) / METADATA_FILE
    again = _prepare_again(prepared_dir)
    if not path.is_file() and Path(prepared_dir).is_dir() and not is_empty_dir(Path(prepared_dir)):
        raise InputError(f"{path}: not found, so {prepared_dir} holds no complete prepared data; {again}")
    if not path.is_file():
        raise InputError(f"{path}: not found; {prepared_dir} is not a prepared data directory (create one with "
                         f"python -m tinybert_jax.data.prepare)")
    try:
        metadata = read_json(path)
    except InputError as e:
        raise InputError(f"{e}; {again}") from None
    missing = [key for key in _REQUIRED_KEYS if not isinstance(metadata, dict) or key not in metadata]
    if missing:
        raise InputError(f"{path}: missing {', '.join(missing)}; {again}")
    if metadata["format_version"] != FORMAT_VERSION:
        raise InputError(f"{path}: format_version {metadata['format_version']!r}, this version reads "
                         f"{FORMAT_VERSION}; {again}")
    seq_len, tokenizer = metadata["seq_len"], metadata["tokenizer"]
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
        raise InputError(f"{path}: 'seq_len' is {seq_len!r}, expected a positive integer; {again}")
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("pad_id"), int):
        raise InputError(f"{path}: 'tokenizer' is not an object with an integer pad_id; {again}")
    shards.checked_listing(metadata, path, again)
    return metadata


def check_prepared(prepared_dir: str | Path) -> dict:
    """`read_metadata`, once every shard it lists has opened and they hold its count of records: damaged data is
    refused at start-up, and never deleted (the user decides)."""
    metadata = read_metadata(prepared_dir)
    shards.check_shards(Path(prepared_dir) / METADATA_FILE, metadata["shards"], metadata["count"],
                        _prepare_again(prepared_dir))
    return metadata


def _prepare_again(prepared_dir: str | Path) -> str:
    return f"delete {prepared_dir} and prepare it again"


def read_token_counts(prepared_dir: str | Path) -> np.ndarray:
    """int64 [vocab_size] occurrences of every token id in the prepared sequences (for frequency-smoothed masking).

    Directories prepared before the counts were recorded have no `token_counts` entry: an InputError says to
    prepare them again, as it does for a missing, unreadable or wrongly sized counts file.
    """
    metadata = read_metadata(prepared_dir)
    name = metadata.get("token_counts")
    path = Path(prepared_dir) / (name if isinstance(name, str) and name else TOKEN_COUNTS_FILE)
    again = _prepare_again(prepared_dir)
    if name is None:
        raise InputError(f"{path}: not recorded in {METADATA_FILE} (prepared by an older version without token "
                         f"counts); {again}")
    if not isinstance(name, str) or not name:
        raise InputError(f"{path}: {METADATA_FILE} names the token counts file as {name!r}; {again}")
    tokenizer = metadata["tokenizer"]
    vocab_size = tokenizer.get("vocab_size") if isinstance(tokenizer, dict) else None
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        raise InputError(f"{path}: {METADATA_FILE} has no valid tokenizer.vocab_size to check the counts "
                         f"against; {again}")
    if not path.is_file():
        raise InputError(f"{path}: not found (listed in {METADATA_FILE}); {again}")
    try:
        counts = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not a readable .npy array ({reason}); {again}") from None
    if counts.ndim != 1 or counts.shape[0] != vocab_size:
        raise InputError(f"{path}: shape {list(counts.shape)}, expected [{vocab_size}] (the tokenizer's vocab_size); "
                         f"{again}")
    if not np.issubdtype(counts.dtype, np.integer):
        raise InputError(f"{path}: dtype {counts.dtype}, expected integer counts; {again}")
    if (counts < 0).any():
        raise InputError(f"{path}: negative counts; {again}")
    return counts.astype(np.int64)


def decode_records(records: list[bytes], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """A batch of records -> int32 input_ids, token_type_ids, attention_mask, each [len(records), seq_len]."""
    input_ids = np.full((len(records), seq_len), pad_id, np.int32)
    token_type_ids = np.zeros((len(records), seq_len), np.int32)
    attention_mask = np.zeros((len(records), seq_len), np.int32)
    for row, record in enumerate(records):
        values = np.frombuffer(record, "<i4")
        length = len(values) - 1
        input_ids[row, :length] = values[1:]
        token_type_ids[row, values[0]:length] = 1
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


def _grain():
    # Imported when an iterator is made, not with this module: data.prepare and data.augmented_files import this
    # module for the metadata format, and the accelerator benchmark (which reads no prepared data) imports those on
    # hosts without grain.
    import grain
    return grain


def global_batches(source, global_batch_size: int, seed: int, rows: slice, batch_fn: Callable[[list], Any],
                   read_options: grain.ReadOptions) -> grain.DatasetIterator:
    """An endless iterator of this process's rows of every global batch.

    Global batch j holds positions j*B .. j*B+B-1 of an endless run of epochs, each epoch a fresh permutation of
    all records (seeded by `seed` and the epoch number), so batches may straddle epochs and no record is dropped.
    A process reads only `rows` of each global batch, which is what its devices hold. Neither the batches nor the
    iterator state ({'next_index': j}) depend on how many processes share the work: a checkpointed position
    resumes on another process count or mesh.
    """
    if len(source) < global_batch_size:
        raise InputError(f"{len(source)} examples are fewer than one global batch of {global_batch_size}; use more "
                         f"data or a smaller batch")
    grain = _grain()
    records = grain.MapDataset.source(source).shuffle(seed).repeat()
    offsets = range(rows.start, rows.stop)
    # Shuffle before repeat: repeat hands shuffle indices past the first epoch, and shuffle folds the epoch
    # number into its seed, so every epoch is a different permutation.
    batches = grain.MapDataset.range(len(records) // global_batch_size).map(
        lambda j: batch_fn([records[j * global_batch_size + offset] for offset in offsets]))
    return iter(batches.to_iter_dataset(read_options))


def bucketed_batches(example_buckets: np.ndarray, num_buckets: int, global_batch_size: int, seed: int,
                     rows: slice, batch_fn: Callable[[np.ndarray, int], Any],
                     read_options: grain.ReadOptions) -> grain.DatasetIterator:
    """An endless iterator of this process's `rows` of every global batch, each batch drawn from one length bucket
    (`example_buckets[i]`: the bucket of example i, 0 the shortest); batch_fn(indices, bucket) makes the host
    batch of those examples padded to that bucket's length.

    Epoch e (the examples' permutation seeded by (seed, e)) goes through the buckets from the shortest: each
    bucket's examples, after those carried over from the shorter one, make full batches, and the fewer than a batch
    left over move up to the next (longer) bucket. The last remainder is completed with the epoch's first examples.
    So an epoch has exactly ceil(N / batch) batches, each example in at least one, none dropped; the epoch's
    batches are then shuffled, so buckets interleave. As with `global_batches`, batch j is the same for any number
    of processes, and the iterator state ({'next_index': j}) resumes on another process count.
    """
    count = len(example_buckets)
    if count < global_batch_size:
        raise InputError(f"{count} examples are fewer than one global batch of {global_batch_size}; use more "
                         f"data or a smaller batch")
    per_epoch = -(-count // global_batch_size)
    # the last two epochs' plans: Grain's threads read batches of one or two epochs at a time
    epoch_plan = functools.lru_cache(maxsize=2)(
        functools.partial(bucket_plan, example_buckets, num_buckets, global_batch_size, seed))

    def batch(j: int) -> Any:
        indices, buckets = epoch_plan(j // per_epoch)
        return batch_fn(indices[j % per_epoch][rows], int(buckets[j % per_epoch]))

    return iter(_grain().MapDataset.range(2**62).map(batch).to_iter_dataset(read_options))


def bucket_plan(example_buckets: np.ndarray, num_buckets: int, global_batch_size: int, seed: int,
                epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Epoch `epoch` of `bucketed_batches`: (the examples of each global batch [ceil(N / batch), batch], the bucket
    of each batch), in the order the iterator yields them."""
    count = len(example_buckets)
    rng = np.random.default_rng((seed, epoch))
    order = rng.permutation(count)
    batches, buckets, carry = [], [], order[:0]
    for bucket in range(num_buckets):
        members = np.concatenate([carry, order[example_buckets[order] == bucket]])
        full = len(members) - len(members) % global_batch_size
        batches += np.split(members[:full], full // global_batch_size) if full else []
        buckets += [bucket] * (full // global_batch_size)
        carry = members[full:]
    if len(carry):
        batches.append(np.concatenate([carry, order[:global_batch_size - len(carry)]]))
        buckets.append(num_buckets - 1)
    shuffled = rng.permutation(len(batches))
    return np.stack(batches)[shuffled], np.asarray(buckets)[shuffled]


def make_train_iterator(prepared_dir: str | Path, global_batch_size: int, seed: int, rows: Optional[slice] = None,
                        num_threads: int = 8, prefetch_buffer_size: int = 16) -> grain.DatasetIterator:
    """Host batches (dicts of int32 [rows, seq_len] arrays) of prepared data for one process (`global_batches`;
    `rows` defaults to the whole batch). `get_state()` / `set_state()` restore the exact position. Threads read
    and decode whole batches; `prefetch_buffer_size` counts batches.
    """
    metadata = check_prepared(prepared_dir)
    if global_batch_size < 1:
        raise InputError(f"batch_size {global_batch_size} must be at least 1")
    if not 0 <= seed < 2**32:
        raise InputError(f"data seed {seed} is outside [0, 2**32); choose a non-negative 32-bit seed")
    paths = [Path(prepared_dir) / name for name in metadata["shards"]]
    seq_len, pad_id = metadata["seq_len"], metadata["tokenizer"]["pad_id"]
    grain = _grain()
    try:
        return global_batches(grain.sources.ArrayRecordDataSource([str(p) for p in paths]), global_batch_size,
                              seed, rows or slice(0, global_batch_size),
                              lambda records: decode_records(records, seq_len, pad_id),
                              grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size))
    except InputError as e:
        raise InputError(f"{prepared_dir}: {e}") from e
