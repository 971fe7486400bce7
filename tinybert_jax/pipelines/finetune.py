"""The `finetune` pipeline: fine-tune a pre-trained BERT on a task (the teacher of task distillation) and export
the best-on-dev model as a Hugging Face directory with its label names: BertForSequenceClassification (GLUE, your
own data), BertForTokenClassification (CoNLL-2003) or BertForQuestionAnswering (SQuAD)."""
from __future__ import annotations

from pathlib import Path

import ml_collections

from tinybert_jax import convert, hf_checkpoint, report
from tinybert_jax.data.prepare import load_tokenizer
from tinybert_jax.distill.spec import compute_dtype
from tinybert_jax.task import catalog, classifier
from tinybert_jax.task.evaluate import curve_rows, main_score
from tinybert_jax.task.kinds import encode_train, kind_of, load_dev_sets, seq_len_for


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    workdir = Path(workdir)
    task = catalog.get_task(config)
    model_dir = hf_checkpoint.resolve_checkpoint_dir(config.teacher.path)
    pretrained_cfg, pretrained = convert.load_hf_bert(str(model_dir))
    cfg = classifier.classifier_config(pretrained_cfg, task).replace(dtype=compute_dtype(config))
    tokenizer = load_tokenizer(str(model_dir))
    seq_len = seq_len_for(task, config.data.seq_len)
    train = encode_train(task, catalog.read_split(task, config.data, "train"), tokenizer, seq_len, config.data)
    dev_sets = load_dev_sets(task, config.data, tokenizer, seq_len)

    best, record = classifier.train_classifier(config, "train", config.optimizer, cfg, task, train, dev_sets,
                                               classifier.encoder_params(pretrained, cfg), workdir,
                                               desc=f"fine-tune {task.name}")
    export_dir = workdir / "export"
    classifier.export_classifier(best, task, export_dir, model_dir)
    # the dev curve shows whether the teacher reached its plateau (README, "Stage lengths")
    report.write_report(workdir / "report.json", {"task": task.name, "best_step": best.best["step"],
                                                  "score": main_score(task, best.best["scores"]),
                                                  "scores": best.best["scores"], "dev_curve": best.curve,
                                                  "stopped_at": record.stopped_at, "planned_steps": record.num_steps,
                                                  "length": record.plan})
    report.print_table(f"fine-tune {task.name}", record.summary_rows() + [
        ("dev curve", "")] + curve_rows(best.curve, best.best["step"], task.main_metric) + [
        (f"best on dev (step {best.best['step']})", "")] + [
        (f"  {split} {name}", f"{value:.4f}") for split, metrics in best.best["scores"].items()
        for name, value in metrics.items()] + [
        ("export", str(export_dir)), ("report", str(workdir / "report.json")),
        ("load with", report.load_line(export_dir, kind_of(task).auto_class))])
