"""The training state: everything a checkpoint holds besides the data-iterator position."""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from absl import logging

from tinybert_jax import sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: Any  # trainable parameters (e.g. {'student': ..., 'projection': ...})
    opt_state: Any
    rng: jax.Array  # raw uint32[2] key, split once per step (raw so that Orbax stores it as a plain array)


def create_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation, seed: int,
                 mesh: jax.sharding.Mesh, rules) -> tuple[TrainState, Any]:
    """A sharded TrainState (params and optimizer state created in place) and its shardings.

    `init_params(rng)` may return params boxed with logical axis names; the optimizer state inherits them.
    """
    def init() -> TrainState:
        init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
        params = init_params(init_rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=train_rng)

    return sharding.create_sharded(init, mesh, rules)


def resume_or_load(state: TrainState, state_shardings: Any, checkpoints, meta: dict, data_iterator: Any,
                   loaded: dict[str, Any]) -> TrainState:
    """The newest readable compatible checkpoint (state and data position), or else `state` with params[key]
    replaced by `loaded[key]` (host arrays); modules a loaded tree lacks (e.g. a new classifier) keep their
    initialisation."""
    restored = checkpoints.restore_latest(meta, state, state_shardings, data_iterator)
    if restored is not None:
        step, state = restored
        logging.info("resuming from step %d in %s", step, checkpoints.directory)
        return state
    params = dict(state.params)
    for key, tree in loaded.items():
        params[key] = {name: sharding.put_sharded(tree[name], state_shardings.params[key][name]) if name in tree
                       else value for name, value in state.params[key].items()}
    return state.replace(params=params)
