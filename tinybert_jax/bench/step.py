"""`step`: general-distillation step throughput, FLOPs and the fraction of the matmul ceiling it reaches."""
from __future__ import annotations

import dataclasses
import time
import types

import jax
import numpy as np

from tinybert_jax import sharding
from tinybert_jax.bench.timing import encoder_flops, time_calls
from tinybert_jax.convert import hf_state_dict
from tinybert_jax.distill.layer_map import resolve_layer_map
from tinybert_jax.distill.matches import (
    check_matches,
    preset_matches,
    teacher_layers_needed,
    uses_masking,
    uses_teacher_logits,
)
from tinybert_jax.distill.spec import init_trainable
from tinybert_jax.distill.step import DistillSpec, distillation_losses, make_distill_step, trim_teacher
from tinybert_jax.models.bert import Bert, BertConfig, init_params
from tinybert_jax.train.engine import create_state
from tinybert_jax.train.optimizer import make_optimizer

MASK_ID = 4  # random_batch draws ids from 5 up, so [MASK] and the other specials are below
ADAMW = types.SimpleNamespace(name="adamw", learning_rate=1e-4, schedule="linear", warmup_ratio=0.1, b1=0.9, b2=0.999,
                              eps=1e-6, weight_decay=0.01, clip_norm=1.0)


