"""What the tests share besides fixtures (those, the environment set-up and the hooks are in conftest.py): tiny
random-init models and batches, the fixture data of the general and task pipelines, made-once fixtures, running
`python -m tinybert_jax.main` (run_main) and reading back what a run saved.

`import helpers` works from every directory under tests/: conftest.py sits in tests/, which has no __init__.py, so
pytest puts tests/ on sys.path before it imports a test module."""
import contextlib
import dataclasses
import importlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import filelock
import jax
import numpy as np
import torch
import transformers
from absl import logging as absl_logging

from tinybert_jax import workdir as workdirs
from tinybert_jax.errors import InputError
from tinybert_jax.main import PIPELINES
from tinybert_jax.models.bert import BertConfig
from tinybert_jax.train.preemption import Preempted

# Orbax, the data preparation and the benchmarks are imported where they are used: conftest.py imports this module
# in every test process, most of which need none of them.

ROOT = Path(__file__).resolve().parents[1]  # the repository
MAIN = [sys.executable, "-m", "tinybert_jax.main"]
# The XLA flags conftest.py set before jax was first imported (it imports this module right after): subprocesses
# that see several CPU devices get them too.
XLA_TEST_FLAGS = os.environ.get("XLA_FLAGS", "")


# ------------------------------------------------------------------------------------- tiny models and batches
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64)


def make_hf_model(cls_name: str, seed: int = 0, **overrides):
    """A random-init transformers BERT of class `cls_name` in eval mode, eager attention (so it returns attentions)."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(**{**TINY, **overrides})
    config._attn_implementation = "eager"
    model = getattr(transformers, cls_name)(config).eval()
    # Random-init biases and LayerNorm params are 0/1; perturb them so a transposed or swapped tensor cannot pass.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def padded_batch(vocab_size: int, batch: int = 3, length: int = 9, seed: int = 0):
    """input_ids, token_type_ids, attention_mask (numpy int64) with a different amount of padding per row."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, vocab_size, (batch, length))
    mask = np.ones_like(ids)
    for row in range(1, batch):
        mask[row, length - 2 * row:] = 0
    ids = np.where(mask == 1, ids, 0)
    token_types = np.zeros_like(ids)
    token_types[:, length // 2:] = 1
    token_types *= mask
    return ids, token_types, mask


def torch_outputs(model, ids, token_types, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(token_types),
                     attention_mask=torch.tensor(mask), output_hidden_states=True, output_attentions=True)


# The teacher and student of the in-process distillation step (test_step.py, test_buckets.py).
STEP_TEACHER = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                          intermediate_size=48, max_position_embeddings=16, mlm_head=True)
STEP_STUDENT = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=24, max_position_embeddings=16, mlm_head=True)


# ------------------------------------------------------------------------------------------ sessions and traces
def made_once(shared_dir: Path, name: str, make: Callable[[Path], None]) -> Path:
    """shared_dir/name, made by make(path) once per session by whichever worker needs it first; the others wait
    for it. Expensive fixtures (a fine-tuned teacher, a reference run) are then made once, not once per worker."""
    path, made = shared_dir / name, shared_dir / f"{name}.made"
    with filelock.FileLock(str(shared_dir / f"{name}.lock")):
        if not made.exists():
            if path.exists():  # a failed attempt
                shutil.rmtree(path)
            make(path)
            made.touch()
    return path


@contextlib.contextmanager
def counted_traces():
    """A list that gains one entry for every function JAX traces inside the `with` block."""
    traces = []

    def listener(event, duration, **kwargs):
        if event.endswith("jaxpr_trace_duration"):
            traces.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield traces
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


# ----------------------------------------------------------------------------------- python -m tinybert_jax.main
@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def config_spec(config: str) -> str:
    """NAME[:VARIANT] -> configs/NAME.py[:VARIANT]; a FILE.py[:VARIANT] stays as it is (main's --config value)."""
    path, colon, variant = config.partition(":")
    return config if path.endswith(".py") else f"configs/{path}.py{colon}{variant}"


def load_config(spec: str):
    """configs/NAME.py[:VARIANT] -> get_config(VARIANT)."""
    path, _, arg = spec.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    config = module.get_config(arg or None)
    config.lock()  # as main's --config flag does: a pipeline cannot add keys to it
    return config


def override(config, dotted: str, value) -> None:
    """config.DOTTED = value. Text (a --config.KEY=VALUE of the command line) is converted to the type of the value it
    replaces, as the command line does; any other value is set as it is."""
    *parents, key = dotted.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    if isinstance(value, str):
        current = node[key]
        if isinstance(current, bool):
            value = {"true": True, "false": False}[value.lower()]
        elif isinstance(current, int):
            value = int(value)
        elif isinstance(current, float):
            value = float(value)
    node[key] = value


