"""General distillation end to end through `python -m tinybert_jax.main` with a tiny random-init HF teacher."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import transformers
from conftest import XLA_TEST_FLAGS, made_once, make_hf_model
from in_process import run_main

from tinybert_jax.data import prepare

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a teacher student model learns small fast layer attention hidden state data text word sentence "
         "token batch step loss falls rises map train test run mesh device shard value key query head output "
         "input from to of in on with and or but is are was were be been it this that these those").split()
STEPS = 120
STUDENT = ["--config.student.hidden_size=16", "--config.student.num_hidden_layers=2",
           "--config.student.num_attention_heads=4", "--config.student.intermediate_size=24"]


def write_corpus(path: Path, documents: int = 150, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(documents):
        for _ in range(rng.integers(2, 7)):
            lines.append(" ".join(rng.choice(WORDS, rng.integers(3, 12))).capitalize() + ".")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def write_teacher(path: Path) -> Path:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS
    path.mkdir(parents=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizerFast(str(path / "vocab.txt"))
    model = make_hf_model("BertForMaskedLM", vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4,
                          num_attention_heads=4, intermediate_size=37, max_position_embeddings=64)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def general_assets(shared_dir: Path, module: str) -> dict:
    """The tiny teacher, a corpus and its prepared data (made once per session, then only read), and a directory
    for the workdirs of `module`'s tests."""
    def make(root: Path) -> None:
        teacher, corpus = write_teacher(root / "teacher"), write_corpus(root / "corpus.txt")
        prepare.ensure_prepared(str(corpus), root / "prepared", str(teacher), 32, seed=0)

    data = made_once(shared_dir, "general_data", make)
    root = shared_dir / module
    root.mkdir(exist_ok=True)
    return {"teacher": data / "teacher", "corpus": data / "corpus.txt", "data": data / "prepared", "root": root}


@pytest.fixture(scope="session")
def assets(shared_dir):
    return general_assets(shared_dir, "general")


def command(assets, workdir, *extra, steps=STEPS):
    return [sys.executable, "-m", "tinybert_jax.main", "--config=configs/general.py", f"--workdir={workdir}",
            f"--config.teacher.path={assets['teacher']}", f"--config.data.source={assets['corpus']}",
            f"--config.data.prepared_dir={assets['data']}", "--config.data.seq_len=32",
            "--config.train.batch_size=8", f"--config.train.num_steps={steps}", "--config.log.every_steps=1",
            "--config.checkpoint.every_steps=10", "--config.optimizer.learning_rate=3e-3", *STUDENT, *extra]


def run(args, devices=1, check=True):
    """`args` (a `python -m tinybert_jax.main ...` command): in this process on its one device, or in a subprocess
    that sees `devices` CPU devices."""
    if devices == 1 and args[:3] == [sys.executable, "-m", "tinybert_jax.main"]:
        result = run_main(args[3:])
    else:
        env = {**os.environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"{XLA_TEST_FLAGS} --xla_force_host_platform_device_count={devices}"}
        result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def metrics(workdir):
    """step -> metrics, the last record of a step winning (a resumed run logs the repeated steps again)."""
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows}


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
    from run_state import read_run_state

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


def last_error(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and lines and lines[-1].startswith("error: "), result.stderr[-2000:]
    return lines[-1]


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
    from in_process import load_config

    for name in ("general", "distilbert", "minilm", "demo", "finetune", "task", "init_student", "predict"):
        full, smoke = load_config(f"configs/{name}.py"), load_config(f"configs/{name}.py:smoke")
        assert full.pipeline and smoke.pipeline and smoke.get("seed") == full.get("seed")
        with pytest.raises(ValueError, match=f"configs/{name}.py: unknown variant 'fast'"):
            load_config(f"configs/{name}.py:fast")


def test_general_smoke_variant_runs_offline_with_only_a_workdir(tmp_path):
    result = run_main(["--config=configs/general.py:smoke", f"--workdir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    # the summary: both runs, first -> last of the losses, and the line that loads the export
    assert "teacher masked-LM" in result.stdout and "general distillation (tinybert)  steps 1-20" in result.stdout
    assert f'transformers.AutoModel.from_pretrained("{tmp_path / "export"}")' in result.stdout
    model = transformers.BertModel.from_pretrained(tmp_path / "export")
    assert model.config.hidden_size == 16 and model.config.num_hidden_layers == 1
    history = metrics(tmp_path)
    assert sorted(history) == list(range(5, 21, 5)) and history[20]["loss"] < history[5]["loss"]
