"""The training state (everything a checkpoint holds besides the data-iterator position) and the update every
step ends with."""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: Any  # trainable parameters (e.g. {'student': ..., 'projection': ...})
    opt_state: Any
    rng: jax.Array  # raw uint32[2] key, split once per step (raw so that Orbax stores it as a plain array)


def apply_gradients(state: TrainState, next_rng: jax.Array, grads: Any, metrics: dict[str, jax.Array],
                    tx: optax.GradientTransformation, schedule: Callable) -> tuple[TrainState, dict]:
    """The tail of every step: the optimizer (its chain clips first) updates the parameters, and the step's
    metrics gain the learning rate it used and the gradient norm before clipping."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics = {**metrics, "learning_rate": schedule(state.step), "grad_norm": optax.tree.norm(grads)}
    return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                      rng=next_rng), metrics
