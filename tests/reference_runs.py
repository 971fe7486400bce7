"""The first 20 steps of every pipeline on tiny fixtures, run in process: the behaviour a refactoring of the engine
must keep. `tests/reference_losses.json` holds what the code gave when it was recorded; test_reference_runs.py
checks that the current code still gives it.

Record again (only when a change of behaviour is intended, and say so in the commit):
    .venv/bin/python tests/reference_runs.py
"""
from __future__ import annotations

import importlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = Path(__file__).resolve().parent / "reference_losses.json"
STEPS = 20
TINY_STUDENT = {"student.preset": "", "student.hidden_size": 16, "student.num_hidden_layers": 2,
                "student.num_attention_heads": 4, "student.intermediate_size": 24}
SAME_WIDTH = {**TINY_STUDENT, "student.hidden_size": 32, "student.intermediate_size": 37}


def _config(name: str, overrides: dict):
    from helpers import override

    config = importlib.import_module(f"configs.{name}").get_config()
    for dotted, value in overrides.items():
        override(config, dotted, value)
    return config


def _run(name: str, workdir: Path, overrides: dict) -> None:
    from tinybert_jax.main import PIPELINES

    config = _config(name, overrides)
    importlib.import_module(PIPELINES[config.pipeline]).run(config, str(workdir))


def _losses(metrics_file: Path, names: tuple[str, ...]) -> dict[str, list[float]]:
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    rows = [row for row in rows if "loss" in row]  # dev-evaluation rows carry no loss
    return {name: [row[name] for row in rows[:STEPS]] for name in names}


def reference_losses(root: Path) -> dict[str, dict[str, list[float]]]:
    """{run: {metric: the values of steps 1..20}} of every pipeline, written under `root`."""
    from helpers import save_model, write_corpus, write_sst2, write_teacher

    teacher, corpus = write_teacher(root / "teacher"), write_corpus(root / "corpus.txt")
    general = {"teacher.path": str(teacher), "data.source": str(corpus), "data.prepared_dir": str(root / "prepared"),
               "data.seq_len": 32, "train.batch_size": 8, "train.num_steps": STEPS, "log.every_steps": 1,
               "checkpoint.every_steps": 1000, "optimizer.learning_rate": 3e-3}
    runs = {
        "general_tinybert": ("general", {**general, **TINY_STUDENT}, ("loss", "embedding", "attention", "hidden")),
        "general_distilbert": ("distilbert", {**general, **SAME_WIDTH, "student.init": "random"},
                               ("loss", "ce", "mlm", "cos")),
        "general_minilm_v2": ("minilm", {**general, **TINY_STUDENT, "student.num_attention_heads": 2,
                                         "loss.relation_heads": 4}, ("loss", "relations")),
    }
    results = {}
    for run, (name, overrides, names) in runs.items():
        _run(name, root / run, overrides)
        results[run] = _losses(root / run / "metrics.jsonl", names)

    data = write_sst2(root / "SST-2")
    pretrained = save_model(root / "pretrained", "BertForMaskedLM")
    # fixed padding, as these losses were recorded with (length buckets change which examples share a batch)
    task = {"data.source": str(data), "log.every_steps": 1, "eval.every_steps": 1000, "data.buckets": ""}
    _run("finetune", root / "finetune", {**task, "teacher.path": str(pretrained), "train.batch_size": 16,
                                         "train.num_steps": STEPS, "optimizer.learning_rate": 1e-3})
    results["finetune"] = _losses(root / "finetune" / "metrics.jsonl", ("loss",))
    student = save_model(root / "student", "BertModel", hidden_size=16, intermediate_size=24)
    _run("task", root / "task", {**task, "teacher.path": str(root / "finetune" / "export"),
                                 "teacher.check_score": False, "student.init": str(student),
                                 "augment.enabled": False, "stage1.batch_size": 16, "stage1.num_steps": STEPS,
                                 "stage1.optimizer.learning_rate": 1e-3, "stage2.batch_size": 16,
                                 "stage2.num_steps": STEPS, "stage2.optimizer.learning_rate": 2e-3})
    results["task_stage1"] = _losses(root / "task" / "stage1" / "metrics.jsonl",
                                     ("loss", "embedding", "attention", "hidden"))
    results["task_stage2"] = _losses(root / "task" / "stage2" / "metrics.jsonl", ("loss",))
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from tinybert_jax.threefry import lower_threefry_unrolled_on_cpu

    # Before anything is compiled, as under pytest (conftest) and the entry point: dropout masks on CPU as one fused
    # kernel, bit-identical to JAX's own lowering (tinybert_jax/threefry.py).
    lower_threefry_unrolled_on_cpu()
    import conftest  # noqa: F401  the tests' environment (XLA flags, compilation cache), as under pytest

    with tempfile.TemporaryDirectory() as tmp:
        RECORD.write_text(json.dumps(reference_losses(Path(tmp)), indent=1) + "\n")
    print(f"recorded {RECORD}")
