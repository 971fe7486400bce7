"""The fused distillation step: (masking,) teacher forward (frozen), student forward/backward, every term, update."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tinybert_jax.distill.matches import Match, teacher_layers_needed
from tinybert_jax.distill.projection import HiddenProjection
from tinybert_jax.distill.registry import LOSSES, Inputs
from tinybert_jax.models.bert import Bert, BertConfig, cast_to_param_dtypes, unstack_layers
from tinybert_jax.train.mlm import mask_tokens_weighted
from tinybert_jax.train.state import TrainState, apply_gradients


@dataclasses.dataclass(frozen=True)
class DistillSpec:
    """Everything static about the step: model configs, the distillation terms and the loss settings."""

    student: BertConfig
    teacher: BertConfig  # already trimmed to the layers the terms need
    matches: tuple[Match, ...]
    mode: str = "tinybert"  # for the TinyBERT losses: "tinybert" (original semantics) or "masked"
    temperature: float = 1.0  # of the logit losses
    relation_heads: int = 1  # MiniLMv2 relation heads
    mask_id: int = -1  # >= 0: inputs are masked in the step (DistilBERT's dynamic masking) with this [MASK] id
    mask_prob: float = 0.15

    @property
    def projection(self) -> HiddenProjection:
        return HiddenProjection(self.teacher.hidden_size, self.student.initializer_range)

    @property
    def teacher_output_layers(self) -> tuple[int, ...]:
        return teacher_layers_needed(self.matches, self.teacher)[1]


def distillation_losses(spec: DistillSpec, student_out, teacher_out, projection_params, attention_mask,
                        masked_labels=None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(weighted total, {term: unweighted sum of its matches}) for the terms in spec.matches."""
    project = lambda h: spec.projection.apply({"params": projection_params}, h)
    inputs = Inputs(spec, project, attention_mask, masked_labels)
    total, terms = 0.0, {}
    for match in spec.matches:  # each term's unweighted loss, computed as its registry entry says
        value = LOSSES[match.loss](match, student_out, teacher_out, inputs)
        terms[match.term] = terms.get(match.term, 0.0) + value
        total = total + match.weight * value
    return total, terms


def make_distill_step(spec: DistillSpec, tx: optax.GradientTransformation, schedule: Callable,
                      token_weights: Optional[np.ndarray] = None
                      ) -> Callable[[TrainState, Any, dict], tuple[TrainState, dict]]:
    """(state, teacher_params, batch) -> (state, metrics); pure, to be jitted with the state donated.

    With spec.mask_id >= 0 the batch is masked first (teacher and student see the same masked input), positions
    drawn in proportion to `token_weights` (DistilBERT's rare-token smoothing)."""
    student, teacher = Bert(spec.student), Bert(spec.teacher)
    weights = None if token_weights is None else jnp.asarray(token_weights, jnp.float32)

    def step(state: TrainState, teacher_params: Any, batch: dict) -> tuple[TrainState, dict]:
        rng, dropout_rng, mask_rng = jax.random.split(state.rng, 3)
        input_ids, masked_labels = batch["input_ids"], None
        if spec.mask_id >= 0:
            input_ids, chosen = mask_tokens_weighted(mask_rng, batch["input_ids"], batch["attention_mask"], weights,
                                                     spec.mask_id, spec.student.vocab_size, spec.mask_prob)
            masked_labels = (batch["input_ids"], chosen)
        inputs = (input_ids, batch["token_type_ids"], batch["attention_mask"])
        # Eval mode (no dropout) and no gradient path into the teacher: it is a fixed target.
        teacher_out = jax.lax.stop_gradient(
            teacher.apply({"params": jax.lax.stop_gradient(teacher_params)}, *inputs, deterministic=True,
                          output_layers=spec.teacher_output_layers))

        def loss_fn(params):
            student_out = student.apply({"params": params["student"]}, *inputs, deterministic=False,
                                        rngs={"dropout": dropout_rng})
            return distillation_losses(spec, student_out, teacher_out, params["projection"],
                                       batch["attention_mask"], masked_labels)

        (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return apply_gradients(state, rng, grads, {**terms, "loss": total}, tx, schedule)

    return step


def trim_teacher(cfg: BertConfig, params: dict, depth: int, keep_mlm_head: bool,
                 dtype: str = "float32") -> tuple[BertConfig, dict]:
    """Only the first `depth` layers (and the MLM head if the prediction loss needs it): nothing else is run.

    `dtype` "bfloat16" runs the frozen teacher's matrix products on bfloat16 inputs (twice the matmul rate on CPUs
    with AVX512-BF16 and on accelerators) and stores its matrices (kernels, embedding tables) in bfloat16, half the
    memory; its LayerNorm parameters and biases stay float32, as do its activations, scores and softmax.
    """
    if keep_mlm_head and depth != cfg.num_hidden_layers:
        raise ValueError("the MLM head reads the last layer; keep the full depth")
    trimmed_cfg = cfg.replace(num_hidden_layers=depth, pooler=False, mlm_head=keep_mlm_head, num_labels=0,
                              dtype=dtype, param_dtype=dtype)
    trimmed = {"embeddings": params["embeddings"],
               "layers": jax.tree.map(lambda x: x[:depth], params["layers"])}
    if keep_mlm_head:
        trimmed["mlm_head"] = params["mlm_head"]
    # Frozen, so stored layer by layer: no step then slices (copies) weights out of stacked arrays.
    return unstack_layers(trimmed_cfg, cast_to_param_dtypes(trimmed_cfg, trimmed))
