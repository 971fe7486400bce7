"""The `general` pipeline: general distillation from a pre-trained BERT (TinyBERT, DistilBERT or MiniLM recipe, or
custom terms), resumable, on any mesh.

Reads top to bottom: mesh -> teacher -> student and terms -> checkpoint compatibility -> data -> state ->
(resume) -> train -> export.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import serialization

from tinybert_jax import convert, distributed, hf_checkpoint, sharding
from tinybert_jax.checkpoint import RunCheckpoints
from tinybert_jax.data import loader, prepare
from tinybert_jax.distill.layer_map import resolve_layer_map
from tinybert_jax.distill.losses import MODES
from tinybert_jax.distill.matches import resolve_matches, teacher_layers_needed, uses_masking, uses_teacher_logits
from tinybert_jax.distill.step import DistillSpec, make_distill_step, trim_teacher
from tinybert_jax.distill.student import student_config
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import Bert, BertConfig, abstract_params
from tinybert_jax.train.mlm import smoothed_token_weights
from tinybert_jax.train.loop import LoopSettings, run_loop
from tinybert_jax.train.optimizer import make_optimizer
from tinybert_jax.train.state import TrainState, create_state, resume_or_load

COMPUTE_DTYPES = ("float32", "bfloat16")
# The trained student->teacher projection W_h, saved in the export directory beside the weights.
PROJECTION_FILE = "projection.msgpack"


def compute_dtype(config: ml_collections.ConfigDict) -> str:
    """config.dtype: what matrix products take as inputs (they accumulate in float32; trainable parameters,
    optimizer state, the embedding sum, biases, LayerNorm, softmax and losses stay float32)."""
    if config.dtype not in COMPUTE_DTYPES:
        raise InputError(f"dtype={config.dtype!r}; use one of {COMPUTE_DTYPES}")
    return config.dtype


def distill_spec(config: ml_collections.ConfigDict, teacher: BertConfig, student: BertConfig,
                 mask_id: Optional[int]) -> tuple[DistillSpec, int]:
    """The spec of the configured recipe (its teacher not yet trimmed) and the teacher depth the terms need;
    `mask_id` is the tokenizer's [MASK] id (None: it has none)."""
    if config.loss.mode not in MODES:
        raise InputError(f"loss.mode={config.loss.mode!r}; use one of {MODES}")
    if config.data.seq_len > teacher.max_position_embeddings:
        raise InputError(f"data.seq_len={config.data.seq_len} exceeds the teacher's max_position_embeddings="
                         f"{teacher.max_position_embeddings}")
    layer_map = None
    if config.loss.preset == "tinybert":
        layer_map = resolve_layer_map(config.layer_map, teacher.num_hidden_layers, student.num_hidden_layers)
    matches = resolve_matches(config.loss, layer_map, student, teacher)
    if uses_masking(matches) and mask_id is None:
        raise InputError(f"teacher.path={config.teacher.path}: its tokenizer has no [MASK] token, which the "
                         f"masked-LM term needs")
    spec = DistillSpec(student=student, teacher=teacher, matches=matches, mode=config.loss.mode,
                       temperature=config.loss.temperature, relation_heads=int(config.loss.relation_heads),
                       mask_id=mask_id if uses_masking(matches) else -1, mask_prob=config.loss.mask_prob)
    return spec, teacher_layers_needed(matches, teacher)[0]


def run_meta(spec: DistillSpec, seq_len: int) -> dict:
    """What a checkpoint in this workdir must agree on to be resumed."""
    return {"student": dataclasses.asdict(spec.student), "teacher_hidden_size": spec.teacher.hidden_size,
            "teacher_vocab_size": spec.teacher.vocab_size,
            "matches": [" ".join(map(str, dataclasses.astuple(m))) for m in spec.matches], "seq_len": seq_len}


