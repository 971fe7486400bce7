"""The entry point: config file + overrides, locked config, dispatch to a pipeline."""
import jax
import numpy as np
import pytest
import transformers
from helpers import padded_batch, run_main, torch_outputs

from tinybert_jax import convert
from tinybert_jax.models.bert import Bert

pytestmark = pytest.mark.slow  # every test here starts processes

TINY = ["--config.model.vocab_size=64", "--config.model.hidden_size=24", "--config.model.num_attention_heads=6",
        "--config.model.num_hidden_layers=2", "--config.model.intermediate_size=40"]


def test_init_student_pipeline_with_overrides(tmp_path):
    result = run_main("init_student", tmp_path, *TINY, "--config.seed=3", in_subprocess=True)
    assert result.returncode == 0, result.stderr
    assert "total" in result.stdout
    cfg, params = convert.load_flax_dir(tmp_path / "flax")
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim) == (64, 24, 2, 4)
    counted = sum(x.size for x in jax.tree.leaves(params))
    assert f"{counted:,}" in result.stdout
    exported, info = transformers.AutoModel.from_pretrained(tmp_path / "hf", output_loading_info=True,
                                                            attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, token_types, mask = padded_batch(cfg.vocab_size)
    ours = Bert(cfg).apply({"params": params}, ids, token_types, mask)
    theirs = torch_outputs(exported.eval(), ids, token_types, mask)
    np.testing.assert_allclose(np.asarray(ours.hidden_states[-1]), theirs.last_hidden_state.numpy(), atol=1e-4)


def test_mistyped_config_key_is_an_error(tmp_path):
    result = run_main("init_student", tmp_path, "--config.model.hiden_size=3", in_subprocess=True)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error:")
    assert "hiden_size" in result.stderr and 'Did you mean "hidden_size"' in result.stderr
    assert not any(tmp_path.iterdir())


def test_invalid_model_size_is_one_line(tmp_path):
    result = run_main("init_student", tmp_path, "--config.model.hidden_size=30", "--config.model.vocab_size=64",
                      in_subprocess=True)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "error: config.model: BertConfig.hidden_size=30 is not divisible by num_attention_heads=12")
    assert not any(tmp_path.iterdir())


def test_unknown_pipeline(tmp_path):
    result = run_main("init_student", tmp_path, "--config.pipeline=nope", in_subprocess=True)
    assert result.returncode != 0 and "pipeline 'nope' is unknown" in result.stderr


def test_distributed_settings_errors(tmp_path):
    incomplete = run_main("init_student", tmp_path, "--coordinator_address=127.0.0.1:12399", "--num_processes=2",
                          in_subprocess=True)
    assert incomplete.returncode == 1
    assert incomplete.stderr.strip().splitlines()[-1] == (
        "error: coordinator address 127.0.0.1:12399 given without the process count and id: set "
        "--num_processes/--process_id or JAX_NUM_PROCESSES/JAX_PROCESS_ID")
    out_of_range = run_main("init_student", tmp_path, "--coordinator_address=127.0.0.1:12399", "--num_processes=2",
                            "--process_id=2", in_subprocess=True)
    assert out_of_range.stderr.strip().splitlines()[-1] == "error: process id 2 is not in [0, 2)"
    bad_env = run_main("init_student", tmp_path, in_subprocess=True,
                       env={"JAX_COORDINATOR_ADDRESS": "127.0.0.1:12399", "JAX_NUM_PROCESSES": "two",
                            "JAX_PROCESS_ID": "0"})
    assert bad_env.stderr.strip().splitlines()[-1] == "error: JAX_NUM_PROCESSES='two' is not a non-negative integer"
    not_a_cluster = run_main("init_student", tmp_path, "--distributed=on", in_subprocess=True)
    assert not_a_cluster.stderr.strip().splitlines()[-1].startswith(
        "error: cannot join the distributed runtime at the auto-detected coordinator: ")
    assert not any(tmp_path.iterdir()), "nothing is written"
