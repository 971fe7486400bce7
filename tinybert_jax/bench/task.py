"""`task`: task-distillation stage-1 throughput with and without length buckets, and augmentation on 1 vs 8
devices.

The examples are the embedded corpus's sentences (5..40 words, tokenised with a WordPiece vocabulary trained on
the corpus): single sentences at 64 tokens and consecutive sentence pairs at 128, the lengths of TinyBERT's task
stages. Fixed padding runs every batch at the full length; bucketed batches are the task iterator's with
`data.buckets` (its plan, built here without Grain, which the accelerator hosts may lack) and run at their bucket's
length, each shape compiled (and timed) before the timed steps. `ideal` is the no-padding bound: seq_len / the
mean real length.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from tinybert_jax import sharding
from tinybert_jax.bench.augment import bench_augment, corpus_sentences
from tinybert_jax.bench.step import build_step
from tinybert_jax.data.glue import TaskExamples, encode
from tinybert_jax.data.loader import bucket_plan
from tinybert_jax.data.prepare import load_tokenizer
from tinybert_jax.data.wordpiece import train_wordpiece
from tinybert_jax.models.bert import BertConfig
from tinybert_jax.task.arrays import Arrays, bucket_lengths, cut_rows, example_buckets

KINDS = (("single", 64, False), ("pair", 128, True))
AUGMENT_SEQ_LEN = 128  # `bench augment`'s default --seq-len


def task_arrays(tokenizer, sentences: list[str], seq_len: int, pair: bool) -> dict[str, np.ndarray]:
    texts_a, texts_b = (sentences[0::2], sentences[1::2]) if pair else (sentences, None)
    count = len(texts_b) if pair else len(texts_a)
    return encode(TaskExamples(texts_a[:count], texts_b, np.zeros(count, np.int32)), tokenizer, seq_len)


def planned_batches(arrays: Arrays, batch: int, steps: int, lengths: tuple[int, ...]) -> list[Arrays]:
    """The first `steps` batches (seed 0) of the task iterator with buckets `lengths`: its plan
    (`loader.bucket_plan`), without Grain. With the one bucket seq_len, fixed-padding batches of shuffled examples
    like the iterator's without buckets (which draws Grain's permutation instead); a step's time depends only on
    their shapes."""
    which = example_buckets(arrays, lengths)
    batches = []
    for epoch in itertools.count():
        indices, buckets = bucket_plan(which, len(lengths), batch, 0, epoch)
        batches += [cut_rows(arrays, rows, lengths[bucket]) for rows, bucket in zip(indices, buckets)]
        if len(batches) >= steps:
            return batches[:steps]


def steps_per_s(step, state, teacher_params, batches: list[dict], mesh) -> tuple[float, float, object]:
    """(seconds for the untimed first step of every distinct batch shape, seconds per timed step, state)."""
    start = time.perf_counter()
    for width in sorted({batch["input_ids"].shape[1] for batch in batches}):
        first = next(batch for batch in batches if batch["input_ids"].shape[1] == width)
        state, metrics = step(state, teacher_params, sharding.global_batch(first, mesh))
        jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for batch in batches:
        state, metrics = step(state, teacher_params, sharding.global_batch(batch, mesh))
    jax.block_until_ready(metrics)
    return compile_s, (time.perf_counter() - start) / len(batches), state


def bench_stage1(teacher: BertConfig, student: BertConfig, batch: int, steps: int, sentences: int,
                 buckets: str, tokenizer_dir: str = "", corpus: str = "embedded") -> dict:
    """examples/s of the TinyBERT stage-1 step on fixed-padded and on bucketed batches, per length distribution
    (tokenizer_dir: a tokenizer to use; "" = WordPiece trained on `corpus`, a data source)."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(tokenizer_dir or str(train_wordpiece(corpus, Path(tmp) / "tokenizer",
                                                                        vocab_size=teacher.vocab_size)))
    texts = corpus_sentences(sentences)
    for kind, seq_len, pair in KINDS:
        arrays = task_arrays(tokenizer, texts, seq_len, pair)
        inputs = {name: arrays[name] for name in ("input_ids", "token_type_ids", "attention_mask")}
        mean_length = float(inputs["attention_mask"].sum(axis=1).mean())
        step, state, teacher_params, _, mesh = build_step(teacher.replace(vocab_size=max(teacher.vocab_size,
                                                                                           len(tokenizer))),
                                                          student.replace(vocab_size=max(student.vocab_size,
                                                                                         len(tokenizer))))
        lengths = bucket_lengths(buckets, seq_len)
        measured = {}
        for name, setting in (("fixed", (seq_len,)), ("bucketed", lengths)):
            batches = planned_batches(inputs, batch, steps, setting)
            compile_s, step_s, state = steps_per_s(step, state, teacher_params, batches, mesh)
            measured[name] = {"examples_per_s": batch / step_s, "step_s": step_s,
                              "compile_and_first_steps_s": compile_s,
                              "shapes": len({b["input_ids"].shape[1] for b in batches}),
                              "mean_padded_length": float(np.mean([b["input_ids"].shape[1] for b in batches]))}
        ideal = seq_len / mean_length
        speedup = measured["bucketed"]["examples_per_s"] / measured["fixed"]["examples_per_s"]
        results[kind] = {"seq_len": seq_len, "examples": len(inputs["input_ids"]), "mean_length": mean_length,
                         "buckets": list(lengths), "ideal": ideal, "speedup": speedup,
                         "fraction_of_ideal": speedup / ideal, **measured}
    return results


def bench_augment_devices(teacher: BertConfig, sentences: int, batch: int, devices: tuple[int, ...], mlm: str = "",
                          glove: str = "") -> dict:
    """Batched augmentation sentences/s with 1 and with 8 (fake, on a CPU) devices (`bench augment`; mlm and glove
    as there). The device count is fixed when JAX starts: the count this process has runs here, any other in a
    process of its own."""
    rates = {}
    for count in devices:
        if count == jax.device_count():
            result = bench_augment(teacher, sentences, 1, batch, AUGMENT_SEQ_LEN, mlm, glove)
        else:
            result = augment_in_a_process(teacher, sentences, batch, count, mlm, glove)
        rates[str(count)] = result["batched_sentences_per_s"]
    return {"sentences": sentences, "batch": batch, "sentences_per_s": rates,
            "speedup": rates[str(devices[-1])] / rates[str(devices[0])]}


def augment_in_a_process(teacher: BertConfig, sentences: int, batch: int, devices: int, mlm: str, glove: str) -> dict:
    """`bench augment`'s results from `python -m tinybert_jax.bench augment` with `devices` (fake, on a CPU)
    devices."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "augment.json"
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
        size = ",".join(str(x) for x in (teacher.num_hidden_layers, teacher.hidden_size, teacher.intermediate_size,
                                         teacher.num_attention_heads))
        command = [sys.executable, "-m", "tinybert_jax.bench", "augment", f"--teacher={size}",
                   f"--vocab={teacher.vocab_size}", f"--sentences={sentences}", "--reference-sentences=1",
                   f"--augment-batch={batch}", f"--seq-len={AUGMENT_SEQ_LEN}", f"--mlm={mlm}", f"--glove={glove}",
                   f"--json={out}"]
        result = subprocess.run(command, env={**os.environ, "XLA_FLAGS": flags}, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"augmentation on {devices} device(s) failed: {result.stderr[-2000:]}")
        return json.loads(out.read_text())["augment"]
