"""The engine every pipeline trains with (docs/engine.md): mesh -> sharded state, created in place or restored
from the newest checkpoint -> the pure step compiled with the state donated -> the loop (logging, evaluation,
checkpoints, preemption, the non-finite stop) -> the trained state and a summary of the run.

A pipeline supplies what is its own: how to initialise the trainable parameters, the pure step, the data, and
optionally frozen inputs (a teacher) that every step reads but never changes.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import optax
from absl import logging

from tinybert_jax import sharding
from tinybert_jax.checkpoint import RunCheckpoints
from tinybert_jax.errors import InputError
from tinybert_jax.train.job import Job
from tinybert_jax.train.loop import Evaluator, LoopRecord, run_loop
from tinybert_jax.train.optimizer import OptimizerSettings, make_optimizer
from tinybert_jax.train.state import TrainState

if TYPE_CHECKING:  # annotations only; the accelerator benchmark imports this module on hosts without it
    import ml_collections

# (tx, schedule) -> step(state, [frozen,] batch) -> (state, metrics); pure, so the engine can jit and donate it.
StepFactory = Callable[[optax.GradientTransformation, Callable], Callable[..., tuple[TrainState, dict]]]


@dataclasses.dataclass
class Frozen:
    """Inputs every step reads and none changes (the teacher): host arrays and their logically named abstract tree,
    from which their shardings on the mesh follow."""

    params: Any
    abstract: Any


@dataclasses.dataclass
class Result:
    state: TrainState
    record: LoopRecord


def job_for(config: ml_collections.ConfigDict, desc: str, directory: Path, num_steps: int, batch_size: int,
            optimizer: OptimizerSettings, meta: dict, **settings: Any) -> Job:
    """A Job with the experiment's checkpoint and logging intervals (settings override any field)."""
    return Job(desc, Path(directory), num_steps, batch_size, optimizer, meta,
               **{"checkpoint_every_steps": config.checkpoint.every_steps,
                  "log_every_steps": config.log.every_steps, **settings})


@dataclasses.dataclass(frozen=True)
class StageLength:
    """How many steps a run trains and why, in one line for the log and the report."""

    num_steps: int
    reason: str


def stage_length(stage: ml_collections.ConfigDict, where: str, examples: int, batches_per_epoch: float
                 ) -> StageLength:
    """The steps of config section `where` (`stage`): its num_steps when > 0; else num_epochs passes over the data
    (`batches_per_epoch` global batches each), raised to the section's min_steps when that is more, so a small data
    set still gets enough updates (README, "Stage lengths")."""
    if stage.num_steps > 0:
        return StageLength(int(stage.num_steps), f"{where}.num_steps={stage.num_steps}")
    steps = math.ceil(stage.num_epochs * batches_per_epoch)
    if steps < 1:
        raise InputError(f"{where}.num_epochs={stage.num_epochs} over {examples} examples is no step")
    epochs = f"{where}.num_epochs={stage.num_epochs:g} over {examples} examples"
    floor = int(stage.get("min_steps", 0))
    if steps >= floor:
        return StageLength(steps, f"{epochs} ({batches_per_epoch:.4g} batches each)")
    return StageLength(floor, f"{epochs} is {steps} steps, below {where}.min_steps={floor}: {floor} steps "
                              f"({floor / batches_per_epoch:.3g} epochs)")


def checkpoints_for(config: ml_collections.ConfigDict, job: Job) -> RunCheckpoints:
    return RunCheckpoints(job.directory / "checkpoints", keep=config.checkpoint.keep,
                          every_steps=job.checkpoint_every_steps)


def check_before_preparing(config: ml_collections.ConfigDict, job: Job) -> None:
    """What `train` would refuse, checked before slow preparation: a mesh the devices cannot form, a batch the mesh
    cannot split, a directory holding another run's checkpoints."""
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    sharding.check_batch_divisible(job.batch_size, mesh, f"{job.section}.batch_size")
    checkpoints = checkpoints_for(config, job)
    try:
        checkpoints.latest_compatible_step(job.meta)
    finally:
        checkpoints.close()