def device_env(devices: int | None = None, **variables: str) -> dict[str, str]:
    """The environment of a subprocess: this one's, on `devices` CPU devices when given, with `variables` set."""
    env = dict(os.environ)
    if devices is not None:
        env.update(JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"{XLA_TEST_FLAGS} --xla_force_host_platform_device_count={devices}")
    return {**env, **variables}


def run_subprocess(command: list[str], devices: int | None = None, env: dict[str, str] | None = None) -> Result:
    """`command` in a subprocess in the repository, with device_env(devices, **env)."""
    result = subprocess.run(command, cwd=ROOT, env=device_env(devices, **(env or {})), capture_output=True, text=True)
    return Result(result.returncode, result.stdout, result.stderr)


# What the task tests set unless they say otherwise (run_main(..., settings=TEST_SETTINGS)), so that each run is as
# long as its test asks: fixed padding (at these tiny sizes length buckets only add compilations; test_buckets.py
# and the tests that set them cover them), no min_steps floor, no early stopping and one dev evaluation at the end
# (the defaults' own tests set them).
TEST_SETTINGS = {
    "finetune": {"data.buckets": "", "train.min_steps": "0", "eval.patience": "0", "eval.every_steps": "500"},
    "task": {"data.buckets": "", "stage1.min_steps": "0", "stage2.min_steps": "0", "eval.patience": "0",
             "eval.every_steps": "500"},
    "predict": {"data.buckets": ""},
}


def run_main(config: str, workdir, *flags: str, settings: dict[str, dict[str, str]] | None = None,
             in_subprocess: bool = False, devices: int | None = None, env: dict[str, str] | None = None,
             check: bool = False) -> Result:
    """`python -m tinybert_jax.main --config=configs/CONFIG.py[:VARIANT] --workdir=WORKDIR FLAGS...`.

    CONFIG is NAME[:VARIANT] (or a FILE.py[:VARIANT]). By default in this process, as main does for one process: the
    config file and its variant, --config.KEY=VALUE overrides (the only flags taken here), the workdir check and
    claim, the pipeline, with stdout, stderr and the log captured; that saves a subprocess's interpreter start and
    imports. With in_subprocess, a real `python -m tinybert_jax.main` in the repository (any of main's flags), on
    `devices` CPU devices when given and with the variables of `env` set (device_env); multi-device, multi-process,
    signal and command-line tests need one.

    settings: {config name: {KEY: VALUE}}, a --config.KEY=VALUE for each KEY the flags do not set (TEST_SETTINGS).
    check: assert that the run exits 0 (the end of its stderr the message)."""
    spec = config_spec(config)
    name = Path(spec.partition(":")[0]).stem
    given = {flag.split("=", 1)[0] for flag in flags}
    defaults = [f"--config.{key}={value}" for key, value in (settings or {}).get(name, {}).items()
                if f"--config.{key}" not in given]
    args = [f"--config={spec}", f"--workdir={workdir}", *defaults, *flags]
    if in_subprocess:
        result = run_subprocess([*MAIN, *args], devices, env)
    elif devices is not None or env is not None:
        raise ValueError("devices and env are for run_main(..., in_subprocess=True)")
    else:
        result = _main_in_process(args)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _main_in_process(args: list[str]) -> Result:
    options = dict(arg.removeprefix("--").split("=", 1) for arg in args)
    config = load_config(options.pop("config"))
    workdir = options.pop("workdir")
    for key, text in options.items():
        if not key.startswith("config."):
            raise ValueError(f"--{key}: in process run_main takes only --config.KEY=VALUE (use in_subprocess=True)")
        override(config, key.removeprefix("config."), text)
    stdout, stderr = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(stderr)
    absl_logger, verbosity = logging.getLogger("absl"), absl_logging.get_verbosity()
    absl_logger.addHandler(handler)
    absl_logging.set_verbosity(absl_logging.INFO)
    returncode = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                with workdirs.claimed(workdirs.check_directory(workdir)):
                    importlib.import_module(PIPELINES[config.pipeline]).run(config, workdir)
            except InputError as e:
                print(f"error: {e}", file=stderr)
                returncode = 1
            except Preempted as e:
                print(str(e), file=stderr)
    finally:
        absl_logger.removeHandler(handler)
        absl_logging.set_verbosity(verbosity)
    return Result(returncode, stdout.getvalue(), stderr.getvalue())


