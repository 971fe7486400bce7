"""Fault injection on inputs and exports (issue 11): a failed export keeps the previous one, damaged prepared or
augmented data stops a run before its first step, and bad GloVe rows, GLUE TSV rows and teacher config.json
fields are one line naming the file, line or key, and what is valid.

Covered elsewhere, not repeated here: tests/faults/test_bad_input.py (teacher config.json that is not JSON,
another model_type, missing or mis-shaped weights, damaged safetensors), tests/unit/test_glue.py (wrong field
count, label outside the task, STS-B score out of range, missing file or column),
tests/unit/test_augment.py::test_bad_glove_files (wrong dimension, a word in place of a number, empty or missing
file), tests/unit/test_data.py (metadata.json missing or without format_version, damaged token counts).
"""
import errno
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors
from array_record.python.array_record_module import ArrayRecordWriter
from helpers import TEST_SETTINGS, command, last_error, run, run_main, save_model, sentence, write_corpus, write_teacher

from tinybert_jax import convert
from tinybert_jax.data import augment, augmented_files, loader, prepare, shards
from tinybert_jax.data.glove import load_glove
from tinybert_jax.data.glue import get_task, read_split
from tinybert_jax.errors import InputError

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
EROFS = OSError(errno.EROFS, os.strerror(errno.EROFS))


def one_line_error(call, *names):
    """The message of the InputError `call` raises, checked to be one line naming each of `names`."""
    with pytest.raises(InputError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message, message
    for name in names:
        assert str(name) in message, message
    return message


def snapshot(directory: Path) -> dict:
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------- export
def disk_full_in_safetensors(monkeypatch, out):
    def save_file(tensors, filename, metadata=None):  # what safetensors raises when the disk fills up
        Path(filename).write_bytes(b"partial")
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr("safetensors.numpy.save_file", save_file)
    return "No space left on device"


def disk_full_in_config_json(monkeypatch, out):
    write_text = Path.write_text

    def fail_on_config(path, text, *args, **kwargs):
        if path.name == "config.json":
            write_text(path, text[:10])
            raise ENOSPC
        return write_text(path, text, *args, **kwargs)
    monkeypatch.setattr(Path, "write_text", fail_on_config)
    return "No space left on device"


def read_only_file_system(monkeypatch, out):
    def mkdtemp(*args, **kwargs):
        raise EROFS
    monkeypatch.setattr("tempfile.mkdtemp", mkdtemp)
    return "Read-only file system"


def final_rename_fails(monkeypatch, out):
    rename = os.rename

    def fail_into_place(src, dst):
        if Path(dst) == out and ".tmp-" in Path(src).name:  # after the old export was moved aside
            raise EROFS
        return rename(src, dst)
    monkeypatch.setattr("os.rename", fail_into_place)
    return "Read-only file system"


@pytest.mark.parametrize("fault", [disk_full_in_safetensors, disk_full_in_config_json, read_only_file_system,
                                   final_rename_fails], ids=lambda f: f.__name__)
def test_failed_export_keeps_the_previous_one(hf_checkpoint, tmp_path, monkeypatch, fault):
    _, path = hf_checkpoint("BertModel")
    cfg, params = convert.load_hf_bert(str(path))
    out = tmp_path / "export"
    convert.save_hf_bert(cfg, params, out)
    before = snapshot(out)
    reason = fault(monkeypatch, out)
    message = one_line_error(lambda: convert.save_hf_bert(cfg, params, out, overwrite=True), out, reason)
    assert "previous contents are unchanged" in message
    monkeypatch.undo()
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "hf"]  # no temporary directories left


def test_failed_flax_export_writes_nothing(hf_checkpoint, tmp_path, monkeypatch):
    _, path = hf_checkpoint("BertModel")
    cfg, params = convert.load_hf_bert(str(path))

    def write_bytes(path, data):
        raise ENOSPC
    monkeypatch.setattr(Path, "write_bytes", write_bytes)  # params.msgpack
    out = tmp_path / "flax"
    message = one_line_error(lambda: convert.save_flax_dir(cfg, params, out), out, "No space left on device")
    assert "nothing was written" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


