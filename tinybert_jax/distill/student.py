"""The student: its sizes (explicit keys or a named preset) and where its first parameters come from."""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
from absl import logging

from tinybert_jax import convert
from tinybert_jax.distill.layer_map import resolve_layer_map
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import BertConfig, bert_config_from

# name -> sizes (docs/recipes.md: TinyBERT 4L-312 and 6L-768, MiniLM L6xH384, DistilBERT 6 x 768)
PRESETS = {
    "tinybert4": dict(hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1200),
    "tinybert6": dict(hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=3072),
    "minilm-l6-h384": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "distilbert6": dict(hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=3072),
}
WIDTH_KEYS = ("hidden_size", "num_attention_heads", "intermediate_size", "hidden_act")


def student_sizes(section: ml_collections.ConfigDict) -> dict:
    """The student.* keys, with a named `student.preset` replacing the size keys."""
    values = dict(section)
    if section.preset:
        if section.preset not in PRESETS:
            raise InputError(f"student.preset={section.preset!r}; use one of {sorted(PRESETS)} or '' for the "
                             f"student.* size keys")
        values.update(PRESETS[section.preset])
    return values


def student_config(config: ml_collections.ConfigDict, teacher: BertConfig, teacher_params: dict
                   ) -> tuple[BertConfig, dict | None]:
    """(student config, parameters to start from or None for random init). Vocabulary, positions and token types
    always follow the teacher. `student.init`: "random", "teacher" (embeddings, the layers student.init_layers
    and the MLM head copied from the teacher, DistilBERT-style) or a HF / Flax checkpoint dir."""
    # The pooler is not distilled; it is kept so that the export is a complete BertModel for task fine-tuning.
    shared = dict(vocab_size=teacher.vocab_size, max_position_embeddings=teacher.max_position_embeddings,
                  type_vocab_size=teacher.type_vocab_size, pooler=True, num_labels=0)
    init = config.student.init
    if init in ("random", "teacher"):
        cfg = bert_config_from(student_sizes(config.student), "student", **shared)
        return cfg, (from_teacher_layers(config.student, cfg, teacher, teacher_params) if init == "teacher" else None)
    cfg, params = convert.load_bert(init)
    if (cfg.vocab_size, cfg.type_vocab_size) != (teacher.vocab_size, teacher.type_vocab_size):
        raise InputError(f"student.init={init}: vocabulary {cfg.vocab_size} / token types {cfg.type_vocab_size} "
                         f"differ from the teacher's {teacher.vocab_size} / {teacher.type_vocab_size}")
    logging.info("student initialised from %s; its sizes replace the student.* size keys", init)
    params = {key: value for key, value in params.items() if key in ("embeddings", "layers", "pooler", "mlm_head")}
    if config.student.mlm_head and "mlm_head" not in params:
        logging.info("student.init has no MLM head; a new one is initialised")
    return cfg.replace(pooler=True, num_labels=0, mlm_head=config.student.mlm_head), params


def from_teacher_layers(section: ml_collections.ConfigDict, cfg: BertConfig, teacher: BertConfig,
                        teacher_params: dict) -> dict:
    """Embeddings, the chosen layers (1-based; default "spread", DistilBERT's choice), pooler and MLM head of the
    teacher, as host arrays: a student of the teacher's width and fewer layers."""
    different = [f"{key} {getattr(cfg, key)} vs {getattr(teacher, key)}" for key in WIDTH_KEYS
                 if getattr(cfg, key) != getattr(teacher, key)]
    if different:
        raise InputError(f"student.init=teacher copies teacher layers, so the student needs the teacher's width: "
                         f"{', '.join(different)} (student vs teacher); set student.preset='' and the student.* "
                         f"sizes to the teacher's, or use student.init=random")
    layers = resolve_layer_map(section.init_layers or "spread", teacher.num_hidden_layers,
                               cfg.num_hidden_layers).teacher_layers
    logging.info("student initialised from teacher layers %s (1-based)", list(layers))
    index = np.asarray(layers) - 1
    params = {"embeddings": teacher_params["embeddings"],
              "layers": jax.tree.map(lambda stacked: np.asarray(stacked)[index], teacher_params["layers"])}
    for head in ("pooler", "mlm_head"):
        if head in teacher_params:
            params[head] = teacher_params[head]
    return params

