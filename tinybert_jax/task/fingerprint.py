"""Fingerprints of what produced a cached task output (augmented data, teacher logits, a finished stage).

A cache is reused only when the fingerprint stored beside it equals the current run's: a workdir re-run with
another teacher, data set, augmentation setting or sequence length must not silently train on stale outputs.
A fingerprint is a flat {key: JSON value} dict, so a mismatch can name the first key that differs.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Optional

import jax
import numpy as np
from absl import logging

from tinybert_jax.files import read_json


def digest_arrays(tree: Any) -> str:
    """sha256 (first 16 hex digits) over a pytree's paths, dtypes, shapes and bytes: identical weights or data,
    identical digest, whatever file format they came from."""
    sha = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(tree)[0], key=lambda item: str(item[0])):
        array = np.ascontiguousarray(np.asarray(leaf))
        sha.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()[:16]


def digest_texts(*columns: Optional[Iterable[str]]) -> str:
    sha = hashlib.sha256()
    for column in columns:
        sha.update(b"\x1e" if column is None else "\x1f".join(column).encode())
    return sha.hexdigest()[:16]


def first_difference(saved: dict, current: dict) -> Optional[str]:
    """'key: saved vs current' for the first key whose values differ, or None when they are equal."""
    for key in sorted(set(saved) | set(current)):
        if saved.get(key, "(missing)") != current.get(key, "(missing)"):
            return f"{key}: {saved.get(key, '(missing)')} vs {current.get(key, '(missing)')}"
    return None


def difference_from_stored(path: Path, current: dict) -> Optional[str]:
    """None when the fingerprint file at `path` holds `current`, else what differs (a missing file: everything)."""
    if not path.is_file():
        return f"{path.name}: (missing) vs present"
    # A JSON round trip turns tuples into lists: compare in the form the file holds.
    return first_difference(read_json(path), json.loads(json.dumps(current)))


def reusable(output: Path, stored: Path, current: dict) -> bool:
    """Whether `output` exists and its fingerprint file `stored` holds `current`. An output made from other inputs
    gets a warning naming the first difference; the caller then makes it again (and writes `stored` after it)."""
    if not output.exists():
        return False
    difference = difference_from_stored(stored, current)
    if difference is not None:
        logging.warning("%s was made from other inputs (%s): making it again", output, difference)
    return difference is None


def write(path: Path, fingerprint: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def flat(prefix: str, settings: dict) -> dict:
    """{'prefix.key.subkey': value} of a nested settings dict (one fingerprint key per setting, so a difference
    names the setting)."""
    items = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            items.update(flat(f"{prefix}.{key}", value))
        else:
            items[f"{prefix}.{key}"] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
    return items
