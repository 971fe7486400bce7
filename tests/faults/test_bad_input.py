"""Bad checkpoints: one clear line naming the file/key at fault, a non-zero exit, nothing written."""
import json
import subprocess
import sys

import pytest
from safetensors.numpy import load_file, save_file

from tinybert_jax import convert
from tinybert_jax.errors import InputError


def missing_path(make, tmp_path):
    return tmp_path / "does-not-exist", "no such directory"


def no_config(make, tmp_path):
    _, path = make()
    (path / "config.json").unlink()
    return path, "no config.json"


def broken_json(make, tmp_path):
    _, path = make()
    (path / "config.json").write_text("{not json")
    return path, "config.json: not valid JSON"


def other_model_type(model_type):
    def case(make, tmp_path):
        _, path = make()
        config = json.loads((path / "config.json").read_text())
        config["model_type"] = model_type
        (path / "config.json").write_text(json.dumps(config))
        return path, f"model_type '{model_type}' is not a BERT"
    case.__name__ = f"model_type_{model_type}"
    return case


def weight_missing(make, tmp_path):
    _, path = make()
    weights = load_file(path / "model.safetensors")
    del weights["encoder.layer.1.output.dense.weight"]
    save_file(weights, path / "model.safetensors")
    return path, "weight 'encoder.layer.1.output.dense.weight' is missing"


def wrong_shape(make, tmp_path):
    _, path = make()
    config = json.loads((path / "config.json").read_text())
    config["intermediate_size"] = 40
    (path / "config.json").write_text(json.dumps(config))
    return path, (r"weight 'encoder.layer.0.intermediate.dense.weight' has shape \(37, 32\) but config.json implies "
                  r"\(40, 32\)")


def truncated_safetensors(make, tmp_path):
    _, path = make()
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    return path, "model.safetensors: cannot read safetensors .* corrupt or truncated"


def garbage_safetensors(make, tmp_path):
    _, path = make()
    (path / "model.safetensors").write_bytes(b"\x00\x01garbage" * 100)
    return path, "model.safetensors: cannot read safetensors .* corrupt or truncated"


def no_weights(make, tmp_path):
    _, path = make()
    (path / "model.safetensors").unlink()
    return path, "no weights found; expected model.safetensors"


CASES = [missing_path, no_config, broken_json, other_model_type("roberta"), other_model_type("albert"),
         weight_missing, wrong_shape, truncated_safetensors, garbage_safetensors, no_weights]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_import_error_is_one_clear_line(hf_checkpoint, tmp_path, case):
    path, message = case(hf_checkpoint, tmp_path)
    with pytest.raises(InputError, match=message) as e:
        convert.load_hf_bert(str(path))
    assert "\n" not in str(e.value)
    assert str(path) in str(e.value)


@pytest.mark.slow  # starts processes
@pytest.mark.parametrize("case", [missing_path, other_model_type("roberta"), wrong_shape, truncated_safetensors],
                         ids=lambda c: c.__name__)
def test_cli_exits_non_zero_and_writes_nothing(hf_checkpoint, tmp_path, case):
    path, message = case(hf_checkpoint, tmp_path)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "tinybert_jax.convert", "hf-to-flax", str(path), str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(path) in errors[0], result.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_flax_dir_errors(tmp_path):
    with pytest.raises(InputError, match="not a Flax checkpoint directory"):
        convert.load_flax_dir(tmp_path)
    (tmp_path / "bert_config.json").write_text(json.dumps({"hidden_size": 30, "num_attention_heads": 4}))
    with pytest.raises(InputError, match="not divisible"):
        convert.load_flax_dir(tmp_path)
    (tmp_path / "bert_config.json").write_text(json.dumps({"hidden_size": 32, "num_attention_heads": 4}))
    (tmp_path / "params.msgpack").write_bytes(b"\xc1\xc1 corrupt")
    with pytest.raises(InputError, match="params.msgpack: cannot decode"):
        convert.load_flax_dir(tmp_path)
