"""A task model on the engine: a sequence classifier (or regressor), a token classifier or an answer-span model,
its config from an encoder's, training with dev evaluation and best-on-dev keeping, and the Hugging Face export;
fine-tuning and task stage 2 both run it."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional

import ml_collections
import numpy as np
from absl import logging

from tinybert_jax import convert, distributed, hf_checkpoint
from tinybert_jax.data import glue
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import TASK_HEADS, BertConfig, boxed_params
from tinybert_jax.task.arrays import (
    Arrays,
    DevSet,
    batch_shapes,
    batches_per_epoch,
    bucket_lengths,
    count,
    train_iterator,
)
from tinybert_jax.task.evaluate import BestOnDev
from tinybert_jax.task.kinds import kind_of
from tinybert_jax.task.spec import Task
from tinybert_jax.task.steps import PredictionLoss, make_task_step
from tinybert_jax.train import engine
from tinybert_jax.train.loop import LoopRecord

EVAL_EVERY_STEPS_AT_MOST = 1000  # eval.every_steps=0 on a large data set: still several evaluations an epoch


def load_classifier(path: str, key: str, task: Task, hint: str = "") -> tuple[Path, BertConfig, dict,
                                                                                 Optional[np.ndarray]]:
    """(directory, config, parameters, permutation of its logits to the task's label order) of the classifier at
    `path` (the config key `key`); refused when its output count is not the task's (`hint` says what to do) or its
    id2label names other labels."""
    directory = hf_checkpoint.resolve_checkpoint_dir(path)
    cfg, params = convert.load_hf_bert(str(directory))
    head = kind_of(task).head
    if cfg.num_labels and cfg.task_head != head:
        raise InputError(f"{key}={path}: a {convert.ARCHITECTURES[cfg.task_head]}, but {task.name} needs a "
                         f"{convert.ARCHITECTURES[head]}{hint}")
    if cfg.num_labels != task.num_labels:
        raise InputError(f"{key}={path}: a classifier with {cfg.num_labels} output(s) (0 = no classifier head), but "
                         f"{task.name} needs {task.num_labels}{hint}")
    if not kind_of(task).label_order:
        return directory, cfg, params, None
    try:
        permutation = glue.label_permutation(task, hf_checkpoint.read_config(directory).get("id2label"))
    except InputError as e:
        raise InputError(f"{directory / 'config.json'}: {e}") from None
    return directory, cfg, params, permutation


def classifier_config(cfg: BertConfig, task: Task) -> BertConfig:
    """The task model on encoder `cfg`: a pooler only under a head that reads it (the per-token heads read the last
    hidden state, and transformers' token and span classes have none)."""
    head = kind_of(task).head
    return cfg.replace(pooler=TASK_HEADS[head].reads_pooled, mlm_head=False, num_labels=task.num_labels,
                       task_head=head, stacked_layers=True)


def encoder_params(params: dict, cfg: BertConfig) -> dict:
    """What carries over into the task model `cfg`: embeddings, layers and (when both have one) the pooler."""
    wanted = ("embeddings", "layers") + (("pooler",) if cfg.pooler else ())
    return {key: value for key, value in params.items() if key in wanted}


def label_names(task: Task) -> dict[int, str]:
    return dict(enumerate(task.labels)) if task.labels else {0: "score"}


def train_classifier(config: ml_collections.ConfigDict, section: str, optimizer: ml_collections.ConfigDict,
                     cfg: BertConfig, task: Task, train: Arrays, dev_sets: dict[str, DevSet],
                     init_params: dict, directory: Path, desc: str, distill: bool = False,
                     stage: Optional[ml_collections.ConfigDict] = None) -> tuple[BestOnDev, LoopRecord]:
    """Trains on gold labels, or with `distill` on the teacher's logits in train['teacher_logits'],
    with dev evaluation (eval.every_steps; 0: once an epoch, at most EVAL_EVERY_STEPS_AT_MOST apart) and early
    stopping after eval.patience evaluations without a new best (0: never); returns the keeper of the best-on-dev
    parameters and the record. `stage` (default config[section], the section named in messages) holds batch_size,
    num_steps, num_epochs and min_steps, and for stage 2 the loss settings (steps.PredictionLoss)."""
    stage = stage if stage is not None else config[section]
    buckets = bucket_lengths(config.data.buckets, train["input_ids"].shape[1])
    length = length_on(stage, section, train, buckets)
    eval_every = int(config.eval.every_steps) or min(EVAL_EVERY_STEPS_AT_MOST,
                                                     math.ceil(batches_per_epoch(train, stage.batch_size, buckets)))
    logging.info("%s: %d steps: %s; dev evaluation every %d steps%s", desc, length.num_steps, length.reason,
                 eval_every, f", early stopping after {config.eval.patience} without a new best"
                 if config.eval.patience else "")
    job = engine.job_for(config, desc, directory, length.num_steps, stage.batch_size, optimizer,
                         {"task": task.name, "model": dataclasses.asdict(cfg), "examples": count(train)},
                         initial={"model": init_params}, eval_every_steps=eval_every, section=section,
                         plan=length.reason)
    best = BestOnDev(task, cfg, dev_sets, config.eval.batch_size, directory / "best",
                     patience_steps=int(config.eval.patience) * eval_every)
    loss = PredictionLoss.of(stage) if distill else None
    result = engine.train(
        config, job, lambda rng: {"model": boxed_params(cfg, rng)},
        lambda tx, schedule: make_task_step(cfg, tx, schedule, kind_of(task).losses, task.is_regression, loss),
        lambda rows: train_iterator(train, stage.batch_size, config.seed, rows, buckets), evaluate=best,
        batch_shapes=batch_shapes(train, stage.batch_size, buckets))
    return best, result.record


def length_on(stage: ml_collections.ConfigDict, section: str, train: Arrays,
              buckets: Optional[tuple[int, ...]]) -> engine.StageLength:
    """The length `engine.stage_length` gives config section `section` (`stage`) on this training set."""
    return engine.stage_length(stage, section, count(train), batches_per_epoch(train, stage.batch_size, buckets))


def export_classifier(best: BestOnDev, task: Task, out_dir: Path, tokenizer_dir: Path) -> None:
    if distributed.is_leader():
        cfg, params = best.best_params()
        convert.save_hf_bert(cfg, params, out_dir, tokenizer_dir=tokenizer_dir, id2label=label_names(task),
                             overwrite=True)
        logging.info("exported the best-on-dev model (step %d) to %s", best.best["step"], out_dir)
    distributed.barrier("exported")
