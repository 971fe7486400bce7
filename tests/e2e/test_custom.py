"""task=custom: your own CSV/TSV/JSONL files read as a task (labels, pairs, regression, metrics, bad rows),
fine-tuning plus task distillation on them end to end with tiny models, and predictions for their test file."""
import csv
import json

import ml_collections
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
import torch
import transformers
from helpers import FILLER, TEST_SETTINGS, run_main, save_model

from configs import common
from tinybert_jax.data import custom
from tinybert_jax.errors import InputError
from tinybert_jax.task import glue_metrics

TOPICS = {"sports": "goal", "music": "song", "travel": "train", "food": "bread", "money": "bank",
          "health": "doctor", "science": "atom", "weather": "rain"}  # label -> the word that gives it away
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + list(TOPICS.values()) + FILLER


def data_config(source, **overrides) -> ml_collections.ConfigDict:
    data = common.task_data()
    data.update(source=str(source), **overrides)
    return data


def topic_rows(rng, count):
    labels = rng.choice(list(TOPICS), count)
    texts = []
    for label in labels:
        words = list(rng.choice(FILLER, rng.integers(3, 7)))
        words.insert(int(rng.integers(0, len(words) + 1)), TOPICS[label])
        texts.append(" ".join(words))
    return texts, list(labels)


