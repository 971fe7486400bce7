"""Reading Hugging Face checkpoint directories (config.json + weights) into numpy, with clear errors.

safetensors are read through safetensors' numpy API, so no torch is needed unless the checkpoint only has a
pytorch_model.bin.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from tinybert_jax.errors import InputError
from tinybert_jax.files import read_json

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
# "name" or "org/name" as the hub spells repository ids; anything else is treated as a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_checkpoint_dir(path_or_hub_id: str) -> Path:
    """A local directory as given, or a hub id downloaded (config, weights, tokenizer) to the local HF cache."""
    path = Path(os.path.expanduser(str(path_or_hub_id)))
    if path.is_dir():
        return path
    if path.exists():
        raise InputError(f"{path} is a file; pass the checkpoint directory holding config.json and the weights")
    if not _HUB_ID.match(str(path_or_hub_id)):
        raise InputError(f"{path}: no such directory; pass a Hugging Face checkpoint directory or a hub id")
    return _download_from_hub(str(path_or_hub_id))


def _download_from_hub(repo_id: str) -> Path:
    import huggingface_hub

    wanted = ["config.json", SAFETENSORS, "model-*.safetensors", SAFETENSORS_INDEX, *TOKENIZER_FILES]
    try:
        local = Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=wanted))
        if not any(local.glob("*.safetensors")):  # older repositories only have the torch pickle
            local = Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=wanted + [TORCH_BIN]))
    except Exception as e:  # the hub client raises many types (offline, 404, auth, network)
        raise InputError(f"{repo_id!r} is not a local directory and could not be fetched from the Hugging Face hub "
                         f"({type(e).__name__}); pass a local checkpoint directory instead") from e
    return local


def read_config(ckpt_dir: Path) -> dict:
    config_file = ckpt_dir / "config.json"
    if not config_file.is_file():
        raise InputError(f"{ckpt_dir}: no config.json; a Hugging Face checkpoint directory needs config.json "
                         f"next to its weights")
    config = read_json(config_file)
    if not isinstance(config, dict):
        raise InputError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    return config


def read_weights(ckpt_dir: Path) -> tuple[dict[str, np.ndarray], Path]:
    """All tensors of the checkpoint as numpy arrays, and the file they came from (for error messages)."""
    if (ckpt_dir / SAFETENSORS).is_file():
        return _read_safetensors(ckpt_dir / SAFETENSORS), ckpt_dir / SAFETENSORS
    if (ckpt_dir / SAFETENSORS_INDEX).is_file():
        index_file = ckpt_dir / SAFETENSORS_INDEX
        try:
            shards = sorted(set(read_json(index_file)["weight_map"].values()))
        except (KeyError, AttributeError, TypeError) as e:
            raise InputError(f"{index_file}: not a safetensors index (needs a 'weight_map' object)") from e
        weights = {}
        for shard in shards:
            weights.update(_read_safetensors(ckpt_dir / shard))
        return weights, index_file
    if (ckpt_dir / TORCH_BIN).is_file():
        return _read_torch_bin(ckpt_dir / TORCH_BIN), ckpt_dir / TORCH_BIN
    raise InputError(f"{ckpt_dir}: no weights found; expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN}")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    if not path.is_file():
        raise InputError(f"{path}: weight file listed in the index is missing")
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # safetensors raises SafetensorError, OSError or ValueError for damaged files
        raise InputError(f"{path}: cannot read safetensors ({str(e).splitlines()[0]}); "
                         f"the file is corrupt or truncated, re-download or re-export it") from e


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise InputError(f"{path}: reading {TORCH_BIN} needs torch (pip install torch), "
                         f"or re-save the checkpoint as {SAFETENSORS}") from e
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of a damaged file
        raise InputError(f"{path}: cannot read torch checkpoint ({str(e).splitlines()[0]})") from e
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return {key: value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
            for key, value in state.items() if isinstance(value, torch.Tensor)}
