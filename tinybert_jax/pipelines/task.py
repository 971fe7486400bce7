"""The `task` pipeline: TinyBERT task-specific distillation (README, "Task-specific distillation"), resumable stage
by stage.

  check    the teacher's dev score is compared with chance before anything else runs
  augment  -> WORKDIR/augmented   TinyBERT data augmentation of the training set (skipped when augment.enabled=False)
  stage 1  -> WORKDIR/stage1      intermediate layers (embedding, attention, hidden) on the (augmented) data
  stage 2  -> WORKDIR/stage2      prediction layer: soft cross-entropy to the teacher's logits, computed once
  export   -> WORKDIR/export      best-on-dev student as a Hugging Face BertFor{Sequence,Token}Classification or
                                  BertForQuestionAnswering
  report   -> WORKDIR/report.json teacher and student dev scores, retention
A stage whose output exists is skipped on re-run; a stage interrupted half-way resumes from its checkpoint.
Each output carries a fingerprint of what produced it (task.fingerprint): caches made from other inputs are made
again, a finished or half-done stage from other inputs is refused.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import ml_collections
import numpy as np
from absl import logging

from tinybert_jax import convert, distributed, report, sharding
from tinybert_jax.data import augment, custom
from tinybert_jax.data.prepare import load_tokenizer
from tinybert_jax.distill.projection import load_projection
from tinybert_jax.distill.spec import (
    compute_dtype,
    describe,
    distill_spec,
    init_trainable,
    run_meta,
    with_trimmed_teacher,
)
from tinybert_jax.distill.step import DistillSpec, make_distill_step
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import BertConfig, abstract_params
from tinybert_jax.task import baseline, cache_keys, catalog, classifier, fingerprint
from tinybert_jax.task.arrays import Arrays, DevSet, batch_shapes, bucket_lengths, count, train_iterator
from tinybert_jax.task.evaluate import curve_rows, evaluate, main_score, predict
from tinybert_jax.task.kinds import encode_train, kind_of, load_dev_sets, seq_len_for
from tinybert_jax.task.spec import Task
from tinybert_jax.train import engine
from tinybert_jax.train.loop import LoopRecord


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    seeds = seed_list(config)
    if not (config.seeds_whole_pipeline and config.seeds):
        run_once(config, Path(workdir))
        return
    # the whole pipeline once per seed (a single listed seed too: it is the seed the user asked for), each in
    # WORKDIR/seed_N; WORKDIR/report.json compares them
    student_scores = {}
    for seed in seeds:
        seeded = with_seed(config, seed)
        seeded.seeds = ""
        run_once(seeded, Path(workdir) / f"seed_{seed}")
        student_scores[seed] = json.loads((Path(workdir) / f"seed_{seed}" / "report.json").read_text())["student_score"]
    summary, rows = seed_summary(student_scores)
    report.write_report(Path(workdir) / "report.json", {"task": config.task, **summary})
    report.print_table(f"task distillation ({config.task}), whole pipeline per seed", rows + [
        ("exports", str(Path(workdir) / "seed_N" / "export"))])


def seed_list(config: ml_collections.ConfigDict) -> list[int]:
    """config.seeds (a list, or one string with ',' between seeds), or else [config.seed]."""
    value = config.seeds
    try:
        seeds = [int(item) for item in custom.names(value)]
    except ValueError:
        raise InputError(f"seeds={value!r}: give integer seeds, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise InputError(f"seeds={value!r}: a seed is given twice")
    return seeds or [int(config.seed)]


def with_seed(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    seeded = config.copy_and_resolve_references()
    seeded.seed = seed
    return seeded


def seed_summary(scores: dict[int, float]) -> tuple[dict, list[tuple[str, str]]]:
    """Each seed's score, their mean and standard deviation, and the best seed (for the report and the table)."""
    values = np.array(list(scores.values()))
    best = max(scores, key=scores.get)
    summary = {"seed_scores": {str(seed): score for seed, score in scores.items()}, "seed_mean": float(values.mean()),
               "seed_std": float(values.std()), "best_seed": best}
    rows = [(f"seed {seed}", f"{score:.4f}" + ("  (best)" if seed == best else "")) for seed, score in scores.items()]
    return summary, rows + [("mean +- std", f"{values.mean():.4f} +- {values.std():.4f} over {len(values)} seeds")]


