"""The training loop shared by every pipeline: step, log, checkpoint; top to bottom, no callbacks."""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Iterator, Optional, Protocol

import jax
import numpy as np

from tinybert_jax import distributed, sharding
from tinybert_jax.checkpoint import RunCheckpoints
from tinybert_jax.errors import TrainingDiverged
from tinybert_jax.train.job import Job
from tinybert_jax.train.metrics import MetricsWriter, progress_bar
from tinybert_jax.train.preemption import Preempted, StopRequests
from tinybert_jax.train.state import TrainState


class Evaluator(Protocol):
    """Dev evaluation during a run: its metrics at a step, and whether the run has stopped improving on dev."""

    def __call__(self, state: TrainState, step: int) -> dict[str, float]: ...

    def plateaued(self, step: int) -> bool: ...


@dataclasses.dataclass
class LoopRecord:
    """What a run did, for its summary: the steps it ran, the first and last logged metrics, and its rate."""

    desc: str
    num_steps: int
    start_step: int  # the step it resumed from (0: a fresh run)
    first: dict[str, float] = dataclasses.field(default_factory=dict)
    last: dict[str, float] = dataclasses.field(default_factory=dict)
    # examples/s after the first logged interval (which includes compilation), or over it when it is the only one
    examples_per_s: float = float("nan")
    compiled: Optional[tuple[int, float]] = None  # (batch shapes, seconds) when compiled before the first step
    stopped_at: Optional[int] = None  # the step it stopped at, before num_steps, when dev stopped improving
    plan: str = ""  # why num_steps steps

    def summary_rows(self) -> list[tuple[str, str]]:
        """(name, value) rows: what ran, first -> last of each logged quantity, examples/s."""
        early = (f", stopped early at step {self.stopped_at} (no new best on dev)"
                 if self.stopped_at is not None else "")
        if not self.last:
            return [(self.desc, f"already done ({self.stopped_at or self.num_steps} steps{early})")]
        last = self.stopped_at or self.num_steps
        ran = f"steps {self.start_step + 1}-{last} of {self.num_steps}" + (" (resumed)" if self.start_step else "")
        rows = [(self.desc, ran + early)] + ([("  length", self.plan)] if self.plan else [])
        rows += [(f"  {name}", f"{self.first[name]:.4g} -> {value:.4g}") for name, value in self.last.items()
                 if name not in ("learning_rate", "examples_per_s")]
        if self.compiled is not None:
            rows.append(("  compiled", f"{self.compiled[0]} batch shape(s) in {self.compiled[1]:.1f} s"))
        return rows + [("  examples/s", f"{self.examples_per_s:.1f}")]


def run_loop(step_fn: Callable[[TrainState, dict], tuple[TrainState, dict]], state: TrainState,
             data_iterator: Iterator[dict], mesh: jax.sharding.Mesh, checkpoints: RunCheckpoints, job: Job,
             evaluate: Optional[Evaluator] = None) -> tuple[TrainState, LoopRecord]:
    """Runs `job` from the state's step to job.num_steps; logs (to job.directory) every job.log_every_steps and
    at the end; checkpoints carry job.meta. A SIGTERM or SIGINT ends the step in progress, checkpoints it and
    raises Preempted. A step whose metrics (loss, terms, gradient norm) are not finite raises TrainingDiverged.

    `evaluate(state, step)` (dev-set metrics, logged with a "dev/" prefix) runs every job.eval_every_steps and at
    the end, before that step's checkpoint. When `evaluate.plateaued(step)` after an evaluation, the run checkpoints
    and ends there (early stopping); a run resumed from that checkpoint ends at once, so the decision holds.
    """
    start = int(jax.device_get(state.step))
    record = LoopRecord(job.desc, job.num_steps, start, plan=job.plan)
    if evaluate is not None and 0 < start < job.num_steps and evaluate.plateaued(start):
        record.stopped_at = start
        checkpoints.close()
        return state, record
    rate_since = None  # (step, time) at the end of the first logged interval
    writer = MetricsWriter(job.directory, enabled=distributed.is_leader())
    bar = progress_bar(job.num_steps, start, job.desc)
    last_log_step, last_log_time = start, time.perf_counter()
    unchecked = None  # (step, device metrics) of the previous step when nothing has read them yet
    with StopRequests() as stop_requests:
        try:
            for step in range(start + 1, job.num_steps + 1):
                state, metrics = step_fn(state, sharding.global_batch(next(data_iterator), mesh))
                if unchecked is not None:  # read one step late: the device runs this step meanwhile
                    check_finite(*unchecked, checkpoints)
                    bar.update(1)  # the bar counts steps whose results were read: completed, not dispatched
                final = step == job.num_steps
                stopping = not final and stop_requests.reached(step)
                logging_now = step % job.log_every_steps == 0 or final or stopping
                evaluating = evaluate is not None and (final or (job.eval_every_steps and
                                                                 step % job.eval_every_steps == 0))
                saving = final or stopping or checkpoints.should_save(step)
                unchecked = (step, metrics)
                if logging_now or evaluating or saving:
                    # Nothing is logged, evaluated or saved from a state that a non-finite step produced.
                    values = check_finite(*unchecked, checkpoints)
                    unchecked = None
                    bar.update(1)
                if logging_now:
                    now = time.perf_counter()
                    values["examples_per_s"] = (step - last_log_step) * job.batch_size / (now - last_log_time)
                    record.first = record.first or values
                    record.last = values
                    if rate_since is None:
                        rate_since, record.examples_per_s = (step, now), values["examples_per_s"]
                    elif step > rate_since[0]:
                        record.examples_per_s = (step - rate_since[0]) * job.batch_size / (now - rate_since[1])
                    last_log_step, last_log_time = step, now
                    writer.write(step, values)
                    bar.set_postfix(loss=f"{values['loss']:.4g}", refresh=False)
                plateaued = False
                if evaluating:
                    writer.write(step, {f"dev/{name}": value for name, value in evaluate(state, step).items()})
                    plateaued = not final and evaluate.plateaued(step)
                if saving or plateaued:
                    checkpoints.save(step, state, data_iterator, job.meta, force=final or stopping or plateaued)
                if plateaued:
                    record.stopped_at = step
                    record.first = record.first or values  # the summary's first -> last, if nothing was logged
                    record.last = values if not logging_now else record.last
                    break
                if stopping:
                    raise Preempted(f"{stop_requests.received}: stopped after step {step} of {job.num_steps} "
                                    f"({job.desc}) with a checkpoint in {checkpoints.directory}; run the same "
                                    f"command to resume")
        finally:
            bar.close()
            writer.close()
            checkpoints.close()
    return state, record


def check_finite(step: int, metrics: dict, checkpoints: RunCheckpoints) -> dict[str, float]:
    """The step's metrics as floats; TrainingDiverged naming the step and its non-finite values if there are any."""
    values = {name: float(np.asarray(value)) for name, value in jax.device_get(metrics).items()}
    bad = {name: value for name, value in values.items() if not math.isfinite(value)}
    if bad:
        latest = checkpoints.latest_step()
        kept = (f"the last good checkpoint is step {latest} in {checkpoints.directory}" if latest is not None
                else "no checkpoint was saved before it")
        raise TrainingDiverged(f"non-finite loss at step {step} ({', '.join(f'{k}={v}' for k, v in bad.items())}); "
                               f"{kept}; lower the learning rate or check the data")
    return values
