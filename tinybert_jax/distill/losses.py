"""Distillation losses as pure functions (REFERENCE.md section 1).

Two modes:
- `tinybert`: the original code's semantics. Scores <= -100 (masked keys) are zeroed in both tensors, then the
  mean over every element, padded rows and columns included; hidden MSE over every element, no mask.
- `masked`: the error is averaged over valid (query, key) pairs / valid tokens only. Masked entries are zeroed
  *before* squaring, so gradients stay finite whatever the mask value.
All losses compute in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

MODES = ("tinybert", "masked")
# The original zeroes every score at or below this, i.e. the -10000 additive mask.
MASKED_SCORE_THRESHOLD = -100.0


def attention_mse(student_scores: jax.Array, teacher_scores: jax.Array, attention_mask: jax.Array,
                  mode: str) -> jax.Array:
    """MSE between [B, heads, T, T] pre-softmax scores of one (student, teacher) layer pair."""
    s = student_scores.astype(jnp.float32)
    t = teacher_scores.astype(jnp.float32)
    if mode == "tinybert":
        s = jnp.where(s <= MASKED_SCORE_THRESHOLD, 0.0, s)
        t = jnp.where(t <= MASKED_SCORE_THRESHOLD, 0.0, t)
        return jnp.mean(jnp.square(s - t))
    valid = attention_mask.astype(bool)
    pairs = valid[:, None, :, None] & valid[:, None, None, :]
    # Zero both sides first: with a -inf mask, s - t itself would be nan at masked entries.
    diff = jnp.where(pairs, s, 0.0) - jnp.where(pairs, t, 0.0)
    count = jnp.sum(pairs) * s.shape[1]
    return jnp.sum(jnp.square(diff)) / jnp.maximum(count, 1)


def hidden_mse(student_hidden: jax.Array, teacher_hidden: jax.Array, attention_mask: jax.Array,
               mode: str) -> jax.Array:
    """MSE between [B, T, H] hidden states (the student's already projected to the teacher's width)."""
    diff = student_hidden.astype(jnp.float32) - teacher_hidden.astype(jnp.float32)
    if mode == "tinybert":
        return jnp.mean(jnp.square(diff))
    valid = attention_mask.astype(bool)[..., None]
    count = jnp.sum(valid) * diff.shape[-1]
    return jnp.sum(jnp.square(jnp.where(valid, diff, 0.0))) / jnp.maximum(count, 1)


def soft_cross_entropy(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float,
                       attention_mask: jax.Array | None = None, mode: str = "tinybert") -> jax.Array:
    """mean(-softmax(z_T / t) * log_softmax(z_S / t)), the mean over every element (batch, [positions,] classes).

    No t^2 factor, as in the original. For token-level logits [B, T, C] in `masked` mode, only valid positions count.
    """
    target = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    log_probs = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    elementwise = -target * log_probs
    if mode == "tinybert" or attention_mask is None or student_logits.ndim == 2:
        return jnp.mean(elementwise)
    valid = attention_mask.astype(bool)[..., None]
    count = jnp.sum(valid) * elementwise.shape[-1]
    return jnp.sum(jnp.where(valid, elementwise, 0.0)) / jnp.maximum(count, 1)
