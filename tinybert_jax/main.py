"""Entry point: `python -m tinybert_jax.main --config=configs/NAME.py --workdir=DIR [--config.key=value ...]`.

Thin on purpose: parse flags, pick the pipeline named by `config.pipeline`, hand over.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from tinybert_jax.errors import InputError

# pipeline name -> module whose run(config, workdir) carries it out; imported lazily to keep start-up light.
PIPELINES = {
    "init_student": "tinybert_jax.init_student",
    "general": "tinybert_jax.distill.general",
    "demo": "tinybert_jax.demo",
    "finetune": "tinybert_jax.task.finetune",
    "task": "tinybert_jax.task.pipeline",
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and exports")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag or a mistyped config key is one line on stderr instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # config overrides raise AttributeError/KeyError/ValueError, absl its own flags.Error
        detail = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split())
        if len(detail) > 1 and detail[0] == detail[-1] and detail[0] in "'\"":  # KeyError messages come quoted
            detail = detail[1:-1]
        sys.exit(f"error: bad command line: {detail} (config keys are those of the --config file)")


def _only_our_info(record) -> bool:
    """Libraries (Orbax, JAX) log a great deal at INFO; keep their warnings and our own progress messages."""
    return record.levelno >= logging.WARNING or f"{os.sep}tinybert_jax{os.sep}" in record.pathname


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.get_absl_handler().addFilter(_only_our_info)
    config = _CONFIG.value
    module_name = PIPELINES.get(config.get("pipeline"))
    if module_name is None:
        config_file = config_flags.get_config_filename(flags.FLAGS["config"])
        sys.exit(f"error: {config_file}: pipeline {config.get('pipeline')!r} is unknown; "
                 f"use one of {sorted(PIPELINES)}")
    try:
        importlib.import_module(module_name).run(config, _WORKDIR.value)
    except InputError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
