"""The run's --workdir: refused when it is a file, and locked so that a second run cannot use it at the same time
(two runs would interleave their checkpoints, logs and exports)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import IO, Iterator

from absl import logging

from tinybert_jax import distributed
from tinybert_jax.errors import InputError

LOCK_FILE = ".lock"


def check_directory(workdir: str) -> Path:
    """The workdir as a Path; InputError when it names something that is not a directory."""
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise InputError(f"--workdir={workdir} is a file, not a directory; name a directory (it is created if "
                         f"missing)")
    return path


class WorkdirLock:
    """An exclusive flock on WORKDIR/.lock, which holds the owner's pid and host for the refusal message.

    The kernel drops the lock when its process dies, even by SIGKILL, so a file left behind never blocks a later
    run; `release` removes the file so that a finished run leaves nothing behind.
    """

    def __init__(self, workdir: Path):
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"--workdir={workdir}: cannot create it ({e.strerror})") from e
        self.path = workdir / LOCK_FILE
        self._file = _locked_file(self.path)
        self._file.truncate(0)
        self._file.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        self._file.flush()

    def release(self) -> None:
        # Unlinked while still locked: a run that opened the old file meanwhile notices and retries on a new one.
        self.path.unlink(missing_ok=True)
        self._file.close()


def _locked_file(path: Path) -> IO[str]:
    while True:
        file = open(path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "starting up"
            file.close()
            raise InputError(f"{path.parent} is in use by another run ({holder}); wait for it to finish or use "
                             f"another --workdir") from None
        except OSError as e:  # a filesystem without locks (some network mounts): run, but say it is unprotected
            logging.warning("cannot lock %s (%s); nothing stops a second run from using this workdir meanwhile",
                            path, e.strerror)
            return file
        if _still_at(file, path):
            return file
        file.close()  # locked a file its previous owner had just removed


def _still_at(file: IO[str], path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(file.fileno()).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def claimed(workdir: Path) -> Iterator[None]:
    """The workdir locked for the block. Process 0 holds the lock for every process of a multi-host run (they
    share the workdir); when it is refused, every process stops with an error."""
    lock = distributed.leader_first("the workdir lock",
                                    lambda: WorkdirLock(workdir) if distributed.is_leader() else None)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