@dataclasses.dataclass
class TaskRun:
    """What every stage of one run reads: the task, the teacher (logits permuted to the task's label order), the
    student's initialisation, the tokenizer, the dev sets, the original training set and each output's
    fingerprint."""
    config: ml_collections.ConfigDict
    workdir: Path
    task: Task
    teacher_dir: Path
    teacher_cfg: BertConfig
    teacher_params: dict
    permutation: np.ndarray | None
    student_cfg: BertConfig
    student_params: dict
    projection: dict | None
    tokenizer: object
    seq_len: int
    dev_sets: dict[str, DevSet]
    teacher_scores: dict
    original: object  # the training split as read, before augmentation
    prints: dict[str, dict]  # cache_keys.task_fingerprints

    @property
    def classifier_cfg(self) -> BertConfig:
        """Stage 2's model: the student with the task's head."""
        return classifier.classifier_config(self.student_cfg, self.task)

    @property
    def stage2_dirs(self) -> dict[int, Path]:
        """One stage 2 per seed (config.seeds; else WORKDIR/stage2 with config.seed), all from the same stage 1."""
        return {seed: self.workdir / "stage2" / (f"seed_{seed}" if self.config.seeds else "")
                for seed in seed_list(self.config)}


def run_once(config: ml_collections.ConfigDict, workdir: Path) -> None:
    run = start(config, workdir)
    stage1_plan = plan_stage1(run) if not (workdir / "stage1" / "student" / "bert_config.json").is_file() else None
    train = encode_train(run.task, training_examples(config, run.task, run.original, run.prints["augmented"], workdir),
                         run.tokenizer, run.seq_len, config.data)
    logging.info("%s: %d training examples%s", run.task.name, count(train),
                 " (augmented)" if config.augment.enabled else "")
    rows = stage1(config, *stage1_plan, train).summary_rows() if stage1_plan is not None else []
    rows += stage2(run, train)
    rows += write_report(run, train)
    report.print_table(f"task distillation ({run.task.name})", rows)


def start(config: ml_collections.ConfigDict, workdir: Path) -> TaskRun:
    """Loads the teacher, the student and the dev sets, checks the teacher against chance and every stage
    directory against the current settings (before hours of augmentation)."""
    task = catalog.get_task(config)
    dtype = compute_dtype(config)
    teacher_dir, teacher_cfg, teacher_params, permutation = classifier.load_classifier(
        config.teacher.path, "teacher.path", task, "; fine-tune a teacher first with configs/finetune.py")
    teacher_cfg = teacher_cfg.replace(dtype=dtype)
    student_cfg, student_params, projection = load_student(config, teacher_cfg)
    tokenizer = load_tokenizer(str(teacher_dir))
    seq_len = seq_len_for(task, config.data.seq_len)
    dev_sets = load_dev_sets(task, config.data, tokenizer, seq_len)
    teacher_scores = evaluate(teacher_cfg, teacher_params, dev_sets, config.eval.batch_size, permutation)
    check_teacher(config, task, teacher_scores, dev_sets)
    original = catalog.read_split(task, config.data, "train")
    prints = cache_keys.task_fingerprints(config, task, original, seq_len, teacher_params, permutation,
                                          student_params, projection)
    check_stage(workdir / "stage1", prints["stage1"], "stage 1")
    check_stage(workdir / "stage2", prints["stage2"], "stage 2 (and the export made from it)")
    if config.baseline.finetune:
        check_stage(workdir / "baseline", prints["baseline"], "the fine-tuning baseline")
    return TaskRun(config, workdir, task, teacher_dir, teacher_cfg, teacher_params, permutation,
                   student_cfg.replace(dtype=dtype), student_params, projection, tokenizer, seq_len, dev_sets,
                   teacher_scores, original, prints)


