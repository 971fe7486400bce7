"""Masked-LM pre-training of a small BERT teacher, for the offline demo (no teacher can be downloaded there).

Stages, each skipped when its output exists: WordPiece vocabulary -> prepared data -> MLM training (resumable)
-> Hugging Face export with the tokenizer.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import ml_collections

from tinybert_jax import convert, distributed, sharding
from tinybert_jax.checkpoint import RunCheckpoints
from tinybert_jax.data import loader, prepare
from tinybert_jax.data.wordpiece import train_wordpiece
from tinybert_jax.models.bert import Bert, bert_config_from
from tinybert_jax.train.loop import LoopSettings, run_loop
from tinybert_jax.train.mlm import make_mlm_step
from tinybert_jax.train.optimizer import make_optimizer
from tinybert_jax.train.state import create_state, resume_or_load


def pretrain_teacher(config: ml_collections.ConfigDict, teacher_dir: Path, prepared_dir: Path) -> Path:
    """Trains the teacher described by config.teacher_training; returns its Hugging Face export directory."""
    training = config.teacher_training
    tokenizer_dir, export_dir = teacher_dir / "tokenizer", teacher_dir / "export"
    def tokenizer_and_data() -> dict:
        if not (tokenizer_dir / "vocab.txt").is_file():
            train_wordpiece(config.data.source, tokenizer_dir, training.vocab_size)
        return prepare.ensure_prepared(
            config.data.source, prepared_dir, str(tokenizer_dir), config.data.seq_len, config.seed,
            tfds_data_dir=config.data.tfds_data_dir, tfds_text_key=config.data.tfds_text_key,
            short_seq_prob=config.data.short_seq_prob)

    data_meta = distributed.leader_first("teacher data", tokenizer_and_data)
    token_ids = data_meta["tokenizer"]
    cfg = bert_config_from(training.model, "teacher_training.model", vocab_size=token_ids["vocab_size"],
                           mlm_head=True, pooler=False)

    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    sharding.check_batch_divisible(training.batch_size, mesh)
    rules = config.mesh.rules
    tx, schedule = make_optimizer(training.optimizer, training.num_steps)
    ids = jax.numpy.zeros((1, 8), jax.numpy.int32)
    state, state_shardings = create_state(
        lambda rng: {"model": Bert(cfg).init(rng, ids, ids, ids)["params"]}, tx, config.seed, mesh, rules)
    data_iterator = loader.make_train_iterator(prepared_dir, training.batch_size, config.seed,
                                               rows=sharding.process_batch_rows(mesh, training.batch_size))
    checkpoints = RunCheckpoints(teacher_dir / "checkpoints", keep=config.checkpoint.keep,
                                 every_steps=training.checkpoint_every_steps)
    meta = {"model": dataclasses.asdict(cfg), "seq_len": config.data.seq_len}
    state = resume_or_load(state, state_shardings, checkpoints, meta, data_iterator, {})

    special_ids = (token_ids["cls_id"], token_ids["sep_id"], token_ids["pad_id"])
    step = sharding.compile_step(make_mlm_step(cfg, tx, schedule, special_ids, token_ids["mask_id"],
                                               training.mask_prob),
                                 mesh, rules, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
    state = run_loop(step, state, data_iterator, mesh, checkpoints, meta, teacher_dir,
                     LoopSettings(training.num_steps, training.batch_size, config.log.every_steps,
                                  desc="teacher masked-LM"))
    params = sharding.host_copy(state.params["model"])
    if distributed.is_leader():
        convert.save_hf_bert(cfg, params, export_dir, tokenizer_dir=tokenizer_dir,
                             overwrite=True)
    return export_dir
