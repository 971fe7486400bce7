"""The loop's progress: the bar counts steps whose results were read (completed), never dispatched ones, while
the next step is still dispatched before the previous one's results are read (one step in flight)."""
import types

import jax
import numpy as np

from tinybert_jax import sharding
from tinybert_jax.train import loop
from tinybert_jax.train.job import Job


class Metric:
    """A metric value that records when the loop reads it (as reading a device value waits for the step)."""

    def __init__(self, events, step):
        self.events, self.step = events, step

    def __array__(self, dtype=None, copy=None):
        self.events.append(("read", self.step))
        return np.asarray(1.0, dtype)


class Bar:
    def __init__(self, events):
        self.events = events

    def update(self, count):
        self.events.append(("bar", count))

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


class NoCheckpoints:
    directory = "nowhere"

    def should_save(self, step):
        return False

    def save(self, *args, **kwargs):
        pass

    def latest_step(self):
        return None

    def close(self):
        pass


def loop_job(directory, **fields) -> Job:
    """A run of one example per device per step, in `directory`, with no optimizer (the steps here have none)."""
    return Job(**{"desc": "t", "directory": directory, "batch_size": jax.device_count(), "optimizer": None,
                  "meta": {}, "checkpoint_every_steps": 0, **fields})


def test_the_bar_counts_completed_steps_with_one_step_in_flight(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(loop, "progress_bar", lambda total, initial, desc: Bar(events))
    mesh = sharding.make_mesh(-1, 1)
    batches = iter(lambda: {"x": np.zeros(jax.device_count(), np.float32)}, None)

    def step_fn(state, batch):
        state.step += 1
        events.append(("dispatch", state.step))
        return state, {"loss": Metric(events, state.step)}

    job = loop_job(tmp_path, num_steps=7, log_every_steps=3)
    loop.run_loop(step_fn, types.SimpleNamespace(step=0), batches, mesh, NoCheckpoints(), job)

    completed = 0
    for index, (kind, value) in enumerate(events):
        if kind == "bar":
            completed += value
            reads = sum(1 for k, _ in events[:index] if k == "read")
            assert completed <= reads, events  # never ahead of the steps whose results were read
    assert completed == 7
    order = [event for event in events if event[0] != "bar"]
    # steps 1 and 2 log nothing: step 2 is dispatched before step 1's results are read
    assert order.index(("dispatch", 2)) < order.index(("read", 1))


class Plateau:
    """Dev scores rising until step `peak`, then flat: plateaued `patience` steps after the best."""

    def __init__(self, peak, patience):
        self.peak, self.patience, self.best_step, self.calls = peak, patience, None, []

    def __call__(self, state, step):
        self.calls.append(step)
        if step <= self.peak:
            self.best_step = step
        return {"score": float(min(step, self.peak))}

    def plateaued(self, step):
        return self.best_step is not None and step - self.best_step >= self.patience


class SavedSteps(NoCheckpoints):
    def __init__(self):
        self.saved = []

    def save(self, step, *args, **kwargs):
        self.saved.append((step, kwargs.get("force")))


def counting_step(state, batch):
    state.step += 1
    return state, {"loss": np.float32(1.0)}


def test_early_stopping_ends_the_run_with_a_checkpoint_and_a_resumed_run_stays_stopped(tmp_path):
    mesh = sharding.make_mesh(-1, 1)
    batches = iter(lambda: {"x": np.zeros(jax.device_count(), np.float32)}, None)
    job = loop_job(tmp_path, num_steps=100, log_every_steps=5, eval_every_steps=10)
    evaluator, checkpoints = Plateau(peak=30, patience=20), SavedSteps()
    state, record = loop.run_loop(counting_step, types.SimpleNamespace(step=0), batches, mesh, checkpoints, job,
                                  evaluator)
    assert state.step == 50 and record.stopped_at == 50 and evaluator.calls == [10, 20, 30, 40, 50]
    assert checkpoints.saved == [(50, True)]
    assert "stopped early at step 50" in record.summary_rows()[0][1]
    # resumed from that checkpoint: no further step, the same decision
    state, record = loop.run_loop(counting_step, types.SimpleNamespace(step=50), batches, mesh, SavedSteps(), job,
                                  evaluator)
    assert state.step == 50 and record.stopped_at == 50 and evaluator.calls[-1] == 50
    # never plateauing: to the end, evaluated at the last step
    evaluator = Plateau(peak=1000, patience=20)
    state, record = loop.run_loop(counting_step, types.SimpleNamespace(step=0), batches, mesh, SavedSteps(), job,
                                  evaluator)
    assert state.step == 100 and record.stopped_at is None and evaluator.calls[-1] == 100
