"""The learnable projection from the student's hidden width to the teacher's (TinyBERT's W_h).

One projection is shared by the embedding output and every mapped layer output, as in the original. It trains
with the student and lives in the checkpoint, but is not part of the exported student.
"""
import flax.linen as nn
import jax.numpy as jnp


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
