"""Scale-out on CPU: 2 processes on 127.0.0.1, FSDP on 8 fake devices, restore on another topology, SIGTERM, bf16.

Every run is `python -m tinybert_jax.main` (general distillation, tiny teacher) in subprocesses; the reference is
1 process x 4 devices. A constant learning rate makes runs of different lengths share their first steps.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from helpers import GENERAL_STUDENT, ROOT, device_env, general_assets, made_once, metrics, read_run_state, run_main

pytestmark = pytest.mark.slow  # every test here starts processes

TERMS = ("loss", "embedding", "attention", "hidden")
STEPS = 20


@pytest.fixture(scope="session")
def assets(shared_dir):
    return general_assets(shared_dir, "scale")


def flags(assets, steps, *extra):
    """main's flags after --config=configs/general.py and --workdir."""
    return [f"--config.teacher.path={assets['teacher']}", f"--config.data.source={assets['corpus']}",
            f"--config.data.prepared_dir={assets['data']}", "--config.data.seq_len=32", "--config.train.batch_size=8",
            f"--config.train.num_steps={steps}", "--config.log.every_steps=1", "--config.checkpoint.every_steps=10",
            "--config.optimizer.learning_rate=3e-3", "--config.optimizer.schedule=constant",
            "--config.optimizer.warmup_ratio=0", *GENERAL_STUDENT, *extra]


def main_args(assets, workdir, steps, *extra):
    return ["--config=configs/general.py", f"--workdir={workdir}", *flags(assets, steps, *extra)]


def assert_same_losses(run, reference, steps, rtol=1e-5):
    for step in steps:
        for term in TERMS:
            np.testing.assert_allclose(run[step][term], reference[step][term], rtol=rtol, err_msg=f"{step} {term}")


@pytest.fixture(scope="session")
def reference(assets, shared_dir):
    """1 process x 4 devices, data parallel, STEPS steps."""
    return made_once(shared_dir, "scale_reference", lambda workdir: run_main(
        "general", workdir, *flags(assets, STEPS), in_subprocess=True, devices=4, check=True))


def test_two_processes_match_one_process_then_resume_on_one(assets, reference, tmp_path):
    workdir = assets["root"] / "two_processes"
    result = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "--devices", "2", "--port", "12387",
                             "--logs", str(tmp_path / "logs"), "--", *main_args(assets, workdir, 10)],
                            cwd=ROOT, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:] + (tmp_path / "logs" / "process_1.log").read_text()[-2000:]
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 10, "only process 0 writes metrics"
    assert_same_losses(metrics(workdir), metrics(reference), range(1, 11))
    saved, expected = read_run_state(workdir / "checkpoints", 10), read_run_state(reference / "checkpoints", 10)
    assert int(saved["step"]) == 10
    for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(saved)[0], jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    assert (workdir / "export" / "config.json").is_file()

    # Saved by 2 processes x 2 devices, resumed by 1 process x 2 devices.
    resumed = run_main("general", workdir, *flags(assets, STEPS), in_subprocess=True, devices=2, check=True)
    assert "resuming from step 10" in resumed.stderr
    assert_same_losses(metrics(workdir), metrics(reference), range(11, STEPS + 1))


def test_fsdp_on_8_devices_matches_data_parallel_then_resumes_on_4(assets, reference):
    workdir = assets["root"] / "fsdp8"
    run_main("general", workdir, *flags(assets, 10, "--config.mesh.data=1", "--config.mesh.fsdp=8"),
             in_subprocess=True, devices=8, check=True)
    assert_same_losses(metrics(workdir), metrics(reference), range(1, 11))
    resumed = run_main("general", workdir, *flags(assets, STEPS, "--config.mesh.data=2", "--config.mesh.fsdp=2"),
                       in_subprocess=True, devices=4, check=True)
    assert "resuming from step 10" in resumed.stderr
    assert_same_losses(metrics(workdir), metrics(reference), range(11, STEPS + 1))


