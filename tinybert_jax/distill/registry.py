"""The loss registry: each distillation loss with its function, what it reads, its layer range and its requirements.

Everything else reads it: matches.py validates terms and sizes the teacher, step.py computes each term. Adding a
loss is one entry in LOSSES plus its function in losses.py (and its section in docs/losses.md).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

from tinybert_jax.distill import losses
from tinybert_jax.models.bert import BertConfig


@dataclasses.dataclass(frozen=True)
class Source:
    """One model output a loss reads, and which of its layers a term may name."""

    field: str  # the attribute of the model's output
    lowest: Optional[int]  # the first layer index (the highest is L); None: one tensor, layer indices ignored
    teacher: bool = True  # False: read on the student only

    def take(self, out, layer: int):
        x = getattr(out, self.field)
        return x if self.lowest is None else x[layer - self.lowest]  # stored 0-based


HIDDEN = Source("hidden_states", 0)  # 0 = embedding output .. L
ATTENTION = Source("attention_scores", 1)  # pre-softmax, per layer 1..L
QKV = Source("projections", 1)  # a layer's (Q, K, V), each [B, T, H]
LOGITS = Source("logits", None)  # both MLM heads' logits
MASKED_LABELS = Source("logits", None, teacher=False)  # the student's logits against the tokens the step masked


# Requirements: (student, teacher, loss.relation_heads) -> the error message when unmet, else None.
def equal_widths(student: BertConfig, teacher: BertConfig, relation_heads: int) -> Optional[str]:
    if student.hidden_size != teacher.hidden_size:
        return (f"cosine needs equal widths, student {student.hidden_size} vs teacher {teacher.hidden_size}; use "
                f"hidden_mse (projected) instead")


def equal_heads(student: BertConfig, teacher: BertConfig, relation_heads: int) -> Optional[str]:
    if student.num_attention_heads != teacher.num_attention_heads:
        return (f"compares head by head, student {student.num_attention_heads} heads vs teacher "
                f"{teacher.num_attention_heads}; use qkv_relation_kl (MiniLMv2) for any head count")


def relation_heads_divide_widths(student: BertConfig, teacher: BertConfig, relation_heads: int) -> Optional[str]:
    if relation_heads < 1 or student.hidden_size % relation_heads or teacher.hidden_size % relation_heads:
        return (f"loss.relation_heads={relation_heads} must divide both widths (student {student.hidden_size}, "
                f"teacher {teacher.hidden_size})")


def mlm_heads(student: BertConfig, teacher: BertConfig, relation_heads: int) -> Optional[str]:
    if not (student.mlm_head and teacher.mlm_head):
        return ("distils MLM logits: the teacher checkpoint needs its MLM head (cls.predictions) and the student an "
                "MLM head (student.mlm_head=True)")


def student_mlm_head(student: BertConfig, teacher: BertConfig, relation_heads: int) -> Optional[str]:
    if not student.mlm_head:
        return "needs a student MLM head (student.mlm_head=True)"


class Inputs(NamedTuple):
    """What a loss function gets besides the two outputs it reads."""

    spec: Any  # step.DistillSpec: mode, temperature, relation_heads, the model configs
    project: Callable  # the shared projection W_h, student width -> teacher width
    attention_mask: Any
    masked_labels: Any  # (labels, chosen positions) when the step masks its input, else None


@dataclasses.dataclass(frozen=True)
class Loss:
    description: str  # what it compares (README, "Recipes")
    reads: Source
    fn: Callable[[Any, Any, Inputs], Any]  # (student output, teacher output or None, inputs) -> unweighted scalar
    requires: tuple[Callable[[BertConfig, BertConfig, int], Optional[str]], ...] = ()

    def __call__(self, match, student_out, teacher_out, inputs: Inputs):
        teacher = self.reads.take(teacher_out, match.teacher) if self.reads.teacher else None
        return self.fn(self.reads.take(student_out, match.student), teacher, inputs)


LOSSES = {
    "hidden_mse": Loss("hidden states, the student's through the shared projection W_h (TinyBERT)", HIDDEN,
                       lambda s, t, x: losses.hidden_mse(x.project(s), t, x.attention_mask, x.spec.mode)),
    "hidden_cos": Loss("1 - cosine of hidden states over real tokens; equal widths (DistilBERT)", HIDDEN,
                       lambda s, t, x: losses.hidden_cosine(s, t, x.attention_mask), (equal_widths,)),
    "attention_mse": Loss("pre-softmax attention scores; equal head counts (TinyBERT)", ATTENTION,
                          lambda s, t, x: losses.attention_mse(s, t, x.attention_mask, x.spec.mode), (equal_heads,)),
    "attention_kl": Loss("KL of attention distributions; equal head counts (MiniLMv1)", ATTENTION,
                         lambda s, t, x: losses.attention_distribution_kl(s, t, x.attention_mask), (equal_heads,)),
    "value_relation_kl": Loss(
        "KL of value-value relations per attention head; equal head counts (MiniLMv1)", QKV,
        lambda s, t, x: losses.relation_kl(s[2], t[2], x.spec.student.num_attention_heads, x.attention_mask),
        (equal_heads,)),
    "qkv_relation_kl": Loss(
        "KL of Q-Q, K-K and V-V relations over loss.relation_heads heads, any widths (MiniLMv2)", QKV,
        lambda s, t, x: sum(losses.relation_kl(s_i, t_i, x.spec.relation_heads, x.attention_mask)
                            for s_i, t_i in zip(s, t)),
        (relation_heads_divide_widths,)),
    "logits_soft_ce": Loss(
        "soft cross-entropy of MLM logits at loss.temperature, no T^2 (TinyBERT prediction)", LOGITS,
        lambda s, t, x: losses.soft_cross_entropy(s, t, x.spec.temperature, x.attention_mask, x.spec.mode),
        (mlm_heads,)),
    "logits_kl": Loss("KL of MLM logits at loss.temperature, times T^2, over real tokens (DistilBERT)", LOGITS,
                      lambda s, t, x: losses.logits_kl(s, t, x.spec.temperature, x.attention_mask), (mlm_heads,)),
    "mlm_ce": Loss("the student's masked-LM cross-entropy on the masked positions; needs no teacher (DistilBERT)",
                   MASKED_LABELS, lambda s, t, x: losses.masked_lm_cross_entropy(s, *x.masked_labels),
                   (student_mlm_head,)),
}
# Losses that ignore layer indices (write 0): the logit and masked-LM losses.
LOGIT_LOSSES = tuple(name for name, loss in LOSSES.items() if loss.reads.lowest is None)
