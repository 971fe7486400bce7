"""Which teacher layer each student layer learns from (TinyBERT's g(m)), resolved once at start-up to Python ints."""
from __future__ import annotations

import dataclasses
from typing import Sequence, Union

from tinybert_jax.errors import InputError

STRATEGIES = ("uniform", "top", "bottom", "spread")


@dataclasses.dataclass(frozen=True)
class LayerMap:
    """`teacher_layers[i]` (1-based) is the teacher layer distilled into student layer i + 1.

    Attention: student layer i+1 <- teacher layer teacher_layers[i].
    Hidden states (index 0 = embeddings): student index m <- teacher index hidden_pairs[m][1].
    """

    teacher_layers: tuple[int, ...]

    @property
    def attention_pairs(self) -> tuple[tuple[int, int], ...]:
        """(student layer, teacher layer), both 1-based, i.e. indices into attention_scores plus one."""
        return tuple((i + 1, t) for i, t in enumerate(self.teacher_layers))

    @property
    def hidden_pairs(self) -> tuple[tuple[int, int], ...]:
        """(student hidden index, teacher hidden index), index 0 = embedding output."""
        return ((0, 0),) + self.attention_pairs

    @property
    def teacher_depth(self) -> int:
        """How many teacher layers must run to produce every mapped output."""
        return max(self.teacher_layers)


def resolve_layer_map(spec: Union[str, Sequence[int]], teacher_layers: int, student_layers: int) -> LayerMap:
    """`uniform` (teacher layer i*N/M), `top` (m + N - M), `bottom` (m), `spread` (first to last teacher layer,
    evenly spaced and rounded), or an explicit list of teacher layers
    (a sequence of ints or a comma-separated string such as "3,6,9,12", the form a command-line override takes)."""
    if isinstance(spec, str) and spec.strip() and spec.strip()[0].isdigit():
        try:
            spec = [int(part) for part in spec.split(",")]
        except ValueError as e:
            raise InputError(f"layer_map={spec!r}: not a comma-separated list of teacher layers") from e
    if isinstance(spec, str):
        if spec == "uniform":
            if teacher_layers % student_layers:
                raise InputError(f"layer_map='uniform' needs the teacher depth ({teacher_layers}) to be a multiple "
                                 f"of the student depth ({student_layers}); give an explicit list of "
                                 f"{student_layers} increasing teacher layers instead")
            k = teacher_layers // student_layers
            layers = [m * k for m in range(1, student_layers + 1)]
        elif spec == "top":
            layers = [m + teacher_layers - student_layers for m in range(1, student_layers + 1)]
        elif spec == "bottom":
            layers = list(range(1, student_layers + 1))
        elif spec == "spread":  # first to last, evenly rounded: DistilBERT's 0,2,4,7,9,11 (0-based) for 12 -> 6
            step = (teacher_layers - 1) / max(student_layers - 1, 1)
            layers = [teacher_layers] if student_layers == 1 else \
                [int(m * step + 0.5) + 1 for m in range(student_layers)]
        else:
            raise InputError(f"layer_map={spec!r} is not one of {STRATEGIES} or a list of teacher layers")
    else:
        layers = list(spec)
    _validate(layers, teacher_layers, student_layers, spec)
    return LayerMap(tuple(int(t) for t in layers))


def _validate(layers: list, teacher_layers: int, student_layers: int, spec) -> None:
    where = f"layer_map={list(spec) if not isinstance(spec, str) else spec!r}"
    if student_layers > teacher_layers:
        raise InputError(f"{where}: the student ({student_layers} layers) is deeper than the teacher "
                         f"({teacher_layers}); distillation needs a student no deeper than its teacher")
    if len(layers) != student_layers:
        raise InputError(f"{where}: has {len(layers)} entries, the student has {student_layers} layers; "
                         f"give one teacher layer per student layer")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in layers):
        raise InputError(f"{where}: entries must be integers (1-based teacher layers)")
    if any(t < 1 or t > teacher_layers for t in layers):
        raise InputError(f"{where}: teacher layers must be within 1..{teacher_layers}")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise InputError(f"{where}: teacher layers must strictly increase with the student layer")
