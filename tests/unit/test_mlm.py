"""DistilBERT-style masking: count-smoothed token weights and the exact-count weighted draw of masked positions."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinybert_jax.train.mlm import mask_tokens_weighted, smoothed_token_weights

PAD, CLS, SEP, MASK = 0, 2, 3, 4
SPECIALS = (CLS, SEP, PAD)
VOCAB = 1000
SHAPE = (2, 60)
DRAWS = 8000
# Compiled once each (every test uses SHAPE; arrays and mask_prob are traced arguments), so the tests stay fast.
masking = jax.jit(mask_tokens_weighted, static_argnums=(4, 5))
many_maskings = jax.jit(jax.vmap(mask_tokens_weighted, in_axes=(0, None, None, None, None, None, None)),
                        static_argnums=(4, 5))  # over a batch of rng keys


def uniform_weights(vocab=VOCAB):
    return smoothed_token_weights(np.full(vocab, 10, np.int64), SPECIALS)


def random_batch(seed, batch=SHAPE[0], seq=SHAPE[1], vocab=VOCAB):
    """[CLS] tokens [SEP] [PAD]..., of random lengths; returns (input_ids, attention_mask) as numpy int32."""
    rng = np.random.default_rng(seed)
    input_ids = np.full((batch, seq), PAD, np.int32)
    attention_mask = np.zeros((batch, seq), np.int32)
    for row in range(batch):
        length = int(rng.integers(3, seq + 1))
        input_ids[row, :length] = rng.integers(5, vocab, length)
        input_ids[row, 0], input_ids[row, length - 1] = CLS, SEP
        attention_mask[row, :length] = 1
    return input_ids, attention_mask


# ---------------------------------------------------------------------------------------------- weights
def test_smoothed_token_weights_match_the_formula():
    counts = np.array([5, 0, 7, 9, 1, 100, 0, 12345678, 3], np.int64)
    weights = smoothed_token_weights(counts, special_ids=(0, 2, 3), smoothing=0.7)
    assert weights.dtype == np.float32 and weights.shape == counts.shape
    expected = np.maximum(counts, 1).astype(np.float64) ** -0.7
    expected[[0, 2, 3]] = 0
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    assert (weights[[0, 2, 3]] == 0).all()
    assert np.isfinite(weights).all() and weights[1] == weights[6] == 1.0  # unseen tokens: as if seen once
    assert weights[5] > weights[7] > 0  # rarer tokens weigh more
    np.testing.assert_allclose(smoothed_token_weights(counts, (), smoothing=0.5),
                               np.maximum(counts, 1) ** -0.5, rtol=1e-6)


# ---------------------------------------------------------------------------------------------- masking
@pytest.mark.parametrize("seed", range(6))
def test_exactly_round_mask_prob_candidates_are_chosen_never_specials(seed):
    input_ids, attention_mask = random_batch(seed)
    weights = uniform_weights()
    # A non-special token under padding (attention_mask 0) must not be chosen either.
    input_ids[attention_mask == 0] = 7
    weights[9] = 0.0  # a zero-weight ordinary token is not a candidate
    input_ids[:, 1] = np.where(attention_mask[:, 2] == 1, 9, input_ids[:, 1])
    candidates = (attention_mask == 1) & (weights[input_ids] > 0)
    expected = max(1, math.floor(0.15 * int(candidates.sum()) + 0.5))  # round, halves up
    for i in range(5):
        masked, chosen = masking(jax.random.key(100 * seed + i), input_ids, attention_mask, weights, MASK, VOCAB,
                                 0.15)
        chosen = np.asarray(chosen)
        assert chosen.dtype == bool and chosen.shape == input_ids.shape
        assert int(chosen.sum()) == expected
        assert not (chosen & ~candidates).any()
        assert not np.isin(input_ids[chosen], SPECIALS + (9,)).any()
        np.testing.assert_array_equal(np.asarray(masked)[~chosen], input_ids[~chosen])


@pytest.mark.parametrize("mask_prob, candidates, expected", [(0.15, 0, 0), (0.15, 1, 1), (0.15, 3, 1),
                                                              (0.15, 20, 3), (0.15, 30, 5), (0.15, 60, 9),
                                                              (0.15, 76, 11), (0.5, 5, 3), (1.0, 7, 7)])
def test_count_edge_cases(mask_prob, candidates, expected):
    input_ids = np.full(SHAPE, PAD, np.int32)
    attention_mask = np.zeros(SHAPE, np.int32)
    flat_ids, flat_mask = input_ids.reshape(-1), attention_mask.reshape(-1)
    flat_ids[:candidates] = np.arange(candidates) % (VOCAB - 5) + 5
    flat_mask[:candidates + 4] = 1  # four real special tokens ([PAD] id, weight 0) after them
    _, chosen = masking(jax.random.key(0), input_ids, attention_mask, uniform_weights(), MASK, VOCAB, mask_prob)
    assert int(np.sum(chosen)) == expected
    assert not np.asarray(chosen).reshape(-1)[candidates:].any()


def test_selection_rate_follows_token_weights():
    """Choosing 1 of 100 candidates is one categorical draw: P(position) = weight / total weight exactly."""
    rare, frequent = 11, 12
    counts = np.full(VOCAB, 1000, np.int64)
    counts[rare], counts[frequent] = 100, 1000
    weights = smoothed_token_weights(counts, SPECIALS)
    ratio = float(weights[rare] / weights[frequent])
    assert ratio == pytest.approx(10 ** 0.7, rel=1e-5)
    input_ids = np.full(SHAPE, PAD, np.int32)
    attention_mask = np.zeros(SHAPE, np.int32)
    row = np.array([CLS] + [rare] * 15 + [frequent] * 35 + [SEP] + [PAD] * 8, np.int32)
    input_ids[:] = row
    attention_mask[:, :52] = 1
    rare_positions, frequent_positions = input_ids == rare, input_ids == frequent  # 30 and 70 of them

    _, chosen = many_maskings(jax.random.split(jax.random.key(0), DRAWS), input_ids, attention_mask, weights, MASK,
                              VOCAB, 0.01)
    chosen = np.asarray(chosen)
    assert (chosen.sum((1, 2)) == 1).all()
    rare_rate = chosen[:, rare_positions].sum() / rare_positions.sum()
    frequent_rate = chosen[:, frequent_positions].sum() / frequent_positions.sum()
    assert rare_rate / frequent_rate == pytest.approx(ratio, rel=0.15)
    # The weights matter: equal weights would give a rate ratio near 1.
    assert rare_rate / frequent_rate > 3


def test_chosen_tokens_are_80_mask_10_random_10_kept():
    input_ids, attention_mask = random_batch(1)
    weights = uniform_weights()

    masked, chosen = many_maskings(jax.random.split(jax.random.key(1), DRAWS), input_ids, attention_mask, weights,
                                   MASK, VOCAB, 0.15)
    masked, chosen = np.asarray(masked), np.asarray(chosen)
    original = np.broadcast_to(input_ids, masked.shape)
    np.testing.assert_array_equal(masked[~chosen], original[~chosen])
    total = chosen.sum()
    assert total > 10_000
    to_mask = (masked[chosen] == MASK).mean()
    kept = (masked[chosen] == original[chosen]).mean()
    replaced = ((masked[chosen] != MASK) & (masked[chosen] != original[chosen])).mean()
    assert to_mask == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1, abs=0.02)  # a random draw of the same token (1 in 1000) counts as kept
    assert replaced == pytest.approx(0.1, abs=0.02)
    assert ((masked[chosen] >= 0) & (masked[chosen] < VOCAB)).all()


def test_same_rng_same_masking_other_rng_differs():
    input_ids, attention_mask = random_batch(2)
    weights = jnp.asarray(uniform_weights())
    first, again, other = (masking(jax.random.key(seed), input_ids, attention_mask, weights, MASK, VOCAB, 0.15)
                           for seed in (5, 5, 6))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])
    assert not np.array_equal(first[0], other[0])
