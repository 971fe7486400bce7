"""Dev-set evaluation: batched predictions, each dev set's metric, and keeping the best-on-dev parameters."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
from absl import logging

from tinybert_jax import convert, distributed, sharding
from tinybert_jax.models.bert import BertConfig
from tinybert_jax.task.arrays import Arrays, DevSet, count, eval_batches
from tinybert_jax.task.spec import Task
from tinybert_jax.task.steps import classifier_logits

INPUTS = ("input_ids", "token_type_ids", "attention_mask")


@functools.lru_cache(maxsize=8)
def jitted_logits(cfg: BertConfig):
    """One jitted forward per model config: a run evaluates every `eval.every_steps` steps, and a fresh jit each
    time would trace, lower and compile the forward again at every evaluation."""
    return jax.jit(classifier_logits(cfg))


def predict(cfg: BertConfig, params: Any, arrays: Arrays, batch_size: int,
            permutation: Optional[np.ndarray] = None, buckets: Optional[tuple[int, ...]] = None) -> np.ndarray:
    """float32 logits [N, num_labels] ([N, T, num_labels] for token and span heads, zero past each batch's
    bucket length), the labels in the task's canonical order when `permutation` is given. With `buckets`, each
    batch runs at its bucket's length (one compiled shape per bucket)."""
    logits_fn = jitted_logits(cfg)
    inputs = {name: arrays[name] for name in INPUTS}
    logits = None
    for batch, real in eval_batches(inputs, batch_size, buckets):
        values = sharding.host_copy(logits_fn(params, batch))[:len(real)]
        if logits is None:
            per_token = values.ndim == 3
            logits = np.zeros((count(inputs),) + ((arrays["input_ids"].shape[1],) if per_token else ()) +
                              values.shape[-1:], np.float32)
        logits[(real, slice(0, values.shape[1])) if logits.ndim == 3 else real] = values
    return logits if permutation is None else logits[..., permutation]


def evaluate(cfg: BertConfig, params: Any, dev_sets: dict[str, DevSet], batch_size: int,
             permutation: Optional[np.ndarray] = None) -> dict[str, dict[str, float]]:
    """{dev split: {metric: value}} for every dev split of the task."""
    return {split: dev.metrics(predict(cfg, params, dev.arrays, batch_size, permutation, dev.buckets))
            for split, dev in dev_sets.items()}


def main_score(task: Task, scores: dict[str, dict[str, float]]) -> float:
    """The model-selection score: the task's main metric on its first dev split (MNLI: matched)."""
    return scores[task.dev_splits[0]][task.main_metric]


class BestOnDev:
    """Evaluates during training and keeps the parameters that score best on dev (a Flax checkpoint dir), with a
    best.json beside them and the dev curve (curve.json: the score at every evaluation); a resumed run continues
    from the recorded best score. With `patience_steps` > 0 the run has plateaued once that many steps have passed
    since the best evaluation (early stopping)."""

    def __init__(self, task: Task, cfg: BertConfig, dev_sets: dict[str, DevSet], batch_size: int,
                 directory: Path, params_key: str = "model", patience_steps: int = 0):
        self.task, self.cfg, self.dev_sets, self.batch_size = task, cfg, dev_sets, batch_size
        self.directory, self.params_key, self.patience_steps = Path(directory), params_key, patience_steps
        record, curve = self.directory / "best.json", self.directory / "curve.json"
        self.best = json.loads(record.read_text()) if record.is_file() else None
        self.curve = {int(step): score for step, score in json.loads(curve.read_text()).items()} \
            if curve.is_file() else {}

    def __call__(self, state: Any, step: int) -> dict[str, float]:
        params = state.params[self.params_key]
        scores = evaluate(self.cfg, params, self.dev_sets, self.batch_size)
        score = main_score(self.task, scores)
        self.curve[step] = score
        new_best = self.best is None or score > self.best["score"]  # the same decision on every process
        if new_best:
            self.best = {"step": step, "score": score, "scores": scores}
            host_params = sharding.host_copy(params)
            if distributed.is_leader():
                convert.save_flax_dir(self.cfg, host_params, self.directory / "params", overwrite=True)
            logging.info("step %d: new best %s %s = %.4f", step, self.task.dev_splits[0], self.task.main_metric, score)
        if distributed.is_leader():
            self.directory.mkdir(parents=True, exist_ok=True)
            if new_best:
                (self.directory / "best.json").write_text(json.dumps(self.best, indent=2) + "\n")
            (self.directory / "curve.json").write_text(json.dumps(self.curve, indent=1) + "\n")
        return {f"{split}/{name}": value for split, metrics in scores.items() for name, value in metrics.items()}

    def plateaued(self, step: int) -> bool:
        return self.patience_steps > 0 and self.best is not None and step - self.best["step"] >= self.patience_steps

    def best_params(self) -> tuple[BertConfig, Any]:
        return convert.load_flax_dir(self.directory / "params")


def curve_rows(curve: dict[int, float], best_step: int, metric: str) -> list[tuple[str, str]]:
    """The dev curve as table rows, the best evaluation marked."""
    return [(f"  dev {metric} at step {step}", f"{score:.4f}" + ("  (best)" if step == best_step else ""))
            for step, score in sorted(curve.items())]
