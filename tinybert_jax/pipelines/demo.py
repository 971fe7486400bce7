"""The `demo` pipeline, everything offline: pre-train a small teacher by masked-LM (WORKDIR/teacher), then distil it
into a smaller student exactly as `general` does (WORKDIR). The smoke variants of the general recipes run here.

Teacher stages, each skipped when its output exists: WordPiece vocabulary -> prepared data -> masked-LM training
(resumable) -> Hugging Face export with the tokenizer.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_collections
from absl import logging

from tinybert_jax import convert, distributed, report, sharding
from tinybert_jax.data import loader, prepare
from tinybert_jax.data.wordpiece import train_wordpiece
from tinybert_jax.models.bert import bert_config_from, boxed_params
from tinybert_jax.pipelines import general
from tinybert_jax.train import engine
from tinybert_jax.train.mlm import make_mlm_step


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    workdir = Path(workdir)
    teacher_export = workdir / "teacher" / "export"
    if (teacher_export / "config.json").is_file():
        logging.info("teacher already trained: %s", teacher_export)
    else:
        pretrain_teacher(config, workdir / "teacher", workdir / "data")
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.teacher.path = str(teacher_export)
        config.data.prepared_dir = str(workdir / "data")  # same tokenizer and settings: reuse the teacher's data
    general.run(config, str(workdir))


def pretrain_teacher(config: ml_collections.ConfigDict, teacher_dir: Path, prepared_dir: Path) -> None:
    """Trains the teacher described by config.teacher_training and exports it to teacher_dir/export."""
    training = config.teacher_training
    tokenizer_dir = teacher_dir / "tokenizer"

    def tokenizer_and_data() -> dict:
        if not (tokenizer_dir / "vocab.txt").is_file():
            train_wordpiece(config.data.source, tokenizer_dir, training.vocab_size)
        return prepare.ensure_prepared(
            config.data.source, prepared_dir, str(tokenizer_dir), config.data.seq_len, config.seed,
            tfds_data_dir=config.data.tfds_data_dir, tfds_text_key=config.data.tfds_text_key,
            short_seq_prob=config.data.short_seq_prob)

    ids = distributed.leader_first("teacher data", tokenizer_and_data)["tokenizer"]
    cfg = bert_config_from(training.model, "teacher_training.model", vocab_size=ids["vocab_size"], mlm_head=True,
                           pooler=False)
    job = engine.job_for(config, "teacher masked-LM", teacher_dir, training.num_steps, training.batch_size,
                         training.optimizer, {"model": dataclasses.asdict(cfg), "seq_len": config.data.seq_len},
                         checkpoint_every_steps=training.checkpoint_every_steps, section="teacher_training")
    result = engine.train(
        config, job, lambda rng: {"model": boxed_params(cfg, rng)},
        lambda tx, schedule: make_mlm_step(cfg, tx, schedule, (ids["cls_id"], ids["sep_id"], ids["pad_id"]),
                                           ids["mask_id"], training.mask_prob),
        lambda rows: loader.make_train_iterator(prepared_dir, training.batch_size, config.seed, rows=rows))
    params = sharding.host_copy(result.state.params["model"])
    if distributed.is_leader():
        convert.save_hf_bert(cfg, params, teacher_dir / "export", tokenizer_dir=tokenizer_dir, overwrite=True)
    distributed.barrier("teacher exported")  # every process reads it next
    report.print_table("demo teacher", result.record.summary_rows() + [("teacher", str(teacher_dir / "export"))])
