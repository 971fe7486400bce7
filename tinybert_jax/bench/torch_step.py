"""The general-distillation step written with `transformers`' PyTorch BertModel: the speed reference.

Same teacher/student sizes and starting weights, same losses (TinyBERT semantics: pre-softmax scores, one shared
projection), AdamW with weight decay off for biases and LayerNorm, global-norm clipping, dropout on in the student.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np

from tinybert_jax.distill.layer_map import LayerMap
from tinybert_jax.models.bert import BertConfig

_SCORES_ATTENTION = "tinybert_scores"


def _attention_returning_scores(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention that returns the pre-softmax scores (plus additive mask), as TinyBERT's modified BERT does."""
    import torch

    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.size(-1) ** -0.5)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.nn.functional.dropout(torch.softmax(scores, dim=-1), p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), scores


def _hf_config(cfg: BertConfig):
    import transformers

    config = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob)
    config._attn_implementation = _SCORES_ATTENTION
    return config


@dataclasses.dataclass(frozen=True)
class TorchStep:
    step: Callable[[], float]  # one training step (student dropout on); returns its loss
    loss_without_dropout: Callable[[], float]  # the same loss with the student in eval mode, no update
    phases: dict[str, Callable[[], None]]  # the step's parts run on their own (bench/breakdown.py's PHASES)


def build_torch_step(teacher: BertConfig, student: BertConfig, layer_map: LayerMap, batch: dict[str, np.ndarray],
                     teacher_weights: dict[str, np.ndarray] | None = None,
                     student_weights: dict[str, np.ndarray] | None = None,
                     projection: dict[str, np.ndarray] | None = None) -> TorchStep:
    """The reference step on `batch`, starting from the given weights (Hugging Face state dicts of the two
    BertModels, and our projection's kernel [student, teacher] and bias), so that its loss can be checked
    against ours before the timings are compared. Without weights the models keep their random initialisation
    (the memory measurement: no second copy of the weights exists at any time)."""
    # PyTorch's OpenMP workers otherwise spin for a while after each op, stealing the cores from the XLA step
    # timed right after it (only effective if torch is not imported yet, as in the benchmark process).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    transformers.AttentionInterface.register(_SCORES_ATTENTION, _attention_returning_scores)
    torch.manual_seed(0)  # the student's dropout masks
    teacher_model = _load(transformers.BertModel(_hf_config(teacher), add_pooling_layer=teacher.pooler),
                          teacher_weights).eval()
    student_model = _load(transformers.BertModel(_hf_config(student), add_pooling_layer=student.pooler),
                          student_weights).train()
    linear = _load(torch.nn.Linear(student.hidden_size, teacher.hidden_size),
                   projection and {"weight": np.asarray(projection["kernel"]).T, "bias": projection["bias"]})
    named = list(student_model.named_parameters()) + [(f"projection.{n}", p) for n, p in linear.named_parameters()]
    decayed = [p for n, p in named if not (n.endswith("bias") or "LayerNorm" in n)]
    plain = [p for n, p in named if n.endswith("bias") or "LayerNorm" in n]
    optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": 0.01}, {"params": plain, "weight_decay": 0.0}],
                                  lr=1e-4, eps=1e-6)
    inputs = {name: torch.from_numpy(value.astype(np.int64)) for name, value in batch.items()}
    zeroed = lambda scores: torch.where(scores <= -100, torch.zeros_like(scores), scores)
    mse = torch.nn.functional.mse_loss

    def teacher_forward():
        with torch.no_grad():
            return teacher_model(**inputs, output_hidden_states=True, output_attentions=True)

    def student_loss(t_out):
        s_out = student_model(**inputs, output_hidden_states=True, output_attentions=True)
        attention = sum(mse(zeroed(s_out.attentions[s - 1]), zeroed(t_out.attentions[t - 1]))
                        for s, t in layer_map.attention_pairs)
        hidden = sum(mse(linear(s_out.hidden_states[s]), t_out.hidden_states[t])
                     for s, t in layer_map.hidden_pairs)  # includes the embedding term (index 0)
        return attention + hidden

    def backward(value):
        optimizer.zero_grad(set_to_none=True)
        value.backward()

    def update():
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        optimizer.step()

    def step() -> float:
        value = student_loss(teacher_forward())
        backward(value)
        update()
        return value.item()

    def loss_without_dropout() -> float:
        student_model.eval()
        with torch.no_grad():
            value = student_loss(teacher_forward()).item()
        student_model.train()
        return value

    kept_teacher_out = []  # the phases after the teacher's read one teacher output, made when first needed

    def fixed_teacher_out():
        if not kept_teacher_out:
            kept_teacher_out.append(teacher_forward())
        return kept_teacher_out[0]

    def student_forward_backward_without_dropout():
        student_model.eval()
        backward(student_loss(fixed_teacher_out()))
        student_model.train()

    phases = {"teacher_forward": teacher_forward,
              "student_forward_backward": lambda: backward(student_loss(fixed_teacher_out())),
              "student_forward_backward_no_dropout": student_forward_backward_without_dropout,
              "optimizer_update": update}
    return TorchStep(step, loss_without_dropout, phases)


def _load(module, weights: dict[str, np.ndarray] | None):
    """`module` with `weights` (all of its parameters, no others) copied in; as it is without."""
    import torch

    if weights is None:
        return module
    module.load_state_dict({name: torch.from_numpy(np.array(value, np.float32)) for name, value in weights.items()},
                           strict=True)
    return module
