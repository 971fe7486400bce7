"""Faults around a training run, through `python -m tinybert_jax.main` (general distillation, tiny teacher):
unreadable checkpoints, a diverging loss, SIGKILL during an asynchronous save, two runs on one workdir, a workdir
that is a file. A constant learning rate makes runs of different lengths share their first steps."""
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import pytest
from helpers import ROOT, command, general_assets, last_error, made_once, metrics, read_run_state, run

STEPS = 30
SETTINGS = ["--config.optimizer.schedule=constant", "--config.optimizer.warmup_ratio=0",
            "--config.checkpoint.every_steps=5"]
TERMS = ("loss", "embedding", "attention", "hidden", "grad_norm")


def faults_command(assets, workdir, *extra, steps=STEPS):
    return command(assets, workdir, *SETTINGS, *extra, steps=steps)


@pytest.fixture(scope="session")
def assets(shared_dir):
    return general_assets(shared_dir, "faults")


@pytest.fixture(scope="session")
def reference(assets, shared_dir):
    """STEPS uninterrupted steps; checkpoints 20, 25 and 30 remain (checkpoint.keep=3)."""
    return made_once(shared_dir, "faults_reference", lambda workdir: run(faults_command(assets, workdir)))


def copy_without_logs(reference, workdir):
    """The reference's checkpoints in a fresh workdir, so that a run there logs only the steps it trains."""
    shutil.copytree(reference / "checkpoints", workdir / "checkpoints")
    return workdir