def last_error(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and lines and lines[-1].startswith("error: "), result.stderr[-2000:]
    return lines[-1]


def read_run_state(directory: Path, step: int) -> Any:
    """The train state saved at `step` by RunCheckpoints in `directory`, as host numpy arrays, whatever mesh it
    was saved from (the package itself only resumes through RunCheckpoints)."""
    import orbax.checkpoint as ocp

    path = Path(directory).absolute() / str(step) / "state"
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path).item_metadata
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
        return jax.device_get(checkpointer.restore(path, target))


def metrics(workdir):
    """step -> metrics, the last record of a step winning (a resumed run logs the repeated steps again)."""
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows}


# ------------------------------------------------------------------- general distillation: teacher and corpus
WORDS = ("the a teacher student model learns small fast layer attention hidden state data text word sentence "
         "token batch step loss falls rises map train test run mesh device shard value key query head output "
         "input from to of in on with and or but is are was were be been it this that these those").split()
GENERAL_STEPS = 120  # the length of test_general.py's reference run, and of command()'s runs unless told
GENERAL_STUDENT = ["--config.student.hidden_size=16", "--config.student.num_hidden_layers=2",
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
    from tinybert_jax.data import prepare

    def make(root: Path) -> None:
        teacher, corpus = write_teacher(root / "teacher"), write_corpus(root / "corpus.txt")
        prepare.ensure_prepared(str(corpus), root / "prepared", str(teacher), 32, seed=0)

    data = made_once(shared_dir, "general_data", make)
    root = shared_dir / module
    root.mkdir(exist_ok=True)
    return {"teacher": data / "teacher", "corpus": data / "corpus.txt", "data": data / "prepared", "root": root}


def command(assets, workdir, *extra, steps=GENERAL_STEPS):
    """The command line of a general distillation of the tiny teacher (general_assets) into GENERAL_STUDENT."""
    return [*MAIN, "--config=configs/general.py", f"--workdir={workdir}",
            f"--config.teacher.path={assets['teacher']}", f"--config.data.source={assets['corpus']}",
            f"--config.data.prepared_dir={assets['data']}", "--config.data.seq_len=32",
            "--config.train.batch_size=8", f"--config.train.num_steps={steps}", "--config.log.every_steps=1",
            "--config.checkpoint.every_steps=10", "--config.optimizer.learning_rate=3e-3", *GENERAL_STUDENT, *extra]


def run(args, devices=1, check=True):
    """`args`, a `python -m tinybert_jax.main --config=FILE --workdir=DIR ...` command (as command() builds), through
    run_main: in this process on its one device, or in a subprocess that sees `devices` CPU devices. Any other
    command (a patched main run with -c) runs in such a subprocess."""
    if args[:3] == MAIN and len(args) >= 5 and args[3].startswith("--config=") and args[4].startswith("--workdir="):
        config, workdir = args[3].removeprefix("--config="), args[4].removeprefix("--workdir=")
        if devices == 1:
            return run_main(config, workdir, *args[5:], check=check)
        return run_main(config, workdir, *args[5:], in_subprocess=True, devices=devices, check=check)
    result = run_subprocess(args, devices)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


# ------------------------------------------------------------------------ task pipelines: an SST-2-style task
POSITIVE = "good great fine lovely superb".split()
NEGATIVE = "bad awful poor boring dull".split()
FILLER = "the a movie film story plot actor scene was is and it this very quite really".split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + POSITIVE + NEGATIVE + FILLER
TASK_TINY = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=48, max_position_embeddings=64)


def sentence(rng, label):
    words = list(rng.choice(FILLER, rng.integers(3, 7)))
    words.insert(int(rng.integers(0, len(words) + 1)), rng.choice(POSITIVE if label else NEGATIVE))
    return " ".join(words)


def write_sst2(directory: Path, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    for split, size in (("train", 160), ("dev", 48)):
        labels = rng.integers(0, 2, size)
        rows = ["sentence\tlabel"] + [f"{sentence(rng, y)}\t{y}" for y in labels]
        (directory / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return directory


def save_model(directory: Path, cls_name: str, vocab=VOCAB, **overrides):
    directory.mkdir(parents=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(str(directory / "vocab.txt")).save_pretrained(directory)
    make_hf_model(cls_name, **{**TASK_TINY, "vocab_size": len(vocab), **overrides}).save_pretrained(directory)
    return directory


# ------------------------------------------------------------------------------------------------ benchmarks
def run_bench(capsys, *args):
    """`python -m tinybert_jax.bench ARGS` in this process: (returncode, stdout, stderr)."""
    from tinybert_jax.bench.__main__ import main as bench_main

    capsys.readouterr()
    try:
        returncode = bench_main(list(args))
    except SystemExit as e:  # argparse's usage errors
        returncode = e.code
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=returncode, stdout=captured.out, stderr=captured.err)
