"""Masked-LM training: dynamic BERT masking inside the step, cross-entropy on the masked positions."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from tinybert_jax.models.bert import Bert, BertConfig
from tinybert_jax.train.state import TrainState


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
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics = {"loss": loss, "mlm_accuracy": accuracy, "learning_rate": schedule(state.step),
                   "grad_norm": optax.global_norm(grads)}
        return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state, rng=rng), metrics

    return step
