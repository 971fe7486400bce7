"""`inference`: student vs teacher forward latency and throughput (TinyBERT's protocol: batch 128, seq 128)."""
from __future__ import annotations

import jax
import numpy as np

from tinybert_jax.bench.step import random_batch
from tinybert_jax.bench.timing import encoder_flops, time_calls
from tinybert_jax.models.bert import Bert, BertConfig, init_params


def forward_timing(cfg: BertConfig, batch: int, seq_len: int, chunk: int, reps: int, warmup: int) -> dict:
    """Serving forward (embeddings, every layer, pooler; no per-layer outputs kept) of `batch` sequences, run as
    a loop over chunks of `chunk` sequences: on a CPU a small chunk keeps each layer's activations in cache."""
    params = init_params(cfg, jax.random.PRNGKey(0))
    inputs = tuple(jax.numpy.asarray(x) for x in random_batch(cfg.vocab_size, batch, seq_len).values())

    def forward(params, *inputs):
        chunks = tuple(x.reshape(batch // chunk, chunk, seq_len) for x in inputs)
        pooled = jax.lax.map(lambda xs: Bert(cfg).apply({"params": params}, *xs, output_layers=()).pooled_output,
                             chunks)
        return pooled.reshape(batch, cfg.hidden_size)

    forward = jax.jit(forward)
    timing = time_calls(lambda: forward(params, *inputs).block_until_ready(), reps=reps, warmup=warmup)
    return {"latency_s": timing.median, "latency_range_s": [timing.min, timing.max],
            "sequences_per_s": batch / timing.median}


def parameter_count(cfg: BertConfig) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(
        jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0))))))


def bench_inference(teacher: BertConfig, student: BertConfig, batches: tuple[int, ...], seq_len: int, reps: int,
                    warmup: int, chunk: int) -> dict:
    """Per batch size: the whole batch in one forward, and for batches larger than (and divisible by) `chunk`
    also in chunks."""
    result = {"teacher_params": parameter_count(teacher), "student_params": parameter_count(student),
              "flop_ratio": encoder_flops(teacher, seq_len) / encoder_flops(student, seq_len), "seq_len": seq_len,
              "batches": {}}
    result["size_ratio"] = result["teacher_params"] / result["student_params"]
    for batch in batches:
        runs = {f"batch {batch}": batch}
        if batch > chunk and batch % chunk == 0:
            runs[f"batch {batch} in chunks of {chunk}"] = chunk
        for name, size in runs.items():
            teacher_run = forward_timing(teacher, batch, seq_len, size, reps, warmup)
            student_run = forward_timing(student, batch, seq_len, size, reps, warmup)
            result["batches"][name] = {"batch": batch, "chunk": size, "teacher": teacher_run, "student": student_run,
                                       "speedup": teacher_run["latency_s"] / student_run["latency_s"]}
    return result
