"""The `general` pipeline: general distillation from a pre-trained BERT (TinyBERT, DistilBERT or MiniLM recipe, or
custom terms), resumable, on any mesh (docs/recipes.md).

teacher -> student and terms -> checkpoint compatibility -> prepared data -> engine -> export -> summary.
"""
from __future__ import annotations

from pathlib import Path

import ml_collections
from absl import logging

from tinybert_jax import convert, distributed, hf_checkpoint, report, sharding
from tinybert_jax.data import loader, prepare
from tinybert_jax.distill.matches import uses_masking
from tinybert_jax.distill.projection import save_projection
from tinybert_jax.distill.spec import (
    compute_dtype,
    describe,
    distill_spec,
    init_trainable,
    run_meta,
    with_trimmed_teacher,
)
from tinybert_jax.distill.step import make_distill_step
from tinybert_jax.distill.student import student_config
from tinybert_jax.models.bert import abstract_params
from tinybert_jax.train import engine
from tinybert_jax.train.mlm import smoothed_token_weights


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    workdir = Path(workdir)
    teacher_dir = hf_checkpoint.resolve_checkpoint_dir(config.teacher.path)
    teacher_cfg, teacher_params = convert.load_hf_bert(str(teacher_dir))
    student_cfg, student_params = student_config(config, teacher_cfg, teacher_params)
    student_cfg = student_cfg.replace(dtype=compute_dtype(config))
    mask_id = prepare.load_tokenizer(str(teacher_dir)).mask_token_id
    spec = distill_spec(config, teacher_cfg, student_cfg, config.data.seq_len, mask_id)
    spec, teacher_params = with_trimmed_teacher(spec, teacher_params, config.dtype)
    logging.info("distillation terms (student <- teacher): %s", describe(spec))

    job = engine.job_for(config, f"general distillation ({config.loss.preset})", workdir, 0,
                         config.train.batch_size, config.optimizer, run_meta(spec, config.data.seq_len),
                         initial={"student": student_params} if student_params is not None else {})
    engine.check_before_preparing(config, job)

    prepared_dir = Path(config.data.prepared_dir or workdir / "data")
    data_meta = distributed.leader_first("prepare", lambda: prepare.ensure_prepared(
        config.data.source, prepared_dir, str(teacher_dir), config.data.seq_len, config.seed,
        tfds_data_dir=config.data.tfds_data_dir, tfds_text_key=config.data.tfds_text_key,
        short_seq_prob=config.data.short_seq_prob))
    job.num_steps = engine.stage_length(config.train, "train", data_meta["count"],
                                        data_meta["count"] / config.train.batch_size).num_steps
    token_weights = None
    if uses_masking(spec.matches):  # DistilBERT's rare-token smoothing: positions drawn by count^-smoothing
        ids = data_meta["tokenizer"]
        token_weights = smoothed_token_weights(loader.read_token_counts(prepared_dir),
                                               (ids["cls_id"], ids["sep_id"], ids["pad_id"], mask_id),
                                               config.loss.mask_smoothing)

    result = engine.train(
        config, job, lambda rng: init_trainable(spec, rng),
        lambda tx, schedule: make_distill_step(spec, tx, schedule, token_weights),
        lambda rows: loader.make_train_iterator(prepared_dir, config.train.batch_size, config.seed, rows=rows),
        frozen=engine.Frozen(teacher_params, abstract_params(spec.teacher)))

    student_params, projection = sharding.host_copy((result.state.params["student"],
                                                     result.state.params["projection"]))
    export_dir = workdir / "export"
    if distributed.is_leader():
        convert.save_hf_bert(student_cfg, student_params, export_dir, tokenizer_dir=teacher_dir, overwrite=True,
                             extra_files=save_projection(projection))
    auto_class = "AutoModelForMaskedLM" if student_cfg.mlm_head else "AutoModel"
    report.print_table("general distillation", result.record.summary_rows() + [
        ("export", f"{export_dir} (+ the projection W_h in {export_dir / 'projection.msgpack'})"),
        ("metrics", str(workdir / "metrics.jsonl")), ("load with", report.load_line(export_dir, auto_class))])
