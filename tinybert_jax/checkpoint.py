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


class RunCheckpoints:
    """Orbax CheckpointManager for a training run: train state, data-iterator position and run metadata.

    The data position is the iterator's JSON state, the same on every process (loaders count global batches), so
    a run resumes with another process count or mesh; the state is restored into the current run's shardings.

    Saves are asynchronous and keep the newest `keep`; the metadata (a JSON dict of what the run trains) is compared
    before anything is restored, so a workdir of another run is refused instead of half-loaded or overwritten.
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
        """The newest step, after checking that its checkpoint belongs to a run with this metadata."""
        step = self._manager.latest_step()
        if step is not None:
            saved = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            _check_same_run(saved, meta, self.directory)
        return step

    def restore(self, step: int, abstract_state: Any, shardings: Any, data_iterator: Any) -> Any:
        """Restores the state into `shardings` (which may differ from the mesh it was saved on) and the iterator."""
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state,
                              shardings)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        data_iterator.set_state(restored.data)
        return restored.state

    def should_save(self, step: int) -> bool:
        return self._manager.should_save(step)

    def save(self, step: int, state: Any, data_iterator: Any, meta: dict, force: bool = False) -> bool:
        return self._manager.save(step, force=force, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_iterator.get_state()),
            meta=ocp.args.JsonSave(meta)))

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


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


def read_run_state(directory: Path, step: int) -> Any:
    """The train state saved at `step` by RunCheckpoints in `directory`, as host numpy arrays (for inspection and
    comparison, whatever mesh it was saved from)."""
    path = Path(directory).absolute() / str(step) / "state"
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path).item_metadata
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
        return jax.device_get(checkpointer.restore(path, target))
