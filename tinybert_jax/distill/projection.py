"""The learnable projection from the student's hidden width to the teacher's (TinyBERT's W_h).

One projection is shared by the embedding output and every mapped layer output, as in the original. It trains
with the student and lives in the checkpoint, but is not part of the exported student.
"""
from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax.numpy as jnp
from absl import logging
from flax import serialization

from tinybert_jax.errors import InputError


class HiddenProjection(nn.Module):
    teacher_hidden: int
    initializer_range: float = 0.02

    @nn.compact
    def __call__(self, student_hidden):
        init = nn.initializers.normal(self.initializer_range)
        return nn.Dense(self.teacher_hidden, dtype=jnp.float32, name="dense",
                        kernel_init=nn.with_logical_partitioning(init, ("embed", "embed_out")),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed_out",)),
                        )(student_hidden)


# The trained W_h, saved beside (not in) the exported student: task stage 1 starts from it.
PROJECTION_FILE = "projection.msgpack"


def save_projection(params: dict) -> dict[str, bytes]:
    """{file name: bytes} for the export directory."""
    return {PROJECTION_FILE: serialization.msgpack_serialize(params)}


def load_projection(student_dir: Path, student_hidden: int, teacher_hidden: int) -> dict | None:
    """The W_h saved beside a general-distilled student when it maps student_hidden -> teacher_hidden; None (and
    the log says why) when there is none or it has other widths."""
    file = Path(student_dir) / PROJECTION_FILE
    if not file.is_file():
        logging.info("the projection W_h starts from random: %s has no %s", student_dir, PROJECTION_FILE)
        return None
    try:
        projection = serialization.msgpack_restore(file.read_bytes())
        shape = tuple(projection["dense"]["kernel"].shape)
    except Exception as e:  # msgpack raises several types for truncated or foreign data
        raise InputError(f"{file}: not a saved projection ({type(e).__name__}); delete it to start W_h from "
                         f"random") from e
    if shape != (student_hidden, teacher_hidden):
        logging.info("the projection W_h starts from random: the one in %s maps %d -> %d, this teacher needs "
                     "%d -> %d", file, *shape, student_hidden, teacher_hidden)
        return None
    logging.info("the projection W_h starts from the general-distillation one in %s", file)
    return projection
