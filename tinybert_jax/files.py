"""Writing output directories so that a failure never leaves a half-written or clobbered result."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from tinybert_jax.errors import InputError


def read_json(path: str | os.PathLike) -> Any:
    """The parsed JSON file; a file that is not JSON is an InputError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields a fresh temporary directory beside `out_dir`; on success it replaces `out_dir` in one rename.

    An existing empty `out_dir` is replaced like a missing one (as transformers' save_pretrained writes into it);
    a non-empty one only with `overwrite`. On any exception the temporary directory is removed and an existing
    `out_dir` is left untouched; an OSError (disk full, read-only file system, no permission) becomes an
    InputError naming `out_dir` and the reason.
    """
    out_dir = Path(out_dir).absolute()
    _check_replaceable(out_dir, overwrite)
    tmp = None
    try:
        with _write_errors(out_dir):
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
            yield tmp
            _apply_umask(tmp)
            _move_into_place(tmp, out_dir)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)  # after success it no longer exists


def publish_dir(complete: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """Makes the finished directory `complete` (on out_dir's file system) `out_dir` in one rename, as
    `atomic_output_dir` does at its end: for outputs assembled in a directory of their own over several runs."""
    out_dir = Path(out_dir).absolute()
    _check_replaceable(out_dir, overwrite)
    with _write_errors(out_dir):
        _apply_umask(Path(complete))
        _move_into_place(Path(complete), out_dir)


def _check_replaceable(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not overwrite and not is_empty_dir(out_dir):
        raise InputError(f"{out_dir} already exists; choose another output directory or pass overwrite")


@contextlib.contextmanager
def _write_errors(out_dir: Path) -> Iterator[None]:
    """An OSError (disk full, read-only file system, no permission) as an InputError naming `out_dir`."""
    try:
        yield
    except OSError as e:
        reason = f"{e.strerror}: {e.filename}" if e.strerror and e.filename else str(e)
        kept = "the previous contents are unchanged" if out_dir.exists() else "nothing was written"
        raise InputError(f"{out_dir}: could not be written ({reason}); {kept}; free space or choose a writable "
                         f"output directory") from e


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Renames `tmp` to `out_dir`; an existing `out_dir` survives until the new one is complete, and is put back
    if the final rename fails."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.rename(out_dir, old / "replaced")
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old / "replaced", out_dir)
        old.rmdir()
        raise
    # The new result is complete; an old copy that cannot be deleted is no reason to fail.
    shutil.rmtree(old, ignore_errors=True)


def _apply_umask(root: Path) -> None:
    """mkdtemp and some writers create owner-only files; give the result the permissions a plain write would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for path in root.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
