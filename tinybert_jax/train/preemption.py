"""Stop requests (SIGTERM from a TPU VM / cloud GPU scheduler, SIGINT from Ctrl-C): the training loop finishes
its step, checkpoints and raises Preempted, which main turns into exit status 0."""
from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Training stopped early on request after writing a checkpoint; re-running the command resumes."""


class StopRequests:
    """Context manager that turns SIGTERM/SIGINT into a stop at a step boundary.

    One process: a handler records the signal. Several processes must stop at the same step (the checkpoint is
    collective) even when only some of them are signalled, so JAX's preemption sync (which the distributed runtime
    already attached to SIGTERM) picks the step; SIGINT is forwarded to it as SIGTERM.
    """

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread; leave signals alone
        multi = jax.process_count() > 1
        for sig in (signal.SIGINT,) if multi else SIGNALS:
            self._previous[sig] = signal.signal(sig, self._forward if multi else self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _record(self, signum, frame) -> None:
        if self.received is not None:  # asked twice: the user does not want to wait for the step and checkpoint
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def _forward(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name
        signal.raise_signal(signal.SIGTERM)

    def reached(self, step: int) -> bool:
        """True at the step where every process should checkpoint and stop; call once per step on all processes."""
        if jax.process_count() > 1:
            if multihost_utils.reached_preemption_sync_point(step):
                self.received = self.received or "SIGTERM"
                return True
            return False
        return self.received is not None