def stage2(run: TaskRun, train: Arrays) -> list[tuple[str, str]]:
    """The prediction layer from stage 1's student, once per seed, on the teacher's cached logits; exports the
    best seed's best-on-dev model. Skipped when the export of these settings exists."""
    config, workdir, task = run.config, run.workdir, run.task
    export_dir, stored = workdir / "export", workdir / "stage2" / "fingerprint.json"
    if (export_dir / "config.json").is_file() and stored.is_file():
        return []
    if distributed.is_leader():  # before anything is written there, so a half-done stage 2 is recognised too
        fingerprint.write(stored, run.prints["stage2"])
    distributed.barrier("stage 2 fingerprint written")
    _, stage1_params = convert.load_flax_dir(workdir / "stage1" / "student")
    classifier_cfg = run.classifier_cfg
    init = {**stage1_params, **({"pooler": run.student_params["pooler"]}
                                if "pooler" in run.student_params and classifier_cfg.pooler else {})}
    train["teacher_logits"] = teacher_logits(run.teacher_cfg, run.teacher_params, run.permutation, train,
                                             config.eval.batch_size, run.prints["teacher_logits"], workdir,
                                             bucket_lengths(config.data.buckets, run.seq_len))
    keepers, rows = {}, []
    for seed, directory in run.stage2_dirs.items():
        keepers[seed], record = classifier.train_classifier(
            with_seed(config, seed), "stage2", config.stage2.optimizer, classifier_cfg, task, train, run.dev_sets,
            init, directory, desc=f"{task.name} stage 2 (prediction layer)" + (
                f", seed {seed}" if config.seeds else ""), distill=True)
        rows += record.summary_rows()
    best_seed = max(keepers, key=lambda seed: keepers[seed].best["score"])
    classifier.export_classifier(keepers[best_seed], task, export_dir, run.teacher_dir)
    return rows


def write_report(run: TaskRun, train: Arrays) -> list[tuple[str, str]]:
    """WORKDIR/report.json and the summary rows: teacher and student dev scores, retention, the seeds, the stage
    lengths, the best seed's dev curve and (baseline.finetune) the direct fine-tuning comparison."""
    config, workdir, task = run.config, run.workdir, run.task
    best_files = {seed: json.loads((directory / "best" / "best.json").read_text())
                  for seed, directory in run.stage2_dirs.items()}
    seed_scores = {seed: best["score"] for seed, best in best_files.items()}
    best_seed = max(seed_scores, key=seed_scores.get)
    _, best_params = convert.load_flax_dir(run.stage2_dirs[best_seed] / "best" / "params")
    student_scores = evaluate(run.classifier_cfg, best_params, run.dev_sets, config.eval.batch_size)
    teacher_score, student_score = main_score(task, run.teacher_scores), main_score(task, student_scores)
    retention = 100.0 * student_score / teacher_score if teacher_score else float("nan")
    seeds_report, seed_rows = seed_summary(seed_scores) if config.seeds else ({}, [])
    lengths = {section: stage_plan(config, section, train) for section in ("stage1", "stage2")}
    curve = json.loads((run.stage2_dirs[best_seed] / "best" / "curve.json").read_text())
    baseline_report, baseline_rows = ({}, []) if not config.baseline.finetune else compare_with_finetuning(
        run, student_score)
    report.write_report(workdir / "report.json",
                        {"task": task.name, "metric": task.main_metric, "teacher": run.teacher_scores,
                         "student": student_scores, "teacher_score": teacher_score, "student_score": student_score,
                         "retention_percent": retention, **seeds_report, "stage_lengths": lengths,
                         "stage2_dev_curve": curve, **baseline_report})
    export_dir = workdir / "export"
    rows = seed_rows + [(f"{section} length", f"{plan['steps']} steps: {plan['why']}")
                        for section, plan in lengths.items()]
    rows += curve_rows({int(step): score for step, score in curve.items()}, best_files[best_seed]["step"],
                       task.main_metric)
    rows += [("task", task.name), ("metric", f"{task.dev_splits[0]} {task.main_metric}"),
             ("teacher", f"{teacher_score:.4f}"), ("student", f"{student_score:.4f}"),
             ("retention", f"{retention:.1f}%")] + baseline_rows
    rows += [(f"student {split} {name}", f"{value:.4f}") for split, metrics in student_scores.items()
             for name, value in metrics.items()]
    return rows + [("export", str(export_dir)), ("report", str(workdir / "report.json")),
                   ("load with", report.load_line(export_dir, kind_of(task).auto_class))]


