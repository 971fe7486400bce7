"""Augmented task data on disk: the resumable parts directory every process writes into, the finished directory it
becomes, and reading it back. The records are made by data/augment.py and data/augment_tasks.py; this module holds
their container, and reads the sentence records back (`read_augmented`).

Augmented task data is written as ArrayRecord shards of JSON records, one per example; those of sentences and pairs
(`augment.augment_examples`) are
    {"text_a": str, "text_b": str | null, "label": int | float}
SQuAD and CoNLL records (data/augment_tasks.py) are read back through `read_records`. metadata.json holds the count
and the settings.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import jax
import numpy as np
from tqdm import tqdm

from tinybert_jax import distributed
from tinybert_jax.data import shards
from tinybert_jax.data.loader import METADATA_FILE
from tinybert_jax.errors import InputError
from tinybert_jax.files import publish_dir, read_json

log = logging.getLogger(__name__)

AUGMENTED_KIND = "tinybert_augmented_examples"


def write_augmented(out_dir: str | Path, count: int, chunk_records: Callable[[int, int, Any], Iterable[dict]],
                    augmenter: Any, overwrite: bool, chunk_size: int, resume_key: Optional[dict] = None, *,
                    new_stats: Callable[[], Any], **fields) -> dict[str, Any]:
    """Writes the JSON records that chunk_records(start, stop, stats) makes of examples [start, stop) into
    `out_dir` with metadata.json (holding `fields`), in one atomic rename; returns the metadata (on process 0;
    None elsewhere).

    `augmenter` is asked only for its settings() (recorded in the parts' identity and the metadata); `new_stats`
    makes the statistics dataclass (augment.AugmentStats) each chunk fills, saved with its part and summed field by
    field into the metadata.

    Resumable and shared by every process: the examples are cut into chunks of `chunk_size`; process p of P
    augments chunks p, p+P, ... and saves each, as soon as it is done, as one shard in `<out_dir>.parts/` (the
    shard, then its record count and statistics). A run interrupted and started again skips the saved chunks,
    provided the parts were made with the same `resume_key`, settings and chunking (otherwise they are deleted and
    made again). Each shard is written under the name it has in the output, so when every process is done, process
    0 writes metadata.json beside them and `<out_dir>.parts/` becomes `out_dir` in one directory rename: an
    interruption at any point leaves either the resumable parts or the finished output. Each
    sentence's variants come from its own random stream, so the output is the same for any chunk size, process
    count, device count and batch size.
    """
    out_dir = Path(out_dir)
    parts = out_dir.with_name(out_dir.name + ".parts")
    identity = {"resume_key": resume_key or {}, "settings": augmenter.settings(), "count": count,
                "chunk_size": chunk_size, **fields}
    starts = list(range(0, count, chunk_size))
    _open_parts(parts, identity)
    share = starts[jax.process_index()::jax.process_count()]
    todo = [start for start in share if not (parts / _part_name(start, ".json")).is_file()]
    size = lambda start: min(chunk_size, count - start)
    # process 0's bar: its share of the sentences, those saved before counted as done, the rate over completed ones
    with tqdm(total=sum(map(size, share)), initial=sum(map(size, share)) - sum(map(size, todo)),
              desc="augment" + (f" (1/{jax.process_count()} of the data)" if jax.process_count() > 1 else ""),
              unit="sentence", smoothing=0.1, disable=not distributed.is_leader()) as bar:
        for start in todo:
            _write_part(parts, start, start + size(start), chunk_size, chunk_records, new_stats)
            bar.update(size(start))
    distributed.barrier("augmentation parts written")
    metadata = None
    if distributed.is_leader():
        metadata = _assemble_parts(parts, starts, chunk_size, out_dir, overwrite, count, augmenter, fields,
                                   new_stats)
    distributed.barrier("augmented data assembled")
    return metadata


def _part_name(start: int, suffix: str) -> str:
    return f"part-{start:010d}{suffix}"


def _shard_name(start: int, chunk_size: int) -> str:
    """The chunk's shard, named as the output lists it."""
    return f"augmented-{start // chunk_size:05d}.array_record"


def _open_parts(parts: Path, identity: dict) -> None:
    """`parts` ready for this run: kept when made with `identity`, else emptied (by process 0, before anyone
    writes there)."""
    path = parts / "identity.json"
    same = path.is_file() and read_json(path) == json.loads(json.dumps(identity))
    distributed.barrier("augmentation parts checked")
    if distributed.is_leader() and not same:
        if parts.exists():
            log.info("%s holds parts of another augmentation: starting again", parts)
            shutil.rmtree(parts)
        parts.mkdir(parents=True)
        path.write_text(json.dumps(identity, indent=2) + "\n")
    distributed.barrier("augmentation parts ready")


def _write_part(parts: Path, start: int, stop: int, chunk_size: int, chunk_records, new_stats) -> None:
    """Examples [start, stop) augmented into one shard, then its summary, whose presence marks the part done."""
    stats = new_stats()
    shard = parts / _shard_name(start, chunk_size)
    tmp = shard.with_name(shard.name + ".tmp")
    written = 0
    writer = shards.writer(tmp)
    try:
        for record in chunk_records(start, stop, stats):
            writer.write(json.dumps(record).encode())
            written += 1
    finally:
        writer.close()
    os.replace(tmp, shard)
    summary = parts / _part_name(start, ".json")
    summary.with_suffix(".tmp").write_text(json.dumps({"count": written, "stats": dataclasses.asdict(stats)}))
    os.replace(summary.with_suffix(".tmp"), summary)


def _assemble_parts(parts: Path, starts: list[int], chunk_size: int, out_dir: Path, overwrite: bool, count: int,
                    augmenter: Any, fields: dict, new_stats: Callable[[], Any]) -> dict:
    """The finished parts as `out_dir`: metadata.json written into `parts`, then one rename. Nothing is moved shard
    by shard, so a stop part-way loses nothing (on a file system where a rename is a copy, one shard at a time
    would be minutes of exposure) and running again finishes the job."""
    total, stats, names = 0, new_stats(), []
    for start in starts:
        names.append(_shard_name(start, chunk_size))
        if not (parts / names[-1]).is_file():
            raise InputError(f"{parts / names[-1]}: missing, though {_part_name(start, '.json')} marks it written; "
                             f"delete {parts} to augment again")
        summary = read_json(parts / _part_name(start, ".json"))
        total += summary["count"]
        for name, value in summary["stats"].items():
            setattr(stats, name, getattr(stats, name) + value)
    metadata = {"kind": AUGMENTED_KIND, "count": total, "original_count": count, **fields, "shards": names,
                "settings": augmenter.settings(), "stats": dataclasses.asdict(stats)}
    for stale in parts.glob("*.tmp"):  # a shard half-written by an interrupted run, since written again
        stale.unlink()
    (parts / (METADATA_FILE + ".tmp")).write_text(json.dumps(metadata, indent=2) + "\n")
    os.replace(parts / (METADATA_FILE + ".tmp"), parts / METADATA_FILE)
    publish_dir(parts, out_dir, overwrite=overwrite)
    for leftover in [out_dir / "identity.json", *out_dir.glob("part-*.json")]:  # bookkeeping of the parts
        leftover.unlink(missing_ok=True)
    log.info("augmented %d examples into %d (%s) at %s", count, total, dataclasses.asdict(stats), out_dir)
    return metadata


def read_augmented(augmented_dir: str | Path) -> tuple[list[str], Optional[list[str]], np.ndarray]:
    """(text_a, text_b or None for single-sentence tasks, labels) of a directory `augment_examples` wrote.

    Damage (metadata.json, a shard, a record) is an InputError naming the file; the directory is never deleted.
    """
    metadata, records = read_records(augmented_dir, lambda example: (example["text_a"], example["text_b"],
                                                                     example["label"]))
    if not isinstance(metadata.get("pair"), bool) or not isinstance(metadata.get("label_dtype"), str):
        raise InputError(f"{Path(augmented_dir) / METADATA_FILE}: needs 'pair' (true/false) and 'label_dtype'; "
                         f"delete {augmented_dir} to augment again")
    text_a, text_b, labels = (list(column) for column in zip(*records)) if records else ([], [], [])
    return text_a, text_b if metadata["pair"] else None, np.asarray(labels, dtype=np.dtype(metadata["label_dtype"]))


def read_records(augmented_dir: str | Path, convert: Callable[[dict], Any]) -> tuple[dict, list]:
    """(metadata, [convert(record) for every record]) of a directory `write_augmented` wrote; a record that
    `convert` cannot read (a missing key, a wrong type) is damage too."""
    augmented_dir = Path(augmented_dir)
    path = augmented_dir / METADATA_FILE
    again = f"delete {augmented_dir} to augment again"
    if not path.is_file():
        raise InputError(f"{path}: not found; {augmented_dir} is not an augmented-data directory")
    try:
        metadata = read_json(path)
    except InputError as e:
        raise InputError(f"{e}; {again}") from None
    if not isinstance(metadata, dict) or metadata.get("kind") != AUGMENTED_KIND:
        raise InputError(f"{path}: not the metadata of augmented task data (kind {AUGMENTED_KIND!r}); {again}")
    names, count = shards.checked_listing(metadata, path, again)
    shards.check_shards(path, names, count, again)
    records = []
    for name in names:
        try:
            records += [convert(json.loads(record)) for record in shards.read_all(augmented_dir / name)]
        except (RuntimeError, ValueError, KeyError, TypeError) as e:  # Riegeli checksum, JSON, record layout
            raise InputError(f"{augmented_dir / name}: damaged record ({shards.reason(e)}); {again}") from None
    return metadata, records
