"""What a pipeline tells its user at the end: a table of what ran, how its losses moved, its rate, where its
outputs are and the line that loads the export (and, for task pipelines, report.json)."""
from __future__ import annotations

import json
from pathlib import Path

from tinybert_jax import distributed


def load_line(export_dir: Path, auto_class: str) -> str:
    """The Python line that loads an exported model with transformers."""
    return f'transformers.{auto_class}.from_pretrained("{Path(export_dir).absolute()}")'


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column table on stdout (process 0 only)."""
    if distributed.is_leader():
        width = max(len(name) for name, _ in rows)
        print("\n".join([f"== {title}"] + [f"{name:<{width}}  {value}" for name, value in rows]), flush=True)


def write_report(path: Path, report: dict) -> None:
    """report.json (process 0 only)."""
    if distributed.is_leader():
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
