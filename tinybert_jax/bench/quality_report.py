"""The table of benchmarks/quality.sh: per task, the teacher, the task-distilled student and the best direct
fine-tune of the same student initialisation, over seeds (mean +- std), from the runs' report.json files.

  python -m tinybert_jax.bench.quality_report OUT_DIR [--json FILE]

OUT_DIR/TASK/teacher/report.json (configs/finetune.py) and OUT_DIR/TASK/seed_N/report.json (configs/task.py with
baseline.finetune=True).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tinybert_jax.bench.machine import machine_info
from tinybert_jax.errors import InputError
from tinybert_jax.files import read_json


def task_summary(task_dir: Path) -> dict:
    """The teacher's dev score and curve, and per seed the student's and the best baseline's scores."""
    teacher_report = task_dir / "teacher" / "report.json"
    if not teacher_report.is_file():
        raise InputError(f"{teacher_report}: not found; run benchmarks/quality.sh first")
    teacher = read_json(teacher_report)
    seeds = {path.parent.name.removeprefix("seed_"): read_json(path)
             for path in sorted(task_dir.glob("seed_*/report.json"))}
    summary = {"teacher": teacher["score"], "teacher_best_step": teacher["best_step"],
               "teacher_stopped_at": teacher["stopped_at"], "teacher_dev_curve": teacher["dev_curve"],
               "seeds": list(seeds)}
    if not seeds:  # the teacher is done, no seed yet
        return summary
    students = np.array([report["student_score"] for report in seeds.values()])
    baselines = np.array([report["baseline_score"] for report in seeds.values()])
    return {**summary, "student": students.tolist(), "baseline": baselines.tolist(),
            "baseline_settings": [report["baseline_best_setting"] for report in seeds.values()],
            "student_mean": float(students.mean()), "student_std": float(students.std()),
            "baseline_mean": float(baselines.mean()), "baseline_std": float(baselines.std()),
            "retention_percent": float(100 * students.mean() / teacher["score"]),
            "gain_over_baseline_points": float(100 * (students - baselines).mean())}


def table(summaries: dict[str, dict]) -> str:
    rows = ["| task | teacher | distilled student (mean +- std) | of the teacher | best direct fine-tune | "
            "distilled - direct | seeds |", "|---|---|---|---|---|---|---|"]
    for task, s in summaries.items():
        if not s["seeds"]:
            rows.append(f"| {task} | {100 * s['teacher']:.1f}% | (no seed finished) | | | | 0 |")
            continue
        rows.append(f"| {task} | {100 * s['teacher']:.1f}% | {100 * s['student_mean']:.1f} +- "
                    f"{100 * s['student_std']:.1f}% | {s['retention_percent']:.1f}% | {100 * s['baseline_mean']:.1f} "
                    f"+- {100 * s['baseline_std']:.1f}% | {s['gain_over_baseline_points']:+.1f} points | "
                    f"{len(s['seeds'])} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinybert_jax.bench.quality_report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--json", help="write the summary here")
    args = parser.parse_args(argv)
    try:
        tasks = sorted(path.parent.parent.name for path in Path(args.out_dir).glob("*/teacher/report.json"))
        if not tasks:
            raise InputError(f"{args.out_dir}: no TASK/teacher/report.json; run benchmarks/quality.sh first")
        summaries = {task: task_summary(Path(args.out_dir) / task) for task in tasks}
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(summaries))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_info(), "tasks": summaries}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
