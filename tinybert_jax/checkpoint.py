"""All Orbax calls live here."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from tinybert_jax.errors import InputError


def save_params(path: Path, params: Any) -> None:
    """Writes one pytree as an Orbax checkpoint at `path` (which must not exist yet) and waits for it."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(Path(path).absolute(), params)
        checkpointer.wait_until_finished()


def restore_params(path: Path, abstract: Any) -> Any:
    """Reads a pytree saved by `save_params`; `abstract` gives the expected shapes and dtypes."""
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(Path(path).absolute(), target)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise InputError(f"{path}: cannot restore Orbax checkpoint ({str(e).splitlines()[0]})") from e
