"""Task distillation end to end on a small SST-2-style task with tiny random-init models: fine-tune the teacher,
augment, stage 1, stage 2, export, report."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from conftest import make_hf_model

ROOT = Path(__file__).resolve().parents[1]
POSITIVE = "good great fine lovely superb".split()
NEGATIVE = "bad awful poor boring dull".split()
FILLER = "the a movie film story plot actor scene was is and it this very quite really".split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + POSITIVE + NEGATIVE + FILLER
TINY = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=64)


def sentence(rng, label):
    words = list(rng.choice(FILLER, rng.integers(3, 7)))
    words.insert(int(rng.integers(0, len(words) + 1)), rng.choice(POSITIVE if label else NEGATIVE))
    return " ".join(words)


def write_sst2(directory: Path, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    for split, size in (("train", 160), ("dev", 48)):
        labels = rng.integers(0, 2, size)
        rows = ["sentence\tlabel"] + [f"{sentence(rng, y)}\t{y}" for y in labels]
        (directory / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return directory


def save_model(directory: Path, cls_name: str, **overrides):
    directory.mkdir(parents=True)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizerFast(str(directory / "vocab.txt")).save_pretrained(directory)
    make_hf_model(cls_name, **{**TINY, **overrides}).save_pretrained(directory)
    return directory


def run_main(config, workdir, *overrides):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "tinybert_jax.main", f"--config=configs/{config}.py",
                             f"--workdir={workdir}", *overrides], cwd=ROOT, env=env, capture_output=True, text=True)
    return result


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    data = write_sst2(root / "SST-2")
    pretrained = save_model(root / "pretrained", "BertForMaskedLM")
    result = run_main("finetune", root / "teacher", f"--config.data.source={data}", f"--config.model.path={pretrained}",
                      "--config.train.batch_size=16", "--config.train.num_epochs=25",
                      "--config.train.optimizer.learning_rate=1e-3", "--config.eval.every_steps=50",
                      "--config.log.every_steps=10")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, data, pretrained


def test_finetuned_teacher_learns_the_task(finetuned):
    root, _, _ = finetuned
    report = json.loads((root / "teacher" / "report.json").read_text())
    assert report["score"] >= 0.9, report
    model, info = transformers.BertForSequenceClassification.from_pretrained(root / "teacher" / "export",
                                                                             output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_two_stage_distillation_end_to_end(finetuned):
    root, data, pretrained = finetuned
    student = save_model(root / "student_init", "BertModel", hidden_size=16, intermediate_size=24)
    workdir = root / "distilled"
    args = [f"--config.data.source={data}", f"--config.teacher.path={root / 'teacher' / 'export'}",
            f"--config.student.init={student}", f"--config.augment.mlm_path={pretrained}",
            "--config.augment.n_a=3", "--config.augment.max_seq_len=64", "--config.stage1.batch_size=16", "--config.stage1.num_epochs=2",
            "--config.stage1.optimizer.learning_rate=1e-3", "--config.stage2.batch_size=16",
            "--config.stage2.num_epochs=4", "--config.stage2.optimizer.learning_rate=2e-3",
            "--config.eval.every_steps=50", "--config.log.every_steps=10"]
    result = run_main("task", workdir, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["retention_percent"] >= 90.0, report
    augmented = json.loads((workdir / "augmented" / "metadata.json").read_text())
    assert augmented["count"] > 160

    # the export predicts in transformers what the Flax student predicts
    from tinybert_jax import convert
    from tinybert_jax.models.bert import Bert
    cfg, params = convert.load_flax_dir(workdir / "stage2" / "best" / "params")
    model = transformers.BertForSequenceClassification.from_pretrained(workdir / "export").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(workdir / "export")
    batch = tokenizer(["the movie was good", "it was very dull and the plot poor"], padding="max_length",
                      max_length=16, return_tensors="np")
    flax_logits = Bert(cfg).apply({"params": params}, batch["input_ids"], batch["token_type_ids"],
                                  batch["attention_mask"]).logits
    with torch.no_grad():
        torch_logits = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    np.testing.assert_allclose(np.asarray(flax_logits), torch_logits, atol=1e-4)

    # a finished run is skipped stage by stage on re-run: no stage trains again
    logs = {p: p.read_text() for p in workdir.rglob("metrics.jsonl")}
    assert len(logs) == 2
    again = run_main("task", workdir, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.read_text() for p in workdir.rglob("metrics.jsonl")} == logs
    assert json.loads((workdir / "report.json").read_text())["student_score"] == report["student_score"]


def test_teacher_with_the_wrong_label_count(finetuned, tmp_path):
    root, data, pretrained = finetuned
    teacher = save_model(tmp_path / "three_labels", "BertForSequenceClassification", num_labels=3)
    result = run_main("task", tmp_path / "w", f"--config.data.source={data}", f"--config.teacher.path={teacher}",
                      f"--config.student.init={teacher}")
    assert result.returncode != 0
    assert "needs 2" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "w" / "export").exists()


def test_task_stage1_with_minilm_v2_relations(finetuned):
    root, data, _ = finetuned
    student = save_model(root / "student_minilm", "BertModel", hidden_size=16, intermediate_size=24,
                         num_attention_heads=2)  # the teacher has 4 heads: relations do not care
    workdir = root / "distilled_minilm"
    result = run_main("task", workdir, f"--config.data.source={data}",
                      f"--config.teacher.path={root / 'teacher' / 'export'}", f"--config.student.init={student}",
                      "--config.augment.enabled=False", "--config.loss.preset=minilm_v2",
                      "--config.loss.relation_heads=4", "--config.stage1.batch_size=16",
                      "--config.stage1.num_epochs=3", "--config.stage1.optimizer.learning_rate=1e-3",
                      "--config.stage2.batch_size=16", "--config.stage2.num_epochs=1", "--config.log.every_steps=1")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (workdir / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert "relations" in rows[0] and "attention" not in rows[0]
    assert np.mean([r["relations"] for r in rows[-3:]]) < np.mean([r["relations"] for r in rows[:3]])
    assert json.loads((workdir / "report.json").read_text())["student_score"] > 0