SHARDING_CHECK = textwrap.dedent("""
    import sys
    import jax
    from tinybert_jax import convert, sharding
    from tinybert_jax.distill.matches import preset_matches
    from tinybert_jax.distill.spec import init_trainable
    from tinybert_jax.distill.layer_map import resolve_layer_map
    from tinybert_jax.distill.step import DistillSpec, trim_teacher
    from tinybert_jax.models.bert import BertConfig, abstract_params
    from tinybert_jax.train.optimizer import make_optimizer
    from tinybert_jax.train.engine import create_state
    from configs import general
    from tinybert_jax.threefry import lower_threefry_unrolled_on_cpu

    lower_threefry_unrolled_on_cpu()  # as every training process: the random initialisation compiles as there
    config = general.get_config()
    data, fsdp = int(sys.argv[2]), int(sys.argv[3])
    mesh, rules = sharding.make_mesh(data, fsdp), config.mesh.rules
    teacher_cfg, teacher = convert.load_hf_bert(sys.argv[1])
    student_cfg = BertConfig(vocab_size=teacher_cfg.vocab_size, hidden_size=16, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=24, max_position_embeddings=64)
    teacher_cfg, teacher = trim_teacher(teacher_cfg, teacher, 4, keep_mlm_head=False)
    terms = {"embedding": 0.0, "attention": 0.0, "hidden": 1.0, "prediction": 0.0}
    layer_map = resolve_layer_map("uniform", 4, 2)
    spec = DistillSpec(student_cfg, teacher_cfg, preset_matches("tinybert", terms, layer_map, student_cfg, teacher_cfg))
    tx, _ = make_optimizer(config.optimizer, 10)
    state, _ = create_state(lambda rng: init_trainable(spec, rng), tx, 0, mesh, rules)
    teacher = sharding.put_sharded(teacher, sharding.shardings_of(abstract_params(teacher_cfg), mesh, rules))
    trees = {"student": state.params["student"], "projection": state.params["projection"],
             "adam moments": state.opt_state, "teacher": teacher}
    for name, tree in trees.items():
        matrices = [x for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
                    if isinstance(x, jax.Array) and ("kernel" in str(path) or "embedding" in str(path))]
        split = [x for x in matrices if "fsdp" in str(x.sharding.spec) and
                 x.sharding.shard_shape(x.shape) != x.shape and len(x.addressable_shards) == 8]
        print(f"{name}: {len(split)} of {len(matrices)}")
""")


@pytest.mark.parametrize("data, fsdp", [(1, 8), (2, 4)])
def test_fsdp_splits_student_projection_optimizer_and_teacher(assets, data, fsdp):
    result = subprocess.run([sys.executable, "-c", SHARDING_CHECK, str(assets["teacher"]), str(data), str(fsdp)],
                            cwd=ROOT, env=device_env(8), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = dict(line.split(": ") for line in result.stdout.splitlines())
    assert set(rows) == {"student", "projection", "adam moments", "teacher"}, result.stdout
    for name, row in rows.items():
        # Every weight matrix and embedding table has an 'embed' axis (widths 16 and 32 divide by 8).
        split, matrices = map(int, row.split(" of "))
        assert matrices >= 1 and split == matrices, (name, row)


def test_sigterm_checkpoints_the_current_step_and_exits_0(assets, tmp_path):
    workdir = tmp_path / "preempted"
    args = main_args(assets, workdir, 100000, "--config.checkpoint.every_steps=100000")
    process = subprocess.Popen([sys.executable, "-m", "tinybert_jax.main", *args], cwd=ROOT, env=device_env(1),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        if (workdir / "metrics.jsonl").is_file() and len((workdir / "metrics.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    stopped_at = max(metrics(workdir))
    assert f"SIGTERM: stopped after step {stopped_at} of 100000" in stderr
    assert (workdir / "checkpoints" / str(stopped_at)).is_dir() and not (workdir / "export").exists()

    resumed = run_main("general", workdir, *flags(assets, stopped_at + 3, "--config.checkpoint.every_steps=100000"),
                       in_subprocess=True, devices=1, check=True)
    assert f"resuming from step {stopped_at}" in resumed.stderr
    steps = [int(line.split(",")[0].split(":")[1]) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, stopped_at + 4)), "the resumed run continues after the checkpointed step"


def test_bfloat16_trains_and_starts_within_bf16_tolerance_of_float32(assets, reference):
    workdir = assets["root"] / "bf16"
    run_main("general", workdir, *flags(assets, STEPS, "--config.dtype=bfloat16"), in_subprocess=True, devices=4,
             check=True)
    bf16, fp32 = metrics(workdir), metrics(reference)
    for term in TERMS:
        np.testing.assert_allclose(bf16[1][term], fp32[1][term], rtol=3e-2, err_msg=term)
        assert bf16[1][term] != fp32[1][term], "the bf16 run must actually compute in bf16"
    start, end = np.mean([bf16[s]["loss"] for s in (1, 2, 3)]), np.mean([bf16[s]["loss"] for s in (18, 19, 20)])
    assert end < 0.8 * start, (start, end)


def test_bad_input_on_process_0_stops_every_process(assets, tmp_path):
    args = main_args(assets, tmp_path / "w", 10, f"--config.data.source={tmp_path / 'missing' / '*.txt'}",
                     f"--config.data.prepared_dir={tmp_path / 'prepared'}")
    result = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "--devices", "2", "--port", "12389",
                             "--logs", str(tmp_path / "logs"), "--", *args],
                            cwd=ROOT, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "missing" in result.stderr
    other = (tmp_path / "logs" / "process_1.log").read_text().strip().splitlines()[-1]
    assert other == "error: process 0 failed during prepare (its error is the last line of its log)"