def total_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    steps = math.ceil(config.train.num_epochs * num_examples / config.train.batch_size)
    if steps < 1:
        raise InputError(f"train.num_epochs={config.train.num_epochs} over {num_examples} sequences is no step")
    return steps


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    workdir = Path(workdir)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    sharding.check_batch_divisible(config.train.batch_size, mesh)
    rules = config.mesh.rules

    teacher_dir = hf_checkpoint.resolve_checkpoint_dir(config.teacher.path)
    teacher_cfg, teacher_params = convert.load_hf_bert(str(teacher_dir))
    student_cfg, student_params = student_config(config, teacher_cfg, teacher_params)
    student_cfg = student_cfg.replace(dtype=compute_dtype(config))
    mask_id = prepare.load_tokenizer(str(teacher_dir)).mask_token_id
    spec, depth = distill_spec(config, teacher_cfg, student_cfg, mask_id)
    # The frozen teacher's matrices are stored in the compute dtype too: nothing accumulates into them, and it
    # halves their memory.
    teacher_cfg, teacher_params = trim_teacher(teacher_cfg, teacher_params, depth,
                                               keep_mlm_head=uses_teacher_logits(spec.matches), dtype=config.dtype)
    spec = dataclasses.replace(spec, teacher=teacher_cfg)
    logging.info("distillation terms (student <- teacher): %s; teacher runs %d layers",
                 ", ".join(f"{m.term}: {m.loss} {m.student} <- {m.teacher} x {m.weight:g}" for m in spec.matches),
                 depth)

    meta = run_meta(spec, config.data.seq_len)
    checkpoints = RunCheckpoints(workdir / "checkpoints", keep=config.checkpoint.keep,
                                 every_steps=config.checkpoint.every_steps)
    checkpoints.latest_compatible_step(meta)  # refuse another run's workdir before preparing any data

    prepared_dir = Path(config.data.prepared_dir or workdir / "data")
    data_meta = distributed.leader_first("prepare", lambda: prepare.ensure_prepared(
        config.data.source, prepared_dir, str(teacher_dir), config.data.seq_len, config.seed,
        tfds_data_dir=config.data.tfds_data_dir, tfds_text_key=config.data.tfds_text_key,
        short_seq_prob=config.data.short_seq_prob))

    data_iterator = loader.make_train_iterator(prepared_dir, config.train.batch_size, config.seed,
                                               rows=sharding.process_batch_rows(mesh, config.train.batch_size))
    token_weights = None
    if uses_masking(spec.matches):  # DistilBERT's rare-token smoothing: positions drawn by count^-smoothing
        special = (data_meta["tokenizer"]["cls_id"], data_meta["tokenizer"]["sep_id"],
                   data_meta["tokenizer"]["pad_id"], mask_id)
        token_weights = smoothed_token_weights(loader.read_token_counts(prepared_dir), special,
                                               config.loss.mask_smoothing)
    num_steps = total_steps(config, data_meta["count"])
    tx, schedule = make_optimizer(config.optimizer, num_steps)
    initial = {"student": student_params} if student_params is not None else {}
    state = train_distillation(spec, teacher_params, initial, data_iterator, mesh, rules, tx, schedule,
                               config.seed, checkpoints, meta, workdir,
                               LoopSettings(num_steps, config.train.batch_size, config.log.every_steps,
                                            desc=f"general distillation ({config.loss.preset})"), token_weights)

    student_params, projection = sharding.host_copy((state.params["student"], state.params["projection"]))
    if distributed.is_leader():
        # The learned W_h travels beside the weights (not in them): task stage 1 starts from it.
        convert.save_hf_bert(student_cfg, student_params, workdir / "export", tokenizer_dir=teacher_dir,
                             overwrite=True,
                             extra_files={PROJECTION_FILE: serialization.msgpack_serialize(projection)})
        logging.info("student exported to %s", workdir / "export")


def train_distillation(spec: DistillSpec, teacher_params: dict, initial: dict[str, dict], data_iterator,
                       mesh: jax.sharding.Mesh, rules, tx, schedule, seed: int, checkpoints: RunCheckpoints,
                       meta: dict, workdir: Path, settings: LoopSettings,
                       token_weights: Optional[np.ndarray] = None) -> TrainState:
    """Distillation with the fused step (general, and task stage 1): sharded state from the newest checkpoint, or
    else from `initial` ({"student": ..., "projection": ...}; what it lacks is random), the frozen teacher placed on
    the mesh, the step, the loop."""
    state, state_shardings = create_state(lambda rng: init_trainable(spec, rng), tx, seed, mesh, rules)
    state = resume_or_load(state, state_shardings, checkpoints, meta, data_iterator, initial)
    teacher_shardings = sharding.shardings_of(abstract_params(spec.teacher), mesh, rules)
    teacher_params = sharding.put_sharded(teacher_params, teacher_shardings)
    step = sharding.compile_step(make_distill_step(spec, tx, schedule, token_weights), mesh, rules,
                                 in_shardings=(state_shardings, teacher_shardings, sharding.batch_sharding(mesh)),
                                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
    return run_loop(lambda s, batch: step(s, teacher_params, batch), state, data_iterator, mesh, checkpoints, meta,
                    workdir, settings)


def init_trainable(spec: DistillSpec, rng: jax.Array) -> dict:
    """Boxed (logically named) student and projection parameters."""
    student_rng, projection_rng = jax.random.split(rng)
    ids = jax.numpy.zeros((1, 8), jax.numpy.int32)
    student = Bert(spec.student).init(student_rng, ids, ids, ids)["params"]
    projection = spec.projection.init(projection_rng, jax.numpy.zeros((1, spec.student.hidden_size)))["params"]
    return {"student": student, "projection": projection}
