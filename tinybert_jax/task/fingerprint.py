"""Fingerprints of what produced a cached task output (augmented data, teacher logits, a finished stage).

A cache is reused only when the fingerprint stored beside it equals the current run's: a workdir re-run with
another teacher, data set, augmentation setting or sequence length must not silently train on stale outputs.
A fingerprint is a flat {key: JSON value} dict, so a mismatch can name the first key that differs.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Optional

import jax
import numpy as np
from absl import logging

from tinybert_jax.data import conll, squad
from tinybert_jax.distill.matches import match_entries
from tinybert_jax.files import read_json


def digest_arrays(tree: Any) -> str:
    """sha256 (first 16 hex digits) over a pytree's paths, dtypes, shapes and bytes: identical weights or data,
    identical digest, whatever file format they came from."""
    sha = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(tree)[0], key=lambda item: str(item[0])):
        array = np.ascontiguousarray(np.asarray(leaf))
        sha.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()[:16]


def digest_texts(*columns: Optional[Iterable[str]]) -> str:
    sha = hashlib.sha256()
    for column in columns:
        sha.update(b"\x1e" if column is None else "\x1f".join(column).encode())
    return sha.hexdigest()[:16]


def digest_examples(examples) -> str:
    """Texts and labels of a split, whatever its task type."""
    if isinstance(examples, squad.SquadExamples):
        answers = ["\x1d".join(f"{text}\x1c{start}" for text, start in answer) for answer in examples.answers]
        return digest_texts(examples.ids, examples.questions, examples.contexts, answers)
    if isinstance(examples, conll.TaggedExamples):
        words = ["\x1c".join(sentence) for sentence in examples.words]
        return digest_texts(words) + digest_arrays(np.concatenate(examples.tags))
    return digest_texts(examples.text_a, examples.text_b) + digest_arrays(examples.labels)


def first_difference(saved: dict, current: dict) -> Optional[str]:
    """'key: saved vs current' for the first key whose values differ, or None when they are equal."""
    for key in sorted(set(saved) | set(current)):
        if saved.get(key, "(missing)") != current.get(key, "(missing)"):
            return f"{key}: {saved.get(key, '(missing)')} vs {current.get(key, '(missing)')}"
    return None


def difference_from_stored(path: Path, current: dict) -> Optional[str]:
    """None when the fingerprint file at `path` holds `current`, else what differs (a missing file: everything)."""
    if not path.is_file():
        return f"{path.name}: (missing) vs present"
    # A JSON round trip turns tuples into lists: compare in the form the file holds.
    return first_difference(read_json(path), json.loads(json.dumps(current)))


def reusable(output: Path, stored: Path, current: dict) -> bool:
    """Whether `output` exists and its fingerprint file `stored` holds `current`. An output made from other inputs
    gets a warning naming the first difference; the caller then makes it again (and writes `stored` after it)."""
    if not output.exists():
        return False
    difference = difference_from_stored(stored, current)
    if difference is not None:
        logging.warning("%s was made from other inputs (%s): making it again", output, difference)
    return difference is None


def write(path: Path, fingerprint: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def task_fingerprints(config, task, train, seq_len: int, teacher_params: Any, permutation,
                      student_params: Any, projection: Any) -> dict[str, dict]:
    """What each cached output of the task pipeline depends on (README, "Task-specific distillation": caches and
    fingerprints): the augmented data, stage 1 and the teacher's logits. `train` is the original training set."""
    data = {"task": task.name, "data.source": str(config.data.source),
            "data.tfds_data_dir": config.data.tfds_data_dir, "train.examples": len(train),
            "train.digest": digest_examples(train)}
    augmented = {**data, "seed": config.seed, "augment.enabled": config.augment.enabled}
    if config.augment.enabled:
        augmented.update({f"augment.{key}": config.augment[key]
                          for key in ("mlm_path", "glove_path", "k", "p_t", "n_a", "max_seq_len")})
        if config.augment.glove_path:
            augmented["augment.glove_bytes"] = Path(config.augment.glove_path).stat().st_size
    teacher = {"teacher.path": str(config.teacher.path), "teacher.weights": digest_arrays(teacher_params),
               "teacher.label_permutation": None if permutation is None else permutation.tolist(),
               "data.seq_len": seq_len}
    if task.head == "span":  # how contexts are cut into windows
        teacher.update({"data.doc_stride": config.data.doc_stride, "data.max_query_len": config.data.max_query_len})
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


def flat(prefix: str, settings: dict) -> dict:
    """{'prefix.key.subkey': value} of a nested settings dict (one fingerprint key per setting, so a difference
    names the setting)."""
    items = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            items.update(flat(f"{prefix}.{key}", value))
        else:
            items[f"{prefix}.{key}"] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
    return items
