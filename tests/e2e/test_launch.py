"""Launch scripts: the exact commands they print with --dry-run, and their control flow (exit status, stop on
SIGTERM, clean-up) against stand-in gcloud, ssh, git and python executables. Nothing reaches a cloud, a cluster or
the network."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT as REPO

pytestmark = pytest.mark.slow  # every test here starts processes

LAUNCH = REPO / "launch"
# Spaces, a glob, both quote characters, and words a shell would expand or act on: all must arrive unchanged.
MAIN = ["--config=configs/general.py", "--workdir=/shared/work dir", "--config.data.source=/data/my corpus/*.txt",
        "--config.name=it's \"q\" $HOME `id` \\ ; & | ~", ""]
SCRIPT_ENV = {"XLA_FLAGS", "TPU_NAME", "ZONE", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "PROJECT", "SPOT", "KEEP",
              "LOG_DIR", "PREPARE", "PYTHON"}
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV and not k.startswith("SLURM_")}
    env.update(extra)
    return env


def launch(script, *args, env=None):
    return subprocess.run(["bash", str(LAUNCH / script), *args], cwd=REPO, env=env or clean_env(),
                          capture_output=True, text=True, timeout=60)


def dry_run(script, *args, env=None):
    result = launch(script, *args, env=env)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def main_args(command, end=None):
    """The words after `-m tinybert_jax.main` in a shell command, split by shlex and, independently, by bash."""
    start = command.index("-m tinybert_jax.main ") + len("-m tinybert_jax.main ")
    tail = command[start:command.index(end, start) if end else None]
    by_bash = subprocess.run(["bash", "-c", "printf '%s\\0' " + tail], capture_output=True, text=True,
                             check=True).stdout.split("\0")[:-1]
    assert shlex.split(tail) == by_bash
    return by_bash


def option(argv, name):
    values = [a[len(name) + 1:] for a in argv if a.startswith(name + "=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def assert_usage_error(result, *words):
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0]


# ---------------------------------------------------------------------------------------------------- tpu_vm.sh


def test_tpu_v4_8_commands(tmp_path):
    lines = dry_run("tpu_vm.sh", "--name", "tb-v4", "--zone", "us-central2-b", "--accelerator-type", "v4-8",
                    "--dry-run", "--", *MAIN, env=clean_env(TMPDIR=str(tmp_path)))
    assert len(lines) == 6
    create, upload, setup, run, fetch, delete = lines
    zone = "--zone=us-central2-b"
    assert create == TPU + ["create", "tb-v4", zone, "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base"]
    assert upload == TPU + ["scp", f"{tmp_path}/tinybert_jax-tb-v4.tar.gz", "tb-v4:tinybert_jax.tar.gz", zone,
                            "--worker=all"]
    assert setup[:-1] == TPU + ["ssh", "tb-v4", zone, "--worker=all"]
    setup_command = option(setup, "--command")
    assert "tar -xzf ~/tinybert_jax.tar.gz" in setup_command
    assert setup_command.endswith("bash launch/setup_env.sh --accel=tpu")
    assert run[:-1] == TPU + ["ssh", "tb-v4", zone, "--worker=all"]
    run_command = option(run, "--command")
    assert run_command.startswith("cd ~/tinybert_jax && set -o pipefail && { .venv/bin/python -m tinybert_jax.main ")
    assert run_command.endswith("2>&1 | tee -p ~/tinybert_jax.log")
    assert main_args(run_command, end=" & echo $! > ~/tinybert_jax.pid") == MAIN
    assert fetch == TPU + ["scp", "tb-v4:tinybert_jax.log", "logs/tb-v4/worker_0.log", zone, "--worker=0"]
    assert delete == TPU + ["delete", "tb-v4", zone, "--quiet"]


def test_tpu_v5e_16_from_environment(tmp_path):
    env = clean_env(TPU_NAME="tb-v5e", ZONE="us-west4-a", ACCELERATOR_TYPE="v5litepod-16", PROJECT="my-proj",
                    SPOT="1", LOG_DIR=str(tmp_path / "logs"))
    lines = dry_run("tpu_vm.sh", "--dry-run", "--", *MAIN, env=env)
    assert lines[0] == TPU + ["create", "tb-v5e", "--zone=us-west4-a", "--project=my-proj",
                              "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite", "--spot"]
    for line in lines:
        assert line[:4] == TPU and "--zone=us-west4-a" in line and "--project=my-proj" in line
    assert main_args(option(lines[3], "--command"), end=" & echo") == MAIN
    fetches = [line for line in lines if line[4] == "scp" and line[5] == "tb-v5e:tinybert_jax.log"]
    assert [(line[6], line[-1]) for line in fetches] == [
        (f"{tmp_path}/logs/worker_{i}.log", f"--worker={i}") for i in range(4)]  # 16 chips, 4 per host
    assert lines[-1] == TPU + ["delete", "tb-v5e", "--zone=us-west4-a", "--project=my-proj", "--quiet"]


def test_tpu_flags_win_over_environment_and_accept_equals():
    env = clean_env(TPU_NAME="from-env", ZONE="env-zone", ACCELERATOR_TYPE="v4-8")
    lines = dry_run("tpu_vm.sh", "--name=tb", "--zone=z1", "--accelerator-type=v4-16", "--version=my-runtime",
                    "--dry-run", "--", "--config=configs/general.py", env=env)
    assert lines[0] == TPU + ["create", "tb", "--zone=z1", "--accelerator-type=v4-16", "--version=my-runtime"]
    assert [line[-1] for line in lines if line[5] == "tb:tinybert_jax.log"] == ["--worker=0", "--worker=1"]


def test_tpu_keep_skips_delete():
    lines = dry_run("tpu_vm.sh", "--name", "tb", "--zone", "z", "--accelerator-type", "v4-8", "--keep",
                    "--dry-run", "--", *MAIN)
    assert len(lines) == 5
    assert not any(line[4] == "delete" for line in lines)
    assert lines[-1][4:6] == ["scp", "tb:tinybert_jax.log"]


def test_tpu_prepare_runs_after_setup():
    lines = dry_run("tpu_vm.sh", "--name", "tb", "--zone", "z", "--accelerator-type", "v4-8", "--prepare",
                    "sudo mount -t nfs 10.0.0.2:/share /mnt/shared", "--dry-run", "--", *MAIN)
    assert option(lines[2], "--command").endswith(
        "bash launch/setup_env.sh --accel=tpu; sudo mount -t nfs 10.0.0.2:/share /mnt/shared")


@pytest.mark.parametrize("accelerator, version, workers", [
    ("v3-8", "tpu-ubuntu2204-base", 1), ("v4-32", "tpu-ubuntu2204-base", 4), ("v5p-16", "v2-alpha-tpuv5", 2),
    ("v5litepod-8", "v2-alpha-tpuv5-lite", 1), ("v6e-16", "v2-alpha-tpuv6e", 4)])
def test_tpu_runtime_and_workers_by_type(accelerator, version, workers):
    lines = dry_run("tpu_vm.sh", "--name", "tb", "--zone", "z", "--accelerator-type", accelerator, "--dry-run",
                    "--", *MAIN)
    assert option(lines[0], "--version") == version
    assert sum(line[4] == "scp" and line[5] == "tb:tinybert_jax.log" for line in lines) == workers


@pytest.mark.parametrize("drop, words", [("--name", ["--name", "TPU_NAME"]), ("--zone", ["--zone", "ZONE"]),
                                         ("--accelerator-type", ["--accelerator-type", "ACCELERATOR_TYPE"])])
def test_tpu_missing_required(drop, words):
    given = {"--name": "tb", "--zone": "z", "--accelerator-type": "v4-8"}
    args = [w for flag, value in given.items() if flag != drop for w in (flag, value)]
    assert_usage_error(launch("tpu_vm.sh", *args, "--dry-run", "--", *MAIN), *words)


@pytest.mark.parametrize("args, word", [
    (["--name", "tb", "--zone", "z", "--accelerator-type", "v4-8", "--dry-run"], "after --"),
    (["--name", "tb", "--zone", "z", "--accelerator-type", "v4-8", "--bogus", "--", "x"], "--bogus"),
    (["--name", "tb", "--zone", "z", "--accelerator-type", "tpu9", "--", "x"], "tpu9"),
    (["--name", "tb", "--zone", "z", "--accelerator-type", "v9x-8", "--", "x"], "v9x-8"),
    (["--name"], "--name")])
def test_tpu_bad_arguments(args, word):
    assert_usage_error(launch("tpu_vm.sh", *args), word)


# ---------------------------------------------------------------------------------------------- gpu_multinode.sh


def test_slurm_command():
    (line,) = dry_run("gpu_multinode.sh", "slurm", "--nodes", "2", "--gpus-per-node", "8", "--port", "23456",
                      "--partition", "gpu", "--time", "01:00:00", "--dry-run", "--", *MAIN)
    assert line[:-1] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--gpus-per-node=8",
                         "--kill-on-bad-exit=1", "--partition=gpu", "--time=01:00:00", "bash", "-c"]
    task = line[-1]
    assert task.startswith('export JAX_COORDINATOR_ADDRESS="$(scontrol show hostnames '
                           '"${SLURM_STEP_NODELIST:-$SLURM_JOB_NODELIST}" | head -n1):23456" '
                           'JAX_NUM_PROCESSES="$SLURM_NTASKS" JAX_PROCESS_ID="$SLURM_PROCID"; '
                           'exec .venv/bin/python -m tinybert_jax.main ')
    assert main_args(task) == MAIN


def test_slurm_defaults_come_from_the_allocation():
    env = clean_env(SLURM_JOB_NUM_NODES="4", SLURM_GPUS_PER_NODE="h100:8")
    (line,) = dry_run("gpu_multinode.sh", "slurm", "--dry-run", "--", *MAIN, env=env)
    assert line[:-3] == ["srun", "--nodes=4", "--ntasks=4", "--ntasks-per-node=1", "--gpus-per-node=h100:8",
                         "--kill-on-bad-exit=1"]
    assert ":12355" in line[-1]


@pytest.fixture
def fakes(tmp_path):
    """A bin directory with stand-ins, and where the fake tinybert_jax.main records what it was given."""
    bin_dir, records = tmp_path / "bin", tmp_path / "records"
    bin_dir.mkdir()
    records.mkdir()

    def script(name, text):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
        return path

    # tinybert_jax.main: records argv and the JAX_* environment; FAKE_WAIT waits for SIGTERM (a checkpoint-and-exit).
    script("python", f"""#!{sys.executable}