def stage_plan(config: ml_collections.ConfigDict, section: str, train: Arrays) -> dict:
    """{"steps", "why"}: the length `engine.stage_length` gives the stage on this training set."""
    length = classifier.length_on(config[section], section, train,
                                  bucket_lengths(config.data.buckets, train["input_ids"].shape[1]))
    return {"steps": length.num_steps, "why": length.reason}


def compare_with_finetuning(run: TaskRun, student_score: float) -> tuple[dict, list[tuple[str, str]]]:
    """The direct fine-tuning sweep of the student's initialisation (task.baseline), for the report: each
    setting's best dev score, the best setting, and what distillation gained over it in points."""
    config, task = run.config, run.task
    directory = run.workdir / "baseline"
    if distributed.is_leader():
        fingerprint.write(directory / "fingerprint.json", run.prints["baseline"])
    distributed.barrier("baseline fingerprint written")
    results = baseline.finetune_baseline(config, task, run.student_cfg, run.student_params,
                                         encode_train(task, run.original, run.tokenizer, run.seq_len, config.data),
                                         run.dev_sets, directory)
    best = max(results, key=lambda name: results[name]["score"])
    gain = 100.0 * (student_score - results[best]["score"])
    rows = [(f"fine-tuned directly, {name}", f"{result['score']:.4f}" + ("  (best)" if name == best else ""))
            for name, result in results.items()]
    return ({"baseline": results, "baseline_best_setting": best, "baseline_score": results[best]["score"],
             "gain_over_baseline_points": gain},
            rows + [("distilled - best direct fine-tune", f"{gain:+.2f} points")])


def check_teacher(config: ml_collections.ConfigDict, task: Task, scores: dict,
                  dev_sets: dict[str, DevSet]) -> None:
    """Stops before hours of augmentation and training when the teacher's dev score is no better than chance."""
    split = task.dev_splits[0]
    score, chance = main_score(task, scores), dev_sets[split].chance
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
    projection = load_projection(path, cfg.hidden_size, teacher.hidden_size)
    return cfg.replace(pooler=False, mlm_head=False, num_labels=0), params, projection


def training_examples(config: ml_collections.ConfigDict, task: Task, train, augment_fingerprint: dict,
                      workdir: Path):
    """The training set, augmented when augment.enabled (made once, by every process, each its share of chunks,
    resumable after an interruption; made again when its fingerprint differs)."""
    if not config.augment.enabled:
        return train
    out_dir = workdir / "augmented"
    stored = out_dir / "fingerprint.json"
    reuse = fingerprint.reusable(out_dir / "metadata.json", stored, augment_fingerprint)
    distributed.barrier("augmented data checked")  # the same decision everywhere before anything is written
    if not reuse:
        settings = config.augment
        augmenter = augment.load_augmenter(settings.mlm_path, settings.glove_path or None, k=settings.k,
                                           p_t=settings.p_t, n_a=settings.n_a, seed=config.seed,
                                           batch_size=settings.batch_size, max_seq_len=settings.max_seq_len)
        kind_of(task).augment(train, augmenter, out_dir, settings.save_every, resume_key=augment_fingerprint)
        if distributed.is_leader():  # after the data: a crash in between means augment again
            fingerprint.write(stored, augment_fingerprint)
        distributed.barrier("augmented data written")
    return kind_of(task).read_augmented(out_dir)


