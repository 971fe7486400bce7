"""Flax forward vs transformers' PyTorch BERT on padded batches: hidden states, attention, pooled output, logits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import padded_batch, torch_outputs
from tinybert_jax.convert import load_hf_bert
from tinybert_jax.models.bert import MASK_BIAS, Bert

SIZES = {
    "h32": dict(),
    "h312-12heads": dict(vocab_size=120, hidden_size=312, num_attention_heads=12, intermediate_size=64),
    "h48-3heads-gelu_new": dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=3, hidden_act="gelu_new"),
}
CLASSES = {
    "BertModel": ("BertModel", {}),
    "BertForMaskedLM": ("BertForMaskedLM", {}),
    "BertForPreTraining": ("BertForPreTraining", {}),
    "classifier": ("BertForSequenceClassification", dict(num_labels=3)),
    "regression": ("BertForSequenceClassification", dict(num_labels=1)),
}
TOL = 1e-4


def flax_forward(cfg, params, ids, token_types, mask):
    return Bert(cfg).apply({"params": params}, ids, token_types, mask, deterministic=True)


def masked_softmax(scores, mask):
    return jax.nn.softmax(jnp.where(mask[:, None, None, :] == 1, scores, -jnp.inf), axis=-1)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", CLASSES)
def test_forward_matches_pytorch(hf_checkpoint, size, kind):
    cls_name, head = CLASSES[kind]
    model, path = hf_checkpoint(cls_name, **SIZES[size], **head)
    cfg, params = load_hf_bert(str(path))
    ids, token_types, mask = padded_batch(cfg.vocab_size)
    ref = torch_outputs(model, ids, token_types, mask)
    out = flax_forward(cfg, params, ids, token_types, mask)

    assert len(out.hidden_states) == cfg.num_hidden_layers + 1 == len(ref.hidden_states)
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=TOL, rtol=0)
    assert len(out.attention_scores) == cfg.num_hidden_layers
    for ours, theirs in zip(out.attention_scores, ref.attentions):
        assert ours.shape == (3, cfg.num_attention_heads, 9, 9)
        np.testing.assert_allclose(np.asarray(masked_softmax(ours, mask)), theirs.numpy(), atol=TOL, rtol=0)

    pooled = getattr(ref, "pooler_output", None)
    if kind in ("classifier", "regression", "BertModel", "BertForPreTraining"):
        assert out.pooled_output is not None
    if pooled is not None:
        np.testing.assert_allclose(np.asarray(out.pooled_output), pooled.numpy(), atol=TOL, rtol=0)
    if kind == "BertModel":
        assert out.logits is None
    else:
        logits = ref.prediction_logits if kind == "BertForPreTraining" else ref.logits
        assert out.logits.shape == tuple(logits.shape)
        np.testing.assert_allclose(np.asarray(out.logits), logits.numpy(), atol=TOL, rtol=0)


def test_attention_scores_are_pre_softmax_with_additive_key_mask(hf_checkpoint):
    """Scores = Q K^T / sqrt(d) + (1 - mask) * -10000 over key columns; padded query rows stay finite."""
    model, path = hf_checkpoint("BertModel")
    cfg, params = load_hf_bert(str(path))
    ids, token_types, mask = padded_batch(cfg.vocab_size)
    ref = torch_outputs(model, ids, token_types, mask)
    out = flax_forward(cfg, params, ids, token_types, mask)

    layer = model.encoder.layer[1].attention.self
    hidden = ref.hidden_states[1]
    heads, d = cfg.num_attention_heads, cfg.head_dim
    q = layer.query(hidden).detach().numpy().reshape(3, 9, heads, d)
    k = layer.key(hidden).detach().numpy().reshape(3, 9, heads, d)
    expected = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d) + (1 - mask[:, None, None, :]) * MASK_BIAS
    np.testing.assert_allclose(np.asarray(out.attention_scores[1]), expected, atol=1e-3, rtol=1e-5)
    assert np.isfinite(np.asarray(out.attention_scores[1])).all()


def test_dropout_only_when_not_deterministic(hf_checkpoint):
    _, path = hf_checkpoint("BertForSequenceClassification", num_labels=2)
    cfg, params = load_hf_bert(str(path))
    ids, token_types, mask = padded_batch(cfg.vocab_size)
    apply = lambda det, seed: Bert(cfg).apply({"params": params}, ids, token_types, mask, deterministic=det,
                                              rngs={"dropout": jax.random.key(seed)}).logits
    np.testing.assert_array_equal(apply(True, 0), apply(True, 1))
    assert not np.allclose(apply(False, 0), apply(False, 1))
    assert not np.allclose(apply(False, 0), apply(True, 0))


def test_bfloat16_compute_stays_close_to_float32(hf_checkpoint):
    _, path = hf_checkpoint("BertForMaskedLM")
    cfg, params = load_hf_bert(str(path))
    ids, token_types, mask = padded_batch(cfg.vocab_size)
    fp32 = flax_forward(cfg, params, ids, token_types, mask)
    bf16 = flax_forward(cfg.replace(dtype="bfloat16"), params, ids, token_types, mask)
    # bf16 matmul inputs, float32 accumulation and activations
    assert all(x.dtype == jnp.float32 for x in bf16.hidden_states + bf16.attention_scores + (bf16.logits,))
    assert not np.array_equal(np.asarray(bf16.logits), np.asarray(fp32.logits))
    np.testing.assert_allclose(np.asarray(bf16.logits), np.asarray(fp32.logits), atol=0.1)
