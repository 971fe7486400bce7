"""Joining JAX's distributed runtime (one process per host) and the few cross-process waits the pipelines need.

Every host runs the same command. Process 0 writes logs and exports; everything that touches arrays spanning
hosts (the step, checkpoints, gathers) is run by all processes.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Callable, Optional, TypeVar

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from tinybert_jax.errors import InputError

MODES = ("auto", "on", "off")
Result = TypeVar("Result")


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    mode: str = "auto"  # auto | on | off
    coordinator_address: str = ""  # host:port of process 0
    num_processes: Optional[int] = None
    process_id: Optional[int] = None


def settings_from_env(mode: str, coordinator_address: str, num_processes: int, process_id: int) -> ClusterSettings:
    """Command-line values win; unset ones (""/-1) fall back to JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID, which is how launch/*.sh pass them."""
    def number(value: int, env_name: str) -> Optional[int]:
        if value >= 0:
            return value
        text = os.environ.get(env_name, "")
        if text and not text.isdigit():
            raise InputError(f"{env_name}={text!r} is not a non-negative integer")
        return int(text) if text else None

    if mode not in MODES:
        raise InputError(f"--distributed={mode!r}; use one of {MODES}")
    return ClusterSettings(mode, coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", ""),
                           number(num_processes, "JAX_NUM_PROCESSES"), number(process_id, "JAX_PROCESS_ID"))


def _managed_cluster() -> bool:
    """Environments where jax.distributed.initialize() finds every setting itself: TPU VMs (libtpu is installed
    with jax[tpu]) and SLURM jobs of more than one task."""
    slurm_tasks = os.environ.get("SLURM_NTASKS", "1")
    return importlib.util.find_spec("libtpu") is not None or (slurm_tasks.isdigit() and int(slurm_tasks) > 1)


def initialize(settings: ClusterSettings) -> None:
    """Joins the distributed runtime when the settings or the environment call for it; must run before anything
    touches devices. 'auto': explicit settings if a coordinator address is given, auto-detection on TPU VMs and
    SLURM, otherwise a single process."""
    explicit = bool(settings.coordinator_address)
    if settings.mode == "off" or (settings.mode == "auto" and not explicit and not _managed_cluster()):
        return
    if explicit and (settings.num_processes is None or settings.process_id is None):
        raise InputError(f"coordinator address {settings.coordinator_address} given without the process count and "
                         f"id: set --num_processes/--process_id or JAX_NUM_PROCESSES/JAX_PROCESS_ID")
    if explicit and not 0 <= settings.process_id < settings.num_processes:
        raise InputError(f"process id {settings.process_id} is not in [0, {settings.num_processes})")
    # CPU processes need a collectives backend to talk to each other; accelerators ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        if explicit:
            jax.distributed.initialize(settings.coordinator_address, settings.num_processes, settings.process_id)
        else:
            jax.distributed.initialize()
    except (RuntimeError, ValueError) as e:
        where = settings.coordinator_address or "the auto-detected coordinator"
        raise InputError(f"cannot join the distributed runtime at {where}: {str(e).strip().splitlines()[0]} "
                         f"(check the coordinator address, process count and id, or use --distributed=off)") from e
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def is_leader() -> bool:
    """Process 0: the one that writes logs, reports and exports."""
    return jax.process_index() == 0


def leader_first(name: str, work: Callable[[], Result]) -> Result:
    """Runs `work` on process 0 while the others wait, then on the others (which then find its output on the shared
    filesystem and only check it): for data preparation, which must not run concurrently into one directory.
    If process 0 fails with bad input, every process stops with an error instead of waiting for it."""
    if jax.process_count() == 1:
        return work()
    if is_leader():
        try:
            result, failure = work(), None
        except InputError as e:
            result, failure = None, e
        multihost_utils.broadcast_one_to_all(np.int32(failure is None))
        if failure is not None:
            raise failure
        return result
    if not multihost_utils.broadcast_one_to_all(np.int32(0)):
        raise InputError(f"process 0 failed during {name} (its error is the last line of its log)")
    return work()


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
