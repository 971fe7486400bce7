"""The Grain loader for prepared pre-training data: per-process slice, shuffle, repeat, batch, checkpointable.

Reads the directory written by `tinybert_jax.data.prepare` (record layout in its module docstring).
"""
from __future__ import annotations

from pathlib import Path

import grain
import numpy as np

from tinybert_jax.errors import InputError
from tinybert_jax.files import read_json

METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1
_REQUIRED_KEYS = ("format_version", "source", "seq_len", "seed", "tokenizer", "count", "shards")


def read_metadata(prepared_dir: str | Path) -> dict:
    """metadata.json of a prepared directory, checked for the keys the loader and `ensure_prepared` rely on."""
    path = Path(prepared_dir) / METADATA_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found; {prepared_dir} is not a prepared data directory (create one with "
                         f"python -m tinybert_jax.data.prepare)")
    metadata = read_json(path)
    missing = [key for key in _REQUIRED_KEYS if not isinstance(metadata, dict) or key not in metadata]
    if missing:
        raise InputError(f"{path}: missing {', '.join(missing)}; delete {prepared_dir} and prepare it again")
    if metadata["format_version"] != FORMAT_VERSION:
        raise InputError(f"{path}: format_version {metadata['format_version']!r}, this version reads "
                         f"{FORMAT_VERSION}; delete {prepared_dir} and prepare it again")
    return metadata


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


def make_train_iterator(prepared_dir: str | Path, batch_size: int, seed: int, shard_index: int = 0,
                        shard_count: int = 1, num_threads: int = 8,
                        prefetch_buffer_size: int = 16) -> grain.DatasetIterator:
    """An endless iterator of host batches (dicts of int32 [batch_size, seq_len] arrays) for one process.

    Process `shard_index` of `shard_count` reads records shard_index, shard_index + shard_count, ... (disjoint
    slices), reshuffled every epoch with a seed derived from `seed` and the epoch number. Batches may straddle
    an epoch boundary, so no record is ever dropped. `get_state()` / `set_state()` (or Grain's Orbax
    CheckpointSave / CheckpointRestore) restore the exact position. Threads read and decode whole batches;
    `prefetch_buffer_size` counts batches.
    """
    metadata = read_metadata(prepared_dir)
    if batch_size < 1:
        raise InputError(f"batch_size {batch_size} must be at least 1")
    if not 0 <= shard_index < shard_count:
        raise InputError(f"shard_index {shard_index} is not in [0, shard_count={shard_count})")
    if not 0 <= seed < 2**32:
        raise InputError(f"data seed {seed} is outside [0, 2**32); choose a non-negative 32-bit seed")
    paths = [Path(prepared_dir) / name for name in metadata["shards"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{prepared_dir}: shard {missing[0]} listed in {METADATA_FILE} is missing "
                         f"({len(missing)} of {len(paths)} missing); delete the directory and prepare it again")
    dataset = grain.MapDataset.source(grain.sources.ArrayRecordDataSource([str(p) for p in paths]))
    dataset = dataset[shard_index::shard_count]
    if len(dataset) < batch_size:
        raise InputError(f"{prepared_dir}: process {shard_index} of {shard_count} gets {len(dataset)} sequences, "
                         f"fewer than its batch size {batch_size}; use more data or a smaller batch")
    seq_len, pad_id = metadata["seq_len"], metadata["tokenizer"]["pad_id"]
    # Shuffle before repeat: repeat hands shuffle indices past the first epoch, and shuffle folds the epoch
    # number into its seed, so every epoch is a different permutation of this process's records.
    dataset = dataset.shuffle(seed).repeat().batch(
        batch_size, drop_remainder=True, batch_fn=lambda records: decode_records(records, seq_len, pad_id))
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    return iter(dataset.to_iter_dataset(read_options))
