"""Task distillation end to end on a small SST-2-style task with tiny random-init models: fine-tune the teacher,
augment, stage 1, stage 2, export, report."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from helpers import FILLER, TEST_SETTINGS, last_error, made_once, run_main, save_model, sentence, write_sst2


@pytest.fixture(scope="session")
def finetuned(shared_dir):
    """(root, SST-2 data, pre-trained model); root/teacher is the teacher fine-tuned on it (made once per session;
    each test writes its own directories under root)."""
    def make(root: Path) -> None:
        data = write_sst2(root / "SST-2")
        pretrained = save_model(root / "pretrained", "BertForMaskedLM")
        result = run_main("finetune", root / "teacher", f"--config.data.source={data}",
                          f"--config.teacher.path={pretrained}", "--config.train.batch_size=16",
                          "--config.train.num_epochs=25", "--config.optimizer.learning_rate=1e-3",
                          "--config.eval.every_steps=50", "--config.log.every_steps=10", settings=TEST_SETTINGS)
        assert result.returncode == 0, result.stderr[-3000:]

    root = made_once(shared_dir, "task", make)
    return root, root / "SST-2", root / "pretrained"


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
            "--config.augment.n_a=3", "--config.augment.max_seq_len=64", "--config.stage1.batch_size=16",
            "--config.stage1.num_epochs=2",
            "--config.stage1.optimizer.learning_rate=1e-3", "--config.stage2.batch_size=16",
            "--config.stage2.num_epochs=4", "--config.stage2.optimizer.learning_rate=2e-3",
            "--config.eval.every_steps=50", "--config.log.every_steps=10", "--config.data.buckets=16"]
    result = run_main("task", workdir, *args, settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["retention_percent"] >= 90.0, report
    assert "batch shape(s) in" in result.stdout  # length buckets, each shape compiled before the first step
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
    again = run_main("task", workdir, *args, settings=TEST_SETTINGS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.read_text() for p in workdir.rglob("metrics.jsonl")} == logs
    assert json.loads((workdir / "report.json").read_text())["student_score"] == report["student_score"]

    # other augmentation settings: the finished stage 1 was trained on other data, so the run is refused at once
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    other = run_main("task", workdir, *[a.replace("n_a=3", "n_a=4") for a in args], settings=TEST_SETTINGS)
    error = last_error(other)
    assert "stage1 holds stage 1 made from other inputs" in error and "augment.n_a: 3 vs 4" in error, error
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before


def test_teacher_with_the_wrong_label_count(finetuned, tmp_path):
    root, data, pretrained = finetuned
    teacher = save_model(tmp_path / "three_labels", "BertForSequenceClassification", num_labels=3)
    result = run_main("task", tmp_path / "w", f"--config.data.source={data}", f"--config.teacher.path={teacher}",
                      f"--config.student.init={teacher}", settings=TEST_SETTINGS)
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
                      "--config.stage2.batch_size=16", "--config.stage2.num_epochs=1", "--config.log.every_steps=1",
                      settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (workdir / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert "relations" in rows[0] and "attention" not in rows[0]
    assert np.mean([r["relations"] for r in rows[-3:]]) < np.mean([r["relations"] for r in rows[:3]])
    assert json.loads((workdir / "report.json").read_text())["student_score"] > 0


def swapped_teacher(source: Path, out: Path, id2label):
    """The classifier at `source` with its two output rows swapped, saved with `id2label` (None: transformers'
    generic LABEL_i names, i.e. no usable label order)."""
    model = transformers.BertForSequenceClassification.from_pretrained(source)
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight.flip(0))
        model.classifier.bias.copy_(model.classifier.bias.flip(0))
    model.config.id2label = id2label or {0: "LABEL_0", 1: "LABEL_1"}
    model.config.label2id = {name: i for i, name in model.config.id2label.items()}
    model.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def test_teacher_in_another_label_order_is_remapped(finetuned, tmp_path):
    root, data, pretrained = finetuned
    teacher = swapped_teacher(root / "teacher" / "export", tmp_path / "swapped", {0: "positive", 1: "negative"})
    student = save_model(tmp_path / "student", "BertModel", hidden_size=16, intermediate_size=24)
    workdir = tmp_path / "w"
    result = run_main("task", workdir, f"--config.data.source={data}", f"--config.teacher.path={teacher}",
                      f"--config.student.init={student}", "--config.augment.enabled=False",
                      "--config.stage1.batch_size=16", "--config.stage1.num_steps=4", "--config.stage2.batch_size=16",
                      "--config.stage2.num_steps=10", "--config.eval.every_steps=10", settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((workdir / "report.json").read_text())["teacher_score"] >= 0.9
    # stage 2's cached targets are in the task's label order, i.e. the logits of the teacher before the swap
    from tinybert_jax.data import glue
    original = transformers.BertForSequenceClassification.from_pretrained(root / "teacher" / "export").eval()
    train = glue.encode(glue.read_split(glue.get_task("sst2"), str(data), "train"),
                        transformers.AutoTokenizer.from_pretrained(teacher), 64)
    with torch.no_grad():
        expected = original(**{k: torch.from_numpy(train[k].astype(np.int64))
                               for k in ("input_ids", "token_type_ids", "attention_mask")}).logits.numpy()
    np.testing.assert_allclose(np.load(workdir / "stage2" / "teacher_logits.npy"), expected, atol=1e-4)


def test_teacher_near_chance_stops_before_augmentation(finetuned, tmp_path):
    root, data, pretrained = finetuned
    # the same weights without label names: read in canonical order, every prediction is the wrong class
    teacher = swapped_teacher(root / "teacher" / "export", tmp_path / "generic", None)
    workdir = tmp_path / "w"
    result = run_main("task", workdir, f"--config.data.source={data}", f"--config.teacher.path={teacher}",
                      f"--config.student.init={teacher}", f"--config.augment.mlm_path={pretrained}",
                      settings=TEST_SETTINGS)
    error = last_error(result)
    assert "within 0.05 of chance" in error and "id2label" in error and "--config.teacher.check_score=False" in error
    assert not (workdir / "augmented").exists() and not (workdir / "stage1").exists()


def write_stsb(directory: Path, reverse_train: bool = False, seed: int = 0) -> Path:
    """Pairs of a sentence with one sentiment word and one of filler words; the score is 5 when the sentiment is
    positive, else 0. With `reverse_train` the training scores are 5 - score: only a student that learns from its
    teacher, not from the training labels, then scores well on dev."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    for split, size in (("train", 160), ("dev", 48)):
        rows = ["sentence1\tsentence2\tscore"]
        for label in rng.integers(0, 2, size):
            score = 5.0 - 5.0 * label if reverse_train and split == "train" else 5.0 * label
            rows.append(f"{sentence(rng, label)}\t{' '.join(rng.choice(FILLER, 4))}\t{score}")
        (directory / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return directory


def test_regression_stage2_distils_the_teachers_predictions(finetuned, tmp_path):
    _, _, pretrained = finetuned
    teacher_run = tmp_path / "teacher"
    result = run_main("finetune", teacher_run, "--config.task=stsb",
                      f"--config.data.source={write_stsb(tmp_path / 'STS-B')}",
                      f"--config.teacher.path={pretrained}", "--config.data.seq_len=32", "--config.train.batch_size=16",
                      "--config.train.num_epochs=20", "--config.optimizer.learning_rate=2e-3",
                      "--config.eval.every_steps=50", settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    student = save_model(tmp_path / "student", "BertModel", hidden_size=16, intermediate_size=24)
    workdir = tmp_path / "w"
    result = run_main("task", workdir, "--config.task=stsb",
                      f"--config.data.source={write_stsb(tmp_path / 'STS-B-reversed', reverse_train=True)}",
                      f"--config.teacher.path={teacher_run / 'export'}", f"--config.student.init={student}",
                      "--config.augment.enabled=False", "--config.data.seq_len=32", "--config.stage1.batch_size=16",
                      "--config.stage1.num_epochs=3", "--config.stage2.batch_size=16", "--config.stage2.num_epochs=20",
                      "--config.stage2.optimizer.learning_rate=2e-3", "--config.eval.every_steps=40",
                      settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["teacher_score"] > 0.8, report
    # gold training scores are reversed: distilling them would give a negative dev correlation
    assert report["student_score"] > 0.5, report
    assert np.load(workdir / "stage2" / "teacher_logits.npy").shape == (160, 1)


def test_leaderboard_predictions_of_an_exported_classifier(finetuned, tmp_path):
    """SST-2: the fine-tuned teacher's export; MNLI: a classifier whose id2label is in another order than GLUE's.
    The files hold every test row's index and the label as GLUE writes it, from the logits transformers gives."""
    root, _, _ = finetuned
    rng = np.random.default_rng(3)
    sst2 = tmp_path / "SST-2"
    sst2.mkdir()
    sentences = [sentence(rng, label) for label in rng.integers(0, 2, 30)]
    (sst2 / "test.tsv").write_text("index\tsentence\n" + "".join(f"{i}\t{s}\n" for i, s in enumerate(sentences)))
    export = root / "teacher" / "export"
    result = run_main("predict", tmp_path / "sst2", "--config.task=sst2", f"--config.data.source={sst2}",
                      f"--config.model.path={export}", "--config.data.seq_len=64", settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("\t") for line in (tmp_path / "sst2" / "SST-2.tsv").read_text().splitlines()]
    assert rows[0] == ["index", "prediction"] and [r[0] for r in rows[1:]] == [str(i) for i in range(30)]
    assert [r[1] for r in rows[1:]] == [str(i) for i in torch_predictions(export, sentences, None, 64)]

    mnli = tmp_path / "MNLI"
    model_dir = save_model(tmp_path / "mnli_model", "BertForSequenceClassification", num_labels=3)
    config = transformers.AutoConfig.from_pretrained(model_dir)
    config.id2label = {0: "contradiction", 1: "entailment", 2: "neutral"}
    config.label2id = {name: i for i, name in config.id2label.items()}
    config.save_pretrained(model_dir)
    mnli.mkdir()
    pairs = {}
    for split in ("test_matched", "test_mismatched"):
        pairs[split] = [(sentence(rng, 1), sentence(rng, 0)) for _ in range(12)]
        header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\n"
        (mnli / f"{split}.tsv").write_text(header + "".join(f"{i}\tp\tq\tg\t{a}\t{b}\n"
                                                            for i, (a, b) in enumerate(pairs[split])))
    result = run_main("predict", tmp_path / "mnli", "--config.task=mnli", f"--config.data.source={mnli}",
                      f"--config.model.path={model_dir}", "--config.data.seq_len=64", settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    glue_labels = ("entailment", "neutral", "contradiction")
    for split, name in (("test_matched", "MNLI-m"), ("test_mismatched", "MNLI-mm")):
        rows = [line.split("\t") for line in (tmp_path / "mnli" / f"{name}.tsv").read_text().splitlines()][1:]
        a, b = zip(*pairs[split])
        expected = [config.id2label[i] for i in torch_predictions(model_dir, list(a), list(b), 64)]
        assert [r[1] for r in rows] == expected
        # the model's ids are not GLUE's, so writing its raw argmax would name other labels
        assert any(config.label2id[name] != glue_labels.index(name) for name in expected)
    missing = run_main("predict", tmp_path / "none", "--config.task=sst2", f"--config.data.source={mnli}",
                       f"--config.model.path={export}", settings=TEST_SETTINGS)
    assert "test.tsv: not found" in last_error(missing)


def torch_predictions(model_dir, text_a, text_b, seq_len):
    model = transformers.BertForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(text_a, text_b, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.argmax(-1).tolist()


def test_stage2_per_seed_reports_each_seed_and_exports_the_best(finetuned, tmp_path):
    root, data, _ = finetuned
    student = save_model(tmp_path / "student", "BertModel", hidden_size=16, intermediate_size=24)
    common = [f"--config.data.source={data}", f"--config.teacher.path={root / 'teacher' / 'export'}",
              f"--config.student.init={student}", "--config.augment.enabled=False", "--config.stage1.batch_size=16",
              "--config.stage1.num_steps=4", "--config.stage2.batch_size=16", "--config.stage2.num_steps=12",
              "--config.stage2.optimizer.learning_rate=2e-3", "--config.eval.every_steps=6"]
    workdir = tmp_path / "seeds"
    result = run_main("task", workdir, *common, "--config.seeds=3,7", settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    scores = {seed: json.loads((workdir / "stage2" / f"seed_{seed}" / "best" / "best.json").read_text())["score"]
              for seed in (3, 7)}
    assert report["seed_scores"] == {str(seed): score for seed, score in scores.items()}
    assert report["seed_mean"] == pytest.approx(np.mean(list(scores.values())))
    assert report["seed_std"] == pytest.approx(np.std(list(scores.values())))
    assert report["best_seed"] == max(scores, key=scores.get) and report["student_score"] == max(scores.values())
    losses = [[json.loads(line).get("loss") for line in
               (workdir / "stage2" / f"seed_{seed}" / "metrics.jsonl").read_text().splitlines()] for seed in (3, 7)]
    assert losses[0] != losses[1]  # other initialisation of the classifier and another data order
    assert "mean +- std" in result.stdout

    whole = tmp_path / "whole"
    result = run_main("task", whole, *common, "--config.seeds=0,1", "--config.seeds_whole_pipeline=True",
                      "--config.stage1.num_steps=2", "--config.stage2.num_steps=4", "--config.eval.every_steps=4",
                      settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((whole / "report.json").read_text())
    per_seed = {str(seed): json.loads((whole / f"seed_{seed}" / "report.json").read_text())["student_score"]
                for seed in (0, 1)}
    assert report["seed_scores"] == per_seed and (whole / "seed_1" / "export" / "config.json").is_file()
    # one listed seed is still the seed of the whole pipeline, not config.seed
    single = tmp_path / "single"
    result = run_main("task", single, *common, "--config.seeds=5", "--config.seeds_whole_pipeline=True",
                      "--config.stage1.num_steps=2", "--config.stage2.num_steps=4", "--config.eval.every_steps=4",
                      settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(json.loads((single / "report.json").read_text())["seed_scores"]) == ["5"]
    assert (single / "seed_5" / "stage1" / "student" / "bert_config.json").is_file()
    assert not (single / "stage1").exists()
    bad = run_main("task", tmp_path / "bad", *common, "--config.seeds=0,x", settings=TEST_SETTINGS)
    assert "seeds='0,x': give integer seeds" in last_error(bad)


def test_stage2_and_its_export_are_refused_under_other_stage2_settings(finetuned, tmp_path):
    """Like stage 1, stage 2 carries a fingerprint: a finished run (its export and report) or a half-done stage 2
    is not reused under another stage-2 setting; the one-line error names the setting."""
    root, data, _ = finetuned
    student = save_model(tmp_path / "student", "BertModel", hidden_size=16, intermediate_size=24)
    common = [f"--config.data.source={data}", f"--config.teacher.path={root / 'teacher' / 'export'}",
              f"--config.student.init={student}", "--config.augment.enabled=False", "--config.stage1.batch_size=16",
              "--config.stage1.num_steps=2", "--config.stage2.batch_size=16", "--config.stage2.num_steps=4",
              "--config.eval.every_steps=4"]
    workdir = tmp_path / "w"
    assert run_main("task", workdir, *common, settings=TEST_SETTINGS).returncode == 0
    exported = (workdir / "export" / "model.safetensors").read_bytes()
    changed = run_main("task", workdir, *common, "--config.stage2.temperature=2.0", settings=TEST_SETTINGS)
    assert changed.returncode != 0 and "stage2.temperature: 1.0 vs 2.0" in last_error(changed)
    assert (workdir / "export" / "model.safetensors").read_bytes() == exported
    # a stage 2 stopped half-way (no export yet) does not resume under another learning rate either
    shutil.rmtree(workdir / "export")
    changed = run_main("task", workdir, *common, "--config.stage2.optimizer.learning_rate=0.5", settings=TEST_SETTINGS)
    assert "stage2.optimizer.learning_rate: " in last_error(changed)
    # the same settings: stage 2 trains again and exports
    again = run_main("task", workdir, *common, settings=TEST_SETTINGS)
    assert again.returncode == 0 and (workdir / "export" / "model.safetensors").is_file()


def test_finetuning_stops_at_its_plateau_on_dev_and_reports_the_curve(finetuned, tmp_path):
    """min_steps raises a short run; early stopping ends it eval.patience evaluations after the best on dev,
    whose model is exported; the report holds the dev curve."""
    _, data, pretrained = finetuned
    workdir = tmp_path / "teacher"
    result = run_main("finetune", workdir, f"--config.data.source={data}", f"--config.teacher.path={pretrained}",
                      "--config.train.batch_size=16", "--config.train.num_epochs=1", "--config.train.min_steps=400",
                      "--config.optimizer.learning_rate=1e-3", "--config.eval.every_steps=10",
                      "--config.eval.patience=2", settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    curve = {int(step): score for step, score in report["dev_curve"].items()}
    assert report["planned_steps"] == 400 and report["stopped_at"] < 400 and "min_steps=400" in report["length"]
    assert sorted(curve) == list(range(10, report["stopped_at"] + 1, 10))
    best_step = min(step for step, score in curve.items() if score == max(curve.values()))
    assert report["best_step"] == best_step and report["stopped_at"] == best_step + 20
    assert report["score"] == max(curve.values())
    assert "below train.min_steps=400" in result.stdout and "stopped early" in result.stdout


def test_the_report_compares_with_fine_tuning_the_student_directly(finetuned, tmp_path):
    root, data, _ = finetuned
    student = save_model(tmp_path / "student", "BertModel", hidden_size=16, intermediate_size=24)
    workdir = tmp_path / "w"
    result = run_main("task", workdir, f"--config.data.source={data}",
                      f"--config.teacher.path={root / 'teacher' / 'export'}", f"--config.student.init={student}",
                      "--config.augment.enabled=False", "--config.stage1.batch_size=16", "--config.stage1.num_steps=4",
                      "--config.stage2.batch_size=16", "--config.stage2.num_steps=8", "--config.eval.every_steps=4",
                      "--config.baseline.finetune=True", "--config.baseline.learning_rates=1e-3,3e-3",
                      "--config.baseline.num_epochs=0.2", "--config.baseline.batch_size=16", settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    runs = {name: json.loads((workdir / "baseline" / directory / "best" / "best.json").read_text())["score"]
            for name, directory in (("lr 0.001, 0.2 epochs", "lr_0.001_epochs_0.2"),
                                    ("lr 0.003, 0.2 epochs", "lr_0.003_epochs_0.2"))}
    assert {name: run["score"] for name, run in report["baseline"].items()} == runs
    assert report["baseline_score"] == max(runs.values())
    assert report["gain_over_baseline_points"] == pytest.approx(100 * (report["student_score"] - max(runs.values())))
    assert "distilled - best direct fine-tune" in result.stdout
    assert report["stage_lengths"]["stage2"] == {"steps": 8, "why": "stage2.num_steps=8"}


def test_stage1_settings_are_checked_before_augmentation(finetuned, tmp_path):
    root, data, _ = finetuned
    student = save_model(tmp_path / "student", "BertModel", hidden_size=16, intermediate_size=24)
    workdir = tmp_path / "w"
    result = run_main("task", workdir, f"--config.data.source={data}",
                      f"--config.teacher.path={root / 'teacher' / 'export'}", f"--config.student.init={student}",
                      f"--config.augment.mlm_path={tmp_path / 'no_such_mlm'}", "--config.loss.preset=custom",
                      "--config.loss.matches=prediction logits_soft_ce 0 0 1", settings=TEST_SETTINGS)
    assert "term 'prediction'" in last_error(result)
    assert not (workdir / "augmented").exists() and not (workdir / "stage1" / "checkpoints").exists()
