"""From an experiment's settings to the distillation step's spec: the compute dtype, the checked terms, the
teacher trimmed to what they read, and what a checkpoint of the run must agree on."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional

import jax

from tinybert_jax.distill.layer_map import resolve_layer_map
from tinybert_jax.distill.losses import MODES
from tinybert_jax.distill.matches import (
    LOGIT_LOSSES,
    resolve_matches,
    teacher_layers_needed,
    uses_masking,
    uses_teacher_logits,
)
from tinybert_jax.distill.step import DistillSpec, trim_teacher
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import BertConfig, boxed_params

if TYPE_CHECKING:  # annotations only; the accelerator benchmark imports this module on hosts without it
    import ml_collections

COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(config: ml_collections.ConfigDict) -> str:
    """config.dtype: what matrix products take as inputs (they accumulate in float32; trainable parameters,
    optimizer state, the embedding sum, biases, LayerNorm, softmax and losses stay float32)."""
    if config.dtype not in COMPUTE_DTYPES:
        raise InputError(f"dtype={config.dtype!r}; use one of {COMPUTE_DTYPES}")
    return config.dtype


def distill_spec(config: ml_collections.ConfigDict, teacher: BertConfig, student: BertConfig, seq_len: int,
                 mask_id: Optional[int] = None, logit_terms: bool = True) -> DistillSpec:
    """The spec of the configured terms (config.loss, config.layer_map), its teacher not yet trimmed; `mask_id` is
    the tokenizer's [MASK] id (None: it has none, or no term masks); logit_terms=False refuses logit and
    masked-LM terms (task stage 1, whose prediction layer is stage 2's)."""
    loss = config.loss
    if loss.mode not in MODES:
        raise InputError(f"loss.mode={loss.mode!r}; use one of {MODES}")
    if seq_len > teacher.max_position_embeddings:
        raise InputError(f"data.seq_len={seq_len} exceeds the teacher's max_position_embeddings="
                         f"{teacher.max_position_embeddings}")
    layer_map = None
    if loss.preset == "tinybert":
        layer_map = resolve_layer_map(config.layer_map, teacher.num_hidden_layers, student.num_hidden_layers)
    matches = resolve_matches(loss, layer_map, student, teacher)
    if not logit_terms and any(m.loss in LOGIT_LOSSES for m in matches):
        raise InputError("stage 1 distils intermediate layers: logit and masked-LM terms belong to stage 2 "
                         "(loss.weights.prediction must be 0 here)")
    if uses_masking(matches) and mask_id is None:
        raise InputError(f"teacher.path={config.teacher.path}: its tokenizer has no [MASK] token, which the "
                         f"masked-LM term needs")
    return DistillSpec(student=student, teacher=teacher, matches=matches, mode=loss.mode,
                       temperature=loss.get("temperature", 1.0), relation_heads=int(loss.relation_heads),
                       mask_id=mask_id if uses_masking(matches) else -1, mask_prob=loss.get("mask_prob", 0.15))


def with_trimmed_teacher(spec: DistillSpec, teacher_params: dict, dtype: str) -> tuple[DistillSpec, dict]:
    """The spec and teacher parameters cut to the layers (and head) the terms read. The frozen teacher's matrices
    are stored in the compute dtype too: nothing accumulates into them, and it halves their memory."""
    depth = teacher_layers_needed(spec.matches, spec.teacher)[0]
    teacher, params = trim_teacher(spec.teacher, teacher_params, depth, uses_teacher_logits(spec.matches), dtype)
    return dataclasses.replace(spec, teacher=teacher), params


def run_meta(spec: DistillSpec, seq_len: int) -> dict:
    """What a checkpoint of this distillation must agree on to be resumed."""
    return {"student": dataclasses.asdict(spec.student), "teacher_hidden_size": spec.teacher.hidden_size,
            "teacher_vocab_size": spec.teacher.vocab_size,
            "matches": [" ".join(map(str, dataclasses.astuple(m))) for m in spec.matches], "seq_len": seq_len}


def describe(spec: DistillSpec) -> str:
    return (", ".join(f"{m.term}: {m.loss} {m.student} <- {m.teacher} x {m.weight:g}" for m in spec.matches)
            + f"; teacher runs {spec.teacher.num_hidden_layers} layers")


def init_trainable(spec: DistillSpec, rng: jax.Array) -> dict:
    """Boxed (logically named) student and projection parameters."""
    student_rng, projection_rng = jax.random.split(rng)
    student = boxed_params(spec.student, student_rng)
    projection = spec.projection.init(projection_rng, jax.numpy.zeros((1, spec.student.hidden_size)))["params"]
    return {"student": student, "projection": projection}
