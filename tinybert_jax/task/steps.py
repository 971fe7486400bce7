"""Steps for task training, pure: fine-tuning on gold labels and prediction-layer distillation (stage 2), for
the three task heads (docs/losses.md, "Prediction layer"): sequence (pooled [CLS]), token (NER: one
distribution over labels per word) and span (QA: one distribution over token positions each for the answer's
start and end)."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from tinybert_jax.distill.losses import soft_cross_entropy
from tinybert_jax.models.bert import MASK_BIAS, Bert, BertConfig
from tinybert_jax.train.state import TrainState, apply_gradients


def classifier_logits(cfg: BertConfig) -> Callable[..., jax.Array]:
    """(params, batch, deterministic, rng) -> float32 logits: [B, num_labels], or [B, T, num_labels] for the
    token and span heads."""
    model = Bert(cfg)

    def logits(params: Any, batch: dict, deterministic: bool = True, rng: jax.Array | None = None) -> jax.Array:
        rngs = {} if deterministic else {"dropout": rng}
        return model.apply({"params": params}, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                           deterministic=deterministic, output_layers=(), rngs=rngs).logits

    return logits


def span_logits(logits: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """[B, T, 2] start/end logits -> [B, 2, T], padding positions pushed out of the softmax."""
    return jnp.where(attention_mask[:, None, :] > 0, jnp.swapaxes(logits, 1, 2), MASK_BIAS)


def supervised_loss(cfg: BertConfig, logits: jax.Array, batch: dict, regression: bool) -> jax.Array:
    """Cross-entropy to the gold labels: per example, per labelled token (labels >= 0: a word's first
    WordPiece), or per answer start and end position; squared error for regression."""
    if cfg.task_head == "span":
        positions = jnp.stack([batch["start_positions"], batch["end_positions"]], axis=1)  # [B, 2]
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
            span_logits(logits, batch["attention_mask"]), positions))
    if cfg.task_head == "token":
        labels = batch["labels"]
        valid = labels >= 0
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
        return jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    if regression:
        return jnp.mean(jnp.square(logits[:, 0] - batch["labels"].astype(jnp.float32)))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]))


def distribution_cross_entropy(logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
    """-sum softmax(z_T / t) * log_softmax(z_S / t) over the last axis, one value per distribution."""
    target = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    return -jnp.sum(target * jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1), axis=-1)


def prediction_distill_loss(cfg: BertConfig, logits: jax.Array, batch: dict, temperature: float,
                            regression: bool) -> jax.Array:
    """TinyBERT stage 2 against batch['teacher_logits'] (docs/losses.md). Sequence head: soft cross-entropy, the
    mean over every element as in the original (for regression the MSE to the teacher's prediction; the original
    used gold labels there, a confirmed bug). Token head: each real token's soft cross-entropy over the labels,
    averaged over real tokens. Span head: the soft cross-entropy of the start and of the end distribution over
    the real tokens, averaged."""
    teacher = batch["teacher_logits"]
    if cfg.task_head == "span":
        mask = batch["attention_mask"]
        return jnp.mean(distribution_cross_entropy(span_logits(logits, mask), span_logits(teacher, mask),
                                                   temperature))
    if cfg.task_head == "token":
        real = batch["attention_mask"] > 0
        losses = distribution_cross_entropy(logits, teacher, temperature)
        return jnp.sum(jnp.where(real, losses, 0.0)) / jnp.maximum(jnp.sum(real), 1)
    if regression:
        return jnp.mean(jnp.square(logits[:, 0] - teacher[:, 0]))
    return soft_cross_entropy(logits, teacher, temperature)


def make_task_step(cfg: BertConfig, tx: optax.GradientTransformation, schedule: Callable, regression: bool,
                   temperature: float | None = None) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Gold-label fine-tuning when `temperature` is None, else distillation from batch['teacher_logits']."""
    logits_fn = classifier_logits(cfg)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng, dropout_rng = jax.random.split(state.rng)

        def loss_fn(params):
            logits = logits_fn(params["model"], batch, deterministic=False, rng=dropout_rng)
            if temperature is None:
                return supervised_loss(cfg, logits, batch, regression)
            return prediction_distill_loss(cfg, logits, batch, temperature, regression)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return apply_gradients(state, rng, grads, {"loss": loss}, tx, schedule)

    return step
