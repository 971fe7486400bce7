"""python -m tinybert_jax.bench.accelerator --out FILE: what `benchmarks/accelerator.sh OUT_DIR` runs.

On a GPU or TPU host, in one go:
- the general-distillation step in bf16 (teacher and student compute in bf16, float32 accumulation; BERT-base ->
  TinyBERT4, 128 tokens) at global batch 256 and at the largest power of two up to 2048 that fits, with its MFU:
  model FLOPs (the teacher forward once, the student forward + backward, matrix products only) over the chip's
  bf16 peak (PEAK_BF16 by device kind; a measured bf16 GEMM rate is reported beside it);
- inference: the student's speed-up over the teacher at batch 128 and 1;
- augmentation: batched vs one masked input per forward (the original's way);
- the task stage-1 step with and without length buckets (single sentences at 64 tokens, pairs at 128).
Without an accelerator it runs the same measurements at tiny sizes on the CPU, in under two minutes, and says so
in `device`: CI runs it that way.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from tinybert_jax.bench.augment import bench_augment, corpus_sentences
from tinybert_jax.bench.inference import bench_inference
from tinybert_jax.bench.machine import machine_info
from tinybert_jax.bench.step import bench_step
from tinybert_jax.bench.task import bench_stage1
from tinybert_jax.bench.timing import time_calls
from tinybert_jax.models.bert import BertConfig
from tinybert_jax.threefry import lower_threefry_unrolled_on_cpu

# dense bf16 peak FLOP/s per chip, by the start of jax's device_kind
PEAK_BF16 = {"NVIDIA H200": 989e12, "NVIDIA H100": 989e12, "NVIDIA A100": 312e12, "NVIDIA L4": 121e12,
             "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}
FULL = dict(teacher=BertConfig(), student=BertConfig(num_hidden_layers=4, hidden_size=312, intermediate_size=1200),
            seq_len=128, batches=(256, 512, 1024, 2048), inference_batches=(128, 1), reps=5, augment_sentences=200,
            task_batch=256, task_steps=8, task_sentences=4096, buckets="32")
TINY = dict(teacher=BertConfig(vocab_size=2000, num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                               intermediate_size=128),
            student=BertConfig(vocab_size=2000, num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                               intermediate_size=64),
            seq_len=32, batches=(8, 16), inference_batches=(8, 1), reps=2, augment_sentences=12, task_batch=8,
            task_steps=3, task_sentences=64, buckets="64")


def is_out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def bf16_gemm_rate(size: int) -> float:
    a = jnp.ones((size, size), jnp.bfloat16)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    timing = time_calls(lambda: matmul(a, a).block_until_ready(), reps=5, warmup=2)
    return 2 * size ** 3 / timing.median


def step_section(sizes: dict, peak: float) -> dict:
    """The bf16 step at each batch until one does not fit."""
    runs = {}
    for batch in sizes["batches"]:
        try:
            runs[str(batch)] = bench_step(sizes["teacher"], sizes["student"], batch, sizes["seq_len"], sizes["reps"],
                                          1, peak, teacher_dtype="bfloat16", student_dtype="bfloat16")
        except Exception as e:  # XLA reports an allocation failure as a runtime error
            if not is_out_of_memory(e):
                raise
            runs[str(batch)] = {"fits": False}
            break
    fitting = [int(batch) for batch, run in runs.items() if run.get("fits", True)]
    largest = runs[str(max(fitting))]
    first = runs[str(sizes["batches"][0])]
    return {"batches": runs, "largest_batch": max(fitting), "examples_per_s": first["examples_per_s"],
            "mfu": first["fraction_of_matmul_ceiling"], "largest_batch_examples_per_s": largest["examples_per_s"],
            "largest_batch_mfu": largest["fraction_of_matmul_ceiling"]}


def run(out: str) -> dict:
    started = time.perf_counter()
    device = jax.devices()[0]
    accelerator = device.platform in ("gpu", "tpu")
    sizes = FULL if accelerator else TINY
    with tempfile.TemporaryDirectory() as tmp:
        corpus = "embedded"
        if not accelerator:  # tiny vocabularies from the sentences used, not the whole corpus
            corpus = str(Path(tmp) / "sentences.txt")
            Path(corpus).write_text("\n".join(corpus_sentences(2 * sizes["task_sentences"])) + "\n")
        return measure(out, sizes, device, accelerator, corpus, started)


def measure(out: str, sizes: dict, device, accelerator: bool, corpus: str, started: float) -> dict:
    gemm = bf16_gemm_rate(8192 if accelerator else 512)
    peak = next((value for kind, value in PEAK_BF16.items() if device.device_kind.startswith(kind)), gemm)
    results = {"machine": machine_info(),
               "device": device.device_kind if accelerator else "cpu (no accelerator: tiny sizes)",
               "peak_bf16_flops_per_s": peak, "measured_bf16_gemm_flops_per_s": gemm,
               "step": step_section(sizes, peak)}
    inference = bench_inference(sizes["teacher"], sizes["student"], sizes["inference_batches"], sizes["seq_len"],
                                sizes["reps"], 1, 16)
    results["inference"] = {run: batch["speedup"] for run, batch in inference["batches"].items()}
    augment = bench_augment(sizes["teacher"], sizes["augment_sentences"], None, 64, sizes["seq_len"] * 2,
                            corpus=corpus)
    results["augment"] = {"speedup": augment["speedup"], "batched_sentences_per_s": augment["batched_sentences_per_s"],
                          "reference_sentences_per_s": augment["reference_sentences_per_s"],
                          "same_outputs": augment["same_outputs"]}
    task = bench_stage1(sizes["teacher"], sizes["student"], sizes["task_batch"], sizes["task_steps"],
                        sizes["task_sentences"], sizes["buckets"], corpus=corpus)
    results["task"] = {kind: {name: task[kind][name] for name in ("speedup", "ideal", "fraction_of_ideal")}
                       | {"fixed_examples_per_s": task[kind]["fixed"]["examples_per_s"],
                          "bucketed_examples_per_s": task[kind]["bucketed"]["examples_per_s"]}
                       for kind in ("single", "pair")}
    results["seconds"] = time.perf_counter() - started
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinybert_jax.bench.accelerator",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    # Before anything is compiled: dropout masks (and random initialisation) on CPU as one fused kernel, bit-identical
    # to JAX's own lowering (tinybert_jax/threefry.py); without an accelerator the steps run on the CPU.
    lower_threefry_unrolled_on_cpu()
    results = run(args.out)
    step = results["step"]
    print(f"{results['device']}: step {step['examples_per_s']:.1f} examples/s at batch "
          f"{next(iter(step['batches']))} (MFU {step['mfu']:.1%}), largest batch {step['largest_batch']} "
          f"(MFU {step['largest_batch_mfu']:.1%}); inference speed-up {results['inference']}; augmentation "
          f"{results['augment']['speedup']:.1f}x; buckets {results['task']['single']['speedup']:.2f}x / "
          f"{results['task']['pair']['speedup']:.2f}x; {results['seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
