"""The loop's progress: the bar counts steps whose results were read (completed), never dispatched ones, while
the next step is still dispatched before the previous one's results are read (one step in flight)."""
import types

import jax
import numpy as np

from tinybert_jax import sharding
from tinybert_jax.train import loop


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


def test_the_bar_counts_completed_steps_with_one_step_in_flight(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(loop, "progress_bar", lambda total, initial, desc: Bar(events))
    mesh = sharding.make_mesh(-1, 1)
    batches = iter(lambda: {"x": np.zeros(jax.device_count(), np.float32)}, None)

    def step_fn(state, batch):
        state.step += 1
        events.append(("dispatch", state.step))
        return state, {"loss": Metric(events, state.step)}

    settings = loop.LoopSettings(num_steps=7, global_batch_size=jax.device_count(), log_every_steps=3, desc="t")
    loop.run_loop(step_fn, types.SimpleNamespace(step=0), batches, mesh, NoCheckpoints(), {}, tmp_path, settings)

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
