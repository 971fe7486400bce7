"""ArrayRecord shards: opening them, and checks on the shards a metadata.json lists, so damaged data stops a run
at start-up, before any step.

A truncated ArrayRecord file has lost its footer: its reader reports not ok and zero records (the reason comes
from `close`); reading the last record also catches damage to the final chunk. Damage elsewhere in a shard is
caught only when the record is read (Riegeli checksums every chunk).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tinybert_jax.errors import InputError


def _array_record_module():
    # Imported on first use, not with this module: the accelerator benchmark imports modules that import this one
    # (data.augmented_files, data.prepare), opens no shard, and runs on hosts without array_record.
    from array_record.python import array_record_module
    return array_record_module


def writer(path: Path):
    """A new shard at `path` (an ArrayRecordWriter) with every record its own chunk (group_size:1), which random
    access (the loader's shuffled reads) needs to be fast."""
    return _array_record_module().ArrayRecordWriter(str(path), "group_size:1")


def checked_listing(metadata: dict[str, Any], metadata_file: Path, remedy: str) -> tuple[list[str], int]:
    """(shard names, record count) from metadata["shards"] and metadata["count"], with an InputError naming
    `metadata_file` when they are not a list of file names and a non-negative integer."""
    names, count = metadata.get("shards"), metadata.get("count")
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise InputError(f"{metadata_file}: 'shards' is {names!r}, expected a list of shard file names; {remedy}")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise InputError(f"{metadata_file}: 'count' is {count!r}, expected the number of records; {remedy}")
    return names, count


def check_shards(metadata_file: Path, names: list[str], count: int, remedy: str) -> None:
    """Raises an InputError naming the first shard (beside `metadata_file`) that is missing or unreadable, or
    naming `metadata_file` when the shards' records do not add up to `count`; `remedy` says what to do."""
    total = sum(_record_count(metadata_file.parent / name, metadata_file, remedy) for name in names)
    if total != count:
        raise InputError(f"{metadata_file}: count {count}, but its shards hold {total} records; {remedy}")


def _record_count(path: Path, metadata_file: Path, remedy: str) -> int:
    """The shard's number of records, after reading its last one."""
    if not path.is_file():
        raise InputError(f"{path}: listed in {metadata_file.name} but missing; {remedy}")
    try:
        reader = _array_record_module().ArrayRecordReader(str(path))
        ok, records = reader.ok(), reader.num_records()
        if ok and records:
            reader.read([records - 1])
        reader.close()  # raises the reason a damaged file could not be opened
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else "truncated, or not an ArrayRecord file"
        raise InputError(f"{path}: damaged ArrayRecord shard ({detail}); {remedy}") from None
    if not ok:
        raise InputError(f"{path}: damaged ArrayRecord shard (truncated, or not an ArrayRecord file); {remedy}")
    return records


def read_all(path: Path) -> list[bytes]:
    """Every record of a shard; a damaged one raises RuntimeError."""
    reader = _array_record_module().ArrayRecordReader(str(path))
    try:
        return reader.read_all()
    finally:
        reader.close()


def reason(error: Exception) -> str:
    """The first line of an exception, for one-line messages (the array_record errors run long)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
