"""Distillation losses against plain numpy implementations of REFERENCE.md section 1, and layer maps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinybert_jax.distill import losses
from tinybert_jax.distill.layer_map import resolve_layer_map
from tinybert_jax.errors import InputError

B, HEADS, T, H = 3, 4, 7, 10


def padded_mask(fully_padded_row=False):
    mask = np.ones((B, T), np.int32)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    if fully_padded_row:
        mask[2, :] = 0
    return mask


def random_scores(rng, mask, mask_value=-10000.0):
    scores = rng.normal(size=(B, HEADS, T, T)).astype(np.float32) * 3
    return np.where(mask[:, None, None, :] == 1, scores, scores + mask_value).astype(np.float32)


# ---- numpy references, written loop-by-loop from the stated semantics
def np_attention_tinybert(s, t):
    s = np.where(s <= -100, 0.0, s)
    t = np.where(t <= -100, 0.0, t)
    return np.mean((s - t) ** 2)


def np_attention_masked(s, t, mask):
    total, count = 0.0, 0
    for b in range(B):
        for h in range(HEADS):
            for q in range(T):
                for k in range(T):
                    if mask[b, q] and mask[b, k]:
                        total += (float(s[b, h, q, k]) - float(t[b, h, q, k])) ** 2
                        count += 1
    return total / max(count, 1)


def np_hidden(s, t, mask, mode):
    if mode == "tinybert":
        return np.mean((s - t) ** 2)
    rows = [(s[b, i] - t[b, i]) ** 2 for b in range(B) for i in range(T) if mask[b, i]]
    return np.sum(rows) / max(len(rows) * s.shape[-1], 1)


def np_soft_ce(s, t, temperature, mask=None, mode="tinybert"):
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    elementwise = -softmax(t / temperature) * np.log(softmax(s / temperature))
    if mode == "tinybert" or mask is None or s.ndim == 2:
        return elementwise.mean()
    rows = [elementwise[b, i] for b in range(s.shape[0]) for i in range(s.shape[1]) if mask[b, i]]
    return np.sum(rows) / (len(rows) * s.shape[-1])


def close(a, b):
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_attention_loss_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    mask = padded_mask()
    s, t = random_scores(rng, mask), random_scores(rng, mask)
    close(losses.attention_mse(s, t, mask, "tinybert"), np_attention_tinybert(s, t))
    close(losses.attention_mse(s, t, mask, "masked"), np_attention_masked(s, t, mask))
    # tinybert mode counts padded entries in the mean: it is smaller than the masked mean here
    assert float(losses.attention_mse(s, t, mask, "tinybert")) < float(losses.attention_mse(s, t, mask, "masked"))


@pytest.mark.parametrize("mode", losses.MODES)
def test_hidden_loss_matches_numpy(mode):
    rng = np.random.default_rng(2)
    mask = padded_mask()
    s, t = rng.normal(size=(2, B, T, H)).astype(np.float32)
    close(losses.hidden_mse(s, t, mask, mode), np_hidden(s, t, mask, mode))


@pytest.mark.parametrize("mode", losses.MODES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_soft_cross_entropy_matches_numpy(mode, temperature):
    rng = np.random.default_rng(3)
    mask = padded_mask()
    s, t = rng.normal(size=(2, B, T, 11)).astype(np.float32) * 2
    close(losses.soft_cross_entropy(s, t, temperature, mask, mode), np_soft_ce(s, t, temperature, mask, mode))
    s2, t2 = s[:, 0], t[:, 0]  # sentence-level logits [B, classes]: mean over batch and classes
    close(losses.soft_cross_entropy(s2, t2, temperature, mask, mode), np_soft_ce(s2, t2, temperature))


@pytest.mark.parametrize("mask_value", [-10000.0, float(np.finfo(np.float32).min), -np.inf])
def test_masked_mode_gradients_finite_with_fully_padded_rows(mask_value):
    rng = np.random.default_rng(4)
    mask = padded_mask(fully_padded_row=True)
    s, t = random_scores(rng, mask, mask_value), random_scores(rng, mask, mask_value)
    hs, ht = rng.normal(size=(2, B, T, H)).astype(np.float32)
    grads = jax.grad(lambda s, hs: losses.attention_mse(s, t, mask, "masked") + losses.hidden_mse(hs, ht, mask,
                                                                                                 "masked"),
                     argnums=(0, 1))(jnp.asarray(s), jnp.asarray(hs))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    assert float(jnp.abs(grads[0][2]).max()) == 0.0  # the fully padded row receives no gradient
    empty = np.zeros_like(mask)
    value = losses.attention_mse(s, t, empty, "masked")
    assert np.isfinite(float(value)) and float(value) == 0.0


def test_uniform_maps_match_the_paper():
    m = resolve_layer_map("uniform", 12, 4)
    assert [t for _, t in m.attention_pairs] == [3, 6, 9, 12]
    assert [t for _, t in m.hidden_pairs] == [0, 3, 6, 9, 12]
    assert [t for _, t in resolve_layer_map("uniform", 12, 6).attention_pairs] == [2, 4, 6, 8, 10, 12]
    assert resolve_layer_map("top", 12, 4).teacher_layers == (9, 10, 11, 12)
    assert resolve_layer_map("bottom", 12, 4).teacher_layers == (1, 2, 3, 4)
    assert resolve_layer_map("bottom", 12, 4).teacher_depth == 4


def test_explicit_maps_for_non_divisible_depths():
    assert resolve_layer_map([2, 5, 7, 10, 12], 12, 5).hidden_pairs == ((0, 0), (1, 2), (2, 5), (3, 7), (4, 10),
                                                                        (5, 12))
    assert resolve_layer_map("2,5,7,10,12", 12, 5).teacher_layers == (2, 5, 7, 10, 12)
    with pytest.raises(InputError, match="multiple of the student depth"):
        resolve_layer_map("uniform", 12, 5)


@pytest.mark.parametrize("spec,message", [
    ([3, 6, 9], "has 3 entries, the student has 4 layers"),
    ([3, 6, 9, 13], r"within 1\.\.12"),
    ([0, 6, 9, 12], r"within 1\.\.12"),
    ([3, 9, 6, 12], "strictly increase"),
    ("middle", "is not one of"),
    ("3,6,x,12", "not a comma-separated list"),
])
def test_invalid_maps_fail_clearly(spec, message):
    with pytest.raises(InputError, match=message) as e:
        resolve_layer_map(spec, 12, 4)
    assert "\n" not in str(e.value)
