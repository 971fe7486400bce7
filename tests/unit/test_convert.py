"""Import variants (file formats, legacy names, TinyBERT checkpoints, hub ids) and export round trips."""
import json
import logging
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from helpers import padded_batch, torch_outputs
from safetensors.numpy import load_file, save_file

from tinybert_jax import convert
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import Bert

# exported class to load for each source class (BertForPreTraining's student export is a BertForMaskedLM)
ROUND_TRIP = {
    "BertModel": ("BertModel", {}, "AutoModel"),
    "BertForMaskedLM": ("BertForMaskedLM", {}, "BertForMaskedLM"),
    "BertForPreTraining": ("BertForPreTraining", {}, "BertForMaskedLM"),
    "classifier": ("BertForSequenceClassification", dict(num_labels=3), "BertForSequenceClassification"),
    "regression": ("BertForSequenceClassification", dict(num_labels=1), "BertForSequenceClassification"),
    "token": ("BertForTokenClassification", dict(num_labels=5), "BertForTokenClassification"),
    "span": ("BertForQuestionAnswering", {}, "BertForQuestionAnswering"),
}


def main_logits(outputs):
    if getattr(outputs, "start_logits", None) is not None:
        return torch.stack([outputs.start_logits, outputs.end_logits], dim=-1)
    for name in ("logits", "prediction_logits"):
        if getattr(outputs, name, None) is not None:
            return getattr(outputs, name)
    return outputs.last_hidden_state


def assert_same_outputs(a, b, tol):
    assert len(a.hidden_states) == len(b.hidden_states)
    for x, y in zip(a.hidden_states, b.hidden_states):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=tol, rtol=0)
    np.testing.assert_allclose(main_logits(a).numpy(), main_logits(b).numpy(), atol=tol, rtol=0)


def load_exported(class_name, path):
    model, info = getattr(transformers, class_name).from_pretrained(path, output_loading_info=True,
                                                                    attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


@pytest.mark.parametrize("kind", ROUND_TRIP)
def test_round_trip_hf_flax_hf(hf_checkpoint, tmp_path, kind):
    cls_name, head, export_cls = ROUND_TRIP[kind]
    original, path = hf_checkpoint(cls_name, **head)
    cfg, params = convert.load_hf_bert(str(path))
    convert.save_hf_bert(cfg, params, tmp_path / "export")
    exported = load_exported(export_cls, tmp_path / "export")
    batch = padded_batch(cfg.vocab_size)
    assert_same_outputs(torch_outputs(original, *batch), torch_outputs(exported, *batch), tol=1e-5)
    if head.get("num_labels") == 1:
        assert exported.config.problem_type == "regression"


def test_export_writes_label_maps_and_tokenizer(hf_checkpoint, tmp_path):
    _, path = hf_checkpoint("BertForSequenceClassification", num_labels=3)
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    (vocab / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]))
    transformers.BertTokenizerFast(str(vocab / "vocab.txt")).save_pretrained(tmp_path / "tok")
    cfg, params = convert.load_hf_bert(str(path))
    labels = {0: "entailment", 1: "neutral", 2: "contradiction"}
    convert.save_hf_bert(cfg, params, tmp_path / "export", tokenizer_dir=tmp_path / "tok", id2label=labels)
    model = load_exported("BertForSequenceClassification", tmp_path / "export")
    assert model.config.id2label == labels
    assert model.config.label2id == {v: k for k, v in labels.items()}
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    assert tokenizer("hello world")["input_ids"] == [2, 5, 6, 3]


def test_pytorch_bin_legacy_names_and_no_prefix(hf_checkpoint, tmp_path):
    """pytorch_model.bin with gamma/beta LayerNorm names and the `bert.` prefix stripped reads the same."""
    model, path = hf_checkpoint("BertForMaskedLM")
    reference_cfg, reference = convert.load_hf_bert(str(path))
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((path / "config.json").read_text())
    state = {k.removeprefix("bert.").replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                                             "LayerNorm.beta"): v
             for k, v in model.state_dict().items()}
    assert any("gamma" in k for k in state) and not any(k.startswith("bert.") for k in state)
    state["cls.predictions.decoder.weight"] = model.bert.embeddings.word_embeddings.weight.detach().clone()
    torch.save(state, legacy / "pytorch_model.bin")
    cfg, params = convert.load_hf_bert(str(legacy))
    assert cfg == reference_cfg
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(a, b)


def test_sharded_safetensors(hf_checkpoint, tmp_path):
    model, path = hf_checkpoint("BertModel")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    cfg, params = convert.load_hf_bert(str(tmp_path / "sharded"))
    _, reference = convert.load_hf_bert(str(path))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(a, b)


