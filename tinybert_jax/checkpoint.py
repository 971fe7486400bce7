"""All Orbax calls live here."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from tinybert_jax import distributed
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


class RunCheckpoints:
    """Orbax CheckpointManager for a training run: train state, data-iterator position and run metadata.

    The data position is the iterator's JSON state, the same on every process (loaders count global batches), so
    a run resumes with another process count or mesh; the state is restored into the current run's shardings.

    Saves are asynchronous and keep the newest `keep`; the metadata (a JSON dict of what the run trains) is compared
    before anything is restored, so a workdir of another run is refused instead of half-loaded or overwritten.
    A checkpoint that cannot be read (a file truncated or lost) is skipped for the newest one that can.
    """

    def __init__(self, directory: Path, keep: int, every_steps: int):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every_steps,
                                               enable_async_checkpointing=True, create=True,
                                               cleanup_tmp_directories=True)
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def latest_compatible_step(self, meta: dict) -> int | None:
        """The newest step whose metadata can be read, after checking that it belongs to a run with this metadata
        (steps that cannot be read are skipped here and reported by `restore_latest`)."""
        for step in reversed(self._manager.all_steps()):
            saved, error = self._read(step, meta=ocp.args.JsonRestore())
            if error is None:
                _check_same_run(saved.meta, meta, self.directory)
                return step
        return None

    def restore_latest(self, meta: dict, abstract_state: Any, shardings: Any,
                       data_iterator: Any) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint that can be read, the state restored into `shardings` (which may
        differ from the mesh it was saved on) and the iterator set to its position; None when there is none.

        A step with a truncated or missing file is reported and the next older one tried. Once one is restored,
        the unreadable newer ones are renamed STEP.unreadable-TIME, kept for inspection (nothing is deleted) but
        no longer steps, so the resumed run saves those step numbers afresh. InputError when none can be read.
        """
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state,
                              shardings)
        unreadable = []
        for step in reversed(self._manager.all_steps()):
            saved, error = self._read(step, meta=ocp.args.JsonRestore())
            if error is None:  # another run's checkpoint is refused, not skipped
                _check_same_run(saved.meta, meta, self.directory)
                restored, error = self._read(step, state=ocp.args.StandardRestore(target),
                                             data=ocp.args.JsonRestore())
            if error is None:
                self._set_aside(unreadable)
                data_iterator.set_state(restored.data)
                return step, restored.state
            logging.warning("cannot read the checkpoint %s (%s); trying the one before it",
                            self.directory / str(step), error)
            unreadable.append((step, error))
        if unreadable:
            step, error = unreadable[0]
            raise InputError(f"{self.directory}: no checkpoint can be read (step {step}: {error}); move the "
                             f"directory aside to start afresh")
        return None

    def _read(self, step: int, **items: Any) -> tuple[Any, str | None]:
        """(the restored items, None), or (None, why) when a file of the step cannot be read on some process."""
        try:
            restored, error = self._manager.restore(step, args=ocp.args.Composite(**items)), None
        except Exception as e:
            cause = _real_error(e)
            # A missing file raises FileNotFoundError, a truncated one a JSON or TensorStore error (ValueErrors).
            if not isinstance(cause, (OSError, ValueError)):
                raise
            detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            restored, error = None, detail.split(" [tensorstore_spec")[0][:300]  # TensorStore appends its spec
        if jax.process_count() > 1:  # every process must go on from the same step
            failed = multihost_utils.process_allgather(np.int32(error is not None))
            if error is None and failed.any():
                restored, error = None, "unreadable on another process"
        return restored, error

    def _set_aside(self, unreadable: list[tuple[int, str]]) -> None:
        if not unreadable:
            return
        if distributed.is_leader():
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step, _ in unreadable:
                aside = self.directory / f"{step}.unreadable-{stamp}"
                (self.directory / str(step)).rename(aside)
                logging.warning("moved the unreadable checkpoint %s aside to %s", self.directory / str(step), aside)
        distributed.barrier("unreadable checkpoints set aside")
        self._manager.reload()

    def should_save(self, step: int) -> bool:
        return self._manager.should_save(step)

    def save(self, step: int, state: Any, data_iterator: Any, meta: dict, force: bool = False) -> bool:
        return self._manager.save(step, force=force, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_iterator.get_state()),
            meta=ocp.args.JsonSave(meta)))

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _real_error(error: BaseException) -> BaseException:
    """Orbax wraps TensorStore read failures in a bare Exception whose cause is the real error."""
    while type(error) is Exception and error.__cause__ is not None:
        error = error.__cause__
    return error


def _check_same_run(saved: dict, current: dict, directory: Path) -> None:
    for key, value in current.items():
        if saved.get(key) == value:
            continue
        if isinstance(value, dict) and isinstance(saved.get(key), dict):
            detail = ", ".join(f"{k} {saved[key].get(k)} vs {v}" for k, v in value.items() if saved[key].get(k) != v)
        else:
            detail = f"{saved.get(key)} vs {value}"
        raise InputError(f"{directory} holds a checkpoint of a different run ({key}: {detail}); use another "
                         f"--workdir, or the same settings to resume")