import json, os, signal, sys, time
path = os.path.join(os.environ["FAKE_RECORDS"], "process_%s.json" % os.environ.get("JAX_PROCESS_ID", "0"))
def record(state):
    env = {{k: os.environ[k] for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
           if k in os.environ}}
    with open(path + ".tmp", "w") as f:
        json.dump(dict(argv=sys.argv[1:], env=env, state=state, cwd=os.getcwd()), f)
    os.replace(path + ".tmp", path)
print("fake main running", flush=True)
if os.environ.get("FAKE_WAIT"):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    record("started")
    while not stop:
        time.sleep(0.02)
    record("stopped")
    sys.exit(0)
record("done")
sys.exit(int(os.environ.get("FAKE_EXIT_" + os.environ.get("JAX_PROCESS_ID", "0"), "0")))
""")
    # scontrol show hostnames LIST
    script("scontrol", "#!/usr/bin/env bash\nprintf 'node-a\\nnode-b\\n'\n")
    # ssh HOST COMMAND runs COMMAND here, as HOST's login shell would.
    script("ssh", "#!/usr/bin/env bash\necho \"$1 $2\" >> \"$FAKE_RECORDS/ssh\"\nexec bash -c \"$2\"\n")
    # git: tpu_vm.sh packs the checkout; an empty tarball will do.
    script("git", "#!/usr/bin/env bash\nwhile [[ $# -gt 0 ]]; do [[ $1 == -o ]] && : > \"$2\"; shift; done\n")
    # gcloud compute tpus tpu-vm VERB: records the call; ssh runs --command here with HOME as the worker's home
    # (set-up excepted), scp from the TPU VM copies out of HOME.
    script("gcloud", f"""#!{sys.executable}
