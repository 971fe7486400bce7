"""Where training metrics go: WORKDIR/metrics.jsonl, TensorBoard event files in WORKDIR, and the console bar."""
from __future__ import annotations

import json
from pathlib import Path

import tqdm

from tinybert_jax import distributed


class MetricsWriter:
    """Appends one JSON object per logged step and mirrors it to TensorBoard; only process 0 writes."""

    def __init__(self, workdir: Path, enabled: bool):
        self.enabled = enabled
        if enabled:
            from tensorboardX import SummaryWriter

            Path(workdir).mkdir(parents=True, exist_ok=True)
            self._jsonl = open(Path(workdir) / "metrics.jsonl", "a")
            self._tensorboard = SummaryWriter(str(workdir))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()


def progress_bar(total: int, initial: int, desc: str) -> tqdm.tqdm:
    """Steps with rate and ETA; silent on processes other than 0."""
    return tqdm.tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                     disable=not distributed.is_leader())