def test_released_tinybert_checkpoint(hf_checkpoint, tmp_path, caplog):
    """TinyBERT's release: config without model_type plus extra keys, weights with fit_dense and the NSP head."""
    model, path = hf_checkpoint("BertForPreTraining", hidden_size=24, num_attention_heads=12)
    config = json.loads((path / "config.json").read_text())
    del config["model_type"], config["architectures"]
    config.update(cell={}, emb_size=24, pre_trained="", structure=[])
    (path / "config.json").write_text(json.dumps(config))
    weights = load_file(path / "model.safetensors")
    weights["fit_dense.weight"] = np.ones((32, 24), np.float32)
    weights["fit_dense.bias"] = np.zeros((32,), np.float32)
    save_file(weights, path / "model.safetensors")
    with caplog.at_level(logging.INFO, logger="tinybert_jax.convert"):
        cfg, params = convert.load_hf_bert(str(path))
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.mlm_head) == (24, 12, 2, True)
    assert "fit_dense" in caplog.text and "next-sentence" in caplog.text
    ids, token_types, mask = padded_batch(cfg.vocab_size)
    out = Bert(cfg).apply({"params": params}, ids, token_types, mask)
    np.testing.assert_allclose(np.asarray(out.logits), torch_outputs(model, ids, token_types, mask)
                               .prediction_logits.numpy(), atol=1e-4)


def test_hub_id_offline_says_to_pass_a_local_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="pass a local checkpoint directory") as e:
        convert.load_hf_bert("google-bert/bert-base-uncased")
    assert "\n" not in str(e.value)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tinybert_jax.convert", *map(str, args)], capture_output=True,
                          text=True)


@pytest.mark.slow  # starts processes
def test_cli_help():
    result = run_cli("--help")
    assert result.returncode == 0 and "hf-to-flax" in result.stdout and "flax-to-hf" in result.stdout


@pytest.mark.parametrize("fmt", ["msgpack", "orbax"])
@pytest.mark.slow  # starts processes
def test_cli_hf_to_flax_to_hf(hf_checkpoint, tmp_path, fmt):
    original, path = hf_checkpoint("BertForSequenceClassification", num_labels=2)
    flax_dir, export = tmp_path / "flax", tmp_path / "export"
    result = run_cli("hf-to-flax", path, flax_dir, "--format", fmt)
    assert result.returncode == 0, result.stderr
    assert (flax_dir / ("params.msgpack" if fmt == "msgpack" else "params")).exists()
    result = run_cli("flax-to-hf", flax_dir, export, "--labels", "negative,positive")
    assert result.returncode == 0, result.stderr
    exported = load_exported("BertForSequenceClassification", export)
    assert exported.config.id2label == {0: "negative", 1: "positive"}
    batch = padded_batch(original.config.vocab_size)
    assert_same_outputs(torch_outputs(original, *batch), torch_outputs(exported, *batch), tol=1e-5)


def test_existing_export_survives_a_failed_overwrite(hf_checkpoint, tmp_path, monkeypatch):
    _, path = hf_checkpoint("BertModel")
    cfg, params = convert.load_hf_bert(str(path))
    out = tmp_path / "export"
    convert.save_hf_bert(cfg, params, out)
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    with pytest.raises(InputError, match="already exists"):
        convert.save_hf_bert(cfg, params, out)
    broken = {**params, "pooler": {"kernel": np.zeros((3, 3)), "bias": np.zeros(3)}}
    with pytest.raises(InputError, match="pooler"):
        convert.save_hf_bert(cfg, broken, out, overwrite=True)

    def fail_midway(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr("safetensors.numpy.save_file", fail_midway)
    with pytest.raises(InputError, match=r"/export: could not be written \(disk full\)"):
        convert.save_hf_bert(cfg, params, out, overwrite=True)

    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "hf"]  # no temporary directories left


def test_export_into_an_existing_empty_directory(hf_checkpoint, tmp_path):
    original, path = hf_checkpoint("BertModel")
    cfg, params = convert.load_hf_bert(str(path))
    out = tmp_path / "export"
    out.mkdir()  # as transformers' save_pretrained accepts
    convert.save_hf_bert(cfg, params, out)
    batch = padded_batch(cfg.vocab_size)
    assert_same_outputs(torch_outputs(original, *batch), torch_outputs(load_exported("AutoModel", out), *batch), 1e-5)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="other already exists; choose another output directory or pass overwrite"):
        convert.save_hf_bert(cfg, params, tmp_path / "other")
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]
