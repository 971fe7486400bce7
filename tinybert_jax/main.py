"""Entry point: `python -m tinybert_jax.main --config=configs/NAME.py --workdir=DIR [--config.key=value ...]`.

Thin on purpose: parse flags, pick the pipeline named by `config.pipeline`, hand over.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from tinybert_jax import distributed, workdir
from tinybert_jax.errors import InputError
from tinybert_jax.threefry import lower_threefry_unrolled_on_cpu
from tinybert_jax.train.preemption import Preempted

# pipeline name -> module whose run(config, workdir) carries it out; imported lazily to keep start-up light.
PIPELINES = {name: f"tinybert_jax.pipelines.{name}"
             for name in ("init_student", "general", "demo", "finetune", "task", "predict")}

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and exports")
flags.mark_flags_as_required(["config", "workdir"])
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", distributed.MODES,
                                 "join JAX's distributed runtime: auto (explicit settings if a coordinator address "
                                 "is given, auto-detected on TPU VMs and SLURM), on, off")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (default: "
                                   "$JAX_COORDINATOR_ADDRESS)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", -1, "processes in the run (default: $JAX_NUM_PROCESSES)")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "this process's index (default: $JAX_PROCESS_ID)")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag or a mistyped config key is one line on stderr instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # config overrides raise AttributeError/KeyError/ValueError, absl its own flags.Error
        detail = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split())
        if "Traceback (most recent call last)" in detail:  # a config file's get_config raised: keep its message
            detail = re.split(r"\b\w+(?:Error|Exception): ", detail)[-1]
        if len(detail) > 1 and detail[0] == detail[-1] and detail[0] in "'\"":  # KeyError messages come quoted
            detail = detail[1:-1]
        sys.exit(f"error: bad command line: {detail} (config keys are those of the --config file)")


def _only_our_info(record) -> bool:
    """Libraries (Orbax, JAX) log a great deal at INFO; keep their warnings and our own progress messages."""
    return record.levelno >= logging.WARNING or f"{os.sep}tinybert_jax{os.sep}" in record.pathname


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Before anything is compiled: dropout masks (and random initialisation) on CPU as one fused kernel, bit-identical
    # to JAX's own lowering (tinybert_jax/threefry.py).
    lower_threefry_unrolled_on_cpu()
    absl_logging.get_absl_handler().addFilter(_only_our_info)
    config = _CONFIG.value
    module_name = PIPELINES.get(config.get("pipeline"))
    if module_name is None:
        config_file = config_flags.get_config_filename(flags.FLAGS["config"])
        sys.exit(f"error: {config_file}: pipeline {config.get('pipeline')!r} is unknown; "
                 f"use one of {sorted(PIPELINES)}")
    try:
        workdir_path = workdir.check_directory(_WORKDIR.value)
        distributed.initialize(distributed.settings_from_env(_DISTRIBUTED.value, _COORDINATOR.value,
                                                             _NUM_PROCESSES.value, _PROCESS_ID.value))
        with workdir.claimed(workdir_path):
            importlib.import_module(module_name).run(config, _WORKDIR.value)
    except InputError as e:
        sys.exit(f"error: {e}")
    except Preempted as e:
        # Exit 0: the scheduler's stop request was honoured and the same command resumes from the checkpoint.
        absl_logging.warning("%s", e)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
