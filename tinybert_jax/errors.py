"""Exceptions for bad user input (and settings that do not train): entry points print their one-line message and
exit non-zero."""
import logging
import sys
from typing import Callable


class InputError(ValueError):
    """A file, key or value supplied by the user is invalid; the message names it and what would be valid."""


class TrainingDiverged(InputError):
    """The loss or the gradient norm became NaN or infinite (a learning rate too high, or bad data); the message
    names the step, the non-finite values and the last good checkpoint, which training never replaces."""


def run_cli(action: Callable[[], str]) -> int:
    """Runs a command-line action: its summary on stdout and exit 0, or `error: <one line>` on stderr and exit 1."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        summary = action()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary)
    return 0
