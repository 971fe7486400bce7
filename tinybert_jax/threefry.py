"""Threefry-2x32, JAX's default PRNG hash, lowered on CPU as one fused elementwise kernel.

JAX lowers the hash on CPU as a loop over its five blocks of four rounds (short compile times). XLA:CPU cannot fuse
across loop iterations, so each dropout mask then costs five passes over memory plus copies of the loop state: the
student's masks took 45 ms of a 1.4 s distillation step (BERT-base -> TinyBERT4, batch 8 x 128, 2-core EPYC).
Written out, the 20 rounds fuse into one kernel that keeps the state in registers: 6 ms. The algorithm is the same
(Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), so every seeded result is bit-identical.

Importing this module (or the package) changes nothing: each process that compiles dropout or random
initialisation installs the lowering itself with `lower_threefry_unrolled_on_cpu()`, before it compiles anything
(code compiled earlier keeps JAX's loop). The entry points (tinybert_jax/main.py, tinybert_jax/bench/__main__.py,
bench/memory.py, bench/accelerator.py) and tests/conftest.py do.
"""
from __future__ import annotations

import numpy as np
from jax.extend.random import threefry2x32_p
from jax.interpreters import mlir

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))  # per round, alternating between blocks
_KEY_PARITY = np.uint32(0x1BD11BDA)  # the third key word is key1 ^ key2 ^ this


def _rotate_left(x, bits: int):
    return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def threefry2x32(key1, key2, count1, count2):
    """The 20-round hash of the counter pair (count1, count2) under the key (key1, key2); uint32 arrays that
    broadcast together. Returns the two output words."""
    keys = (key1, key2, key1 ^ key2 ^ _KEY_PARITY)
    x1, x2 = count1 + keys[0], count2 + keys[1]
    for block in range(5):
        for bits in _ROTATIONS[block % 2]:
            x1 = x1 + x2
            x2 = _rotate_left(x2, bits) ^ x1
        # key injection after every block of four rounds, with the block number
        x1 = x1 + keys[(block + 1) % 3]
        x2 = x2 + keys[(block + 2) % 3] + np.uint32(block + 1)
    return x1, x2


_installed = False


def lower_threefry_unrolled_on_cpu() -> None:
    """From now on, jitted code on CPU in this process computes the hash as `threefry2x32` above, unrolled.
    Idempotent: a second call (an entry point called in a process that already installed it) changes nothing."""
    global _installed
    if not _installed:
        mlir.register_lowering(threefry2x32_p, mlir.lower_fun(threefry2x32, multiple_results=True), platform="cpu")
        _installed = True
