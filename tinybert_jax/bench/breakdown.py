"""`step --breakdown`: the distillation step's phases, each compiled and timed on its own, ours and PyTorch's.

Where a step loses time differs between CPU kinds (vector width, cache sizes, which GEMM kernels the libraries
pick), so the phases are measured on the machine at hand, the two frameworks alternately:
- teacher_forward: the frozen teacher over its mapped layers, returning what the losses read;
- student_forward_backward: the student's forward with dropout, every loss term against a fixed teacher output,
  and the gradients;
- student_forward_backward_no_dropout: the same in eval mode; the difference is what dropout costs;
- dropout_bits (ours only): drawing the student's dropout masks at the step's shapes, nothing else;
- optimizer_update: global-norm clipping and AdamW over the student and the projection.
The phases do not add up to the step exactly: inside the fused step XLA overlaps and fuses across them.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from tinybert_jax.bench.timing import time_calls
from tinybert_jax.distill.step import DistillSpec, distillation_losses
from tinybert_jax.models.bert import Bert, BertConfig
from tinybert_jax.train.optimizer import make_optimizer
from tinybert_jax.train.state import TrainState, apply_gradients

PHASES = ("teacher_forward", "student_forward_backward", "student_forward_backward_no_dropout", "dropout_bits",
          "optimizer_update")


def dropout_shapes(cfg: BertConfig, batch: int, seq_len: int) -> list[tuple[int, ...]]:
    """The shapes the student draws dropout masks for: the embeddings, then per layer the attention
    probabilities, the attention output and the FFN output (models/bert.py)."""
    tokens = (batch * seq_len, cfg.hidden_size)
    per_layer = [(batch, cfg.num_attention_heads, seq_len, seq_len), tokens, tokens]
    return [(batch, seq_len, cfg.hidden_size)] + per_layer * cfg.num_hidden_layers


def jax_phases(spec: DistillSpec, state: TrainState, teacher_params, batch: dict, optimizer_settings
               ) -> dict[str, Callable[[], None]]:
    """Blocking callables, one per PHASES entry, on the step's state, weights and batch (nothing is donated)."""
    inputs = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    teacher_forward = jax.jit(lambda params: Bert(spec.teacher).apply(
        {"params": params}, *inputs, deterministic=True, output_layers=spec.teacher_output_layers))
    teacher_out = teacher_forward(teacher_params)

    def student_forward_backward(params, rng, deterministic: bool):
        def loss(params):
            student_out = Bert(spec.student).apply({"params": params["student"]}, *inputs,
                                                   deterministic=deterministic, rngs={"dropout": rng})
            return distillation_losses(spec, student_out, teacher_out, params["projection"],
                                       batch["attention_mask"])[0]
        return jax.value_and_grad(loss)(params)

    forward_backward = jax.jit(student_forward_backward, static_argnums=2)
    rng = jax.random.PRNGKey(0)
    grads = forward_backward(state.params, rng, False)[1]
    shapes = dropout_shapes(spec.student, *batch["input_ids"].shape)
    rate = spec.student.hidden_dropout_prob
    dropout_bits = jax.jit(lambda rng: [jax.random.bernoulli(key, 1.0 - rate, shape)
                                        for key, shape in zip(jax.random.split(rng, len(shapes)), shapes)])
    tx, schedule = make_optimizer(optimizer_settings, 1000)
    update = jax.jit(lambda state, grads: apply_gradients(state, state.rng, grads, {}, tx, schedule))
    return {"teacher_forward": lambda: jax.block_until_ready(teacher_forward(teacher_params)),
            "student_forward_backward": lambda: jax.block_until_ready(forward_backward(state.params, rng, False)),
            "student_forward_backward_no_dropout":
                lambda: jax.block_until_ready(forward_backward(state.params, rng, True)),
            "dropout_bits": lambda: jax.block_until_ready(dropout_bits(rng)),
            "optimizer_update": lambda: jax.block_until_ready(update(state, grads))}


def time_phases(ours: dict[str, Callable[[], None]], theirs: dict[str, Callable[[], None]], reps: int,
                warmup: int) -> dict[str, dict[str, float]]:
    """{phase: {"jax_s": median, "pytorch_s": median (phases PyTorch has)}}, the two timed alternately."""
    for phase in PHASES:  # compile and warm every phase first
        for side in (ours, theirs):
            for _ in range(warmup + 1 if phase in side else 0):
                side[phase]()
    seconds: dict[str, dict[str, list[float]]] = {phase: {} for phase in PHASES}
    for _ in range(reps):
        for phase in PHASES:
            for name, side in (("jax_s", ours), ("pytorch_s", theirs)):
                if phase in side:
                    seconds[phase].setdefault(name, []).append(time_calls(side[phase], reps=1, warmup=0).median)
    return {phase: {name: float(np.median(values)) for name, values in sides.items()}
            for phase, sides in seconds.items()}
