"""The training loop shared by every pipeline: step, log, checkpoint; top to bottom, no callbacks."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import jax
import numpy as np

from tinybert_jax import distributed, sharding
from tinybert_jax.checkpoint import RunCheckpoints
from tinybert_jax.train.metrics import MetricsWriter, progress_bar
from tinybert_jax.train.preemption import Preempted, StopRequests
from tinybert_jax.train.state import TrainState


@dataclasses.dataclass
class LoopSettings:
    num_steps: int
    global_batch_size: int
    log_every_steps: int
    desc: str
    eval_every_steps: int = 0  # > 0: call `evaluate` then and at the end


def run_loop(step_fn: Callable[[TrainState, dict], tuple[TrainState, dict]], state: TrainState,
             data_iterator: Iterator[dict], mesh: jax.sharding.Mesh, checkpoints: RunCheckpoints, meta: dict,
             workdir: Path, settings: LoopSettings,
             evaluate: Optional[Callable[[TrainState, int], dict[str, float]]] = None) -> TrainState:
    """Runs from the state's step to settings.num_steps; logs every log_every_steps and at the end. A SIGTERM or
    SIGINT ends the step in progress, checkpoints it and raises Preempted.

    `evaluate(state, step)` (dev-set metrics, logged with a "dev/" prefix) runs every eval_every_steps and at the
    end, before that step's checkpoint.
    """
    start = int(jax.device_get(state.step))
    writer = MetricsWriter(workdir, enabled=distributed.is_leader())
    bar = progress_bar(settings.num_steps, start, settings.desc)
    last_log_step, last_log_time = start, time.perf_counter()
    with StopRequests() as stop_requests:
        try:
            for step in range(start + 1, settings.num_steps + 1):
                state, metrics = step_fn(state, sharding.global_batch(next(data_iterator), mesh))
                final = step == settings.num_steps
                stopping = not final and stop_requests.reached(step)
                if step % settings.log_every_steps == 0 or final or stopping:
                    values = {name: float(np.asarray(value)) for name, value in jax.device_get(metrics).items()}
                    now = time.perf_counter()
                    values["examples_per_s"] = ((step - last_log_step) * settings.global_batch_size /
                                                (now - last_log_time))
                    last_log_step, last_log_time = step, now
                    writer.write(step, values)
                    bar.set_postfix(loss=f"{values['loss']:.4g}", refresh=False)
                if evaluate is not None and (final or (settings.eval_every_steps and
                                                       step % settings.eval_every_steps == 0)):
                    writer.write(step, {f"dev/{name}": value for name, value in evaluate(state, step).items()})
                if final or stopping or checkpoints.should_save(step):
                    checkpoints.save(step, state, data_iterator, meta, force=final or stopping)
                bar.update(1)
                if stopping:
                    raise Preempted(f"{stop_requests.received}: stopped after step {step} of {settings.num_steps} "
                                    f"({settings.desc}) with a checkpoint in {checkpoints.directory}; run the same "
                                    f"command to resume")
        finally:
            bar.close()
            writer.close()
            checkpoints.close()
    return state
