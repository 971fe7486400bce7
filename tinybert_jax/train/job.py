"""What one training run is: the `Job` that the engine (train/engine.py) trains and the loop (train/loop.py) runs.

Both read it whole, so nothing about a run is restated or copied between them.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from tinybert_jax.train.optimizer import OptimizerSettings


@dataclasses.dataclass
class Job:
    """One training run of a pipeline (a pipeline may run several: the demo's teacher, task stages 1 and 2)."""

    desc: str  # names the run on the progress bar, in the summary and in errors
    directory: Path  # checkpoints/ and metrics.jsonl (+ TensorBoard events) go here
    num_steps: int
    batch_size: int  # global, over all devices and hosts
    optimizer: OptimizerSettings
    meta: dict  # what a checkpoint here must agree on to be resumed (another run's workdir is refused)
    checkpoint_every_steps: int
    log_every_steps: int  # metrics (metrics.jsonl, TensorBoard, the progress bar) then and at the last step
    # host parameter trees by top-level key of the trainable params, replacing their random initialisation
    # (a module a tree lacks, e.g. a new classifier, keeps it); unused when a checkpoint is resumed
    initial: dict = dataclasses.field(default_factory=dict)
    eval_every_steps: int = 0  # > 0 (with `evaluate`): dev evaluation then and at the end
    section: str = "train"  # the config section of batch_size and num_steps, named in errors
    plan: str = ""  # why it runs num_steps steps (engine.stage_length), for the summary
