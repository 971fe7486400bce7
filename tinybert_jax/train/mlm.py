"""Masked-LM training: dynamic BERT masking inside the step, cross-entropy on the masked positions.

Two maskings: `mask_tokens` (BERT: every candidate independently with mask_prob) and `mask_tokens_weighted`
(DistilBERT: exactly round(mask_prob * candidates) positions per batch, drawn without replacement with probability
proportional to a per-token weight, count^-0.7 from `smoothed_token_weights`, so rare tokens are masked more).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tinybert_jax.models.bert import Bert, BertConfig
from tinybert_jax.train.state import TrainState, apply_gradients


def mask_tokens(rng: jax.Array, input_ids: jax.Array, attention_mask: jax.Array, special_ids: tuple[int, ...],
                mask_id: int, vocab_size: int, mask_prob: float = 0.15) -> tuple[jax.Array, jax.Array]:
    """BERT's masking: each real non-special token is chosen with mask_prob; chosen tokens become [MASK] (80%),
    a random token (10%) or stay (10%). Returns (masked ids, bool [B, T] of chosen positions)."""
    choose_rng, action_rng, random_rng = jax.random.split(rng, 3)
    candidates = attention_mask.astype(bool)
    for special in special_ids:
        candidates &= input_ids != special
    chosen = jax.random.bernoulli(choose_rng, mask_prob, input_ids.shape) & candidates
    action = jax.random.uniform(action_rng, input_ids.shape)
    random_ids = jax.random.randint(random_rng, input_ids.shape, 0, vocab_size, dtype=input_ids.dtype)
    masked = jnp.where(chosen & (action < 0.8), mask_id, input_ids)
    masked = jnp.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
    return masked, chosen


def smoothed_token_weights(counts: np.ndarray, special_ids: Iterable[int], smoothing: float = 0.7) -> np.ndarray:
    """float32 [V] masking weights counts ** -smoothing (DistilBERT's rare-token smoothing); a token never seen
    counts as seen once, so every ordinary token keeps a finite positive weight; special ids get weight 0."""
    counts = np.asarray(counts)
    if counts.ndim != 1:
        raise ValueError(f"token counts must be one-dimensional [vocab_size], got shape {counts.shape}")
    weights = np.maximum(counts.astype(np.float64), 1.0) ** -float(smoothing)
    weights[np.asarray(list(special_ids), np.int64)] = 0.0
    return weights.astype(np.float32)


def mask_tokens_weighted(rng: jax.Array, input_ids: jax.Array, attention_mask: jax.Array, token_weights: jax.Array,
                         mask_id: int, vocab_size: int, mask_prob: float = 0.15) -> tuple[jax.Array, jax.Array]:
    """DistilBERT's masking: exactly n = round(mask_prob * candidates) positions of the whole batch (halves round
    up; at least 1 when there is a candidate), drawn without replacement with probability proportional to
    token_weights[input_id].

    Candidates are real tokens (attention_mask 1) of positive weight, so weight 0 (`smoothed_token_weights` gives
    it to special ids) excludes a token. The draw is the Gumbel-top-k trick: key = log(weight) + Gumbel noise, and
    the n largest keys are chosen; shapes are static, so it jits with n traced. Chosen tokens become [MASK] (80%),
    a random token (10%) or stay (10%). Returns (masked ids, bool [B, T] of chosen positions).
    """
    choose_rng, action_rng, random_rng = jax.random.split(rng, 3)
    weights = jnp.asarray(token_weights, jnp.float32)[input_ids]
    candidates = attention_mask.astype(bool) & (weights > 0)
    num_candidates = jnp.sum(candidates, dtype=jnp.int32)
    n = jnp.floor(mask_prob * num_candidates.astype(jnp.float32) + 0.5).astype(jnp.int32)  # halves round up
    n = jnp.where(num_candidates > 0, jnp.clip(n, 1, num_candidates), 0)
    gumbel = jax.random.gumbel(choose_rng, input_ids.shape, jnp.float32)
    keys = jnp.where(candidates, jnp.log(jnp.where(candidates, weights, 1.0)) + gumbel, -jnp.inf).reshape(-1)
    order = jnp.argsort(-keys, stable=True)  # largest key first; non-candidates (-inf) last
    rank = jnp.zeros(keys.shape, jnp.int32).at[order].set(jnp.arange(keys.size, dtype=jnp.int32))
    chosen = (rank < n).reshape(input_ids.shape) & candidates
    action = jax.random.uniform(action_rng, input_ids.shape)
    random_ids = jax.random.randint(random_rng, input_ids.shape, 0, vocab_size, dtype=input_ids.dtype)
    masked = jnp.where(chosen & (action < 0.8), mask_id, input_ids)
    masked = jnp.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
    return masked, chosen


def masked_lm_loss(logits: jax.Array, labels: jax.Array, chosen: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean cross-entropy over chosen positions, accuracy over chosen positions)."""
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    count = jnp.maximum(jnp.sum(chosen), 1)
    loss = jnp.sum(jnp.where(chosen, per_token, 0.0)) / count
    accuracy = jnp.sum(jnp.where(chosen, jnp.argmax(logits, -1) == labels, False)) / count
    return loss, accuracy


def make_mlm_step(cfg: BertConfig, tx: optax.GradientTransformation, schedule: Callable, special_ids: tuple,
                  mask_id: int, mask_prob: float) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """(state, batch) -> (state, metrics) for params {'model': BERT params with an MLM head}."""
    model = Bert(cfg)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng, mask_rng, dropout_rng = jax.random.split(state.rng, 3)
        masked, chosen = mask_tokens(mask_rng, batch["input_ids"], batch["attention_mask"], special_ids, mask_id,
                                     cfg.vocab_size, mask_prob)

        def loss_fn(params: Any):
            out = model.apply({"params": params["model"]}, masked, batch["token_type_ids"], batch["attention_mask"],
                              deterministic=False, rngs={"dropout": dropout_rng})
            return masked_lm_loss(out.logits, batch["input_ids"], chosen)

        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return apply_gradients(state, rng, grads, {"loss": loss, "mlm_accuracy": accuracy}, tx, schedule)

    return step
