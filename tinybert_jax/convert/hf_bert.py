"""Hugging Face BERT <-> Flax conversion: import teachers, export students, and Flax checkpoint directories.

Weight names: Hugging Face stores `[bert.]embeddings.*`, `[bert.]encoder.layer.{i}.*`, `[bert.]pooler.*` and the
heads `cls.predictions.*` / `classifier.*` / `qa_outputs.*`; our encoder layers are stacked on a leading axis,
Linear weights are transposed ([out, in] -> [in, out]) and LayerNorm weight/bias are scale/bias.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional

import flax.linen as nn
import jax
import numpy as np
from flax import serialization

from tinybert_jax import hf_checkpoint
from tinybert_jax.errors import InputError
from tinybert_jax.files import atomic_output_dir, read_json
from tinybert_jax.models.bert import ACTIVATIONS, BertConfig, abstract_params

log = logging.getLogger(__name__)

# HF parameter suffix -> (our leaf name, whether the array is transposed)
_KINDS = {
    "linear": (("weight", "kernel", True), ("bias", "bias", False)),
    "norm": (("weight", "scale", False), ("bias", "bias", False)),
    "embed": (("weight", "embedding", False),),
}
_EMBEDDINGS = (("embeddings.word_embeddings", ("embeddings", "word_embeddings"), "embed"),
               ("embeddings.position_embeddings", ("embeddings", "position_embeddings"), "embed"),
               ("embeddings.token_type_embeddings", ("embeddings", "token_type_embeddings"), "embed"),
               ("embeddings.LayerNorm", ("embeddings", "LayerNorm"), "norm"))
_LAYER = (("attention.self.query", "query", "linear"),
          ("attention.self.key", "key", "linear"),
          ("attention.self.value", "value", "linear"),
          ("attention.output.dense", "attention_output", "linear"),
          ("attention.output.LayerNorm", "attention_norm", "norm"),
          ("intermediate.dense", "intermediate", "linear"),
          ("output.dense", "output", "linear"),
          ("output.LayerNorm", "output_norm", "norm"))
_MLM_BIAS = "cls.predictions.bias"
_TIED_DECODER = "cls.predictions.decoder.weight"
# Present in real checkpoints, not part of our model; reason None: a buffer, dropped silently.
_IGNORED = ((re.compile(r"^embeddings\.position_ids$"), None),
            (re.compile(r"^cls\.seq_relationship\."), "the next-sentence-prediction head"),
            (re.compile(r"^fit_denses?\."), "TinyBERT's fit_dense training projection"))


class HfHead(NamedTuple):
    """A task head (models/bert.py TASK_HEADS) as Hugging Face writes it."""
    linear: str  # the name of its linear layer
    architecture: str  # the class of a model with it
    labelled: bool = True  # config.json names its outputs (id2label; a span head's are start and end)
    problem_type: bool = False  # config.json says regression or single-label classification


HF_HEADS = {"sequence": HfHead("classifier", "BertForSequenceClassification", problem_type=True),
            "token": HfHead("classifier", "BertForTokenClassification"),
            "span": HfHead("qa_outputs", "BertForQuestionAnswering", labelled=False)}
ARCHITECTURES = {head: hf.architecture for head, hf in HF_HEADS.items()}
_NOT_IN_HF_CONFIG = ("dtype", "param_dtype", "pooler", "mlm_head", "num_labels", "task_head")
_REQUIRED_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                         "intermediate_size")


class WeightName(NamedTuple):
    hf: str  # without the `bert.` prefix; `{}` stands for the layer index in per-layer names
    flax: tuple  # path in our params tree
    transpose: bool
    per_layer: bool


def weight_names(cfg: BertConfig) -> Iterator[WeightName]:
    """Every parameter of a model with this config, in Hugging Face and Flax naming."""
    modules = [(hf, path, kind, False) for hf, path, kind in _EMBEDDINGS]
    modules += [(f"encoder.layer.{{}}.{hf}", ("layers", name), kind, True) for hf, name, kind in _LAYER]
    if cfg.pooler:
        modules.append(("pooler.dense", ("pooler",), "linear", False))
    if cfg.mlm_head:
        modules += [("cls.predictions.transform.dense", ("mlm_head", "transform"), "linear", False),
                    ("cls.predictions.transform.LayerNorm", ("mlm_head", "transform_norm"), "norm", False)]
    if cfg.num_labels:
        modules.append((HF_HEADS[cfg.task_head].linear, ("classifier",), "linear", False))
    for hf, path, kind, per_layer in modules:
        for hf_suffix, leaf, transpose in _KINDS[kind]:
            yield WeightName(f"{hf}.{hf_suffix}", path + (leaf,), transpose, per_layer)
    if cfg.mlm_head:
        yield WeightName(_MLM_BIAS, ("mlm_head", "bias"), False, False)


def _is_head(name: str) -> bool:
    return name.startswith(("cls.", "classifier.", "qa_outputs."))


# ----------------------------------------------------------------------------------------------- configs
def config_from_hf(config: dict, config_file: Path, *, pooler: bool, mlm_head: bool, num_labels: int,
                   task_head: str = "sequence") -> BertConfig:
    model_type = config.get("model_type")
    if model_type not in (None, "bert"):  # released TinyBERT configs carry no model_type
        raise InputError(f"{config_file}: model_type {model_type!r} is not a BERT; this converter reads "
                         f"model_type 'bert' (or TinyBERT configs without model_type)")
    missing = [key for key in _REQUIRED_CONFIG_KEYS if key not in config]
    if missing:
        raise InputError(f"{config_file}: missing key(s) {missing}; a BERT config.json needs {_REQUIRED_CONFIG_KEYS}")
    act = config.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise InputError(f"{config_file}: hidden_act {act!r} is not supported; use one of {sorted(ACTIVATIONS)}")
    fields = {f.name for f in dataclasses.fields(BertConfig)} - set(_NOT_IN_HF_CONFIG)
    known = {key: config[key] for key in fields if config.get(key) is not None}
    _check_field_types(known, config_file)
    try:
        return BertConfig(**known, pooler=pooler, mlm_head=mlm_head, num_labels=num_labels, task_head=task_head)
    except (TypeError, ValueError) as e:
        raise InputError(f"{config_file}: {e}") from e


def _check_field_types(values: dict, config_file: Path) -> None:
    """BertConfig checks ranges, not types: a hand-edited "32" or 32.5 would pass int() and break the model later."""
    defaults = {f.name: f.default for f in dataclasses.fields(BertConfig)}
    for key, value in values.items():
        default = defaults.get(key)
        if isinstance(default, bool):
            valid, expected = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            valid, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, str):
            valid, expected = isinstance(value, str), "a string"
        elif isinstance(default, float) or (default is None and key in defaults):  # None: classifier_dropout unset
            valid = (value is None and default is None) or (isinstance(value, (int, float)) and not isinstance(
                value, bool) and math.isfinite(value))
            expected = "a finite number"
        else:
            continue  # unknown keys are BertConfig's to refuse
        if not valid:
            raise InputError(f"{config_file}: {key} is {json.dumps(value)}; expected {expected}")


def config_to_hf(cfg: BertConfig, id2label: Optional[dict[int, str]] = None) -> dict:
    if cfg.num_labels:
        architecture = ARCHITECTURES[cfg.task_head]
    elif cfg.mlm_head:
        architecture = "BertForMaskedLM"
    else:
        architecture = "BertModel"
    config = {key: value for key, value in dataclasses.asdict(cfg).items()
              if key not in _NOT_IN_HF_CONFIG}
    config.update(model_type="bert", architectures=[architecture], tie_word_embeddings=True, pad_token_id=0)
    if cfg.num_labels and HF_HEADS[cfg.task_head].labelled:
        id2label = id2label or {i: f"LABEL_{i}" for i in range(cfg.num_labels)}
        if sorted(int(i) for i in id2label) != list(range(cfg.num_labels)):
            raise InputError(f"id2label keys {sorted(id2label)} must be exactly 0..{cfg.num_labels - 1}")
        config["id2label"] = {str(i): str(label) for i, label in sorted(id2label.items(), key=lambda kv: int(kv[0]))}
        config["label2id"] = {label: int(i) for i, label in config["id2label"].items()}
        if HF_HEADS[cfg.task_head].problem_type:
            config["problem_type"] = "regression" if cfg.num_labels == 1 else "single_label_classification"
    return config


# ----------------------------------------------------------------------------------------------- import
def _normalise_names(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strip the `bert.` prefix and map legacy LayerNorm gamma/beta to weight/bias."""
    out = {}
    for name, value in weights.items():
        name = name.removeprefix("bert.")
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
        name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        out[name] = value
    if _MLM_BIAS not in out and "cls.predictions.decoder.bias" in out:
        out[_MLM_BIAS] = out.pop("cls.predictions.decoder.bias")
    out.pop("cls.predictions.decoder.bias", None)
    return out


