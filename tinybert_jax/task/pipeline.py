"""The `task` pipeline: TinyBERT task-specific distillation (REFERENCE.md 1), resumable stage by stage.

  augment  -> WORKDIR/augmented   TinyBERT data augmentation of the training set (skipped when augment.enabled=False)
  stage 1  -> WORKDIR/stage1      intermediate layers (embedding, attention, hidden) on the (augmented) data
  stage 2  -> WORKDIR/stage2      prediction layer: soft cross-entropy to the teacher's logits, computed once
  export   -> WORKDIR/export      best-on-dev student as a Hugging Face BertForSequenceClassification
  report   -> WORKDIR/report.json teacher and student dev scores, retention
A stage whose output exists is skipped on re-run; a stage interrupted half-way resumes from its checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np
from absl import logging

from tinybert_jax import convert, distributed, hf_checkpoint, sharding
from tinybert_jax.checkpoint import RunCheckpoints
from tinybert_jax.data import augment, glue
from tinybert_jax.distill.general import compute_dtype, run_meta, train_distillation
from tinybert_jax.distill.layer_map import resolve_layer_map
from tinybert_jax.distill.losses import MODES
from tinybert_jax.distill.matches import LOGIT_LOSSES, resolve_matches, teacher_layers_needed
from tinybert_jax.distill.step import DistillSpec, trim_teacher
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import BertConfig
from tinybert_jax.task import common
from tinybert_jax.task.data import Arrays, count, train_iterator
from tinybert_jax.task.evaluate import evaluate, main_score, predict
from tinybert_jax.train.loop import LoopSettings
from tinybert_jax.train.optimizer import make_optimizer

def load_teacher(config: ml_collections.ConfigDict, task: glue.GlueTask):
    """(dir, config, params, permutation to canonical label order) of the fine-tuned teacher."""
    teacher_dir = hf_checkpoint.resolve_checkpoint_dir(config.teacher.path)
    cfg, params = convert.load_hf_bert(str(teacher_dir))
    if cfg.num_labels != task.num_labels:
        raise InputError(f"teacher.path={config.teacher.path}: a classifier with {cfg.num_labels} output(s) "
                         f"(0 = no classifier head), but {task.name} needs {task.num_labels}; fine-tune a teacher "
                         f"first with configs/finetune.py")
    permutation = glue.label_permutation(task, hf_checkpoint.read_config(teacher_dir).get("id2label"))
    return teacher_dir, cfg, params, permutation


def load_student(config: ml_collections.ConfigDict, teacher: BertConfig) -> tuple[BertConfig, dict]:
    """student.init: a general-distillation workdir (its export/), a Hugging Face dir or a Flax checkpoint dir."""
    path = Path(config.student.init)
    if (path / "export" / "config.json").is_file():
        path = path / "export"
    cfg, params = convert.load_bert(str(path))
    if cfg.vocab_size != teacher.vocab_size:
        raise InputError(f"student.init={config.student.init}: vocabulary {cfg.vocab_size} differs from the "
                         f"teacher's {teacher.vocab_size}")
    return cfg.replace(pooler=False, mlm_head=False, num_labels=0), params


def training_examples(config: ml_collections.ConfigDict, task: glue.GlueTask, workdir: Path):
    train = glue.read_split(task, config.data.source, "train", config.data.tfds_data_dir)
    if not config.augment.enabled:
        return train
    out_dir = workdir / "augmented"

    def augment_once() -> None:
        if not (out_dir / "metadata.json").is_file():
            settings = config.augment
            augmenter = augment.load_augmenter(settings.mlm_path, settings.glove_path or None, k=settings.k,
                                               p_t=settings.p_t, n_a=settings.n_a, seed=config.seed,
                                               batch_size=settings.batch_size, max_seq_len=settings.max_seq_len)
            augment.augment_examples(train, augmenter, out_dir)

    distributed.leader_first("augment", augment_once)
    return glue.TaskExamples(*augment.read_augmented(out_dir))


def stage1(config, task, teacher_cfg, teacher_params, student_cfg, student_params, train: Arrays,
           workdir: Path) -> None:
    if config.loss.mode not in MODES:
        raise InputError(f"loss.mode={config.loss.mode!r}; use one of {MODES}")
    layer_map = None
    if config.loss.preset == "tinybert":
        layer_map = resolve_layer_map(config.layer_map, teacher_cfg.num_hidden_layers,
                                      student_cfg.num_hidden_layers)
    matches = resolve_matches(config.loss, layer_map, student_cfg, teacher_cfg)
    if any(m.loss in LOGIT_LOSSES for m in matches):
        raise InputError("stage 1 distils intermediate layers: logit and masked-LM terms belong to stage 2 "
                         "(loss.weights.prediction must be 0 here)")
    depth = teacher_layers_needed(matches, teacher_cfg)[0]
    trimmed_cfg, trimmed = trim_teacher(teacher_cfg, teacher_params, depth, False, dtype=config.dtype)
    spec = DistillSpec(student_cfg, trimmed_cfg, matches, config.loss.mode,
                       relation_heads=int(config.loss.relation_heads))
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    stage = config.stage1
    sharding.check_batch_divisible(stage.batch_size, mesh)
    num_steps = common.steps_for(stage.num_steps, stage.num_epochs, count(train), stage.batch_size, "stage1")
    tx, schedule = make_optimizer(stage.optimizer, num_steps)
    iterator = train_iterator(train, stage.batch_size, config.seed,
                              sharding.process_batch_rows(mesh, stage.batch_size))
    directory = workdir / "stage1"
    checkpoints = RunCheckpoints(directory / "checkpoints", keep=config.checkpoint.keep,
                                 every_steps=config.checkpoint.every_steps)
    state = train_distillation(spec, trimmed, common.encoder_params(student_params), iterator, mesh,
                               config.mesh.rules, tx, schedule, config.seed, checkpoints,
                               run_meta(spec, int(train["input_ids"].shape[1])), directory,
                               LoopSettings(num_steps, stage.batch_size, config.log.every_steps,
                                            desc=f"{task.name} stage 1 (intermediate layers)"))
    params = sharding.host_copy(state.params["student"])
    if distributed.is_leader():
        convert.save_flax_dir(student_cfg, params, directory / "student", overwrite=True)
    distributed.barrier("stage 1 saved")


def teacher_logits(config, teacher_cfg, teacher_params, permutation, train: Arrays, workdir: Path) -> np.ndarray:
    """The teacher's logits for every training example, computed once and cached for all stage-2 epochs."""
    cache = workdir / "stage2" / "teacher_logits.npy"

    def compute_once() -> None:
        if not cache.is_file():
            logits = predict(teacher_cfg, teacher_params, train, config.eval.batch_size, permutation)
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, logits)

    distributed.leader_first("teacher logits", compute_once)
    return np.load(cache)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    workdir = Path(workdir)
    task = glue.get_task(config.task)
    dtype = compute_dtype(config)
    teacher_dir, teacher_cfg, teacher_params, permutation = load_teacher(config, task)
    teacher_cfg = teacher_cfg.replace(dtype=dtype)
    student_cfg, student_params = load_student(config, teacher_cfg)
    student_cfg = student_cfg.replace(dtype=dtype)
    tokenizer = common.tokenizer_of(teacher_dir)
    seq_len = common.seq_len_for(task, config.data.seq_len)
    dev_sets = common.load_dev_sets(task, config.data, tokenizer, seq_len)
    train = glue.encode(training_examples(config, task, workdir), tokenizer, seq_len)
    logging.info("%s: %d training examples%s", task.name, count(train),
                 " (augmented)" if config.augment.enabled else "")

    if not (workdir / "stage1" / "student" / "bert_config.json").is_file():
        stage1(config, task, teacher_cfg, teacher_params, student_cfg, student_params, train, workdir)
    _, stage1_params = convert.load_flax_dir(workdir / "stage1" / "student")

    classifier = common.classifier_config(student_cfg, task)
    init = {**stage1_params, **({"pooler": student_params["pooler"]} if "pooler" in student_params else {})}
    if not (workdir / "export" / "config.json").is_file():
        train["teacher_logits"] = teacher_logits(config, teacher_cfg, teacher_params, permutation, train, workdir)
        best = common.train_classifier(classifier, task, train, dev_sets, init, config.stage2, config,
                                       workdir / "stage2", desc=f"{task.name} stage 2 (prediction layer)",
                                       temperature=config.stage2.temperature)
        common.export_classifier(best, task, workdir / "export", teacher_dir)

    teacher_scores = evaluate(task, teacher_cfg, teacher_params, dev_sets, config.eval.batch_size, permutation)
    _, best_params = convert.load_flax_dir(workdir / "stage2" / "best" / "params")
    student_scores = evaluate(task, classifier, best_params, dev_sets, config.eval.batch_size)
    teacher_score, student_score = main_score(task, teacher_scores), main_score(task, student_scores)
    retention = 100.0 * student_score / teacher_score if teacher_score else float("nan")
    rows = [("task", task.name), ("metric", f"{task.dev_splits[0]} {task.main_metric}"),
            ("teacher", f"{teacher_score:.4f}"), ("student", f"{student_score:.4f}"),
            ("retention", f"{retention:.1f}%")]
    rows += [(f"student {split} {name}", f"{value:.4f}") for split, metrics in student_scores.items()
             for name, value in metrics.items()]
    common.write_report(workdir / "report.json",
                        {"task": task.name, "metric": task.main_metric, "teacher": teacher_scores,
                         "student": student_scores, "teacher_score": teacher_score, "student_score": student_score,
                         "retention_percent": retention}, rows)