def write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_topics(directory, seed=0, sizes=(("train", 320), ("dev", 64))):
    """An 8-label single-sentence task in CSV (a quoted field with a comma and quotes among the texts)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    for split, size in sizes:
        texts, labels = topic_rows(rng, size)
        texts[0] = 'the "goal", it was'
        labels[0] = "sports"
        write_csv(directory / f"{split}.csv", ["id", "text", "label"],
                  [[i, text, label] for i, (text, label) in enumerate(zip(texts, labels))])
    return directory


def test_labels_columns_and_formats(tmp_path):
    directory = write_topics(tmp_path / "topics")
    task = custom.custom_task(data_config(directory))
    assert task.labels == tuple(sorted(TOPICS)) and task.num_labels == 8 and task.main_metric == "accuracy"
    train = custom.read_split(task, str(directory), "train")
    assert len(train) == 320 and train.text_b is None and train.text_a[0] == 'the "goal", it was'
    assert train.labels.dtype == np.int32 and train.labels[0] == task.labels.index("sports")

    # a pair task in JSONL, labels given in an order of the user's choosing, numbers read as their text
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for split in custom.SPLITS:
        write_jsonl(pairs / f"{split}.jsonl", [{"q": "a goal", "a": "song", "y": 2}, {"q": "bread", "a": "x", "y": 10}])
    task = custom.custom_task(data_config(pairs, text_columns="q, a", label_column="y", labels=["10", "2"],
                                          metric="f1"))
    examples = custom.read_split(task, str(pairs), "dev")
    assert examples.text_b == ["song", "x"] and examples.labels.tolist() == [1, 0]
    assert task.metrics == ("f1", "accuracy")
    # without data.labels, numbers sort as numbers (2 before 10)
    assert custom.custom_task(data_config(pairs, text_columns=["q", "a"], label_column="y")).labels == ("2", "10")

    # regression from TSV: float scores, correlation metrics
    scores = tmp_path / "scores"
    scores.mkdir()
    for split in custom.SPLITS:
        write_csv(scores / f"{split}.tsv", ["text", "label"], [["good", "4.5"], ["bad", "-1e-1"]], delimiter="\t")
    task = custom.custom_task(data_config(scores, regression=True, metric="pearson_spearman"))
    assert task.is_regression and task.metrics == ("pearson_spearman_mean", "pearson", "spearman")
    assert custom.read_split(task, str(scores), "train").labels.tolist() == pytest.approx([4.5, -0.1])


@pytest.mark.parametrize("suffix", custom.FORMATS)
def test_a_byte_order_mark_reads_as_the_same_file(tmp_path, suffix):
    """Spreadsheet programs save UTF-8 with a byte-order mark before the header; the file reads as without it."""
    rows = {"csv": "text,label\nna\u00efve caf\u00e9,x\nb,y\n", "tsv": "text\tlabel\nna\u00efve caf\u00e9\tx\nb\ty\n",
            "jsonl": '{"text": "na\u00efve caf\u00e9", "label": "x"}\n{"text": "b", "label": "y"}\n'}[suffix]
    read = {}
    for name, prefix in (("plain", b""), ("bom", b"\xef\xbb\xbf")):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"train.{suffix}").write_bytes(prefix + rows.encode())
        task = custom.custom_task(data_config(tmp_path / name))
        examples = custom.read_split(task, str(tmp_path / name), "train")
        read[name] = (task.labels, examples.text_a, examples.labels.tolist())
    assert read["bom"] == read["plain"] == (("x", "y"), ["na\u00efve caf\u00e9", "b"], [0, 1])


@pytest.mark.parametrize("files, settings, message", [
    ({"train.csv": "text,label\na,x\nb,y\n", "dev.csv": "text\nb\n"}, {}, "dev.csv:2: no column 'label'"),
    ({"train.csv": "text,label\na,x\nb,y\n", "dev.csv": "text,label\nb,z\n"}, {},
     "dev.csv:2: label 'z' is not one of data.labels ['x', 'y']"),
    ({"train.csv": "text,label\na,1.5\nb,oops\n"}, {"regression": True, "metric": "pearson_spearman"},
     "train.csv:3: score 'oops' is not a finite number"),
    ({"train.jsonl": '{"text": "a", "label": "x"}\n[1, 2]\n'}, {}, "train.jsonl:2: a JSON list, expected an object"),
    ({"train.jsonl": '{"text": "a", "label": "x"\n'}, {}, "train.jsonl:1: not a JSON object"),
    ({"train.csv": "text,label\na,x,extra\n"}, {}, "train.csv:2: 3 fields, expected 2 (text, label)"),
    ({"train.csv": "text,label\na,x\n", "train.jsonl": "{}\n"}, {}, "more than one train file"),
    ({"dev.csv": "text,label\na,x\n"}, {}, "no train file (train.csv, train.tsv, train.jsonl)"),
    ({"train.csv": "text,label\na,x\nb,x\n"}, {}, "data.labels=['x']: a classification task needs at least 2"),
    ({"train.csv": "text,label\na,x\n"}, {"metric": "pearson_spearman"}, "pearson_spearman is the metric of "
                                                                         "regression tasks"),
    ({"train.csv": "text,label\na,x\n"}, {"metric": "auc"}, "data.metric='auc'; use one of accuracy, f1"),
    ({"train.csv": "text,label\na,x\n"}, {"text_columns": "a,b,c"}, "give one or two column names"),
])
def test_bad_files_and_settings_are_one_line(tmp_path, files, settings, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(InputError) as e:
        task = custom.custom_task(data_config(tmp_path, **settings))
        for split in custom.SPLITS:
            custom.read_split(task, str(tmp_path), split)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_multiclass_metrics_match_scikit_learn_and_scipy():
    rng = np.random.default_rng(0)
    for classes in (2, 3, 8):
        labels = rng.integers(0, classes, 200)
        pred = np.where(rng.random(200) < 0.6, labels, rng.integers(0, classes, 200))
        assert glue_metrics.macro_f1(pred, labels) == pytest.approx(
            sklearn.metrics.f1_score(labels, pred, average="macro"), abs=1e-9)
        assert glue_metrics.matthews_corr(pred, labels) == pytest.approx(
            sklearn.metrics.matthews_corrcoef(labels, pred), abs=1e-9)
    scores = rng.normal(size=50)
    assert glue_metrics.pearson(scores, scores ** 3) == pytest.approx(scipy.stats.pearsonr(scores, scores ** 3)[0])


def test_custom_task_fine_tune_and_distil_end_to_end(tmp_path):
    data = write_topics(tmp_path / "topics")
    pretrained = save_model(tmp_path / "pretrained", "BertForMaskedLM", vocab=VOCAB)
    teacher = tmp_path / "teacher"
    result = run_main("finetune", teacher, "--config.task=custom", f"--config.data.source={data}",
                      f"--config.teacher.path={pretrained}", "--config.data.seq_len=16",
                      "--config.train.batch_size=32", "--config.train.num_epochs=25",
                      "--config.optimizer.learning_rate=2e-3", "--config.eval.every_steps=40", settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((teacher / "report.json").read_text())["score"] >= 0.8
    config = transformers.AutoConfig.from_pretrained(teacher / "export")
    assert config.id2label == dict(enumerate(sorted(TOPICS)))

    student = save_model(tmp_path / "student", "BertModel", vocab=VOCAB, num_hidden_layers=1)
    workdir = tmp_path / "distilled"
    result = run_main("task", workdir, "--config.task=custom", f"--config.data.source={data}",
                      f"--config.teacher.path={teacher / 'export'}", f"--config.student.init={student}",
                      "--config.augment.enabled=False", "--config.data.seq_len=16", "--config.stage1.batch_size=32",
                      "--config.stage1.num_epochs=2", "--config.stage1.optimizer.learning_rate=1e-3",
                      "--config.stage2.batch_size=32", "--config.stage2.num_epochs=30",
                      "--config.stage2.optimizer.learning_rate=3e-3", "--config.eval.every_steps=40",
                      settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["task"] == "custom" and report["retention_percent"] >= 80.0, report
    assert transformers.AutoConfig.from_pretrained(workdir / "export").id2label == config.id2label


def fine_tune_custom(tmp_path, data, *overrides):
    """Fine-tunes a tiny pre-trained BERT on the custom task in `data` into tmp_path/teacher (25 epochs)."""
    pretrained = save_model(tmp_path / "pretrained", "BertForMaskedLM", vocab=VOCAB)
    return run_main("finetune", tmp_path / "teacher", "--config.task=custom", f"--config.data.source={data}",
                    f"--config.teacher.path={pretrained}", "--config.data.seq_len=24", "--config.train.batch_size=32",
                    "--config.train.num_epochs=25", "--config.optimizer.learning_rate=2e-3",
                    "--config.eval.every_steps=50", *overrides, settings=TEST_SETTINGS)


def test_custom_regression_pairs_from_jsonl_fine_tune(tmp_path):
    """A pair task whose score (0..7) is given by the topic word of the first text, read from JSONL."""
    rng = np.random.default_rng(1)
    data = tmp_path / "scores"
    data.mkdir()
    for split, size in (("train", 320), ("dev", 64)):
        texts, labels = topic_rows(rng, size)
        rows = [{"first": text, "second": " ".join(rng.choice(FILLER, 3)), "score": sorted(TOPICS).index(label)}
                for text, label in zip(texts, labels)]
        write_jsonl(data / f"{split}.jsonl", rows)
    result = fine_tune_custom(tmp_path, data, "--config.data.text_columns=first,second",
                              "--config.data.label_column=score", "--config.data.regression=True",
                              "--config.data.metric=pearson_spearman")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "teacher" / "report.json").read_text())
    assert report["score"] > 0.8 and set(report["scores"]["dev"]) == {"pearson_spearman_mean", "pearson", "spearman"}
    assert transformers.AutoConfig.from_pretrained(tmp_path / "teacher" / "export").num_labels == 1


def test_custom_task_predictions_csv_beside_the_test_file(tmp_path):
    data = write_topics(tmp_path / "topics")
    texts, _ = topic_rows(np.random.default_rng(5), 20)
    write_jsonl(data / "test.jsonl", [{"text": text} for text in texts])  # no label column: unlabelled
    model_dir = save_model(tmp_path / "model", "BertForSequenceClassification", vocab=VOCAB, num_labels=8)
    config = transformers.AutoConfig.from_pretrained(model_dir)
    config.id2label = dict(enumerate(sorted(TOPICS, reverse=True)))  # another order than the task's
    config.label2id = {name: i for i, name in config.id2label.items()}
    config.save_pretrained(model_dir)
    result = run_main("predict", tmp_path / "w", "--config.task=custom", f"--config.data.source={data}",
                      f"--config.model.path={model_dir}", "--config.data.seq_len=16", settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(data / "test.predictions.csv", newline="") as f:
        rows = list(csv.reader(f))
    model = transformers.BertForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        expected = [config.id2label[i] for i in model(**batch).logits.argmax(-1).tolist()]
    assert rows == [["row", "prediction"]] + [[str(i), label] for i, label in enumerate(expected)]


def test_custom_pair_classification_from_tsv_fine_tune(tmp_path):
    """A pair task read from TSV: the label is the topic of the second text (the first is filler)."""
    rng = np.random.default_rng(2)
    data = tmp_path / "pairs"
    data.mkdir()
    for split, size in (("train", 320), ("dev", 64)):
        texts, labels = topic_rows(rng, size)
        write_csv(data / f"{split}.tsv", ["premise", "hypothesis", "label"],
                  [[" ".join(rng.choice(FILLER, 4)), text, label] for text, label in zip(texts, labels)], "\t")
    result = fine_tune_custom(tmp_path, data, "--config.data.text_columns=premise,hypothesis")
    assert result.returncode == 0, result.stderr[-3000:]
    # chance is 1/8: the label has to be read from the second segment
    assert json.loads((tmp_path / "teacher" / "report.json").read_text())["score"] >= 0.6
    assert transformers.AutoConfig.from_pretrained(tmp_path / "teacher" / "export").id2label == dict(
        enumerate(sorted(TOPICS)))
