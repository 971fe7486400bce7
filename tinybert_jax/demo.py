"""The `demo` pipeline: everything offline. Pre-train a small teacher by masked-LM on the embedded corpus
(WORKDIR/teacher), then distil it into a smaller student exactly as `general` does (WORKDIR)."""
from __future__ import annotations

from pathlib import Path

import ml_collections
from absl import logging

from tinybert_jax.distill import general
from tinybert_jax.pretrain import pretrain_teacher


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