# Runs the entry point with safetensors' save_file failing as on a full disk.
DISK_FULL_MAIN = """
import runpy, safetensors, safetensors.numpy
def save_file(tensors, filename, metadata=None):
    open(filename, "wb").write(b"partial")
    raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
safetensors.numpy.save_file = save_file
runpy.run_module("tinybert_jax.main", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def general_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    assets = {"teacher": write_teacher(root / "teacher"), "corpus": write_corpus(root / "corpus.txt", documents=60),
              "data": root / "prepared"}
    prepare.prepare(str(assets["corpus"]), assets["data"], str(assets["teacher"]), 32, seed=0, records_per_shard=40)
    return assets


@pytest.mark.slow  # starts processes
def test_run_export_on_a_full_disk_keeps_the_previous_export(general_assets, tmp_path):
    """Through the entry point: init_student's export is the same convert.save_hf_bert(..., overwrite=True) call
    that ends the general and task runs, at a fraction of their cost."""
    workdir = tmp_path / "w"
    (workdir / "hf").mkdir(parents=True)
    (workdir / "hf" / "config.json").write_text('{"from": "the previous run"}\n')
    before = snapshot(workdir / "hf")
    error = last_error(run([sys.executable, "-c", DISK_FULL_MAIN, "--config=configs/init_student.py",
                            f"--workdir={workdir}", f"--config.model.init={general_assets['teacher']}",
                            f"--config.export.tokenizer={general_assets['teacher']}"], check=False))
    assert error.startswith(f"error: {workdir / 'hf'}: could not be written (") and "No space left" in error
    assert snapshot(workdir / "hf") == before
    assert not [p for p in workdir.iterdir() if p.name.startswith(".hf")]


# --------------------------------------------------------------------------------------------- prepared data
def first_shard(directory):
    return directory / json.loads((directory / "metadata.json").read_text())["shards"][0]


def edit_metadata(change):
    def fault(directory):
        path = directory / "metadata.json"
        metadata = json.loads(path.read_text())
        change(metadata)
        path.write_text(json.dumps(metadata))
        return path
    fault.__name__ = change.__name__
    return fault


def truncated_metadata(directory):
    path = directory / "metadata.json"
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    return path


def metadata_deleted(directory):
    (directory / "metadata.json").unlink()
    return directory / "metadata.json"


def truncated_shard(directory):
    path = first_shard(directory)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def empty_shard(directory):
    path = first_shard(directory)
    path.write_bytes(b"")
    return path


def missing_shard(directory):
    path = first_shard(directory)
    path.unlink()
    return path


def rewrite_first_shard(directory, records):
    path = first_shard(directory)
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for record in records:
        writer.write(record)
    writer.close()
    return path


def shard_missing_a_record(directory):
    """A whole, readable shard, but not the one metadata.json counted."""
    rewrite_first_shard(directory, shards.read_all(first_shard(directory))[1:])
    return directory / "metadata.json"


def record_not_json(directory):
    """A readable shard of the right size whose first record is not JSON."""
    return rewrite_first_shard(directory, [b"{not json"] + shards.read_all(first_shard(directory))[1:])


def without(key):
    fault = edit_metadata(lambda metadata: metadata.pop(key))
    fault.__name__ = f"metadata_without_{key}"
    return fault


def one_more_record(metadata):
    metadata["count"] += 1


def shards_not_a_list(metadata):
    metadata["shards"] = "sequences-00000.array_record"


DATA_FAULTS = [truncated_metadata, metadata_deleted, without("count"), without("shards"),
               edit_metadata(one_more_record), edit_metadata(shards_not_a_list), truncated_shard, empty_shard,
               missing_shard, shard_missing_a_record]


@pytest.mark.parametrize("fault", DATA_FAULTS, ids=lambda f: f.__name__)
def test_damaged_prepared_data_is_refused_and_kept(general_assets, tmp_path, fault):
    data = tmp_path / "data"
    shutil.copytree(general_assets["data"], data)
    assert len(json.loads((data / "metadata.json").read_text())["shards"]) >= 2
    bad_file = fault(data)
    damaged = snapshot(data)
    for call in (lambda: loader.make_train_iterator(data, 8, seed=0),
                 lambda: prepare.ensure_prepared(str(general_assets["corpus"]), data, str(general_assets["teacher"]),
                                                 32, seed=0)):
        message = one_line_error(call, bad_file)
        assert f"delete {data}" in message
    assert snapshot(data) == damaged  # neither repaired nor deleted: the user decides


@pytest.mark.parametrize("where", ["prepared_dir", "workdir_data"])
def test_general_run_stops_before_the_first_step_on_a_damaged_shard(general_assets, tmp_path, where):
    workdir = tmp_path / "w"
    data = tmp_path / "data" if where == "prepared_dir" else workdir / "data"
    shutil.copytree(general_assets["data"], data)
    bad_file = truncated_shard(data)
    damaged = snapshot(data)
    overrides = [f"--config.data.prepared_dir={data}" if where == "prepared_dir" else "--config.data.prepared_dir="]
    error = last_error(run(command(general_assets, workdir, *overrides, steps=2), check=False))
    assert error.startswith(f"error: {bad_file}: damaged ArrayRecord shard") and f"delete {data}" in error
    assert not list(workdir.glob("checkpoints/*")) and not (workdir / "metrics.jsonl").exists()  # no step ran
    assert snapshot(data) == damaged


# -------------------------------------------------------------------------------------------- augmented data
class CopyingAugmenter:
    """Stands in for the MLM augmenter: each sentence, then its upper-case variant."""

    def augment(self, texts, column, first_index, progress, stats):
        return [[text, text.upper()] for text in texts]

    def settings(self):
        return {"stand_in": True}


@pytest.fixture(scope="module")
def augmented(tmp_path_factory):
    examples = type("Examples", (), {"text_a": [f"sentence {i}" for i in range(30)], "text_b": None,
                                     "labels": np.arange(30) % 2})()
    out = tmp_path_factory.mktemp("augmented") / "augmented"
    augment.augment_examples(examples, CopyingAugmenter(), out, chunk_size=10)
    return out


AUGMENTED_FAULTS = [truncated_metadata, without("pair"), edit_metadata(one_more_record), truncated_shard,
                    missing_shard, shard_missing_a_record, record_not_json]


@pytest.mark.parametrize("fault", AUGMENTED_FAULTS, ids=lambda f: f.__name__)
def test_damaged_augmented_data_is_refused_and_kept(augmented, tmp_path, fault):
    directory = tmp_path / "augmented"
    shutil.copytree(augmented, directory)
    assert len(json.loads((directory / "metadata.json").read_text())["shards"]) >= 2
    text_a, _, _ = augmented_files.read_augmented(directory)
    assert len(text_a) == 60
    bad_file = fault(directory)
    damaged = snapshot(directory)
    message = one_line_error(lambda: augmented_files.read_augmented(directory), bad_file)
    assert f"delete {directory} to augment again" in message
    assert snapshot(directory) == damaged


def test_task_run_refuses_a_damaged_augmented_shard(tmp_path):
    """Augmented data is reused when its fingerprint matches; a damaged shard then stops the run, kept as it is."""
    rng = np.random.default_rng(0)
    data = tmp_path / "SST-2"
    data.mkdir()
    for split, size in (("train", 24), ("dev", 8)):
        labels = rng.integers(0, 2, size)
        (data / f"{split}.tsv").write_text("\n".join(["sentence\tlabel"] + [f"{sentence(rng, y)}\t{y}"
                                                                            for y in labels]) + "\n")
    teacher = save_model(tmp_path / "teacher", "BertForSequenceClassification", num_labels=2)
    student = save_model(tmp_path / "student", "BertModel", hidden_size=16, intermediate_size=24)
    mlm = save_model(tmp_path / "mlm", "BertForMaskedLM")
    workdir = tmp_path / "w"
    args = [f"--config.data.source={data}", f"--config.teacher.path={teacher}", "--config.teacher.check_score=False",
            f"--config.student.init={student}", f"--config.augment.mlm_path={mlm}", "--config.augment.n_a=2",
            "--config.augment.max_seq_len=64", "--config.augment.batch_size=16",
            "--config.stage1.num_epochs=0"]  # stops the first run after augmenting, before stage 1 trains
    first = run_main("task", workdir, *args, settings=TEST_SETTINGS)
    assert "stage1.num_epochs=0" in first.stderr.strip().splitlines()[-1], first.stderr[-2000:]
    bad_file = truncated_shard(workdir / "augmented")
    damaged = snapshot(workdir / "augmented")
    error = last_error(run_main("task", workdir, *args, settings=TEST_SETTINGS))
    assert error.startswith(f"error: {bad_file}: damaged ArrayRecord shard")
    assert f"delete {workdir / 'augmented'} to augment again" in error
    assert snapshot(workdir / "augmented") == damaged
    # stage 1 was planned and checked (its fingerprint written) before augmentation, but nothing trained
    assert not (workdir / "stage1" / "student").exists() and not any((workdir / "stage1" / "checkpoints").iterdir())


# ------------------------------------------------------------------------------------------------ GloVe rows
@pytest.mark.parametrize("text, line, valid", [
    ("cat 0.1 0.2\ndog 0.1 nan\n", 2, "'nan'; every value after the word must be a finite number"),
    ("cat 0.1 0.2\ndog 0.1 1e999\n", 2, "'1e999'; every value after the word must be a finite number"),
    ("cat 0.1  0.2\n", 1, "''; every value after the word must be a finite number"),
    ("400000 2\ncat 0.1 0.2\n", 2, "expected dimension 1 (the first line's); if line 1 is a word2vec"),
])
def test_bad_glove_rows(tmp_path, text, line, valid):
    path = tmp_path / "glove.txt"
    path.write_text(text)
    message = one_line_error(lambda: load_glove(path), f"{path}:{line}:")
    assert valid in message


# --------------------------------------------------------------------------------------------- GLUE TSV rows
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"


@pytest.mark.parametrize("task, text, line, valid", [
    ("sst2", b"sentence\tlabel\ngood film\t1\nbad \xff film\t0\n", 3, "not UTF-8 text"),
    ("sst2", b"sentence\tlabel\ngood\tfilm\t1\n", 2, "3 tab-separated fields, expected 2 (sentence, label)"),
    ("stsb", (STSB_HEADER + "0\tg\tf\t2012\t1\tnone\tnone\tA.\tB.\tfive\n").encode(), 2,
     "score 'five' is not a number in [0.0, 5.0]"),
    ("mnli", b"sentence1\tsentence2\tgold_label\nA.\tB.\t-\n", 2,
     "label '-' is not one of mnli's labels entailment, neutral, contradiction"),
    ("qqp", b"id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\tWhy?\tHow?\tyes\n", 2,
     "label 'yes' is not one of qqp's labels 0, 1"),
])
def test_bad_tsv_rows(tmp_path, task, text, line, valid):
    split = get_task(task).dev_splits[0]
    (tmp_path / f"{split}.tsv").write_bytes(text)
    message = one_line_error(lambda: read_split(get_task(task), str(tmp_path), split), f"{split}.tsv:{line}:")
    assert valid in message


# ------------------------------------------------------------------------------------- teacher config.json
@pytest.mark.parametrize("change, valid", [
    ({"hidden_size": 30}, "hidden_size=30 is not divisible by num_attention_heads=4"),
    ({"num_hidden_layers": "2"}, 'num_hidden_layers is "2"; expected an integer'),
    ({"hidden_size": 32.5}, "hidden_size is 32.5; expected an integer"),
    ({"layer_norm_eps": "tiny"}, 'layer_norm_eps is "tiny"; expected a finite number'),
    ({"vocab_size": -1}, "vocab_size must be a positive integer, got -1"),
    ({"hidden_act": "tanh"}, "hidden_act 'tanh' is not supported; use one of"),
    ({"num_attention_heads": None}, "missing key(s) ['num_attention_heads']"),
    (["a", "list"], "expected a JSON object"),
])
def test_bad_teacher_config_fields(hf_checkpoint, change, valid):
    _, path = hf_checkpoint("BertModel")
    config_file = path / "config.json"
    if isinstance(change, dict):
        config = json.loads(config_file.read_text())
        config.update(change)
        config = {key: value for key, value in config.items() if value is not None}
    else:
        config = change
    config_file.write_text(json.dumps(config))
    message = one_line_error(lambda: convert.load_hf_bert(str(path)), config_file)
    assert valid in message
