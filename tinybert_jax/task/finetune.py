"""The `finetune` pipeline: fine-tune a pre-trained BERT on a GLUE task (the teacher of task distillation) and
export the best-on-dev model as a Hugging Face BertForSequenceClassification directory with its label names."""
from __future__ import annotations

from pathlib import Path

import ml_collections

from tinybert_jax import convert, hf_checkpoint
from tinybert_jax.data import glue
from tinybert_jax.distill.general import compute_dtype
from tinybert_jax.task import common
from tinybert_jax.task.evaluate import main_score


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    workdir = Path(workdir)
    task = glue.get_task(config.task)
    model_dir = hf_checkpoint.resolve_checkpoint_dir(config.model.path)
    pretrained_cfg, pretrained = convert.load_hf_bert(str(model_dir))
    cfg = common.classifier_config(pretrained_cfg, task).replace(dtype=compute_dtype(config))
    tokenizer = common.tokenizer_of(model_dir)
    seq_len = common.seq_len_for(task, config.data.seq_len)
    train = glue.encode(glue.read_split(task, config.data.source, "train", config.data.tfds_data_dir), tokenizer,
                        seq_len)
    dev_sets = common.load_dev_sets(task, config.data, tokenizer, seq_len)

    best = common.train_classifier(cfg, task, train, dev_sets, common.encoder_params(pretrained), config.train,
                                   config, workdir, desc=f"fine-tune {task.name}")
    common.export_classifier(best, task, workdir / "export", model_dir)
    rows = [(f"{split} {name}", f"{value:.4f}") for split, metrics in best.best["scores"].items()
            for name, value in metrics.items()]
    common.write_report(workdir / "report.json", {"task": task.name, "best_step": best.best["step"],
                                                   "score": main_score(task, best.best["scores"]),
                                                   "scores": best.best["scores"]},
                        [("task", task.name), ("best step", str(best.best["step"]))] + rows)
