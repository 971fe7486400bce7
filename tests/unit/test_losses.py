"""Distillation losses against plain numpy implementations of docs/losses.md, and layer maps."""
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tinybert_jax.distill import losses
from tinybert_jax.distill.layer_map import resolve_layer_map
from tinybert_jax.errors import InputError
from tinybert_jax.task.steps import SEQUENCE_LOSSES, PredictionLoss, prediction_distill_loss

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


# ---- DistilBERT / MiniLM losses (docs/losses.md) against loop-by-loop float64 numpy references
V = 11


def ragged_mask(padded_rows=()):
    """Row 0 full, row 1 with 4 valid tokens, row 2 with a single valid token; `padded_rows` fully padded."""
    mask = np.ones((B, T), np.int32)
    mask[1, 4:] = 0
    mask[2, 1:] = 0
    for row in padded_rows:
        mask[row, :] = 0
    return mask


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def np_kl(teacher_row, student_row):
    """KL(softmax(teacher_row) || softmax(student_row)) for 1-D score vectors."""
    log_t, log_s = np_log_softmax(teacher_row), np_log_softmax(student_row)
    return sum(np.exp(log_t[i]) * (log_t[i] - log_s[i]) for i in range(len(log_t)))


def np_logits_kl(s, t, temperature, mask):
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if mask[b, i]:
                total += np_kl(t[b, i] / temperature, s[b, i] / temperature)
                count += 1
    return temperature ** 2 * total / max(count, 1)


def np_mlm_ce(logits, labels, label_mask):
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            if label_mask[b, i]:
                total -= np_log_softmax(logits[b, i])[labels[b, i]]
                count += 1
    return total / max(count, 1)


def np_hidden_cosine(s, t, mask):
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if mask[b, i]:
                hs, ht = s[b, i].astype(np.float64), t[b, i].astype(np.float64)
                total += 1.0 - hs @ ht / max(np.linalg.norm(hs) * np.linalg.norm(ht), 1e-8)
                count += 1
    return total / max(count, 1)


def np_attention_kl(s, t, mask):
    """Scores [B, heads, T, T]; softmax over the valid keys only, KL summed over them, mean over heads x queries."""
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        keys = [k for k in range(s.shape[-1]) if mask[b, k]]
        for h in range(s.shape[1]):
            for q in range(s.shape[2]):
                if mask[b, q]:
                    total += np_kl(t[b, h, q, keys], s[b, h, q, keys])
                    count += 1
    return total / max(count, 1)


def np_relation_scores(x, heads):
    batch, length, width = x.shape
    d = width // heads
    out = np.zeros((batch, heads, length, length))
    for b in range(batch):
        for a in range(heads):
            chunk = x[b, :, a * d:(a + 1) * d].astype(np.float64)
            for q in range(length):
                for k in range(length):
                    out[b, a, q, k] = chunk[q] @ chunk[k] / np.sqrt(d)
    return out


def np_relation_kl(s, t, heads, mask):
    return np_attention_kl(np_relation_scores(s, heads), np_relation_scores(t, heads), mask)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_logits_kl_matches_numpy(temperature):
    rng = np.random.default_rng(10)
    mask = ragged_mask()
    s, t = rng.normal(size=(2, B, T, V)).astype(np.float32) * 2
    s[1, 5:] = 1e4  # garbage at padded positions must not matter
    close(losses.logits_kl(s, t, temperature, mask), np_logits_kl(s, t, temperature, mask))


def test_logits_kl_is_t_squared_times_the_tempered_kl():
    rng = np.random.default_rng(11)
    mask = ragged_mask()
    s, t = rng.normal(size=(2, B, T, V)).astype(np.float32) * 2
    total, count = 0.0, 0
    for b in range(B):
        for i in range(T):
            if mask[b, i]:
                total += np_kl(t[b, i] / 2.0, s[b, i] / 2.0)
                count += 1
    close(losses.logits_kl(s, t, 2.0, mask), 4.0 * total / count)
    # and it differs from the untempered KL (the temperature is actually applied)
    assert abs(float(losses.logits_kl(s, t, 2.0, mask)) - float(losses.logits_kl(s, t, 1.0, mask))) > 1e-3


def test_masked_lm_cross_entropy_matches_numpy():
    rng = np.random.default_rng(12)
    logits = rng.normal(size=(B, T, V)).astype(np.float32) * 2
    labels = rng.integers(0, V, size=(B, T))
    label_mask = rng.random((B, T)) < 0.4
    label_mask[2] = False
    label_mask[2, 3] = True  # a row with a single selected position
    labels = np.where(label_mask, labels, -100)  # unselected labels may be out of range
    close(losses.masked_lm_cross_entropy(logits, labels, label_mask), np_mlm_ce(logits, labels, label_mask))
    close(losses.masked_lm_cross_entropy(logits, labels, label_mask.astype(np.int32)),
          np_mlm_ce(logits, labels, label_mask))


