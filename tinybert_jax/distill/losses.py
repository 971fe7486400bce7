"""Distillation losses as pure functions (docs/losses.md).

Two modes:
- `tinybert`: the original code's semantics. Scores <= -100 (masked keys) are zeroed in both tensors, then the
  mean over every element, padded rows and columns included; hidden MSE over every element, no mask.
- `masked`: the error is averaged over valid (query, key) pairs / valid tokens only. Masked entries are zeroed
  *before* squaring, so gradients stay finite whatever the mask value.
All losses compute in float32.
"""
from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import optax

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


# ---- DistilBERT and MiniLM losses (docs/losses.md)
# Every average below is over valid positions only, with max(count, 1) denominators: a fully padded row, or a fully
# padded batch, contributes nothing and yields 0 with finite gradients. Padded inputs are replaced by finite values
# before any softmax/log/division, so -inf or garbage there cannot leak nan into the value or the gradients.

# Replaces masked keys before a softmax: exp(-1e9 - max) underflows to exactly 0 in float32, yet stays finite.
MASKED_KEY_VALUE = -1e9
# Guards the cosine denominator: cos = <s, t> / max(|s| |t|, COSINE_EPS).
COSINE_EPS = 1e-8


def _masked_mean(values: jax.Array, valid: jax.Array, per_item: int = 1) -> jax.Array:
    """sum(values where valid) / max(count(valid) * per_item, 1); `values` and `valid` have the same shape."""
    total = jnp.sum(jnp.where(valid, values, 0.0))
    return total / jnp.maximum(jnp.sum(valid) * per_item, 1)


def _kl_from_log_probs(teacher_log_probs: jax.Array, student_log_probs: jax.Array) -> jax.Array:
    """Elementwise p_t (log p_t - log p_s), 0 where p_t == 0 (so a -inf teacher logit contributes 0, not nan)."""
    p_t = jnp.exp(teacher_log_probs)
    positive = p_t > 0
    safe_t = jnp.where(positive, teacher_log_probs, 0.0)
    safe_s = jnp.where(positive, student_log_probs, 0.0)
    return jnp.where(positive, p_t * (safe_t - safe_s), 0.0)


def logits_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float,
              attention_mask: jax.Array) -> jax.Array:
    """DistilBERT's L_ce: T^2 * mean over valid positions of KL(softmax(t / T) || softmax(s / T)), logits [B, T, V].

    The KL at one position is sum_v p_t (log p_t - log p_s); padded positions (attention_mask == 0) are ignored.
    """
    valid = attention_mask.astype(bool)
    s = jnp.where(valid[..., None], student_logits.astype(jnp.float32), 0.0)
    t = jnp.where(valid[..., None], teacher_logits.astype(jnp.float32), 0.0)
    kl = jnp.sum(_kl_from_log_probs(jax.nn.log_softmax(t / temperature, axis=-1),
                                    jax.nn.log_softmax(s / temperature, axis=-1)), axis=-1)
    return _masked_mean(kl, valid) * (temperature ** 2)


def masked_lm_cross_entropy(logits: jax.Array, labels: jax.Array, label_mask: jax.Array) -> jax.Array:
    """Mean over label_mask positions of -log softmax(logits)[label]; logits [B, T, V], labels int [B, T].

    Labels at other positions are ignored (they may be anything, e.g. -100); 0 when no position is selected.
    """
    selected = label_mask.astype(bool)
    x = jnp.where(selected[..., None], logits.astype(jnp.float32), 0.0)
    safe_labels = jnp.where(selected, labels, 0).astype(jnp.int32)
    nll = optax.losses.softmax_cross_entropy_with_integer_labels(x, safe_labels)
    return _masked_mean(nll, selected)


