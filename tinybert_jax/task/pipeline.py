"""The `task` pipeline: TinyBERT task-specific distillation (README, "Task-specific distillation"), resumable stage
by stage.

  check    the teacher's dev score is compared with chance before anything else runs
  augment  -> WORKDIR/augmented   TinyBERT data augmentation of the training set (skipped when augment.enabled=False)
  stage 1  -> WORKDIR/stage1      intermediate layers (embedding, attention, hidden) on the (augmented) data
  stage 2  -> WORKDIR/stage2      prediction layer: soft cross-entropy to the teacher's logits, computed once
  export   -> WORKDIR/export      best-on-dev student as a Hugging Face BertForSequenceClassification
  report   -> WORKDIR/report.json teacher and student dev scores, retention
A stage whose output exists is skipped on re-run; a stage interrupted half-way resumes from its checkpoint.
Each output carries a fingerprint of what produced it (task.fingerprint): caches made from other inputs are made
again, a finished or half-done stage from other inputs is refused.
"""
from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np
from absl import logging
from flax import serialization

from tinybert_jax import convert, distributed, hf_checkpoint, sharding
from tinybert_jax.checkpoint import RunCheckpoints
from tinybert_jax.data import augment, glue
from tinybert_jax.distill.general import PROJECTION_FILE, compute_dtype, run_meta, train_distillation
from tinybert_jax.distill.layer_map import resolve_layer_map
from tinybert_jax.distill.losses import MODES
from tinybert_jax.distill.matches import LOGIT_LOSSES, match_entries, resolve_matches, teacher_layers_needed
from tinybert_jax.distill.step import DistillSpec, trim_teacher
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import BertConfig
from tinybert_jax.task import common, fingerprint
from tinybert_jax.task.data import Arrays, count, train_iterator
from tinybert_jax.task.evaluate import chance_score, evaluate, main_score, predict
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
    try:
        permutation = glue.label_permutation(task, hf_checkpoint.read_config(teacher_dir).get("id2label"))
    except InputError as e:
        raise InputError(f"{teacher_dir / 'config.json'}: {e}") from None
    return teacher_dir, cfg, params, permutation


def check_teacher(config: ml_collections.ConfigDict, task: glue.GlueTask, scores: dict, dev_sets: dict) -> None:
    """Stops before hours of augmentation and training when the teacher's dev score is no better than chance."""
    split = task.dev_splits[0]
    score, chance = main_score(task, scores), chance_score(task, dev_sets[split]["labels"])
    logging.info("teacher: %s %s = %.4f (chance %.4f)", split, task.main_metric, score, chance)
    if config.teacher.check_score and score < chance + config.teacher.chance_margin:
        raise InputError(
            f"teacher.path={config.teacher.path} scores {task.main_metric} {score:.4f} on {split}, within "
            f"{config.teacher.chance_margin:g} of chance ({chance:.4f}): is it fine-tuned on {task.name}, and does its "
            f"config.json id2label give the label order it was trained with? (--config.teacher.check_score=False "
            f"to distil it anyway)")


def load_student(config: ml_collections.ConfigDict, teacher: BertConfig) -> tuple[BertConfig, dict, dict | None]:
    """student.init (a general-distillation workdir, i.e. its export/, a Hugging Face dir or a Flax checkpoint
    dir): its config, its parameters, and the projection W_h learned with it (None: not saved, or another width)."""
    path = Path(config.student.init)
    if (path / "export" / "config.json").is_file():
        path = path / "export"
    cfg, params = convert.load_bert(str(path))
    if cfg.vocab_size != teacher.vocab_size:
        raise InputError(f"student.init={config.student.init}: vocabulary {cfg.vocab_size} differs from the "
                         f"teacher's {teacher.vocab_size}")
    return cfg.replace(pooler=False, mlm_head=False, num_labels=0), params, _load_projection(path, cfg, teacher)