import json, os, shutil, sys
args = sys.argv[1:]
with open(os.path.join(os.environ["FAKE_RECORDS"], "gcloud"), "a") as f:
    f.write(json.dumps(args) + "\\n")
verb, positional = args[3], [a for a in args[4:] if not a.startswith("--")]
if verb == "describe":
    sys.exit(1)
if verb == "scp" and ":" in positional[0]:
    shutil.copy(os.path.join(os.environ["HOME"], positional[0].split(":", 1)[1]), positional[1])
if verb == "ssh":
    command = [a for a in args if a.startswith("--command=")][0][len("--command="):]
    if "setup_env.sh" in command:
        sys.exit(int(os.environ.get("FAKE_SETUP_EXIT", "0")))
    os.execvp("bash", ["bash", "-c", command])
""")
    env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_RECORDS=str(records))
    return env, bin_dir, records


def read_record(records, process_id):
    return json.loads((records / f"process_{process_id}.json").read_text())


def wait_for(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("variable", ["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST"])
def test_slurm_task_environment(fakes, variable):
    env, bin_dir, records = fakes
    (line,) = dry_run("gpu_multinode.sh", "slurm", "--nodes", "2", "--port", "23456", "--dry-run", "--", *MAIN,
                      env={**env, "PYTHON": str(bin_dir / "python")})
    task_env = {**env, variable: "node-[a-b]", "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}
    subprocess.run(["bash", "-c", line[-1]], env=task_env, check=True, timeout=30, capture_output=True)
    record = read_record(records, 1)
    assert record["argv"] == ["-m", "tinybert_jax.main", *MAIN]
    assert record["env"] == {"JAX_COORDINATOR_ADDRESS": "node-a:23456", "JAX_NUM_PROCESSES": "2",
                             "JAX_PROCESS_ID": "1"}


def test_ssh_commands():
    lines = dry_run("gpu_multinode.sh", "ssh", "--hosts", "me@gpu-a,gpu-b,gpu-c", "--port", "23456", "--dir",
                    "/shared/tiny bert", "--dry-run", "--", *MAIN)
    assert len(lines) == 3
    for i, (line, host) in enumerate(zip(lines, ["me@gpu-a", "gpu-b", "gpu-c"])):
        assert line[:2] == ["ssh", host]
        assert line[3:] == ([] if i == 0 else [">", f"logs/process_{i}.log", "2>&1"])
        words = shlex.split(line[2])
        assert words[:3] == ["cd", "/shared/tiny bert", "&&"]
        start = words.index("env")
        assert words[start:start + 7] == ["env", "JAX_COORDINATOR_ADDRESS=gpu-a:23456", "JAX_NUM_PROCESSES=3",
                                          f"JAX_PROCESS_ID={i}", ".venv/bin/python", "-m", "tinybert_jax.main"]
        assert main_args(line[2]) == MAIN


@pytest.mark.parametrize("args, word", [
    (["ssh", "--dry-run", "--", "x"], "--hosts"),
    (["ssh", "--hosts", "a,,b", "--", "x"], "empty"),
    (["ssh", "--hosts", "a,b", "--dry-run"], "after --"),
    (["ssh", "--nodes", "2", "--", "x"], "--nodes"),
    (["slurm", "--hosts", "a", "--", "x"], "--hosts"),
    (["slurm", "--nodes", "two", "--", "x"], "--nodes"),
    (["slurm", "--dry-run"], "after --"),
    (["mpi", "--", "x"], "mpi")])
def test_gpu_bad_arguments(args, word):
    assert_usage_error(launch("gpu_multinode.sh", *args), word)


@pytest.fixture
def port():
    """A port number for the ssh form's pid files in /tmp, removed afterwards."""
    number = 20000 + os.getpid() % 20000
    yield str(number)
    for path in Path("/tmp").glob(f"tinybert_jax-{number}-*.pid"):
        path.unlink()


