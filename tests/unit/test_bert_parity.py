"""Flax forward vs transformers' PyTorch BERT on padded batches: hidden states, attention, pooled output, logits."""
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import counted_traces, padded_batch, torch_outputs

from tinybert_jax.convert import load_hf_bert
from tinybert_jax.distill.step import trim_teacher
from tinybert_jax.models.bert import MASK_BIAS, Bert, BertConfig, abstract_params, init_params

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


@pytest.mark.parametrize("cls_name, head", [("BertForTokenClassification", dict(num_labels=5)),
                                            ("BertForQuestionAnswering", {})])
def test_token_and_span_heads_match_pytorch(hf_checkpoint, cls_name, head):
    """Per-token heads read the last hidden state, no pooler: [B, T, labels] logits; span logits stack the
    transformers model's start and end logits on the last axis."""
    model, path = hf_checkpoint(cls_name, **head)
    cfg, params = load_hf_bert(str(path))
    assert not cfg.pooler and cfg.task_head == ("token" if head else "span")
    ids, token_types, mask = padded_batch(cfg.vocab_size)
    ref = torch_outputs(model, ids, token_types, mask)
    out = flax_forward(cfg, params, ids, token_types, mask)
    logits = ref.logits if head else np.stack([ref.start_logits.numpy(), ref.end_logits.numpy()], axis=-1)
    assert out.logits.shape == (3, 9, head.get("num_labels", 2))
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(logits), atol=TOL, rtol=0)


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


BF16_COMPUTE = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=37, max_position_embeddings=16, num_labels=3, dtype="bfloat16")


def perturbed(path, x, zero_kernels=False):
    """Embedding tables exactly representable in bfloat16 (so storing them in bfloat16 changes nothing), LayerNorm
    parameters and biases that are not (so any bfloat16 rounding of them shows), kernels random or zero."""
    rng = np.random.RandomState(zlib.crc32(jax.tree_util.keystr(path).encode()))
    name = path[-1].key
    if name == "embedding":
        return np.asarray(jnp.asarray(rng.randn(*x.shape), jnp.bfloat16).astype(jnp.float32))
    if name == "kernel":
        return np.zeros(x.shape, np.float32) if zero_kernels else np.asarray(x)
    return ((1.0 if name == "scale" else 0.0) + 0.5 * rng.randn(*x.shape)).astype(np.float32)


def bfloat16_model(stored: str, zero_kernels: bool = False):
    """(config, params to run, their float32 originals) for bfloat16 compute, parameters stored as a trainable
    student stores them (float32) or as the frozen bfloat16 teacher does (trim_teacher)."""
    originals = jax.tree_util.tree_map_with_path(lambda path, x: perturbed(path, x, zero_kernels),
                                                 init_params(BF16_COMPUTE, jax.random.key(0)))
    if stored == "float32":
        return BF16_COMPUTE, originals, originals
    return (*trim_teacher(BF16_COMPUTE, originals, BF16_COMPUTE.num_hidden_layers, False, dtype="bfloat16"),
            originals)


def numpy_layer_norm(x, norm, eps):
    x = np.asarray(x, np.float64)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * norm["scale"] + norm["bias"]


@pytest.mark.parametrize("stored", ["float32", "bfloat16"])
def test_bfloat16_embedding_sum_and_layer_norm_stay_float32(stored):
    """LayerNorm(word + position + type) in float32 precision: the rows of bfloat16 tables are summed in float32."""
    cfg, params, originals = bfloat16_model(stored)
    ids, token_types, mask = padded_batch(cfg.vocab_size)
    out = flax_forward(cfg, params, ids, token_types, mask)

    emb = jax.tree.map(lambda x: np.asarray(x, np.float64), originals["embeddings"])
    summed = (emb["word_embeddings"]["embedding"][ids] + emb["position_embeddings"]["embedding"][:ids.shape[1]]
              + emb["token_type_embeddings"]["embedding"][token_types])
    expected = numpy_layer_norm(summed, emb["LayerNorm"], cfg.layer_norm_eps)
    assert out.hidden_states[0].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out.hidden_states[0]), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("stored", ["float32", "bfloat16"])
def test_bfloat16_biases_are_added_in_float32(stored):
    """With every kernel zero each dense layer outputs its bias: a layer is LN2(LN1(h + attention-output bias) +
    output bias), the pooler tanh(its bias), the classifier its bias, each exact in float32."""
    cfg, params, originals = bfloat16_model(stored, zero_kernels=True)
    ids, token_types, mask = padded_batch(cfg.vocab_size)
    out = flax_forward(cfg, params, ids, token_types, mask)

    hidden = np.asarray(out.hidden_states[0], np.float64)
    for index in range(cfg.num_hidden_layers):
        layer = jax.tree.map(lambda x: np.asarray(x[index], np.float64), originals["layers"])
        hidden = numpy_layer_norm(hidden + layer["attention_output"]["bias"], layer["attention_norm"],
                                  cfg.layer_norm_eps)
        hidden = numpy_layer_norm(hidden + layer["output"]["bias"], layer["output_norm"], cfg.layer_norm_eps)
        np.testing.assert_allclose(np.asarray(out.hidden_states[index + 1]), hidden, atol=1e-5, rtol=0)
    if stored == "float32":  # the trimmed teacher has neither pooler nor classifier
        pooled = np.tanh(np.asarray(originals["pooler"]["bias"], np.float64))
        np.testing.assert_allclose(np.asarray(out.pooled_output), np.broadcast_to(pooled, (3, cfg.hidden_size)),
                                   atol=1e-6, rtol=0)
        logits = np.broadcast_to(originals["classifier"]["bias"], (3, cfg.num_labels))
        np.testing.assert_array_equal(np.asarray(out.logits), logits)


def test_abstract_params_are_traced_once_per_config_and_each_caller_gets_its_own_tree():
    cfg = BertConfig(vocab_size=53, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=12)
    with counted_traces() as traces:
        first = abstract_params(cfg)
        traced_first = len(traces)
        second = abstract_params(cfg)
    assert traced_first > 0 and len(traces) == traced_first
    assert first["embeddings"]["word_embeddings"]["embedding"].value.shape == (53, 8)
    del first["embeddings"]
    assert "embeddings" in second and "embeddings" in abstract_params(cfg)