def _load_projection(student_dir: Path, student: BertConfig, teacher: BertConfig) -> dict | None:
    """The general-distillation W_h (student width -> teacher width) saved beside the student, when it fits."""
    file = student_dir / PROJECTION_FILE
    if not file.is_file():
        logging.info("stage 1 starts the projection W_h from random: %s has no %s", student_dir, PROJECTION_FILE)
        return None
    try:
        projection = serialization.msgpack_restore(file.read_bytes())
        shape = tuple(projection["dense"]["kernel"].shape)
    except Exception as e:  # msgpack raises several types for truncated or foreign data
        raise InputError(f"{file}: not a saved projection ({type(e).__name__}); delete it to start W_h from "
                         f"random") from e
    if shape != (student.hidden_size, teacher.hidden_size):
        logging.info("stage 1 starts the projection W_h from random: the one in %s maps %d -> %d, this teacher "
                     "needs %d -> %d", file, *shape, student.hidden_size, teacher.hidden_size)
        return None
    logging.info("stage 1 starts the projection W_h from the general-distillation one in %s", file)
    return projection


def training_examples(config: ml_collections.ConfigDict, task: glue.GlueTask, train: glue.TaskExamples,
                      augment_fingerprint: dict, workdir: Path) -> glue.TaskExamples:
    """The training set, augmented when augment.enabled (made once; made again when its fingerprint differs)."""
    if not config.augment.enabled:
        return train
    out_dir = workdir / "augmented"
    stored = out_dir / "fingerprint.json"

    def augment_once() -> None:
        if fingerprint.reusable(out_dir / "metadata.json", stored, augment_fingerprint):
            return
        settings = config.augment
        augmenter = augment.load_augmenter(settings.mlm_path, settings.glove_path or None, k=settings.k,
                                           p_t=settings.p_t, n_a=settings.n_a, seed=config.seed,
                                           batch_size=settings.batch_size, max_seq_len=settings.max_seq_len)
        augment.augment_examples(train, augmenter, out_dir, overwrite=True)
        fingerprint.write(stored, augment_fingerprint)  # after the data: a crash in between means augment again

    distributed.leader_first("augment", augment_once)
    return glue.TaskExamples(*augment.read_augmented(out_dir))


def check_stage(directory: Path, stage_fingerprint: dict, what: str) -> None:
    """Refuses a stage directory holding (part of) a run made from other inputs, naming the first difference."""
    if not directory.exists():
        return
    difference = fingerprint.difference_from_stored(directory / "fingerprint.json", stage_fingerprint)
    if difference is not None:
        raise InputError(f"{directory} holds {what} made from other inputs ({difference}); use another --workdir, "
                         f"the same settings, or delete {directory} to train it again")


def stage1(config, task, teacher_cfg, teacher_params, student_cfg, initial: dict, train: Arrays,
           workdir: Path, stage_fingerprint: dict) -> None:
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
    if distributed.is_leader():  # before the first checkpoint, so a half-done stage is recognised too
        fingerprint.write(directory / "fingerprint.json", stage_fingerprint)
    checkpoints = RunCheckpoints(directory / "checkpoints", keep=config.checkpoint.keep,
                                 every_steps=config.checkpoint.every_steps)
    state = train_distillation(spec, trimmed, initial, iterator, mesh, config.mesh.rules, tx, schedule,
                               config.seed, checkpoints, run_meta(spec, int(train["input_ids"].shape[1])), directory,
                               LoopSettings(num_steps, stage.batch_size, config.log.every_steps,
                                            desc=f"{task.name} stage 1 (intermediate layers)"))
    params = sharding.host_copy(state.params["student"])
    if distributed.is_leader():
        convert.save_flax_dir(student_cfg, params, directory / "student", overwrite=True)
    distributed.barrier("stage 1 saved")


def teacher_logits(teacher_cfg, teacher_params, permutation, train: Arrays, batch_size: int,
                   logits_fingerprint: dict, workdir: Path) -> np.ndarray:
    """The teacher's logits for every training example, computed once and cached for all stage-2 epochs (again
    when the cache's fingerprint differs: logits of another data set would silently misalign the targets)."""
    cache = workdir / "stage2" / "teacher_logits.npy"
    stored = cache.with_suffix(".json")

    def compute_once() -> None:
        if fingerprint.reusable(cache, stored, logits_fingerprint):
            return
        logits = predict(teacher_cfg, teacher_params, train, batch_size, permutation)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(cache.with_suffix(".tmp"), "wb") as f:
            np.save(f, logits)
        cache.with_suffix(".tmp").replace(cache)
        fingerprint.write(stored, logits_fingerprint)

    distributed.leader_first("teacher logits", compute_once)
    logits = np.load(cache)
    if logits.shape[0] != count(train):
        raise InputError(f"{cache}: {logits.shape[0]} rows for {count(train)} training examples; delete it")
    return logits