def test_ssh_exit_status_is_the_first_failure(fakes, tmp_path, port):
    env, bin_dir, records = fakes
    env.update(PYTHON=str(bin_dir / "python"), FAKE_EXIT_1="3", FAKE_EXIT_2="4")
    result = launch("gpu_multinode.sh", "ssh", "--hosts", "h0,h1,h2", "--port", port, "--dir", str(tmp_path),
                    "--logs", str(tmp_path / "logs"), "--", *MAIN, env=env)
    assert result.returncode == 3
    assert "fake main running" in result.stdout
    for i in range(3):
        record = read_record(records, i)
        assert record["argv"] == ["-m", "tinybert_jax.main", *MAIN] and record["cwd"] == str(tmp_path)
        assert record["env"] == {"JAX_COORDINATOR_ADDRESS": f"h0:{port}", "JAX_NUM_PROCESSES": "3",
                                 "JAX_PROCESS_ID": str(i)}
    assert "fake main running" in (tmp_path / "logs" / "process_2.log").read_text()


def test_ssh_sigterm_reaches_every_process(fakes, tmp_path, port):
    env, bin_dir, records = fakes
    env.update(PYTHON=str(bin_dir / "python"), FAKE_WAIT="1")
    process = subprocess.Popen(["bash", str(LAUNCH / "gpu_multinode.sh"), "ssh", "--hosts", "h0,h1", "--port", port,
                                "--dir", str(tmp_path), "--logs", str(tmp_path / "logs"), "--", *MAIN],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: all((records / f"process_{i}.json").exists() for i in range(2)))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
    assert [read_record(records, i)["state"] for i in range(2)] == ["stopped", "stopped"]


