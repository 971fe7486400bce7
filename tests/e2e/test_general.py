"""General distillation end to end through `python -m tinybert_jax.main` with a tiny random-init HF teacher."""
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import transformers
from helpers import GENERAL_STEPS as STEPS
from helpers import (
    ROOT,
    command,
    general_assets,
    last_error,
    load_config,
    made_once,
    metrics,
    read_run_state,
    run,
    run_main,
)


@pytest.fixture(scope="session")
def assets(shared_dir):
    return general_assets(shared_dir, "general")


@pytest.fixture(scope="session")
def reference_run(assets, shared_dir):
    return made_once(shared_dir, "general_reference", lambda workdir: run(command(assets, workdir)))


def test_losses_fall_metrics_and_export(reference_run):
    history = metrics(reference_run)
    assert sorted(history) == list(range(1, STEPS + 1))
    first = history[1]
    assert {"loss", "embedding", "attention", "hidden", "learning_rate", "grad_norm", "examples_per_s"} <= set(first)
    for term in ("embedding", "attention", "hidden", "loss"):
        start = np.mean([history[s][term] for s in range(1, 6)])
        end = np.mean([history[s][term] for s in range(STEPS - 4, STEPS + 1)])
        assert end < 0.8 * start, (term, start, end)
    assert any(p.name.startswith("events.out.tfevents") for p in reference_run.iterdir())
    model, info = transformers.AutoModel.from_pretrained(reference_run / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (16, 2)
    assert transformers.AutoTokenizer.from_pretrained(reference_run / "export")("the teacher")["input_ids"][0] == 2


def test_export_carries_the_trained_projection(reference_run):
    from flax import serialization

    exported = serialization.msgpack_restore((reference_run / "export" / "projection.msgpack").read_bytes())
    trained = read_run_state(reference_run / "checkpoints", STEPS)["params"]["projection"]
    assert exported["dense"]["kernel"].shape == (16, 32)  # student width -> teacher width
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(exported["dense"][name], trained["dense"][name])


@pytest.mark.slow  # starts processes
def test_mesh_2x4_matches_one_device(assets, reference_run):
    workdir = assets["root"] / "mesh"
    run(command(assets, workdir, "--config.mesh.data=2", "--config.mesh.fsdp=4", steps=STEPS), devices=8)
    sharded, single = metrics(workdir), metrics(reference_run)
    for step in (1, 2, 3):
        for term in ("loss", "embedding", "attention", "hidden"):
            np.testing.assert_allclose(sharded[step][term], single[step][term], rtol=1e-5)


@pytest.mark.slow  # starts processes
def test_interrupt_and_resume_reproduces_the_trajectory(assets, reference_run):
    workdir = assets["root"] / "interrupted"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen(command(assets, workdir), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (workdir / "checkpoints" / "20").is_dir() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (workdir / "checkpoints" / "20").is_dir() and not (workdir / "export").exists(), \
        "the run ended before it could be interrupted"
    interrupted_at = max(metrics(workdir))
    assert interrupted_at < STEPS

    run(command(assets, workdir))
    resumed, reference = metrics(workdir), metrics(reference_run)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        for term in ("loss", "embedding", "attention", "hidden", "grad_norm"):
            assert resumed[step][term] == reference[step][term], (step, term)


def test_bad_corpus_and_data_path(assets, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n\n")
    error = last_error(run(command(assets, tmp_path / "w1", f"--config.data.source={empty}",
                                   f"--config.data.prepared_dir={tmp_path / 'd1'}"), check=False))
    assert "no training sequences" in error and str(empty) in error
    missing = tmp_path / "nowhere" / "*.txt"
    error = last_error(run(command(assets, tmp_path / "w2", f"--config.data.source={missing}",
                                   f"--config.data.prepared_dir={tmp_path / 'd2'}"), check=False))
    assert str(missing) in error
    assert not (tmp_path / "d1").exists() and not (tmp_path / "d2").exists()
    for workdir in ("w1", "w2"):
        assert not (tmp_path / workdir / "export").exists()


def test_teacher_that_is_not_bert(assets, tmp_path):
    teacher = tmp_path / "roberta"
    shutil.copytree(assets["teacher"], teacher)
    config = json.loads((teacher / "config.json").read_text())
    config["model_type"] = "roberta"
    (teacher / "config.json").write_text(json.dumps(config))
    error = last_error(run(command(assets, tmp_path / "w", f"--config.teacher.path={teacher}"), check=False))
    assert "model_type 'roberta' is not a BERT" in error


@pytest.mark.slow  # starts processes
def test_batch_not_divisible_by_devices(assets, tmp_path):
    error = last_error(run(command(assets, tmp_path / "w", "--config.train.batch_size=6"), devices=4, check=False))
    assert "train.batch_size=6 is not divisible by the 4 devices" in error


def test_workdir_of_another_student_is_refused(assets, tmp_path):
    workdir = tmp_path / "w"
    run(command(assets, workdir, steps=10))
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    error = last_error(run(command(assets, workdir, "--config.student.hidden_size=32", steps=20), check=False))
    assert "holds a checkpoint of a different run" in error and "hidden_size 16 vs 32" in error
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


def test_config_variants_build_and_an_unknown_one_is_refused():
    for name in ("general", "distilbert", "minilm", "demo", "finetune", "task", "init_student", "predict"):
        full, smoke = load_config(f"configs/{name}.py"), load_config(f"configs/{name}.py:smoke")
        assert full.pipeline and smoke.pipeline and smoke.get("seed") == full.get("seed")
        with pytest.raises(ValueError, match=f"configs/{name}.py: unknown variant 'fast'"):
            load_config(f"configs/{name}.py:fast")


def test_general_smoke_variant_runs_offline_with_only_a_workdir(tmp_path):
    result = run_main("general:smoke", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # the summary: both runs, first -> last of the losses, and the line that loads the export
    assert "teacher masked-LM" in result.stdout and "general distillation (tinybert)  steps 1-20" in result.stdout
    assert f'transformers.AutoModel.from_pretrained("{tmp_path / "export"}")' in result.stdout
    model = transformers.BertModel.from_pretrained(tmp_path / "export")
    assert model.config.hidden_size == 16 and model.config.num_hidden_layers == 1
    history = metrics(tmp_path)
    assert sorted(history) == list(range(5, 21, 5)) and history[20]["loss"] < history[5]["loss"]