def test_hidden_cosine_matches_numpy_and_bounds():
    rng = np.random.default_rng(13)
    mask = ragged_mask()
    s, t = rng.normal(size=(2, B, T, H)).astype(np.float32)
    s[0, 2] = 0.0  # a zero vector on a valid token: cos 0, no nan
    t[1, 1] = 0.0
    close(losses.hidden_cosine(s, t, mask), np_hidden_cosine(s, t, mask))
    grads = jax.grad(losses.hidden_cosine, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t), mask)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    u = rng.normal(size=(B, T, H)).astype(np.float32)
    assert abs(float(losses.hidden_cosine(u, u, mask))) < 1e-6
    u_garbage = np.where(mask[..., None] == 1, u, rng.normal(size=u.shape)).astype(np.float32)
    close(losses.hidden_cosine(-u, u_garbage, mask), 2.0)  # negated on valid tokens, anything on padded ones


@pytest.mark.parametrize("mask_value", [0.0, -10000.0, -np.inf])
def test_attention_distribution_kl_matches_numpy(mask_value):
    rng = np.random.default_rng(14)
    mask = ragged_mask()
    s, t = random_scores(rng, mask), random_scores(rng, mask)
    clean_s, clean_t = (np.where(mask[:, None, None, :] == 1, x, 0.0) for x in (s, t))
    expected = np_attention_kl(clean_s, clean_t, mask)
    s_in, t_in = (np.where(mask[:, None, None, :] == 1, x, x + mask_value).astype(np.float32)
                  for x in (clean_s, clean_t))
    close(losses.attention_distribution_kl(s_in, t_in, mask), expected)


@pytest.mark.parametrize("student_width,teacher_width,heads", [(12, 24, 3), (12, 24, 1), (8, 8, 4)])
def test_relation_kl_matches_numpy(student_width, teacher_width, heads):
    rng = np.random.default_rng(15)
    mask = ragged_mask()
    s = rng.normal(size=(B, T, student_width)).astype(np.float32)
    t = rng.normal(size=(B, T, teacher_width)).astype(np.float32)
    close(losses.relation_kl(s, t, heads, mask), np_relation_kl(s, t, heads, mask))


