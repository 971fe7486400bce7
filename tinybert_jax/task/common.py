"""What fine-tuning and task distillation share: task data loading, classifier set-up, training with dev
evaluation, export and the report."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging

from tinybert_jax import convert, distributed, sharding
from tinybert_jax.checkpoint import RunCheckpoints
from tinybert_jax.data import glue
from tinybert_jax.data.prepare import load_tokenizer
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import Bert, BertConfig
from tinybert_jax.task.data import Arrays, count, train_iterator
from tinybert_jax.task.evaluate import BestOnDev
from tinybert_jax.task.steps import make_task_step
from tinybert_jax.train.loop import LoopSettings, run_loop
from tinybert_jax.train.optimizer import make_optimizer
from tinybert_jax.train.state import create_state, resume_or_load

# TinyBERT's task lengths (Jiao et al. 2020; docs/data.md): 64 tokens for single sentences, 128 for pairs
SINGLE_SENTENCE_SEQ_LEN, PAIR_SEQ_LEN = 64, 128


def seq_len_for(task: glue.GlueTask, configured: int) -> int:
    return configured or (SINGLE_SENTENCE_SEQ_LEN if len(task.text_columns) == 1 else PAIR_SEQ_LEN)


def load_dev_sets(task: glue.GlueTask, data: ml_collections.ConfigDict, tokenizer, seq_len: int) -> dict[str, Arrays]:
    return {split: glue.encode(glue.read_split(task, data.source, split, data.tfds_data_dir), tokenizer, seq_len)
            for split in task.dev_splits}


def tokenizer_of(model_dir: Path):
    return load_tokenizer(str(model_dir))


def classifier_config(cfg: BertConfig, task: glue.GlueTask) -> BertConfig:
    return cfg.replace(pooler=True, mlm_head=False, num_labels=task.num_labels, stacked_layers=True)


def encoder_params(params: dict) -> dict:
    """What carries over into a classifier: embeddings, layers and (when present) the pooler."""
    return {key: value for key, value in params.items() if key in ("embeddings", "layers", "pooler")}


def label_names(task: glue.GlueTask) -> dict[int, str]:
    return dict(enumerate(task.labels)) if task.labels else {0: "score"}


def steps_for(num_steps: int, num_epochs: float, examples: int, batch_size: int, where: str) -> int:
    if num_steps > 0:
        return int(num_steps)
    steps = int(np.ceil(num_epochs * examples / batch_size))
    if steps < 1:
        raise InputError(f"{where}.num_epochs={num_epochs} over {examples} examples is no step")
    return steps


def train_classifier(cfg: BertConfig, task: glue.GlueTask, train: Arrays, dev_sets: dict[str, Arrays],
                     init_params: dict, stage: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                     workdir: Path, desc: str, temperature: float | None = None) -> BestOnDev:
    """Trains a classifier (gold labels, or the teacher's logits in train['teacher_logits'] when `temperature` is
    given) with dev evaluation every eval.every_steps; returns the keeper of the best-on-dev parameters."""
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    sharding.check_batch_divisible(stage.batch_size, mesh)
    num_steps = steps_for(stage.num_steps, stage.num_epochs, count(train), stage.batch_size, desc)
    tx, schedule = make_optimizer(stage.optimizer, num_steps)
    ids = jax.numpy.zeros((1, 8), jax.numpy.int32)
    state, state_shardings = create_state(lambda rng: {"model": Bert(cfg).init(rng, ids, ids, ids)["params"]},
                                          tx, config.seed, mesh, config.mesh.rules)
    iterator = train_iterator(train, stage.batch_size, config.seed, sharding.process_batch_rows(mesh, stage.batch_size))
    checkpoints = RunCheckpoints(workdir / "checkpoints", keep=config.checkpoint.keep,
                                 every_steps=config.checkpoint.every_steps)
    meta = {"task": task.name, "model": dataclasses.asdict(cfg), "examples": count(train)}
    state = resume_or_load(state, state_shardings, checkpoints, meta, iterator, {"model": init_params})
    step = sharding.compile_step(make_task_step(cfg, tx, schedule, task.is_regression, temperature), mesh,
                                 config.mesh.rules, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
    best = BestOnDev(task, cfg, dev_sets, config.eval.batch_size, workdir / "best")
    run_loop(step, state, iterator, mesh, checkpoints, meta, workdir,
             LoopSettings(num_steps, stage.batch_size, config.log.every_steps, desc=desc,
                          eval_every_steps=config.eval.every_steps), evaluate=best)
    return best


def export_classifier(best: BestOnDev, task: glue.GlueTask, out_dir: Path, tokenizer_dir: Path) -> None:
    if distributed.is_leader():
        cfg, params = best.best_params()
        convert.save_hf_bert(cfg, params, out_dir, tokenizer_dir=tokenizer_dir, id2label=label_names(task),
                             overwrite=True)
        logging.info("exported the best-on-dev model (step %d) to %s", best.best["step"], out_dir)
    distributed.barrier("exported")


def write_report(path: Path, report: dict, rows: list[tuple[str, str]]) -> None:
    """report.json and a printed table."""
    if distributed.is_leader():
        path.write_text(json.dumps(report, indent=2) + "\n")
        width = max(len(name) for name, _ in rows)
        print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