def load_hf_bert(path_or_hub_id: str) -> tuple[BertConfig, dict[str, Any]]:
    """Reads a Hugging Face BERT checkpoint (directory or hub id) into (BertConfig, params of numpy arrays).

    Heads are taken from the weights present: pooler, masked-LM (`cls.predictions.*`), classifier, answer span
    (`qa_outputs.*`); a classifier is per token when config.json's architectures say ...ForTokenClassification.
    """
    ckpt_dir = hf_checkpoint.resolve_checkpoint_dir(path_or_hub_id)
    config = hf_checkpoint.read_config(ckpt_dir)
    raw, source = hf_checkpoint.read_weights(ckpt_dir)
    weights = _normalise_names(raw)
    task_head = _task_head_of(weights, config.get("architectures") or ())
    head_weight = f"{HF_HEADS[task_head].linear}.weight"
    classifier = weights.get(head_weight)
    if classifier is not None and getattr(classifier, "ndim", 0) != 2:
        raise InputError(f"{source}: weight {head_weight!r} has shape {classifier.shape}, expected "
                         f"[num_labels, hidden_size]")
    cfg = config_from_hf(config, ckpt_dir / "config.json", pooler="pooler.dense.weight" in weights,
                         mlm_head="cls.predictions.transform.dense.weight" in weights,
                         num_labels=0 if classifier is None else classifier.shape[0], task_head=task_head)
    params = _params_from_hf(cfg, weights, source)
    _report_unused(cfg, weights, params, source)
    return cfg, params