def _safe_norm(x: jax.Array) -> jax.Array:
    """Euclidean norm over the last axis whose gradient is 0 (not nan) at the zero vector."""
    squared = jnp.sum(jnp.square(x), axis=-1)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def hidden_cosine(student_hidden: jax.Array, teacher_hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """DistilBERT's L_cos: mean over valid tokens of 1 - cos(h_s, h_t), both [B, T, H] of the same width.

    cos = <h_s, h_t> / max(|h_s| |h_t|, 1e-8), so a zero vector gives cos 0 (loss 1) rather than nan.
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(f"hidden_cosine needs equal shapes, got student {student_hidden.shape} and teacher "
                         f"{teacher_hidden.shape}")
    valid = attention_mask.astype(bool)
    s = jnp.where(valid[..., None], student_hidden.astype(jnp.float32), 0.0)
    t = jnp.where(valid[..., None], teacher_hidden.astype(jnp.float32), 0.0)
    cos = jnp.sum(s * t, axis=-1) / jnp.maximum(_safe_norm(s) * _safe_norm(t), COSINE_EPS)
    return _masked_mean(1.0 - cos, valid)


def attention_distribution_kl(student_scores: jax.Array, teacher_scores: jax.Array,
                              attention_mask: jax.Array) -> jax.Array:
    """MiniLM attention transfer: KL(softmax_keys(teacher) || softmax_keys(student)) on [B, heads, T, T] scores.

    Scores are pre-softmax (Q K^T / sqrt(d)), with or without an additive mask on padded keys: padded keys are set to
    -1e9 here whatever they held, so they get probability 0 and contribute nothing. The KL is summed over keys and
    averaged over heads and valid query positions of the whole batch. Student and teacher shapes must be equal.
    """
    if student_scores.shape != teacher_scores.shape or student_scores.ndim != 4:
        raise ValueError(f"attention_distribution_kl needs equal [B, heads, T, T] shapes, got student "
                         f"{student_scores.shape} and teacher {teacher_scores.shape}")
    valid = attention_mask.astype(bool)
    # Padded query rows are replaced too (uniform, finite); they are left out of the mean below.
    pairs = valid[:, None, :, None] & valid[:, None, None, :]
    s = jnp.where(pairs, student_scores.astype(jnp.float32), MASKED_KEY_VALUE)
    t = jnp.where(pairs, teacher_scores.astype(jnp.float32), MASKED_KEY_VALUE)
    elementwise = _kl_from_log_probs(jax.nn.log_softmax(t, axis=-1), jax.nn.log_softmax(s, axis=-1))
    kl = jnp.sum(jnp.where(pairs, elementwise, 0.0), axis=-1)  # [B, heads, T]
    query_valid = jnp.broadcast_to(valid[:, None, :], kl.shape)
    return _masked_mean(kl, query_valid)


def _relation_scores(x: jax.Array, num_relation_heads: int, valid: jax.Array, side: str) -> jax.Array:
    """[B, T, H] -> [B, A, T, T] scores X_a X_a^T / sqrt(d_r), the last axis split into A contiguous chunks."""
    if x.ndim != 3:
        raise ValueError(f"relation_kl needs [B, T, H] inputs, the {side} has shape {x.shape}")
    width = x.shape[-1]
    if width % num_relation_heads:
        raise ValueError(f"relation_kl: the {side} width {width} is not divisible by num_relation_heads="
                         f"{num_relation_heads}")
    head_dim = width // num_relation_heads
    x = jnp.where(valid[..., None], x.astype(jnp.float32), 0.0)
    heads = x.reshape(x.shape[0], x.shape[1], num_relation_heads, head_dim)
    return jnp.einsum("bqad,bkad->baqk", heads, heads) / jnp.sqrt(jnp.float32(head_dim))


def relation_kl(student_x: jax.Array, teacher_x: jax.Array, num_relation_heads: int,
                attention_mask: jax.Array) -> jax.Array:
    """MiniLMv2 self-attention relation KL (MiniLMv1's value relation when A = the attention head count).

    x is [B, T, H] (one layer's Q, K or V, all heads concatenated); widths may differ between student and teacher
    but each must be divisible by A = num_relation_heads (ValueError otherwise). Each side is split into A contiguous
    chunks of d_r = H / A, relation = softmax over valid keys of X_a X_a^T / sqrt(d_r), and the loss is
    KL(teacher relation || student relation) summed over keys, averaged over relation heads and valid queries.
    """
    try:
        heads = operator.index(num_relation_heads)
    except TypeError:
        heads = 0
    if heads < 1:
        raise ValueError(f"relation_kl: num_relation_heads must be a positive int, got {num_relation_heads!r}")
    num_relation_heads = heads
    if student_x.shape[:2] != teacher_x.shape[:2]:
        raise ValueError(f"relation_kl needs the same [B, T] on both sides, got student {student_x.shape} and "
                         f"teacher {teacher_x.shape}")
    valid = attention_mask.astype(bool)
    s = _relation_scores(student_x, num_relation_heads, valid, "student")
    t = _relation_scores(teacher_x, num_relation_heads, valid, "teacher")
    return attention_distribution_kl(s, t, attention_mask)
