"""`python -m tinybert_jax.main ARGS` in the test process: what main does for one process (the config file and its
variant, --config.KEY=VALUE overrides, the workdir check and claim, the pipeline), with stdout, stderr and the log
captured. Saves the interpreter start and imports of a subprocess; multi-device, multi-process and signal tests
still start real processes."""
import contextlib
import dataclasses
import importlib
import io
import logging

from absl import logging as absl_logging

from tinybert_jax import workdir as workdirs
from tinybert_jax.errors import InputError
from tinybert_jax.main import PIPELINES
from tinybert_jax.train.preemption import Preempted


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def load_config(spec: str):
    """configs/NAME.py[:VARIANT] -> get_config(VARIANT)."""
    path, _, arg = spec.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    config = module.get_config(arg or None)
    config.lock()  # as main's --config flag does: a pipeline cannot add keys to it
    return config


def override(config, dotted: str, text: str) -> None:
    """One --config.KEY=VALUE, converted to the type of the value it replaces (as the command line does)."""
    *parents, key = dotted.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    current = node[key]
    if isinstance(current, bool):
        value = {"true": True, "false": False}[text.lower()]
    elif isinstance(current, int):
        value = int(text)
    elif isinstance(current, float):
        value = float(text)
    else:
        value = text
    node[key] = value


def run_main(args: list[str]) -> Result:
    """args as for tinybert_jax.main: --config=FILE[:VARIANT], --workdir=DIR, --config.KEY=VALUE ..."""
    options = dict(arg.removeprefix("--").split("=", 1) for arg in args)
    config = load_config(options.pop("config"))
    workdir = options.pop("workdir")
    for key, text in options.items():
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
