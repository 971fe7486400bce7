"""What each cached output of the task pipeline depends on (README, "Task-specific distillation": caches and
fingerprints), as fingerprints (task/fingerprint.py): the augmented data, stage 1, the teacher's logits, stage 2
and the direct fine-tuning baseline."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections

from tinybert_jax.distill.matches import match_entries
from tinybert_jax.task.fingerprint import digest_arrays, flat
from tinybert_jax.task.kinds import kind_of
from tinybert_jax.task.spec import Task


def task_fingerprints(config: ml_collections.ConfigDict, task: Task, train, seq_len: int, teacher_params: Any,
                      permutation, student_params: Any, projection: Any) -> dict[str, dict]:
    """{output: its fingerprint} for the augmented data, stage 1, the teacher's logits, stage 2 and the
    baseline. `train` is the original training set."""
    kind = kind_of(task)
    data = {"task": task.name, "data.source": str(config.data.source),
            "data.tfds_data_dir": config.data.tfds_data_dir, "train.examples": len(train),
            "train.digest": kind.digest(train)}
    augmented = {**data, "seed": config.seed, "augment.enabled": config.augment.enabled}
    if config.augment.enabled:
        augmented.update({f"augment.{key}": config.augment[key]
                          for key in ("mlm_path", "glove_path", "k", "p_t", "n_a", "max_seq_len")})
        if config.augment.glove_path:
            augmented["augment.glove_bytes"] = Path(config.augment.glove_path).stat().st_size
    teacher = {"teacher.path": str(config.teacher.path), "teacher.weights": digest_arrays(teacher_params),
               "teacher.label_permutation": None if permutation is None else permutation.tolist(),
               "data.seq_len": seq_len}
    teacher.update({f"data.{key}": config.data[key] for key in kind.encoding_keys})
    stage1 = {**augmented, **teacher, "student.init": str(config.student.init),
              "student.weights": digest_arrays(student_params),
              "projection.weights": None if projection is None else digest_arrays(projection),
              "dtype": config.dtype, "layer_map": str(config.layer_map), "loss.preset": config.loss.preset,
              "loss.mode": config.loss.mode, "loss.matches": "; ".join(match_entries(config.loss.matches))}
    if str(config.data.buckets).strip() not in ("", "0"):  # absent for fixed padding: older stage-1 runs resume
        stage1["data.buckets"] = str(config.data.buckets)
    # stage 2 (and the export and report made from it): every stage2.* setting, what picks the best-on-dev step,
    # the seeds and the batches' shapes, on top of stage 1's inputs
    stage2 = {**stage1, **flat("stage2", config.stage2.to_dict()), **flat("eval", config.eval.to_dict()),
              "seeds": str(config.seeds), "data.buckets": str(config.data.buckets)}
    # the direct fine-tuning baseline: the student and the original data, its own settings
    baseline = {**data, "seed": config.seed, "data.seq_len": seq_len, "student.init": str(config.student.init),
                "student.weights": digest_arrays(student_params), "dtype": config.dtype,
                **flat("baseline", config.baseline.to_dict()), **flat("eval", config.eval.to_dict()),
                "data.buckets": str(config.data.buckets)}
    return {"augmented": augmented, "stage1": stage1, "teacher_logits": {**augmented, **teacher}, "stage2": stage2,
            "baseline": baseline}