def train(config: ml_collections.ConfigDict, job: Job, init_params: Callable[[jax.Array], Any],
          make_step: StepFactory, make_iterator: Callable[[slice], Iterator[dict]],
          frozen: Optional[Frozen] = None,
          evaluate: Optional[Evaluator] = None,
          batch_shapes: Optional[list[dict]] = None) -> Result:
    """Trains `job` to its last step on the mesh of config.mesh and returns the state and what the loop recorded.

    init_params(rng) returns the trainable parameters (boxed with logical axis names); make_iterator(rows) the
    endless, checkpointable (get_state/set_state) iterator of this process's `rows` of every global batch;
    evaluate(state, step) dev metrics (see loop.run_loop). batch_shapes ({name: (global shape, dtype)} per batch
    shape the data can have, e.g. one per length bucket): every shape is compiled before the first step, and the
    summary reports how long that took; without them the step compiles on its first call.
    """
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    rules = config.mesh.rules
    sharding.check_batch_divisible(job.batch_size, mesh, f"{job.section}.batch_size")
    tx, schedule = make_optimizer(job.optimizer, job.num_steps)

    state, state_shardings = create_state(init_params, tx, config.seed, mesh, rules)
    data_iterator = make_iterator(sharding.process_batch_rows(mesh, job.batch_size))
    checkpoints = checkpoints_for(config, job)
    state = _resume_or_load(state, state_shardings, checkpoints, job, data_iterator)

    in_shardings, extra = (state_shardings,), ()
    if frozen is not None:
        frozen_shardings = sharding.shardings_of(frozen.abstract, mesh, rules)
        in_shardings, extra = (state_shardings, frozen_shardings), (sharding.put_sharded(frozen.params,
                                                                                         frozen_shardings),)
    shardings = dict(in_shardings=(*in_shardings, sharding.batch_sharding(mesh)),
                     out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
    compile_s = 0.0
    if batch_shapes is None:
        step = sharding.compile_step(make_step(tx, schedule), mesh, rules, **shardings)
    else:
        started = time.perf_counter()
        step = sharding.compile_step_for_shapes(make_step(tx, schedule), mesh, rules, leading_args=(state, *extra),
                                                batch_shapes=batch_shapes, **shardings)
        compile_s = time.perf_counter() - started
        logging.info("%s: compiled %d batch shape(s) in %.1f s", job.desc, len(batch_shapes), compile_s)
    state, record = run_loop(lambda s, batch: step(s, *extra, batch), state, data_iterator, mesh, checkpoints, job,
                             evaluate)
    if batch_shapes is not None:
        record.compiled = (len(batch_shapes), compile_s)
    return Result(state, record)


def create_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation, seed: int,
                 mesh: jax.sharding.Mesh, rules) -> tuple[TrainState, Any]:
    """A fresh TrainState whose params and optimizer state are created directly in their shardings, and those
    shardings. init_params(rng) may box params with logical axis names; the optimizer state inherits them."""
    def init() -> TrainState:
        init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
        params = init_params(init_rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=train_rng)

    return sharding.create_sharded(init, mesh, rules)


def _resume_or_load(state: TrainState, state_shardings: Any, checkpoints: RunCheckpoints, job: Job,
                    data_iterator: Any) -> TrainState:
    """The newest readable compatible checkpoint (state and data position), or else `state` with the parameters of
    job.initial placed into it."""
    restored = checkpoints.restore_latest(job.meta, state, state_shardings, data_iterator)
    if restored is not None:
        step, state = restored
        logging.info("resuming from step %d in %s", step, checkpoints.directory)
        return state
    params = dict(state.params)
    for key, tree in job.initial.items():
        params[key] = {name: sharding.put_sharded(tree[name], state_shardings.params[key][name]) if name in tree
                       else value for name, value in state.params[key].items()}
    return state.replace(params=params)
