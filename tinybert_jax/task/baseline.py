"""The task report's comparison with not distilling (`baseline.finetune=True`): the student's own initialisation
fine-tuned directly on the gold labels of the original training set, over a small learning-rate x epochs sweep,
each run keeping its best-on-dev score, so that distillation is compared with a baseline given a fair chance
(README, "Compared with fine-tuning the student directly")."""
from __future__ import annotations

import itertools
from pathlib import Path

import ml_collections

from tinybert_jax.data import custom
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import BertConfig
from tinybert_jax.task import classifier
from tinybert_jax.task.arrays import Arrays, DevSet
from tinybert_jax.task.evaluate import main_score


def sweep(config: ml_collections.ConfigDict) -> list[tuple[float, float]]:
    """(learning rate, epochs) of every run: baseline.learning_rates x baseline.num_epochs (lists, or strings with
    ',' between the values)."""
    try:
        rates = [float(value) for value in custom.names(config.baseline.learning_rates)]
        epochs = [float(value) for value in custom.names(config.baseline.num_epochs)]
    except ValueError:
        rates, epochs = [], []
    if not rates or not epochs or min(rates + epochs) <= 0:
        raise InputError(f"baseline.learning_rates={config.baseline.learning_rates!r}, baseline.num_epochs="
                         f"{config.baseline.num_epochs!r}: give positive numbers, e.g. 1e-4,3e-4,1e-3 and 20")
    return list(itertools.product(rates, epochs))


def setting_name(rate: float, epochs: float) -> str:
    return f"lr {rate:g}, {epochs:g} epochs"


def finetune_baseline(config: ml_collections.ConfigDict, task, student_cfg: BertConfig, student_params: dict,
                      train: Arrays, dev_sets: dict[str, DevSet], directory: Path) -> dict[str, dict]:
    """{setting name: {"score", "best_step", "scores"}} of each run of the sweep, in directory/lr_R_epochs_E
    (resumable as any run of the engine; a finished run is read back). `train` holds the gold labels."""
    cfg = classifier.classifier_config(student_cfg, task)
    init = classifier.encoder_params(student_params, cfg)
    results = {}
    for rate, epochs in sweep(config):
        stage = ml_collections.ConfigDict(dict(batch_size=config.baseline.batch_size, num_epochs=epochs, num_steps=0,
                                               min_steps=0))
        optimizer = config.baseline.optimizer.copy_and_resolve_references()
        optimizer.learning_rate = rate
        best, _ = classifier.train_classifier(config, "baseline", optimizer, cfg, task, train, dev_sets, init,
                                              directory / f"lr_{rate:g}_epochs_{epochs:g}",
                                              desc=f"{task.name} baseline: fine-tune the student, "
                                                   f"{setting_name(rate, epochs)}", stage=stage)
        results[setting_name(rate, epochs)] = {"score": main_score(task, best.best["scores"]),
                                               "best_step": best.best["step"], "scores": best.best["scores"]}
    return results
