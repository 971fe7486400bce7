"""Steps for task training, pure: fine-tuning on gold labels and prediction-layer distillation (stage 2), for
the three task heads (docs/losses.md, "Task stage 2"): sequence (pooled [CLS]), token (NER: one
distribution over labels per word) and span (QA: one distribution over token positions each for the answer's
start and end)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from tinybert_jax.errors import InputError
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


def sequence_supervised_loss(logits: jax.Array, batch: dict, regression: bool) -> jax.Array:
    """Cross-entropy to the gold label of each example; squared error for regression."""
    if regression:
        return jnp.mean(jnp.square(logits[:, 0] - batch["labels"].astype(jnp.float32)))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]))


def token_supervised_loss(logits: jax.Array, batch: dict, regression: bool) -> jax.Array:
    """Cross-entropy per labelled token (labels >= 0: a word's first WordPiece), averaged over them."""
    labels = batch["labels"]
    valid = labels >= 0
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    return jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def span_supervised_loss(logits: jax.Array, batch: dict, regression: bool) -> jax.Array:
    """Cross-entropy to the answer's start and end position over the real tokens, averaged."""
    positions = jnp.stack([batch["start_positions"], batch["end_positions"]], axis=1)  # [B, 2]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        span_logits(logits, batch["attention_mask"]), positions))


def distribution_cross_entropy(logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
    """-sum softmax(z_T / t) * log_softmax(z_S / t) over the last axis, one value per distribution."""
    target = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    return -jnp.sum(target * jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1), axis=-1)


# stage2.loss_scale: the factor on each distribution's soft cross-entropy (summed over its C classes) at
# temperature t (docs/losses.md, "Task stage 2")
LOSS_SCALES: dict[str, Callable[[int, float], float]] = {
    "hinton": lambda classes, t: t * t,  # Hinton et al.: gradients of the same size at any temperature
    "tinybert": lambda classes, t: 1.0 / classes,  # the original code's mean over classes
}


@dataclasses.dataclass(frozen=True)
class PredictionLoss:
    """Stage 2's loss settings: alpha * soft + (1 - alpha) * the gold-label loss (docs/losses.md)."""

    temperature: float = 1.0
    loss_scale: str = "hinton"
    alpha: float = 1.0  # the soft term's weight; 1 distils from the teacher alone

    @classmethod
    def of(cls, stage: Any) -> "PredictionLoss":
        """From a config section (stage2.temperature, stage2.loss_scale, stage2.alpha), checked."""
        loss = cls(float(stage.temperature), str(stage.loss_scale), float(stage.alpha))
        if loss.loss_scale not in LOSS_SCALES:
            raise InputError(f"stage2.loss_scale={loss.loss_scale!r}: use one of {', '.join(LOSS_SCALES)}")
        if not 0.0 <= loss.alpha <= 1.0:
            raise InputError(f"stage2.alpha={loss.alpha:g}: the soft term's weight must be in [0, 1]")
        if not loss.temperature > 0:
            raise InputError(f"stage2.temperature={loss.temperature:g} must be positive")
        return loss


def sequence_soft_loss(logits: jax.Array, batch: dict, loss: PredictionLoss, regression: bool) -> jax.Array:
    """The soft cross-entropy to batch['teacher_logits'] per example, scaled by LOSS_SCALES, averaged (for
    regression the MSE to the teacher's prediction; the original used gold labels there, a confirmed bug)."""
    teacher, t = batch["teacher_logits"], loss.temperature
    if regression:
        return jnp.mean(jnp.square(logits[:, 0] - teacher[:, 0]))
    return jnp.mean(LOSS_SCALES[loss.loss_scale](logits.shape[-1], t) * distribution_cross_entropy(logits, teacher, t))


def token_soft_loss(logits: jax.Array, batch: dict, loss: PredictionLoss, regression: bool) -> jax.Array:
    """The sequence term per real token, averaged over real tokens."""
    t = loss.temperature
    per_token = LOSS_SCALES[loss.loss_scale](logits.shape[-1], t) * distribution_cross_entropy(
        logits, batch["teacher_logits"], t)
    real = batch["attention_mask"] > 0
    return jnp.sum(jnp.where(real, per_token, 0.0)) / jnp.maximum(jnp.sum(real), 1)


def span_soft_loss(logits: jax.Array, batch: dict, loss: PredictionLoss, regression: bool) -> jax.Array:
    """The soft cross-entropy of the start and of the end distribution over the real tokens, averaged; the
    classes of a span distribution are the positions."""
    mask, t = batch["attention_mask"], loss.temperature
    scale = LOSS_SCALES[loss.loss_scale](logits.shape[1], t)
    return scale * jnp.mean(distribution_cross_entropy(span_logits(logits, mask),
                                                       span_logits(batch["teacher_logits"], mask), t))


@dataclasses.dataclass(frozen=True)
class HeadLosses:
    """A task kind's two losses on its head's logits (docs/losses.md, "Task stage 2")."""
    supervised: Callable[[jax.Array, dict, bool], jax.Array]  # (logits, batch, regression): gold labels
    soft: Callable[[jax.Array, dict, PredictionLoss, bool], jax.Array]  # the same and the stage-2 settings


SEQUENCE_LOSSES = HeadLosses(sequence_supervised_loss, sequence_soft_loss)
TOKEN_LOSSES = HeadLosses(token_supervised_loss, token_soft_loss)
SPAN_LOSSES = HeadLosses(span_supervised_loss, span_soft_loss)


def prediction_distill_loss(losses: HeadLosses, logits: jax.Array, batch: dict, loss: PredictionLoss,
                            regression: bool) -> jax.Array:
    """alpha * the soft term + (1 - alpha) * the gold-label loss of fine-tuning (the latter only when alpha < 1,
    so data without gold labels distils with the default alpha = 1)."""
    soft = losses.soft(logits, batch, loss, regression)
    if loss.alpha == 1.0:
        return soft
    return loss.alpha * soft + (1.0 - loss.alpha) * losses.supervised(logits, batch, regression)


def make_task_step(cfg: BertConfig, tx: optax.GradientTransformation, schedule: Callable, losses: HeadLosses,
                   regression: bool, distill: PredictionLoss | None = None
                   ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Gold-label fine-tuning when `distill` is None, else distillation from batch['teacher_logits']."""
    logits_fn = classifier_logits(cfg)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng, dropout_rng = jax.random.split(state.rng)

        def loss_fn(params):
            logits = logits_fn(params["model"], batch, deterministic=False, rng=dropout_rng)
            if distill is None:
                return losses.supervised(logits, batch, regression)
            return prediction_distill_loss(losses, logits, batch, distill, regression)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return apply_gradients(state, rng, grads, {"loss": loss}, tx, schedule)

    return step
