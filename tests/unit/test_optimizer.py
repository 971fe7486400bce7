"""Optimizers against numpy implementations of their update rules, and the learning-rate schedules."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tinybert_jax.errors import InputError
from tinybert_jax.train.optimizer import clip_each_tensor_by_norm, make_optimizer


def config(**changes):
    base = dict(name="bert_adam", learning_rate=0.1, schedule="constant", warmup_ratio=0.0, b1=0.9, b2=0.999,
                eps=1e-6, weight_decay=0.01, clip_norm=1.0)
    return ml_collections.ConfigDict({**base, **changes})


PARAMS = {"dense": {"kernel": np.full((2, 3), 0.5, np.float32), "bias": np.full((3,), 0.5, np.float32)},
          "LayerNorm": {"scale": np.ones((3,), np.float32), "bias": np.zeros((3,), np.float32)}}


def random_grads(seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: (rng.normal(size=p.shape) * 2).astype(np.float32), PARAMS)


def numpy_clip_each_tensor(path, g, clip):
    """Each original tensor on its own: a stacked [L, ...] leaf under 'layers' is L tensors, one per layer."""
    if any(key.key == "layers" for key in path):
        return np.stack([numpy_clip_each_tensor((), layer, clip) for layer in g])
    return g * min(1.0, clip / (np.linalg.norm(g) + 1e-6))


def numpy_bert_adam(params, grads_per_step, lr, b1, b2, eps, wd, clip):
    params = jax.tree.map(np.array, params)
    m = jax.tree.map(np.zeros_like, params)
    v = jax.tree.map(np.zeros_like, params)
    for grads in grads_per_step:
        for path, p in jax.tree_util.tree_leaves_with_path(params):
            g = numpy_clip_each_tensor(path, _get(grads, path), clip)
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


def run_optax(cfg, grads_per_step, params=PARAMS):
    tx, _ = make_optimizer(cfg, total_steps=100)
    params = jax.tree.map(jnp.asarray, params)
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


# Per-layer parameters as the models hold them: stacked [L, ...] under 'layers'.
STACKED_PARAMS = {"student": {"layers": {"query": {"kernel": np.full((2, 3, 3), 0.5, np.float32),
                                                   "bias": np.full((2, 3), 0.5, np.float32)}},
                              "pooler": {"kernel": np.full((3, 3), 0.5, np.float32)}}}


def stacked_grads(seed, layer_scales):
    """Gradients for STACKED_PARAMS whose layer i is about layer_scales[i] per element."""
    rng = np.random.default_rng(seed)
    scales = np.asarray(layer_scales, np.float32)

    def one(path, p):
        scale = scales.reshape((-1,) + (1,) * (p.ndim - 1)) if any(k.key == "layers" for k in path) else 2.0
        return (rng.normal(size=p.shape) * scale).astype(np.float32)

    return jax.tree_util.tree_map_with_path(one, STACKED_PARAMS)


def test_clip_each_tensor_clips_every_layer_slice_on_its_own():
    # Layer 0 is far above the clip norm, layer 1 below it: one norm over both layers would shrink layer 1 too.
    grads = stacked_grads(0, [50.0, 0.01])
    clipped, _ = clip_each_tensor_by_norm(1.0).update(jax.tree.map(jnp.asarray, grads), optax.EmptyState())
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        np.testing.assert_allclose(np.asarray(_get(clipped, path)), numpy_clip_each_tensor(path, g, 1.0),
                                   rtol=1e-5, atol=1e-7)


def test_bert_adam_clips_each_layer_of_a_stacked_tensor_on_its_own():
    # Layer 0's size changes from step to step, always above the clip norm; layer 1 stays below it. Clipped
    # together, layer 1's gradients would be rescaled by a different factor each step, which Adam does not undo.
    grads = [stacked_grads(seed, [scale, 0.05]) for seed, scale in enumerate([5.0, 500.0, 50.0])]
    ours = run_optax(config(), grads, STACKED_PARAMS)
    reference = numpy_bert_adam(STACKED_PARAMS, grads, 0.1, 0.9, 0.999, 1e-6, 0.01, 1.0)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)


def test_bert_adam_state_keeps_the_parameter_structure():
    tx, _ = make_optimizer(config(), total_steps=10)
    state = tx.init(jax.tree.map(jnp.asarray, STACKED_PARAMS))
    adam_state = state[1]
    assert jax.tree.structure(adam_state.mu) == jax.tree.structure(STACKED_PARAMS)
    assert jax.tree.map(np.shape, adam_state.nu) == jax.tree.map(np.shape, STACKED_PARAMS)


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