def check_stage(directory: Path, stage_fingerprint: dict, what: str) -> None:
    """Refuses a stage directory holding (part of) a run made from other inputs, naming the first difference."""
    if not directory.exists():
        return
    difference = fingerprint.difference_from_stored(directory / "fingerprint.json", stage_fingerprint)
    if difference is not None:
        raise InputError(f"{directory} holds {what} made from other inputs ({difference}); use another --workdir, "
                         f"the same settings, or delete {directory} to train it again")


def plan_stage1(run: TaskRun) -> tuple[DistillSpec, dict, engine.Job]:
    """Stage 1's terms, trimmed teacher and job (its step count follows from the training set), checked before
    augmentation: terms the models cannot take, a mesh or batch the devices cannot, another run's checkpoints."""
    config = run.config
    initial = {"student": classifier.encoder_params(run.student_params, run.student_cfg),
               **({"projection": run.projection} if run.projection is not None else {})}
    spec = distill_spec(config, run.teacher_cfg, run.student_cfg, run.seq_len, logit_terms=False)
    spec, trimmed = with_trimmed_teacher(spec, run.teacher_params, config.dtype)
    logging.info("stage 1 terms (student <- teacher): %s", describe(spec))
    directory = run.workdir / "stage1"
    job = engine.job_for(config, f"{run.task.name} stage 1 (intermediate layers)", directory, 0,
                         config.stage1.batch_size, config.stage1.optimizer, run_meta(spec, run.seq_len),
                         initial=initial, section="stage1")
    if distributed.is_leader():  # before anything is written there, so a half-done stage is recognised too
        fingerprint.write(directory / "fingerprint.json", run.prints["stage1"])
    engine.check_before_preparing(config, job)
    return spec, trimmed, job


def stage1(config, spec: DistillSpec, trimmed: dict, job: engine.Job, train: Arrays) -> LoopRecord:
    """Intermediate-layer distillation; saves the student to WORKDIR/stage1/student."""
    stage = config.stage1
    buckets = bucket_lengths(config.data.buckets, train["input_ids"].shape[1])
    length = classifier.length_on(stage, "stage1", train, buckets)
    logging.info("%s: %d steps: %s", job.desc, length.num_steps, length.reason)
    job.num_steps = length.num_steps
    result = engine.train(config, job, lambda rng: init_trainable(spec, rng),
                          lambda tx, schedule: make_distill_step(spec, tx, schedule),
                          lambda rows: train_iterator(train, stage.batch_size, config.seed, rows, buckets),
                          frozen=engine.Frozen(trimmed, abstract_params(spec.teacher)),
                          batch_shapes=batch_shapes(train, stage.batch_size, buckets))
    params = sharding.host_copy(result.state.params["student"])
    if distributed.is_leader():
        convert.save_flax_dir(spec.student, params, job.directory / "student", overwrite=True)
    distributed.barrier("stage 1 saved")
    return result.record


def teacher_logits(teacher_cfg, teacher_params, permutation, train: Arrays, batch_size: int,
                   logits_fingerprint: dict, workdir: Path, buckets=None) -> np.ndarray:
    """The teacher's logits for every training example, computed once and cached for all stage-2 epochs (again
    when the cache's fingerprint differs: logits of another data set would silently misalign the targets)."""
    cache = workdir / "stage2" / "teacher_logits.npy"
    stored = cache.with_suffix(".json")

    def compute_once() -> None:
        if fingerprint.reusable(cache, stored, logits_fingerprint):
            return
        logits = predict(teacher_cfg, teacher_params, train, batch_size, permutation, buckets)
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