# ---------------------------------------------------------------------------------- tpu_vm.sh against stand-ins


@pytest.fixture
def tpu_fakes(fakes, tmp_path):
    """A worker home with the checkout's .venv/bin/python standing in for tinybert_jax.main."""
    env, bin_dir, records = fakes
    venv_bin = tmp_path / "home" / "tinybert_jax" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(bin_dir / "python")
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path))
    return env, records


def gcloud_calls(records):
    calls = [json.loads(line) for line in (records / "gcloud").read_text().splitlines()]
    names = []
    for args in calls:
        command = " ".join(a for a in args if a.startswith("--command="))
        names.append("setup" if "setup_env.sh" in command else "run" if "tinybert_jax.main" in command
                      else "stop" if "kill -TERM" in command else args[3])
    return names


@pytest.mark.parametrize("exit_code, keep", [(0, False), (5, False), (5, True)])
def test_tpu_run_fetches_logs_and_deletes(tpu_fakes, tmp_path, exit_code, keep):
    env, records = tpu_fakes
    env["FAKE_EXIT_0"] = str(exit_code)
    result = launch("tpu_vm.sh", "--name", "tb", "--zone", "z", "--accelerator-type", "v4-8",
                    "--logs", str(tmp_path / "logs"), *(["--keep"] if keep else []), "--", *MAIN, env=env)
    assert result.returncode == exit_code, result.stderr
    assert read_record(records, 0)["argv"] == ["-m", "tinybert_jax.main", *MAIN]
    assert gcloud_calls(records) == ["describe", "create", "scp", "setup", "run", "scp"] + ([] if keep else ["delete"])
    assert "fake main running" in (tmp_path / "logs" / "worker_0.log").read_text()
    assert not (tmp_path / "tinybert_jax-tb.tar.gz").exists()


def test_tpu_failed_setup_still_deletes(tpu_fakes):
    env, records = tpu_fakes
    env["FAKE_SETUP_EXIT"] = "7"
    result = launch("tpu_vm.sh", "--name", "tb", "--zone", "z", "--accelerator-type", "v4-8", "--", *MAIN, env=env)
    assert result.returncode == 7
    assert gcloud_calls(records) == ["describe", "create", "scp", "setup", "delete"]


def test_tpu_sigterm_stops_the_job_before_deleting(tpu_fakes, tmp_path):
    env, records = tpu_fakes
    env["FAKE_WAIT"] = "1"
    process = subprocess.Popen(["bash", str(LAUNCH / "tpu_vm.sh"), "--name", "tb", "--zone", "z",
                                "--accelerator-type", "v4-8", "--logs", str(tmp_path / "logs"), "--", *MAIN],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pid_file = tmp_path / "home" / "tinybert_jax.pid"
    try:
        wait_for(lambda: (records / "process_0.json").exists() and pid_file.exists() and pid_file.read_text())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, process.stderr.read()
    finally:
        process.kill()
    assert read_record(records, 0)["state"] == "stopped"
    assert gcloud_calls(records) == ["describe", "create", "scp", "setup", "run", "stop", "scp", "delete"]


# ------------------------------------------------------------------------------------------ local_multiprocess.sh


def test_local_multiprocess_commands():
    result = launch("local_multiprocess.sh", "2", "--devices", "2", "--port", "12999", "--dry-run", "--",
                    "--config=configs/general.py", "--workdir=w", env=clean_env(PYTHON="python3"))
    assert result.returncode == 0, result.stderr
    lines = [shlex.split(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    for i, line in enumerate(lines):
        assert line[:10] == ["env", "JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=2",
                             "JAX_COORDINATOR_ADDRESS=127.0.0.1:12999", "JAX_NUM_PROCESSES=2", f"JAX_PROCESS_ID={i}",
                             "python3", "-m", "tinybert_jax.main", "--config=configs/general.py"]
        assert line[10:] == ["--workdir=w"] + ([] if i == 0 else [">", "logs/process_1.log", "2>&1"])
    kept = launch("local_multiprocess.sh", "1", "--dry-run", "--", "--workdir=w",
                  env=clean_env(PYTHON="python3", XLA_FLAGS="--xla_dump_to=/tmp/a b"))
    assert shlex.split(kept.stdout)[2] == "XLA_FLAGS=--xla_dump_to=/tmp/a b --xla_force_host_platform_device_count=2"
