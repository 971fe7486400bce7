"""Measuring: repeated timings (median, min, max), a matrix-multiply ceiling, and model FLOP counts."""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp

from tinybert_jax.models.bert import BertConfig


@dataclasses.dataclass
class Timing:
    """Seconds per call over `reps` timed calls (warm-up calls excluded)."""

    median: float
    min: float
    max: float
    reps: int

    def rate(self, per_call: float) -> dict[str, float]:
        """`per_call` units per second: median, and the range implied by the fastest/slowest call."""
        return {"median": per_call / self.median, "min": per_call / self.max, "max": per_call / self.min}


def time_calls(fn: Callable[[], object], reps: int, warmup: int = 1) -> Timing:
    """Times `fn` (which must block until its work is done) `reps` times after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return Timing(statistics.median(seconds), min(seconds), max(seconds), reps)


def matmul_ceiling(shapes: tuple[tuple[int, int, int], ...], reps: int = 5) -> dict[str, float]:
    """Best float32 matmul FLOP/s over `shapes` (m, k, n): what this machine's XLA reaches on dense GEMMs."""
    best = 0.0
    for m, k, n in shapes:
        a = jnp.ones((m, k), jnp.float32)
        b = jnp.ones((k, n), jnp.float32)
        matmul = jax.jit(lambda a, b: a @ b)
        timing = time_calls(lambda: matmul(a, b).block_until_ready(), reps=reps, warmup=2)
        best = max(best, 2 * m * k * n / timing.median)
    return {"flops_per_s": best, "shapes": [list(s) for s in shapes]}


def encoder_flops(cfg: BertConfig, seq_len: int, layers: int | None = None) -> float:
    """Forward matmul FLOPs of `layers` encoder layers (default all) for one sequence: 2 * m * k * n per matmul.

    Per layer: Q, K, V and output projections (4 * T * H^2), scores and context (2 * T^2 * H), FFN (2 * T * H * I),
    each multiplied by 2 for multiply-add. Embedding lookups, LayerNorm, softmax and GELU are not counted.
    """
    t, h, i = seq_len, cfg.hidden_size, cfg.intermediate_size
    per_layer = 2 * (4 * t * h * h + 2 * t * t * h + 2 * t * h * i)
    return float(per_layer * (cfg.num_hidden_layers if layers is None else layers))