def files_of(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_same_trajectory(workdir, reference, steps):
    logged, expected = metrics(workdir), metrics(reference)
    assert sorted(logged) == list(steps)
    for step in steps:
        for term in TERMS:
            assert logged[step][term] == expected[step][term], (step, term)


def error_line(result):
    """The one error line, and no traceback before it."""
    line = last_error(result)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return line


def test_unreadable_newest_checkpoints_are_skipped_and_kept(assets, reference, tmp_path):
    workdir = copy_without_logs(reference, tmp_path / "w")
    checkpoints = workdir / "checkpoints"
    truncated = max((p for p in (checkpoints / "30" / "state").rglob("*") if p.is_file()),
                    key=lambda p: p.stat().st_size)
    truncated.write_bytes(truncated.read_bytes()[:truncated.stat().st_size // 2])
    (checkpoints / "25" / "state" / "manifest.ocdbt").unlink()
    damaged = {step: files_of(checkpoints / step) for step in ("25", "30")}

    result = run(faults_command(assets, workdir))
    warnings = [line for line in result.stderr.splitlines() if "cannot read the checkpoint" in line]
    assert [line.split("cannot read the checkpoint ")[1].split(" ")[0] for line in warnings] == [
        str(checkpoints / "30"), str(checkpoints / "25")], result.stderr[-3000:]
    assert "resuming from step 20" in result.stderr
    assert_same_trajectory(workdir, reference, range(21, STEPS + 1))
    assert (workdir / "export" / "config.json").is_file()
    # Nothing deleted: the damaged steps are moved aside intact, and the run saved those step numbers afresh.
    aside = {p.name.split(".")[0]: p for p in checkpoints.iterdir() if ".unreadable-" in p.name}
    assert sorted(aside) == ["25", "30"]
    for step, directory in aside.items():
        assert files_of(directory) == damaged[step]
    assert {"25", "30"} <= {p.name for p in checkpoints.iterdir()}


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(assets, reference, tmp_path):
    workdir = copy_without_logs(reference, tmp_path / "w")
    checkpoints = workdir / "checkpoints"
    # Resumes from step 30 with an absurd learning rate, and a checkpoint due at every step.
    result = run(faults_command(assets, workdir, "--config.optimizer.learning_rate=1e30",
                                "--config.checkpoint.every_steps=1", steps=STEPS + 20), check=False)
    error = error_line(result)
    match = re.fullmatch(r"error: non-finite loss at step (\d+) \((.+)\); the last good checkpoint is step (\d+) in "
                         r"(\S+); lower the learning rate or check the data", error)
    assert match, error
    bad_step, bad_values, good_step = int(match[1]), match[2], int(match[3])
    assert match[4] == str(checkpoints)
    assert STEPS < bad_step < STEPS + 20
    assert "loss=nan" in bad_values or "loss=inf" in bad_values, bad_values
    logged = metrics(workdir)
    assert sorted(logged) == list(range(STEPS + 1, bad_step))
    assert all(math.isfinite(value) for row in logged.values() for value in row.values())
    saved = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert saved[-1] == good_step == bad_step - 1, saved
    state = read_run_state(checkpoints, good_step)
    assert int(state["step"]) == good_step
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state["params"]))
    assert not (workdir / "export").exists()


def kill_during_a_save(assets, workdir):
    """Starts a run and SIGKILLs it as soon as Orbax's temporary directory of a save of step 10 or later appears
    (a complete older checkpoint then exists); returns that step, or None if the save completed before the kill."""
    checkpoints = workdir / "checkpoints"
    process = subprocess.Popen(faults_command(assets, workdir), cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, in_flight = time.time() + 180, []
    while not in_flight and process.poll() is None and time.time() < deadline:
        names = os.listdir(checkpoints) if checkpoints.is_dir() else []
        in_flight = [n for n in names if n.endswith(".orbax-checkpoint-tmp") and int(n.split(".")[0]) >= 10]
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert in_flight, "the run ended before a save could be interrupted"
    return int(in_flight[0].split(".")[0]) if (checkpoints / in_flight[0]).is_dir() else None


@pytest.mark.slow  # starts processes
def test_sigkill_during_an_asynchronous_save_resumes_from_the_last_complete_checkpoint(assets, reference, tmp_path):
    # A save takes ~0.1 s here; the kill rarely lands after it has completed, and then the run is repeated.
    for attempt in range(3):
        workdir = tmp_path / f"attempt{attempt}"
        interrupted = kill_during_a_save(assets, workdir)
        if interrupted is not None:
            break
    assert interrupted is not None, "every kill came after the save had completed"
    checkpoints = workdir / "checkpoints"
    complete = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert complete < interrupted

    result = run(faults_command(assets, workdir))
    assert f"resuming from step {complete}" in result.stderr
    assert not [p for p in checkpoints.iterdir() if ".orbax-checkpoint-tmp" in p.name], "cleaned up on resume"
    assert_same_trajectory(workdir, reference, range(1, STEPS + 1))


@pytest.mark.slow  # starts processes
def test_second_run_on_a_busy_workdir_is_refused(assets, reference, tmp_path):
    workdir = tmp_path / "w"
    log = tmp_path / "first.log"
    with open(log, "w") as stderr:
        first = subprocess.Popen(faults_command(assets, workdir), cwd=ROOT,
                                 env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        lock, deadline = workdir / ".lock", time.time() + 120
        while not (lock.is_file() and f"pid {first.pid} " in lock.read_text()) and time.time() < deadline:
            assert first.poll() is None, "the first run ended early"
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)  # holds the lock, whatever the speed of the second run's start-up
        before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
        second = run(faults_command(assets, workdir), check=False)
        assert error_line(second) == (f"error: {workdir} is in use by another run (pid {first.pid} on host "
                                      f"{socket.gethostname()}); wait for it to finish or use another --workdir")
        assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before
        first.send_signal(signal.SIGCONT)
        first.wait(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, log.read_text()[-3000:]
    assert_same_trajectory(workdir, reference, range(1, STEPS + 1))
    assert (workdir / "export" / "config.json").is_file() and not (workdir / ".lock").exists()


def test_workdir_that_is_a_file(assets, tmp_path):
    file = tmp_path / "file"
    file.write_text("not a workdir")
    assert error_line(run(faults_command(assets, file), check=False)) == (
        f"error: --workdir={file} is a file, not a directory; name a directory (it is created if missing)")
    assert error_line(run(faults_command(assets, file / "w"), check=False)) == (
        f"error: --workdir={file / 'w'}: cannot create it (Not a directory)")
    assert file.read_text() == "not a workdir" and sorted(tmp_path.iterdir()) == [file]
