"""Steps for task training, pure: fine-tuning on gold labels and prediction-layer distillation (stage 2)."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from tinybert_jax.distill.losses import soft_cross_entropy
from tinybert_jax.models.bert import Bert, BertConfig
from tinybert_jax.train.state import TrainState, apply_gradients


def classifier_logits(cfg: BertConfig) -> Callable[..., jax.Array]:
    """(params, batch, deterministic, rng) -> float32 logits [B, num_labels]."""
    model = Bert(cfg)

    def logits(params: Any, batch: dict, deterministic: bool = True, rng: jax.Array | None = None) -> jax.Array:
        rngs = {} if deterministic else {"dropout": rng}
        return model.apply({"params": params}, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                           deterministic=deterministic, output_layers=(), rngs=rngs).logits

    return logits


def supervised_loss(logits: jax.Array, labels: jax.Array, regression: bool) -> jax.Array:
    if regression:
        return jnp.mean(jnp.square(logits[:, 0] - labels.astype(jnp.float32)))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def prediction_distill_loss(logits: jax.Array, teacher_logits: jax.Array, temperature: float,
                            regression: bool) -> jax.Array:
    """TinyBERT stage 2: soft cross-entropy to the teacher (docs/losses.md); for regression the MSE to the
    teacher's prediction (the original used gold labels there, a confirmed bug)."""
    if regression:
        return jnp.mean(jnp.square(logits[:, 0] - teacher_logits[:, 0]))
    return soft_cross_entropy(logits, teacher_logits, temperature)


def make_task_step(cfg: BertConfig, tx: optax.GradientTransformation, schedule: Callable, regression: bool,
                   temperature: float | None = None) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Gold-label fine-tuning when `temperature` is None, else distillation from batch['teacher_logits']."""
    logits_fn = classifier_logits(cfg)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng, dropout_rng = jax.random.split(state.rng)

        def loss_fn(params):
            logits = logits_fn(params["model"], batch, deterministic=False, rng=dropout_rng)
            if temperature is None:
                return supervised_loss(logits, batch["labels"], regression)
            return prediction_distill_loss(logits, batch["teacher_logits"], temperature, regression)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return apply_gradients(state, rng, grads, {"loss": loss}, tx, schedule)

    return step