def random_batch(vocab_size: int, batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Full-length sequences (pre-training data is packed to seq_len) with a [CLS] A [SEP] B [SEP] layout."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab_size, (batch, seq_len), dtype=np.int32)
    types = np.zeros((batch, seq_len), np.int32)
    types[:, seq_len // 2:] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": np.ones((batch, seq_len), np.int32)}


def mlm_head_flops(cfg: BertConfig, seq_len: int) -> float:
    """The masked-LM head's forward matmuls per sequence (transform + decoder over the vocabulary), 0 without one."""
    return 2.0 * seq_len * (cfg.hidden_size ** 2 + cfg.hidden_size * cfg.vocab_size) if cfg.mlm_head else 0.0


def step_flops(spec: DistillSpec, seq_len: int) -> float:
    """Model FLOPs per example: teacher forward over the layers it runs, student forward + backward (3x forward),
    the MLM heads where the recipe uses logits, and the hidden projection (forward + backward) on every projected
    hidden state. The loss terms' own products (attention and relation scores) are not counted."""
    student = encoder_flops(spec.student, seq_len) + mlm_head_flops(spec.student, seq_len)
    teacher = encoder_flops(spec.teacher, seq_len) + mlm_head_flops(spec.teacher, seq_len)
    projected = sum(match.loss == "hidden_mse" for match in spec.matches)
    projection = 2 * seq_len * spec.student.hidden_size * spec.teacher.hidden_size * projected
    return teacher + 3 * (student + projection)


def recipe_spec(recipe: str, teacher: BertConfig, student: BertConfig, relation_heads: int) -> DistillSpec:
    """The spec of a recipe preset with its default weights (TinyBERT: the general stage's three terms, uniform
    layer map); its teacher is not trimmed yet."""
    layer_map = None
    if recipe == "tinybert":
        layer_map = resolve_layer_map("uniform", teacher.num_hidden_layers, student.num_hidden_layers)
    if recipe == "distilbert":  # the MLM heads and in-step masking come with the recipe
        teacher, student = teacher.replace(mlm_head=True), student.replace(mlm_head=True)
    matches = preset_matches(recipe, {}, layer_map, student, teacher)
    check_matches(matches, student, teacher, relation_heads)
    return DistillSpec(student, teacher, matches, relation_heads=relation_heads, temperature=2.0,
                       mask_id=MASK_ID if uses_masking(matches) else -1)


def build_step(teacher: BertConfig, student: BertConfig, teacher_dtype: str = "float32", recipe: str = "tinybert",
               relation_heads: int = 48, student_dtype: str = "float32"):
    """(compiled-on-first-call step, state, teacher params, spec) on a mesh over all local devices."""
    spec = recipe_spec(recipe, teacher, student.replace(dtype=student_dtype), relation_heads)
    teacher_params = init_params(spec.teacher, jax.random.PRNGKey(1))
    teacher_cfg, teacher_params = trim_teacher(spec.teacher, teacher_params,
                                               teacher_layers_needed(spec.matches, spec.teacher)[0],
                                               uses_teacher_logits(spec.matches), dtype=teacher_dtype)
    spec = dataclasses.replace(spec, teacher=teacher_cfg)
    student = spec.student
    token_weights = np.ones(student.vocab_size, np.float32)
    token_weights[:MASK_ID + 1] = 0  # the benchmark's ids start above the special tokens
    tx, schedule = make_optimizer(ADAMW, 1000)
    mesh = sharding.make_mesh(-1, 1)
    state, state_shardings = create_state(lambda rng: init_trainable(spec, rng), tx, 0, mesh, [])
    teacher_shardings = jax.tree.map(lambda _: sharding.replicated(mesh), teacher_params)
    teacher_params = sharding.put_sharded(teacher_params, teacher_shardings)
    step = sharding.compile_step(make_distill_step(spec, tx, schedule, token_weights), mesh, [],
                                 in_shardings=(state_shardings, teacher_shardings, sharding.batch_sharding(mesh)),
                                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
    return step, state, teacher_params, spec, mesh


def bench_step(teacher: BertConfig, student: BertConfig, batch: int, seq_len: int, reps: int, warmup: int,
               ceiling_flops_per_s: float, teacher_dtype: str = "float32", recipe: str = "tinybert",
               relation_heads: int = 48, student_dtype: str = "float32") -> dict:
    step, state, teacher_params, spec, mesh = build_step(teacher, student, teacher_dtype, recipe, relation_heads,
                                                         student_dtype)
    host_batch = random_batch(teacher.vocab_size, batch, seq_len)
    device_batch = sharding.global_batch(host_batch, mesh)

    start = time.perf_counter()
    state, metrics = step(state, teacher_params, device_batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start  # first call: trace + compile + one step

    def one_step():
        nonlocal state
        state, out = step(state, teacher_params, device_batch)
        jax.block_until_ready(out)

    timing = time_calls(one_step, reps=reps, warmup=warmup)
    flops = step_flops(spec, seq_len) * batch
    achieved = flops / timing.median
    return {"recipe": recipe, "teacher_dtype": teacher_dtype, "teacher_layers_run": spec.teacher.num_hidden_layers,
            "batch": batch, "seq_len": seq_len,
            "examples_per_s": batch / timing.median, "examples_per_s_range": [batch / timing.max, batch / timing.min],
            "tokens_per_s": batch * seq_len / timing.median, "step_s": timing.median,
            "flops_per_step": flops, "achieved_flops_per_s": achieved,
            "fraction_of_matmul_ceiling": achieved / ceiling_flops_per_s, "compile_s": compile_s,
            "reps": reps}


def frozen_state_dict(cfg: BertConfig, params: dict) -> dict[str, np.ndarray]:
    """The Hugging Face state dict of a frozen model, whose layers `trim_teacher` stored one by one."""
    params = jax.device_get(params)
    stacked = jax.tree.map(lambda *layers: np.stack(layers), *params["layers"])
    return hf_state_dict(cfg.replace(stacked_layers=True), {**params, "layers": stacked})


def loss_without_dropout(spec: DistillSpec, params: dict, teacher_params: dict, batch: dict) -> float:
    """The step's distillation loss with dropout off and no update (what the PyTorch reference must match)."""
    inputs = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    teacher_out = Bert(spec.teacher).apply({"params": teacher_params}, *inputs, deterministic=True,
                                           output_layers=spec.teacher_output_layers)
    student_out = Bert(spec.student).apply({"params": params["student"]}, *inputs, deterministic=True)
    return float(distillation_losses(spec, student_out, teacher_out, params["projection"],
                                     batch["attention_mask"])[0])


def bench_step_vs_pytorch(teacher: BertConfig, student: BertConfig, batch: int, seq_len: int, reps: int,
                          warmup: int, teacher_dtype: str = "float32", breakdown: bool = False) -> dict:
    """Our step and the PyTorch reference on the same batch, timed alternately so both see the same machine;
    with `breakdown`, also the step's phases of both (bench/breakdown.py)."""
    from tinybert_jax.bench.breakdown import jax_phases, time_phases
    from tinybert_jax.bench.torch_step import build_torch_step

    step, state, teacher_params, spec, mesh = build_step(teacher, student, teacher_dtype)
    host_batch = random_batch(teacher.vocab_size, batch, seq_len)
    device_batch = sharding.global_batch(host_batch, mesh)
    layer_map = resolve_layer_map("uniform", teacher.num_hidden_layers, student.num_hidden_layers)
    params = jax.device_get(state.params)  # before the first step donates the state
    reference = build_torch_step(spec.teacher, spec.student, layer_map, host_batch,
                                 frozen_state_dict(spec.teacher, teacher_params),
                                 hf_state_dict(spec.student, params["student"]), params["projection"]["dense"])
    # Both start from the same weights on the same batch: equal losses show that they compute the same thing.
    losses = {"jax_loss_at_start": loss_without_dropout(spec, params, teacher_params, device_batch),
              "pytorch_loss_at_start": reference.loss_without_dropout()}

    def jax_step():
        nonlocal state
        state, out = step(state, teacher_params, device_batch)
        jax.block_until_ready(out)

    for _ in range(warmup + 1):  # the first JAX call compiles
        jax_step()
        reference.step()
    jax_seconds, torch_seconds = [], []
    for _ in range(reps):
        jax_seconds.append(time_calls(jax_step, reps=1, warmup=0).median)
        torch_seconds.append(time_calls(reference.step, reps=1, warmup=0).median)
    jax_step_s, torch_step_s = float(np.median(jax_seconds)), float(np.median(torch_seconds))
    ours, theirs = batch / jax_step_s, batch / torch_step_s
    flops = step_flops(spec, seq_len) * batch
    phases = {}
    if breakdown:
        phases["breakdown"] = time_phases(jax_phases(spec, state, teacher_params, device_batch, ADAMW),
                                          reference.phases, reps, warmup)
    return {"batch": batch, **losses, **phases, "jax_step_s": jax_step_s, "pytorch_step_s": torch_step_s,
            "jax_examples_per_s": ours, "pytorch_examples_per_s": theirs, "ratio": ours / theirs,
            "jax_achieved_flops_per_s": flops * ours / batch, "pytorch_achieved_flops_per_s": flops * theirs / batch,
            "jax_step_range_s": [min(jax_seconds), max(jax_seconds)],
            "pytorch_step_range_s": [min(torch_seconds), max(torch_seconds)], "reps": reps}