def _task_head_of(weights: dict, architectures) -> str:
    """The head config.json's architectures name (by class, e.g. ...ForTokenClassification), else the one whose
    linear layer the weights hold (`classifier` is the first listed, the sequence head's), else BertConfig's."""
    for head, hf in HF_HEADS.items():
        if any(str(name).endswith(hf.architecture.removeprefix("Bert")) for name in architectures):
            return head
    return next((head for head, hf in HF_HEADS.items() if f"{hf.linear}.weight" in weights), BertConfig.task_head)


def _params_from_hf(cfg: BertConfig, weights: dict[str, np.ndarray], source: Path) -> dict[str, Any]:
    expected = nn.meta.unbox(abstract_params(cfg))
    dtype = np.dtype(jax.numpy.dtype(cfg.param_dtype))
    params: dict[str, Any] = {}
    for name in weight_names(cfg):
        want = _get_path(expected, name.flax)
        want_shape = want.shape[1:] if name.per_layer else want.shape
        hf_names = [name.hf.format(i) for i in range(cfg.num_hidden_layers)] if name.per_layer else [name.hf]
        arrays = []
        for hf_name in hf_names:
            if hf_name not in weights:
                raise InputError(f"{source}: weight '{hf_name}' is missing; config.json describes a BERT with "
                                 f"{cfg.num_hidden_layers} layers and hidden size {cfg.hidden_size}")
            array = np.asarray(weights[hf_name])
            array = array.T if name.transpose else array
            if array.shape != tuple(want_shape):
                hf_want = tuple(want_shape)[::-1] if name.transpose else tuple(want_shape)
                raise InputError(f"{source}: weight '{hf_name}' has shape {tuple(weights[hf_name].shape)} but "
                                 f"config.json implies {hf_want}")
            arrays.append(array.astype(dtype))
        _set_path(params, name.flax, np.stack(arrays) if name.per_layer else arrays[0])
    return params


