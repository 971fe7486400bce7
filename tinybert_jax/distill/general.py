"""The `general` pipeline: TinyBERT general distillation from a pre-trained BERT, resumable, on any mesh.

Reads top to bottom: mesh -> teacher -> student and layer map -> checkpoint compatibility -> data -> state ->
(resume) -> train -> export.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import ml_collections
from absl import logging

from tinybert_jax import convert, distributed, hf_checkpoint, sharding
from tinybert_jax.checkpoint import RunCheckpoints
from tinybert_jax.data import loader, prepare
from tinybert_jax.distill.layer_map import resolve_layer_map
from tinybert_jax.distill.losses import MODES
from tinybert_jax.distill.step import LOSS_TERMS, DistillSpec, make_distill_step, trim_teacher
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import Bert, BertConfig, abstract_params, bert_config_from
from tinybert_jax.train.loop import LoopSettings, run_loop
from tinybert_jax.train.optimizer import make_optimizer
from tinybert_jax.train.state import TrainState, create_state, resume_or_load

COMPUTE_DTYPES = ("float32", "bfloat16")


def student_config(config: ml_collections.ConfigDict, teacher: BertConfig) -> tuple[BertConfig, dict | None]:
    """(student config, loaded params or None for random init). Table sizes always follow the teacher."""
    # The pooler is not distilled; it is kept so that the export is a complete BertModel for task fine-tuning.
    shared = dict(vocab_size=teacher.vocab_size, max_position_embeddings=teacher.max_position_embeddings,
                  type_vocab_size=teacher.type_vocab_size, pooler=True, num_labels=0)
    if config.student.init == "random":
        return bert_config_from(config.student, "student", **shared), None
    cfg, params = convert.load_bert(config.student.init)
    if (cfg.vocab_size, cfg.type_vocab_size) != (teacher.vocab_size, teacher.type_vocab_size):
        raise InputError(f"student.init={config.student.init}: vocabulary {cfg.vocab_size} / token types "
                         f"{cfg.type_vocab_size} differ from the teacher's {teacher.vocab_size} / "
                         f"{teacher.type_vocab_size}")
    logging.info("student initialised from %s; its sizes replace the student.* size keys", config.student.init)
    params = {key: value for key, value in params.items() if key in ("embeddings", "layers", "pooler", "mlm_head")}
    mlm_head = config.student.mlm_head and "mlm_head" in params
    if config.student.mlm_head and not mlm_head:
        logging.info("student.init has no MLM head; a new one is initialised")
    return cfg.replace(pooler=True, num_labels=0, mlm_head=config.student.mlm_head), params


def compute_dtype(config: ml_collections.ConfigDict) -> str:
    """config.dtype: what matrix products take as inputs (they accumulate in float32; trainable parameters,
    optimizer state, LayerNorm, softmax and losses stay float32)."""
    if config.dtype not in COMPUTE_DTYPES:
        raise InputError(f"dtype={config.dtype!r}; use one of {COMPUTE_DTYPES}")
    return config.dtype


def distill_spec(config: ml_collections.ConfigDict, teacher: BertConfig, student: BertConfig):
    if config.loss.mode not in MODES:
        raise InputError(f"loss.mode={config.loss.mode!r}; use one of {MODES}")
    weights = tuple((name, float(config.loss.weights[name])) for name in LOSS_TERMS if config.loss.weights[name])
    if not weights:
        raise InputError("loss.weights: every weight is 0; enable at least one of " + ", ".join(LOSS_TERMS))
    layer_map = resolve_layer_map(config.layer_map, teacher.num_hidden_layers, student.num_hidden_layers)
    if "attention" in dict(weights) and student.num_attention_heads != teacher.num_attention_heads:
        raise InputError(f"loss.weights.attention > 0 compares attention maps head by head: the student has "
                         f"{student.num_attention_heads} heads, the teacher {teacher.num_attention_heads}; "
                         f"use the teacher's head count or set loss.weights.attention=0")
    if config.data.seq_len > teacher.max_position_embeddings:
        raise InputError(f"data.seq_len={config.data.seq_len} exceeds the teacher's max_position_embeddings="
                         f"{teacher.max_position_embeddings}")
    predict = "prediction" in dict(weights)
    if predict and not (teacher.mlm_head and student.mlm_head):
        raise InputError("loss.weights.prediction > 0 distils MLM logits: the teacher checkpoint needs its MLM head "
                         "(cls.predictions) and the student needs student.mlm_head=True")
    depth = teacher.num_hidden_layers if predict else layer_map.teacher_depth
    return layer_map, depth, predict, weights


def run_meta(spec: DistillSpec, seq_len: int) -> dict:
    """What a checkpoint in this workdir must agree on to be resumed."""
    return {"student": dataclasses.asdict(spec.student), "teacher_hidden_size": spec.teacher.hidden_size,
            "teacher_vocab_size": spec.teacher.vocab_size, "layer_map": list(spec.layer_map.teacher_layers),
            "seq_len": seq_len}


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
    student_cfg, student_params = student_config(config, teacher_cfg)
    student_cfg = student_cfg.replace(dtype=compute_dtype(config))
    layer_map, depth, predict, weights = distill_spec(config, teacher_cfg, student_cfg)
    # The frozen teacher is stored in the compute dtype too: nothing accumulates into it, and it halves its memory.
    teacher_cfg, teacher_params = trim_teacher(teacher_cfg, teacher_params, depth, keep_mlm_head=predict,
                                               dtype=config.dtype)
    spec = DistillSpec(student=student_cfg, teacher=teacher_cfg, layer_map=layer_map, mode=config.loss.mode,
                       weights=weights, temperature=config.loss.temperature)
    logging.info("layer map (student <- teacher): attention %s, hidden %s; teacher runs %d layers",
                 spec.layer_map.attention_pairs, spec.layer_map.hidden_pairs, depth)

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
    num_steps = total_steps(config, data_meta["count"])
    tx, schedule = make_optimizer(config.optimizer, num_steps)
    state = train_intermediate(spec, teacher_params, student_params, data_iterator, mesh, rules, tx, schedule,
                               config.seed, checkpoints, meta, workdir,
                               LoopSettings(num_steps, config.train.batch_size, config.log.every_steps,
                                            desc="general distillation"))

    student_params = sharding.host_copy(state.params["student"])
    if distributed.is_leader():
        convert.save_hf_bert(student_cfg, student_params, workdir / "export", tokenizer_dir=teacher_dir,
                             overwrite=True)
        logging.info("student exported to %s", workdir / "export")


def train_intermediate(spec: DistillSpec, teacher_params: dict, student_params: dict | None, data_iterator,
                       mesh: jax.sharding.Mesh, rules, tx, schedule, seed: int, checkpoints: RunCheckpoints,
                       meta: dict, workdir: Path, settings: LoopSettings) -> TrainState:
    """Intermediate-layer distillation (general, and task stage 1): sharded state from `student_params` (or random)
    or the newest checkpoint, the frozen teacher placed on the mesh, the fused step, the loop."""
    state, state_shardings = create_state(lambda rng: init_trainable(spec, rng), tx, seed, mesh, rules)
    state = resume_or_load(state, state_shardings, checkpoints, meta, data_iterator,
                           {"student": student_params} if student_params is not None else {})
    teacher_shardings = sharding.shardings_of(abstract_params(spec.teacher), mesh, rules)
    teacher_params = sharding.put_sharded(teacher_params, teacher_shardings)
    step = sharding.compile_step(make_distill_step(spec, tx, schedule), mesh, rules,
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