def fingerprints(config, task: glue.GlueTask, train: glue.TaskExamples, seq_len: int, teacher_params: dict,
                 permutation, student_params: dict, projection: dict | None) -> dict[str, dict]:
    """What each cached output depends on (README, "Task-specific distillation": caches and fingerprints)."""
    data = {"task": task.name, "data.source": str(config.data.source), "data.tfds_data_dir": config.data.tfds_data_dir,
            "train.examples": len(train), "train.digest": fingerprint.digest_texts(train.text_a, train.text_b)
            + fingerprint.digest_arrays(train.labels)}
    augmented = {**data, "seed": config.seed, "augment.enabled": config.augment.enabled}
    if config.augment.enabled:
        augmented.update({f"augment.{key}": config.augment[key]
                          for key in ("mlm_path", "glove_path", "k", "p_t", "n_a", "max_seq_len")})
        if config.augment.glove_path:
            augmented["augment.glove_bytes"] = Path(config.augment.glove_path).stat().st_size
    teacher = {"teacher.path": str(config.teacher.path), "teacher.weights": fingerprint.digest_arrays(teacher_params),
               "teacher.label_permutation": None if permutation is None else permutation.tolist(),
               "data.seq_len": seq_len}
    stage1 = {**augmented, **teacher, "student.init": str(config.student.init),
              "student.weights": fingerprint.digest_arrays(student_params),
              "projection.weights": None if projection is None else fingerprint.digest_arrays(projection),
              "dtype": config.dtype, "layer_map": str(config.layer_map), "loss.preset": config.loss.preset,
              "loss.mode": config.loss.mode, "loss.matches": "; ".join(match_entries(config.loss.matches))}
    return {"augmented": augmented, "stage1": stage1, "teacher_logits": {**augmented, **teacher}}


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    workdir = Path(workdir)
    task = glue.get_task(config.task)
    dtype = compute_dtype(config)
    teacher_dir, teacher_cfg, teacher_params, permutation = load_teacher(config, task)
    teacher_cfg = teacher_cfg.replace(dtype=dtype)
    student_cfg, student_params, projection = load_student(config, teacher_cfg)
    student_cfg = student_cfg.replace(dtype=dtype)
    tokenizer = common.tokenizer_of(teacher_dir)
    seq_len = common.seq_len_for(task, config.data.seq_len)
    dev_sets = common.load_dev_sets(task, config.data, tokenizer, seq_len)
    teacher_scores = evaluate(task, teacher_cfg, teacher_params, dev_sets, config.eval.batch_size, permutation)
    check_teacher(config, task, teacher_scores, dev_sets)

    original = glue.read_split(task, config.data.source, "train", config.data.tfds_data_dir)
    prints = fingerprints(config, task, original, seq_len, teacher_params, permutation, student_params, projection)
    check_stage(workdir / "stage1", prints["stage1"], "stage 1")  # before hours of augmentation
    train = glue.encode(training_examples(config, task, original, prints["augmented"], workdir), tokenizer, seq_len)
    logging.info("%s: %d training examples%s", task.name, count(train),
                 " (augmented)" if config.augment.enabled else "")

    if not (workdir / "stage1" / "student" / "bert_config.json").is_file():
        initial = {"student": common.encoder_params(student_params),
                   **({"projection": projection} if projection is not None else {})}
        stage1(config, task, teacher_cfg, teacher_params, student_cfg, initial, train, workdir, prints["stage1"])
    _, stage1_params = convert.load_flax_dir(workdir / "stage1" / "student")

    classifier = common.classifier_config(student_cfg, task)
    init = {**stage1_params, **({"pooler": student_params["pooler"]} if "pooler" in student_params else {})}
    if not (workdir / "export" / "config.json").is_file():
        train["teacher_logits"] = teacher_logits(teacher_cfg, teacher_params, permutation, train,
                                                 config.eval.batch_size, prints["teacher_logits"], workdir)
        best = common.train_classifier(classifier, task, train, dev_sets, init, config.stage2, config,
                                       workdir / "stage2", desc=f"{task.name} stage 2 (prediction layer)",
                                       temperature=config.stage2.temperature)
        common.export_classifier(best, task, workdir / "export", teacher_dir)

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
