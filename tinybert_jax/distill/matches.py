"""Declarative distillation terms: which teacher output teaches which student output, with which loss and weight.

A recipe (TinyBERT, DistilBERT, MiniLM v1/v2) is a preset that expands into these; `loss.preset=custom` takes
them from `loss.matches`, one "TERM LOSS STUDENT TEACHER WEIGHT" string each (TextBrewer's idea): a list of such
strings, or one string of them separated by ';' (the command line's form: ml_collections overrides no lists).
Indices: hidden-state losses count 0 = embedding output .. L = last layer; attention, relation and value losses
count layers 1..L; logit losses ignore them (write 0). Each loss's range and requirements are in registry.py.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

from tinybert_jax.distill.layer_map import LayerMap
from tinybert_jax.distill.registry import LOGIT_LOSSES, LOGITS, LOSSES, MASKED_LABELS
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import BertConfig

PRESETS = ("tinybert", "distilbert", "minilm_v1", "minilm_v2", "custom")
# preset -> its terms and their default weights (loss.weights.TERM overrides)
PRESET_WEIGHTS = {
    "tinybert": {"embedding": 1.0, "attention": 1.0, "hidden": 1.0, "prediction": 0.0},
    "distilbert": {"ce": 5.0, "mlm": 2.0, "cos": 1.0},
    "minilm_v1": {"attention": 1.0, "value_relation": 1.0},
    "minilm_v2": {"relations": 1.0},
}


@dataclasses.dataclass(frozen=True)
class Match:
    term: str  # metric name; matches sharing a term are summed into it
    loss: str  # a key of registry.LOSSES
    student: int
    teacher: int
    weight: float


def preset_matches(preset: str, weights: dict, layer_map: LayerMap, student: BertConfig, teacher: BertConfig,
                   relation_layer: int = 0) -> tuple[Match, ...]:
    """The terms of a recipe; terms whose weight is 0 are left out (and never computed)."""
    w = {**PRESET_WEIGHTS[preset], **{k: float(v) for k, v in weights.items() if k in PRESET_WEIGHTS[preset]}}
    last_s, last_t = student.num_hidden_layers, teacher.num_hidden_layers
    if preset == "tinybert":
        matches = [Match("embedding", "hidden_mse", 0, 0, w["embedding"])]
        matches += [Match("attention", "attention_mse", s, t, w["attention"]) for s, t in layer_map.attention_pairs]
        matches += [Match("hidden", "hidden_mse", s, t, w["hidden"]) for s, t in layer_map.hidden_pairs[1:]]
        matches += [Match("prediction", "logits_soft_ce", 0, 0, w["prediction"])]
    elif preset == "distilbert":
        matches = [Match("ce", "logits_kl", 0, 0, w["ce"]), Match("mlm", "mlm_ce", 0, 0, w["mlm"]),
                   Match("cos", "hidden_cos", last_s, last_t, w["cos"])]
    elif preset == "minilm_v1":
        matches = [Match("attention", "attention_kl", last_s, last_t, w["attention"]),
                   Match("value_relation", "value_relation_kl", last_s, last_t, w["value_relation"])]
    else:  # minilm_v2: the last student layer learns from loss.relation_layer (0: the teacher's last)
        matches = [Match("relations", "qkv_relation_kl", last_s, relation_layer or last_t, w["relations"])]
    return tuple(m for m in matches if m.weight)


_MATCHES_FORMS = ("a list of 'TERM LOSS STUDENT TEACHER WEIGHT' strings, or one string of them separated by ';', "
                 "e.g. 'hidden hidden_mse 2 6 1; attention attention_mse 2 6 1'")


def match_entries(value: Union[str, Sequence[str]]) -> list[str]:
    """The entries of `loss.matches`: a list of strings (experiment files) or one ';'-separated string."""
    lines = [value] if isinstance(value, str) else value
    if not isinstance(lines, (list, tuple)) or not all(isinstance(line, str) for line in lines):
        raise InputError(f"loss.matches={value!r}: write {_MATCHES_FORMS}")
    return [entry.strip() for line in lines for entry in line.split(";") if entry.strip()]


def parse_matches(value: Union[str, Sequence[str]]) -> tuple[Match, ...]:
    matches = []
    for line in match_entries(value):
        fields = line.split()
        try:
            term, loss, student, teacher, weight = fields
            match = Match(term, loss, int(student), int(teacher), float(weight))
        except ValueError:
            raise InputError(f"loss.matches entry {line!r}: write 'TERM LOSS STUDENT TEACHER WEIGHT', e.g. "
                             f"'hidden hidden_mse 2 6 1.0'") from None
        if match.weight:
            matches.append(match)
    return tuple(matches)


def check_matches(matches: tuple[Match, ...], student: BertConfig, teacher: BertConfig,
                  relation_heads: int) -> None:
    """Start-up validation of every term against the two model shapes, with the entry at fault named."""
    if not matches:
        raise InputError("no distillation term has a non-zero weight; enable at least one in loss.weights or "
                         "loss.matches")
    for m in matches:
        where = f"term {m.term!r} ({m.loss} student {m.student} <- teacher {m.teacher})"
        if m.loss not in LOSSES:
            raise InputError(f"{where}: unknown loss {m.loss!r}; use one of {sorted(LOSSES)}")
        lowest = LOSSES[m.loss].reads.lowest
        if lowest is not None and not (lowest <= m.student <= student.num_hidden_layers and
                                       lowest <= m.teacher <= teacher.num_hidden_layers):
            raise InputError(f"{where}: layers must be in {lowest}..{student.num_hidden_layers} (student) and "
                             f"{lowest}..{teacher.num_hidden_layers} (teacher)")
        for requirement in LOSSES[m.loss].requires:
            problem = requirement(student, teacher, relation_heads)
            if problem:
                raise InputError(f"{where}: {problem}")


def teacher_layers_needed(matches: tuple[Match, ...], teacher: BertConfig) -> tuple[int, tuple[int, ...]]:
    """(how many teacher layers must run, the 1-based layers whose outputs the terms read)."""
    if uses_teacher_logits(matches):
        depth = teacher.num_hidden_layers  # the MLM head reads the last layer
    else:
        depth = max([m.teacher for m in matches if m.loss not in LOGIT_LOSSES] + [0])
    layers = sorted({m.teacher for m in matches if m.loss not in LOGIT_LOSSES and m.teacher > 0})
    return depth, tuple(layers)


def uses_masking(matches: tuple[Match, ...]) -> bool:
    return any(LOSSES[m.loss].reads is MASKED_LABELS for m in matches)


def uses_teacher_logits(matches: tuple[Match, ...]) -> bool:
    return any(LOSSES[m.loss].reads is LOGITS for m in matches)


def resolve_matches(loss_config, layer_map: Optional[LayerMap], student: BertConfig, teacher: BertConfig
                    ) -> tuple[Match, ...]:
    """The checked terms of `loss.preset` (or `loss.matches` for custom)."""
    preset = loss_config.preset
    if preset not in PRESETS:
        raise InputError(f"loss.preset={preset!r}; use one of {PRESETS}")
    if preset == "custom":
        matches = parse_matches(loss_config.matches)
    else:
        matches = preset_matches(preset, dict(loss_config.weights), layer_map, student, teacher,
                                 int(loss_config.relation_layer))
    check_matches(matches, student, teacher, int(loss_config.relation_heads))
    return matches