def test_relation_kl_splits_contiguous_chunks():
    # Permuting the features inside a chunk keeps the loss; swapping features across chunks changes it.
    rng = np.random.default_rng(16)
    mask = ragged_mask()
    s, t = rng.normal(size=(B, T, 12)).astype(np.float32), rng.normal(size=(B, T, 24)).astype(np.float32)
    base = float(losses.relation_kl(s, t, 3, mask))
    within = s[..., [1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
    across = s[..., [4, 1, 2, 3, 0, 5, 6, 7, 8, 9, 10, 11]]
    close(losses.relation_kl(within, t, 3, mask), base)
    assert abs(float(losses.relation_kl(across, t, 3, mask)) - base) > 1e-4


@pytest.mark.parametrize("student_width,teacher_width", [(10, 24), (12, 25)])
def test_relation_kl_rejects_non_divisible_widths(student_width, teacher_width):
    mask = ragged_mask()
    s, t = np.zeros((B, T, student_width), np.float32), np.zeros((B, T, teacher_width), np.float32)
    side = "student" if student_width % 3 else "teacher"
    with pytest.raises(ValueError, match=f"{side} width {student_width if side == 'student' else teacher_width} "
                                         "is not divisible by num_relation_heads=3"):
        losses.relation_kl(s, t, 3, mask)
    with pytest.raises(ValueError, match="positive int"):
        losses.relation_kl(s, t, 0, mask)


def _all_new_losses(rng):
    """(name, loss(student, mask), student input, numpy reference(student, mask)) for every new loss."""
    logits_t = rng.normal(size=(B, T, V)).astype(np.float32)
    hidden_t = rng.normal(size=(B, T, H)).astype(np.float32)
    scores_t = rng.normal(size=(B, HEADS, T, T)).astype(np.float32)
    relation_t = rng.normal(size=(B, T, 24)).astype(np.float32)
    labels = rng.integers(0, V, size=(B, T))
    return [
        ("logits_kl", lambda s, m: losses.logits_kl(s, logits_t, 2.0, m),
         rng.normal(size=(B, T, V)).astype(np.float32), lambda s, m: np_logits_kl(s, logits_t, 2.0, m)),
        ("masked_lm_cross_entropy", lambda s, m: losses.masked_lm_cross_entropy(s, labels, m),
         rng.normal(size=(B, T, V)).astype(np.float32), lambda s, m: np_mlm_ce(s, labels, m)),
        ("hidden_cosine", lambda s, m: losses.hidden_cosine(s, hidden_t, m),
         rng.normal(size=(B, T, H)).astype(np.float32), lambda s, m: np_hidden_cosine(s, hidden_t, m)),
        ("attention_distribution_kl", lambda s, m: losses.attention_distribution_kl(s, scores_t, m),
         rng.normal(size=(B, HEADS, T, T)).astype(np.float32), lambda s, m: np_attention_kl(s, scores_t, m)),
        ("relation_kl", lambda s, m: losses.relation_kl(s, relation_t, 3, m),
         rng.normal(size=(B, T, 12)).astype(np.float32), lambda s, m: np_relation_kl(s, relation_t, 3, m)),
    ]


def test_new_losses_finite_gradients_with_fully_padded_rows():
    for name, loss, student, reference in _all_new_losses(np.random.default_rng(17)):
        value_and_grad = jax.jit(jax.value_and_grad(loss))  # one compilation for both masks
        for padded_rows in [(2,), (0, 1, 2)]:
            mask = ragged_mask(padded_rows)
            value, grad = value_and_grad(jnp.asarray(student), mask)
            where = f"{name} with rows {padded_rows} fully padded"
            assert np.isfinite(float(value)), where
            assert np.isfinite(np.asarray(grad)).all(), where
            assert float(jnp.abs(grad[2]).max()) == 0.0, where  # a fully padded row receives no gradient
            if len(padded_rows) == B:
                assert float(value) == 0.0, where
            else:
                close(value, reference(student, mask))


def test_new_losses_compute_in_float32():
    mask = ragged_mask()
    for name, loss, student, _ in _all_new_losses(np.random.default_rng(18)):
        assert loss(jnp.asarray(student, jnp.bfloat16), mask).dtype == jnp.float32, name


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_stage2_sequence_loss_scales_and_gold_term_match_numpy(temperature):
    """hinton: the soft cross-entropy summed over classes times T^2; tinybert: the original's mean over classes;
    alpha < 1 adds (1 - alpha) times cross-entropy to the gold labels; regression: MSE to the teacher (and gold)."""
    rng = np.random.default_rng(4)
    s, t = rng.normal(size=(2, 6, 8)).astype(np.float32) * 2
    labels = rng.integers(0, 8, 6)
    log_p_s = s / temperature - np.log(np.exp(s / temperature).sum(-1, keepdims=True))
    p_t = np.exp(t / temperature) / np.exp(t / temperature).sum(-1, keepdims=True)
    soft_sum = -(p_t * log_p_s).sum(-1).mean()
    gold = -(s - np.log(np.exp(s).sum(-1, keepdims=True)))[np.arange(6), labels].mean()
    batch = {"teacher_logits": t, "labels": labels}
    loss = lambda settings: prediction_distill_loss(SEQUENCE_LOSSES, s, batch, settings, False)
    close(loss(PredictionLoss(temperature)), temperature ** 2 * soft_sum)
    close(loss(PredictionLoss(temperature, "tinybert")), soft_sum / 8)
    close(loss(PredictionLoss(temperature, alpha=0.6)),
          0.6 * temperature ** 2 * soft_sum + 0.4 * gold)
    regression = {"teacher_logits": t[:, :1], "labels": t[:, 1]}
    close(prediction_distill_loss(SEQUENCE_LOSSES, s[:, :1], regression, PredictionLoss(temperature, alpha=0.5), True),
          0.5 * np.mean((s[:, 0] - t[:, 0]) ** 2) + 0.5 * np.mean((s[:, 0] - t[:, 1]) ** 2))


@pytest.mark.parametrize("setting, message", [
    ({"loss_scale": "sum"}, "stage2.loss_scale='sum': use one of hinton, tinybert"),
    ({"alpha": 1.5}, "stage2.alpha=1.5: the soft term's weight must be in [0, 1]"),
    ({"temperature": 0.0}, "stage2.temperature=0 must be positive"),
])
def test_bad_stage2_loss_settings_are_one_line(setting, message):
    stage = ml_collections.ConfigDict({"temperature": 1.0, "loss_scale": "hinton", "alpha": 1.0, **setting})
    with pytest.raises(InputError, match=re.escape(message)):
        PredictionLoss.of(stage)
