"""Optimizers against numpy implementations of their update rules, and the learning-rate schedules."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tinybert_jax.errors import InputError
from tinybert_jax.train.optimizer import make_optimizer


def config(**changes):
    base = dict(name="bert_adam", learning_rate=0.1, schedule="constant", warmup_ratio=0.0, b1=0.9, b2=0.999,
                eps=1e-6, weight_decay=0.01, clip_norm=1.0)
    return ml_collections.ConfigDict({**base, **changes})


PARAMS = {"dense": {"kernel": np.full((2, 3), 0.5, np.float32), "bias": np.full((3,), 0.5, np.float32)},
          "LayerNorm": {"scale": np.ones((3,), np.float32), "bias": np.zeros((3,), np.float32)}}


def random_grads(seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: (rng.normal(size=p.shape) * 2).astype(np.float32), PARAMS)


def numpy_bert_adam(params, grads_per_step, lr, b1, b2, eps, wd, clip):
    params = jax.tree.map(np.array, params)
    m = jax.tree.map(np.zeros_like, params)
    v = jax.tree.map(np.zeros_like, params)
    for grads in grads_per_step:
        for path, p in jax.tree_util.tree_leaves_with_path(params):
            g = _get(grads, path)
            norm = np.linalg.norm(g)
            g = g * min(1.0, clip / (norm + 1e-6))  # each tensor clipped on its own
            mi, vi = _get(m, path), _get(v, path)
            mi[...] = b1 * mi + (1 - b1) * g
            vi[...] = b2 * vi + (1 - b2) * g * g
            update = mi / (np.sqrt(vi) + eps)  # no bias correction
            if path[-1].key == "kernel":  # decay skips biases and LayerNorm
                update = update + wd * p
            p -= lr * update
    return params


def _get(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def run_optax(cfg, grads_per_step):
    tx, _ = make_optimizer(cfg, total_steps=100)
    params = jax.tree.map(jnp.asarray, PARAMS)
    state = tx.init(params)
    for grads in grads_per_step:
        updates, state = tx.update(jax.tree.map(jnp.asarray, grads), state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_bert_adam_matches_the_original_update_rule():
    grads = [random_grads(seed) for seed in range(3)]
    ours = run_optax(config(), grads)
    reference = numpy_bert_adam(PARAMS, grads, 0.1, 0.9, 0.999, 1e-6, 0.01, 1.0)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)


def test_adamw_decays_only_kernels():
    zero = [jax.tree.map(np.zeros_like, PARAMS)]
    ours = run_optax(config(name="adamw", weight_decay=0.5), zero)
    np.testing.assert_allclose(np.asarray(ours["dense"]["kernel"]), 0.5 - 0.1 * 0.5 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(ours["dense"]["bias"]), PARAMS["dense"]["bias"])
    np.testing.assert_array_equal(np.asarray(ours["LayerNorm"]["scale"]), PARAMS["LayerNorm"]["scale"])


@pytest.mark.parametrize("schedule,expected", [
    ("linear", [0.0, 0.05, 0.1, 0.1 * 7 / 8, 0.0]),
    ("constant", [0.0, 0.05, 0.1, 0.1, 0.1]),
])
def test_warmup_then_schedule(schedule, expected):
    _, lr = make_optimizer(config(schedule=schedule, warmup_ratio=0.2), total_steps=10)
    np.testing.assert_allclose([float(lr(s)) for s in (0, 1, 2, 3, 10)], expected, atol=1e-7)


@pytest.mark.parametrize("changes,message", [
    (dict(name="sgd"), "optimizer.name='sgd'"),
    (dict(schedule="step"), "optimizer.schedule='step'"),
    (dict(warmup_ratio=1.5), "optimizer.warmup_ratio=1.5"),
])
def test_invalid_optimizer_settings(changes, message):
    with pytest.raises(InputError, match=message):
        make_optimizer(config(**changes), total_steps=10)
