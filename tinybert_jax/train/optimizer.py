"""Optimizers and learning-rate schedules from config (`optimizer.*`).

`adamw`: optax AdamW with global-norm clipping. `bert_adam`: the original BERT/TinyBERT optimiser: per-tensor
gradient clipping, Adam *without* bias correction, decoupled weight decay, both excluding biases and LayerNorm.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from tinybert_jax.errors import InputError

NAMES = ("adamw", "bert_adam")
SCHEDULES = ("linear", "constant", "cosine")
# Weight decay applies to matrices and embedding tables only: not to biases or LayerNorm scales (BERT's rule).
_DECAYED_LEAVES = ("kernel", "embedding")
# The models stack every per-layer parameter on a leading axis under this key (tinybert_jax/models/bert.py).
_STACKED_LAYERS_KEY = "layers"


class OptimizerSettings(Protocol):
    """What the optimizer is made from: a config's `optimizer` section, or any object with these attributes (the
    benchmarks pass a SimpleNamespace: they run on hosts without ml_collections)."""
    name: str
    learning_rate: float
    schedule: str
    warmup_ratio: float
    b1: float
    b2: float
    eps: float
    weight_decay: float
    clip_norm: float


def decay_mask(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) in _DECAYED_LEAVES,
                                            params)


def learning_rate_schedule(cfg: OptimizerSettings, total_steps: int) -> optax.Schedule:
    if cfg.schedule not in SCHEDULES:
        raise InputError(f"optimizer.schedule={cfg.schedule!r}; use one of {SCHEDULES}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise InputError(f"optimizer.warmup_ratio={cfg.warmup_ratio}; use a fraction in [0, 1)")
    warmup = int(round(cfg.warmup_ratio * total_steps))
    decay_steps = max(total_steps - warmup, 1)
    after = {"constant": optax.constant_schedule(cfg.learning_rate),
             "linear": optax.linear_schedule(cfg.learning_rate, 0.0, decay_steps),
             "cosine": optax.cosine_decay_schedule(cfg.learning_rate, decay_steps)}[cfg.schedule]
    if not warmup:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warmup), after], [warmup])


class _AdamNoBiasCorrectionState(NamedTuple):
    mu: Any
    nu: Any


def scale_by_adam_without_bias_correction(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """BertAdam's moment estimate: mu / (sqrt(nu) + eps) with no 1 / (1 - b^t) correction."""

    def init(params):
        zeros = lambda p: jnp.zeros_like(p, dtype=jnp.float32)
        return _AdamNoBiasCorrectionState(jax.tree.map(zeros, params), jax.tree.map(zeros, params))

    def update(grads, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, grads)
        updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return updates, _AdamNoBiasCorrectionState(mu, nu)

    return optax.GradientTransformation(init, update)


def _is_stacked_layers(path) -> bool:
    return any(getattr(key, "key", None) == _STACKED_LAYERS_KEY for key in path)


def _clip_tensor(grad: jax.Array, max_norm: float, stacked: bool) -> jax.Array:
    # A stacked leaf [L, ...] holds L of the original model's tensors: each layer slice gets its own norm.
    axes = tuple(range(1, grad.ndim)) if stacked else None
    norm = jnp.sqrt(jnp.sum(jnp.square(grad), axis=axes, keepdims=stacked))
    return grad * jnp.minimum(1.0, max_norm / (norm + 1e-6))


def clip_each_tensor_by_norm(max_norm: float) -> optax.GradientTransformation:
    """Clips every gradient tensor to L2 norm <= max_norm on its own (torch's clip_grad_norm_ per parameter).

    Per-layer parameters are stacked under the 'layers' key ([L, ...] per leaf), so such a leaf is clipped one
    layer slice at a time, as BertAdam clips each layer's tensor in the original BERT/TinyBERT code.
    """

    def update(grads, state, params=None):
        del params
        clip = lambda path, g: _clip_tensor(g, max_norm, _is_stacked_layers(path))
        return jax.tree_util.tree_map_with_path(clip, grads), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg: OptimizerSettings, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                     Callable[[Any], Any]]:
    """(optax transformation, learning-rate schedule) for `optimizer.*`."""
    schedule = learning_rate_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm > 0 else optax.identity(),
                         optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                     mask=decay_mask))
    elif cfg.name == "bert_adam":
        tx = optax.chain(clip_each_tensor_by_norm(cfg.clip_norm) if cfg.clip_norm > 0 else optax.identity(),
                         scale_by_adam_without_bias_correction(cfg.b1, cfg.b2, cfg.eps),
                         optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
                         optax.scale_by_learning_rate(schedule))
    else:
        raise InputError(f"optimizer.name={cfg.name!r}; use one of {NAMES}")
    return tx, schedule
