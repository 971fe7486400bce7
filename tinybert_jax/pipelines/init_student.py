"""The `init_student` pipeline: build a BERT from a config (random or from a checkpoint), report its size, save it
as a Flax checkpoint directory and export it as a Hugging Face directory."""
from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging

from tinybert_jax import convert
from tinybert_jax.models.bert import bert_config_from, init_params


def parameter_table(params: dict) -> str:
    """Parameter count per top-level module, with its share of the total."""
    counts = {name: sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(sub)) for name, sub in params.items()}
    total = sum(counts.values())
    rows = [f"{'module':<14}{'parameters':>14}{'share':>8}"]
    rows += [f"{name:<14}{count:>14,}{count / total:>8.1%}" for name, count in counts.items()]
    rows.append(f"{'total':<14}{total:>14,}{1:>8.0%}")
    return "\n".join(rows)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    workdir = Path(workdir)
    if config.model.init == "random":
        cfg = bert_config_from(config.model, "model")
        params = jax.device_get(init_params(cfg, jax.random.key(config.seed)))
    else:
        cfg, params = convert.load_hf_bert(config.model.init)
        logging.info("model sizes taken from %s; the size keys of config.model are not used", config.model.init)
    print(parameter_table(params))
    convert.save_flax_dir(cfg, params, workdir / "flax", overwrite=True)
    if config.export.hf:
        convert.save_hf_bert(cfg, params, workdir / "hf", tokenizer_dir=config.export.tokenizer or None,
                             overwrite=True)
    print(f"wrote {workdir / 'flax'}" + (f" and {workdir / 'hf'}" if config.export.hf else ""))