def _report_unused(cfg: BertConfig, weights: dict[str, np.ndarray], params: dict, source: Path) -> None:
    used = {name.hf.format(i) for name in weight_names(cfg)
            for i in (range(cfg.num_hidden_layers) if name.per_layer else [0])}
    leftover = sorted(set(weights) - used)
    if _TIED_DECODER in leftover:
        leftover.remove(_TIED_DECODER)
        tied = params["embeddings"]["word_embeddings"]["embedding"]
        if cfg.mlm_head and not np.allclose(weights[_TIED_DECODER], tied):
            log.warning("%s: the MLM decoder is not tied to the word embeddings; our model ties them, so the "
                        "imported MLM logits use the word embeddings", source)
    for pattern, reason in _IGNORED:
        matched = [name for name in leftover if pattern.search(name)]
        if matched and reason:
            log.info("%s: ignoring %s (%d weights: %s)", source, reason, len(matched), ", ".join(matched[:4]))
        leftover = [name for name in leftover if name not in matched]
    if leftover:
        log.warning("%s: %d unrecognised weight(s) ignored: %s", source, len(leftover), ", ".join(leftover[:8]))


def _get_path(tree: dict, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set_path(tree: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# ----------------------------------------------------------------------------------------------- export
def check_params(cfg: BertConfig, params: dict[str, Any], what: str = "params") -> None:
    """Raises InputError unless `params` has exactly the structure and shapes that `cfg` implies."""
    expected = nn.meta.unbox(abstract_params(cfg))
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    have = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
    if want.keys() != have.keys():
        missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
        raise InputError(f"{what} do not match the model config: missing {missing[:4]}, unexpected {extra[:4]}")
    for key, shape in want.items():
        if tuple(have[key]) != tuple(shape):
            raise InputError(f"{what}: parameter {key} has shape {tuple(have[key])}, the config implies {shape}")


def hf_state_dict(cfg: BertConfig, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """Our params as a Hugging Face state dict (float32, contiguous), `bert.`-prefixed when a head is present."""
    check_params(cfg, params)
    prefix = "bert." if (cfg.mlm_head or cfg.num_labels) else ""
    state = {}
    for name in weight_names(cfg):
        array = np.asarray(jax.device_get(_get_path(params, name.flax)), dtype=np.float32)
        for i in range(cfg.num_hidden_layers) if name.per_layer else [None]:
            value = array[i] if name.per_layer else array
            key = name.hf if _is_head(name.hf) else prefix + name.hf
            state[key.format(i)] = np.ascontiguousarray(value.T if name.transpose else value)
    return state


def save_hf_bert(cfg: BertConfig, params: dict[str, Any], out_dir: str | Path, tokenizer_dir: str | Path | None = None,
                 id2label: Optional[dict[int, str]] = None, overwrite: bool = False,
                 extra_files: Optional[dict[str, bytes]] = None) -> Path:
    """Writes a Hugging Face checkpoint directory (config.json, model.safetensors, tokenizer files, label maps,
    and `extra_files`: name -> contents, e.g. the distillation projection, which transformers ignores).

    The directory is written beside `out_dir` and renamed into place, so a failure leaves `out_dir` as it was.
    """
    if cfg.mlm_head and cfg.pooler:
        # BertForMaskedLM has no pooler; exporting one would make it an unexpected weight when loaded.
        log.info("masked-LM export: the pooler is left out (BertForMaskedLM has none)")
        cfg = cfg.replace(pooler=False)
        params = {key: value for key, value in params.items() if key != "pooler"}
    config = config_to_hf(cfg, id2label)
    state = hf_state_dict(cfg, params)
    tokenizer_files = _tokenizer_files(Path(tokenizer_dir)) if tokenizer_dir is not None else []
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        _save_safetensors(state, tmp / hf_checkpoint.SAFETENSORS)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for file in tokenizer_files:
            shutil.copy2(file, tmp / file.name)
        for name, contents in (extra_files or {}).items():
            (tmp / name).write_bytes(contents)
    log.info("exported %s (%s, %d tensors) to %s", config["architectures"][0], cfg.hidden_size, len(state), out_dir)
    return Path(out_dir)


def _save_safetensors(state: dict[str, np.ndarray], path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    try:
        save_file(state, str(path), metadata={"format": "pt"})
    except SafetensorError as e:  # how safetensors reports a failed write (disk full, read-only file system)
        raise OSError(str(e).splitlines()[0]) from e


def _tokenizer_files(tokenizer_dir: Path) -> list[Path]:
    files = [tokenizer_dir / name for name in hf_checkpoint.TOKENIZER_FILES if (tokenizer_dir / name).is_file()]
    if not files:
        raise InputError(f"{tokenizer_dir}: no tokenizer files; expected one of {hf_checkpoint.TOKENIZER_FILES}")
    return files


# ----------------------------------------------------------------------------------------------- Flax dirs
FLAX_CONFIG = "bert_config.json"
MSGPACK = "params.msgpack"
ORBAX = "params"


def save_flax_dir(cfg: BertConfig, params: dict[str, Any], out_dir: str | Path, fmt: str = "msgpack",
                  overwrite: bool = False) -> Path:
    """A Flax checkpoint directory: bert_config.json plus params.msgpack or an Orbax checkpoint in params/."""
    from tinybert_jax import checkpoint

    if fmt not in ("msgpack", "orbax"):
        raise InputError(f"format {fmt!r} is not supported; use 'msgpack' or 'orbax'")
    check_params(cfg, params)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / FLAX_CONFIG).write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
        if fmt == "msgpack":
            (tmp / MSGPACK).write_bytes(serialization.msgpack_serialize(jax.device_get(params)))
        else:
            checkpoint.save_params(tmp / ORBAX, params)
    return Path(out_dir)


def load_flax_dir(src: str | Path) -> tuple[BertConfig, dict[str, Any]]:
    from tinybert_jax import checkpoint

    src = Path(src)
    config_file = src / FLAX_CONFIG
    if not config_file.is_file():
        raise InputError(f"{src}: not a Flax checkpoint directory (needs {FLAX_CONFIG} and {MSGPACK} or {ORBAX}/)")
    values = read_json(config_file)
    if not isinstance(values, dict):
        raise InputError(f"{config_file}: expected a JSON object of BertConfig fields, got {type(values).__name__}")
    _check_field_types(values, config_file)
    try:
        cfg = BertConfig(**values)
    except (TypeError, ValueError) as e:
        raise InputError(f"{config_file}: not a valid BERT config ({e})") from e
    if (src / MSGPACK).is_file():
        try:
            params = serialization.msgpack_restore((src / MSGPACK).read_bytes())
        except Exception as e:  # msgpack raises several types for truncated data
            raise InputError(f"{src / MSGPACK}: cannot decode ({type(e).__name__}); the file is corrupt") from e
    elif (src / ORBAX).is_dir():
        params = checkpoint.restore_params(src / ORBAX, nn.meta.unbox(abstract_params(cfg)))
    else:
        raise InputError(f"{src}: has {FLAX_CONFIG} but neither {MSGPACK} nor an Orbax {ORBAX}/ directory")
    check_params(cfg, params, what=str(src))
    return cfg, params


def load_bert(path: str | Path) -> tuple[BertConfig, dict[str, Any]]:
    """A Flax checkpoint directory (bert_config.json) or else a Hugging Face checkpoint (directory or hub id)."""
    if (Path(path) / FLAX_CONFIG).is_file():
        return load_flax_dir(path)
    return load_hf_bert(str(path))
