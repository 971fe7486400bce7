"""The fused general-distillation step: teacher forward (frozen), student forward/backward, all losses, update."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tinybert_jax.distill import losses
from tinybert_jax.distill.layer_map import LayerMap
from tinybert_jax.distill.projection import HiddenProjection
from tinybert_jax.models.bert import Bert, BertConfig, unstack_layers
from tinybert_jax.train.state import TrainState

LOSS_TERMS = ("embedding", "attention", "hidden", "prediction")


@dataclasses.dataclass(frozen=True)
class DistillSpec:
    """Everything static about the step: model configs, the resolved layer map and the loss settings."""

    student: BertConfig
    teacher: BertConfig  # already trimmed to the layers and heads the losses need
    layer_map: LayerMap
    mode: str
    weights: tuple[tuple[str, float], ...]  # (term, weight) for the active terms, in LOSS_TERMS order
    temperature: float = 1.0

    @property
    def projection(self) -> HiddenProjection:
        return HiddenProjection(self.teacher.hidden_size, self.student.initializer_range)


def distillation_losses(spec: DistillSpec, student_out, teacher_out, projection_params, attention_mask
                        ) -> dict[str, jax.Array]:
    """The unweighted loss terms named in spec.weights (REFERENCE.md 1: embedding, attention, hidden, prediction)."""
    active = dict(spec.weights)
    project = lambda h: spec.projection.apply({"params": projection_params}, h)
    terms = {}
    if "embedding" in active:
        terms["embedding"] = losses.hidden_mse(project(student_out.hidden_states[0]), teacher_out.hidden_states[0],
                                               attention_mask, spec.mode)
    if "attention" in active:
        terms["attention"] = sum(losses.attention_mse(student_out.attention_scores[s - 1],
                                                      teacher_out.attention_scores[t - 1], attention_mask, spec.mode)
                                 for s, t in spec.layer_map.attention_pairs)
    if "hidden" in active:
        terms["hidden"] = sum(losses.hidden_mse(project(student_out.hidden_states[s]), teacher_out.hidden_states[t],
                                                attention_mask, spec.mode)
                              for s, t in spec.layer_map.hidden_pairs[1:])
    if "prediction" in active:
        terms["prediction"] = losses.soft_cross_entropy(student_out.logits, teacher_out.logits, spec.temperature,
                                                        attention_mask, spec.mode)
    return terms


def make_distill_step(spec: DistillSpec, tx: optax.GradientTransformation, schedule: Callable
                      ) -> Callable[[TrainState, Any, dict], tuple[TrainState, dict]]:
    """(state, teacher_params, batch) -> (state, metrics); pure, to be jitted with the state donated."""
    student, teacher = Bert(spec.student), Bert(spec.teacher)

    def step(state: TrainState, teacher_params: Any, batch: dict) -> tuple[TrainState, dict]:
        rng, dropout_rng = jax.random.split(state.rng)
        inputs = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        # Eval mode (no dropout) and no gradient path into the teacher: it is a fixed target.
        teacher_out = jax.lax.stop_gradient(
            teacher.apply({"params": jax.lax.stop_gradient(teacher_params)}, *inputs, deterministic=True,
                          output_layers=spec.layer_map.teacher_layers))

        def loss_fn(params):
            student_out = student.apply({"params": params["student"]}, *inputs, deterministic=False,
                                        rngs={"dropout": dropout_rng})
            terms = distillation_losses(spec, student_out, teacher_out, params["projection"],
                                        batch["attention_mask"])
            total = sum(weight * terms[name] for name, weight in spec.weights)
            return total, terms

        (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**terms, "loss": total, "learning_rate": schedule(state.step),
                   "grad_norm": optax.global_norm(grads)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

    return step


def trim_teacher(cfg: BertConfig, params: dict, depth: int, keep_mlm_head: bool,
                 dtype: str = "float32") -> tuple[BertConfig, dict]:
    """Only the first `depth` layers (and the MLM head if the prediction loss needs it): nothing else is run.

    `dtype` "bfloat16" stores and runs the frozen teacher in bfloat16 (twice the matmul rate on CPUs with
    AVX512-BF16 and on accelerators); its scores, softmax and the losses stay float32.
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
    return unstack_layers(trimmed_cfg, jax.tree.map(lambda x: np.asarray(x).astype(jnp.dtype(dtype)), trimmed))
