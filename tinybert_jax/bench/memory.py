"""Peak host memory (RSS) of the distillation step: ours and the PyTorch reference, each in a process of its own.

A process's peak RSS cannot be split between two frameworks sharing it, so each side builds its step (random-init
weights: no copies of loaded checkpoints) and runs a few steps alone:
    python -m tinybert_jax.bench.memory {jax,pytorch} TEACHER_JSON STUDENT_JSON BATCH SEQ_LEN STEPS TEACHER_DTYPE
prints one JSON line. `peak_rss_bytes` is the whole process (interpreter, libraries, weights, optimizer state,
compilation, activations); `rss_after_imports_bytes` is what the process held before building anything.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys

from tinybert_jax.bench import cpu_isa
from tinybert_jax.models.bert import BertConfig
from tinybert_jax.threefry import lower_threefry_unrolled_on_cpu

SIDES = ("jax", "pytorch")


def _status_bytes(field: str) -> int:
    """A /proc/self/status memory field (VmRSS: now, VmHWM: peak of this program). Not getrusage's ru_maxrss:
    that keeps the high-water mark of the forked parent across exec, so every child would report the
    benchmark process's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    raise RuntimeError(f"/proc/self/status has no {field} line")


def step_peak_rss(side: str, teacher: BertConfig, student: BertConfig, batch: int, seq_len: int,
                  teacher_dtype: str = "float32", steps: int = 3) -> dict:
    """{peak_rss_bytes, rss_after_imports_bytes} of a fresh process that runs `steps` steps of `side` (the
    PyTorch reference's teacher is always float32)."""
    command = [sys.executable, "-m", "tinybert_jax.bench.memory", side, json.dumps(dataclasses.asdict(teacher)),
               json.dumps(dataclasses.asdict(student)), str(batch), str(seq_len), str(steps), teacher_dtype]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"the {side} memory measurement failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _run_jax(teacher: BertConfig, student: BertConfig, batch: int, seq_len: int, steps: int,
             teacher_dtype: str) -> None:
    import jax

    from tinybert_jax import sharding
    from tinybert_jax.bench.step import build_step, random_batch

    step, state, teacher_params, _, mesh = build_step(teacher, student, teacher_dtype)
    device_batch = sharding.global_batch(random_batch(teacher.vocab_size, batch, seq_len), mesh)
    for _ in range(steps):
        state, metrics = step(state, teacher_params, device_batch)
        jax.block_until_ready(metrics)


def _run_pytorch(teacher: BertConfig, student: BertConfig, batch: int, seq_len: int, steps: int,
                 teacher_dtype: str) -> None:
    from tinybert_jax.bench.step import random_batch
    from tinybert_jax.bench.torch_step import build_torch_step
    from tinybert_jax.distill.layer_map import resolve_layer_map

    layer_map = resolve_layer_map("uniform", teacher.num_hidden_layers, student.num_hidden_layers)
    reference = build_torch_step(teacher.replace(pooler=False), student,
                                 layer_map, random_batch(teacher.vocab_size, batch, seq_len))
    for _ in range(steps):
        reference.step()


def main(argv: list[str]) -> None:
    side, teacher, student, batch, seq_len, steps, teacher_dtype = argv
    cpu_isa.restrict_jaxlib()  # a child of `bench --isa=avx2` measures the same code path
    # Before anything is compiled: the step's dropout masks on CPU as one fused kernel, as the training runs and the
    # step benchmark compile them (tinybert_jax/threefry.py).
    lower_threefry_unrolled_on_cpu()
    if side == "pytorch":  # imported before measuring, as jax is by this module's imports
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        for library in ("torch", "transformers"):
            importlib.import_module(library)
    after_imports = _status_bytes("VmRSS")
    run = {"jax": _run_jax, "pytorch": _run_pytorch}[side]
    run(BertConfig(**json.loads(teacher)), BertConfig(**json.loads(student)), int(batch), int(seq_len), int(steps),
        teacher_dtype)
    print(json.dumps({"peak_rss_bytes": _status_bytes("VmHWM"), "rss_after_imports_bytes": after_imports}))


if __name__ == "__main__":
    main(sys.argv[1:])
