"""The Debian-descriptions quality benchmark data: parsing apt's list format, the package filters, a balanced
seeded sample and split, CSVs that task=custom reads, the CLI's errors, and the GloVe text export."""
import csv
import gzip
import json

import numpy as np
import pytest

from configs import common
from tinybert_jax.bench import quality_data as qd
from tinybert_jax.data import custom
from tinybert_jax.errors import InputError

PACKAGES = """\
Package: 0ad
Version: 0.0.26-3
Description: Real-time strategy game of ancient warfare
Description-md5: d943
Tag: game::strategy, interface::graphical,
 x11::application
Section: games

Package: 0ad-doc
Description: Real-time strategy game of ancient warfare (manual)
Description-md5: aaaa
Section: doc

Package: libfoo1
Description: foo library
Description-md5: bbbb
Section: libs

Package: gnuplot-x11
Description: Command-line driven interactive plotting program
Description-md5: cccc
Section: contrib/science

Package: gnuplot-nox
Description: Command-line driven interactive plotting program
Description-md5: cccc
Section: science

Package: oldname
Description: transitional package for newname
Description-md5: dddd
Section: games

Package: stale
Description: Text editor
Description-md5: eeee
Section: text
"""

TRANSLATION = """\
Package: 0ad
Description-md5: d943
Description-en: Real-time strategy game of ancient warfare
 0 A.D. is a free, open-source
 real-time strategy game.
 .
 This second paragraph is left out.

Package: gnuplot-x11
Description-md5: cccc
Description-en: Command-line driven interactive plotting program
 Gnuplot draws 2D and 3D graphs.

Package: gnuplot-nox
Description-md5: cccc
Description-en: Command-line driven interactive plotting program
 Gnuplot draws 2D and 3D graphs.

Package: stale
Description-md5: 0000
Description-en: Text editor
 The description of another version.
"""


def test_parse_stanzas_keeps_continuation_lines():
    stanzas = list(qd.parse_stanzas(PACKAGES))
    assert [s["Package"] for s in stanzas] == ["0ad", "0ad-doc", "libfoo1", "gnuplot-x11", "gnuplot-nox",
                                                "oldname", "stale"]
    assert stanzas[0]["Tag"] == "game::strategy, interface::graphical,\n x11::application"
    assert stanzas[0]["Section"] == "games"


def test_split_description_takes_the_first_paragraph():
    description = next(qd.parse_stanzas(TRANSLATION))["Description-en"]
    assert qd.split_description(description) == ("Real-time strategy game of ancient warfare",
                                                 "0 A.D. is a free, open-source real-time strategy game.")
    assert qd.split_description("Only a short line") == ("Only a short line", "")


def test_make_text_joins_and_cuts():
    assert qd.make_text("Plotting program.", "It  draws\ngraphs.") == "Plotting program. It draws graphs."
    assert qd.make_text("Short", "") == "Short"
    assert qd.make_text("a", " ".join(["w"] * 100)).split() == ["a."] + ["w"] * 59


def test_examples_filter_join_and_dedupe():
    pool = qd.examples(qd.parse_stanzas(PACKAGES), qd.parse_stanzas(TRANSLATION))
    assert pool == [
        qd.Example("0ad", "games", "Real-time strategy game of ancient warfare. 0 A.D. is a free, open-source "
                                   "real-time strategy game."),
        # the two gnuplot flavours have one text: kept once, the first by name; contrib/ is not part of the label
        qd.Example("gnuplot-nox", "science", "Command-line driven interactive plotting program. Gnuplot draws 2D "
                                             "and 3D graphs."),
        # its translation is of another description version (md5): the short line only
        qd.Example("stale", "text", "Text editor"),
    ]


def test_identical_texts_under_two_sections_are_dropped():
    packages = [{"Package": "a", "Section": "net", "Description": "Same words"},
                {"Package": "b", "Section": "web", "Description": "Same words"}]
    assert qd.examples(packages, []) == []


def synthetic_pool(sections, per_section, families=None):
    families = families or per_section
    return sorted(qd.Example(f"{section}{i % families}-{i}", section, f"{section} tool number {i}")
                  for section in sections for i in range(per_section))


def test_build_tasks_is_balanced_stratified_and_deterministic():
    sections, pair = ("admin", "games", "net", "science"), ("games", "science")
    pool = synthetic_pool(sections, 40)
    tasks = qd.build_tasks(pool, seed=3, sections=sections, pair=pair, per_label=20)
    assert set(tasks) == {"debian4", "debian2"}
    for name, labels in (("debian4", sections), ("debian2", pair)):
        for split, per_label in (("train", 16), ("dev", 4)):
            rows = tasks[name][split]
            assert sorted(e.label for e in rows) == sorted(list(labels) * per_label)
    all_rows = tasks["debian4"]["train"] + tasks["debian4"]["dev"]
    assert len(set(all_rows)) == len(all_rows)
    assert set(tasks["debian2"]["dev"]) <= set(tasks["debian4"]["dev"])
    assert qd.build_tasks(pool, seed=3, sections=sections, pair=pair, per_label=20) == tasks
    assert qd.build_tasks(pool, seed=4, sections=sections, pair=pair, per_label=20) != tasks


def test_sample_caps_a_family_and_names_a_short_section():
    pool = synthetic_pool(("games", "net"), 30, families=2)
    chosen = qd.sample(pool, ("games",), per_label=6, seed=0, max_per_family=3)
    assert sorted(qd.family(e.package) for e in chosen["games"]) == ["games0"] * 3 + ["games1"] * 3
    with pytest.raises(InputError, match="section 'net': 6 usable packages, need 7"):
        qd.sample(pool, ("net",), per_label=7, seed=0, max_per_family=3)


def test_written_task_reads_as_a_custom_task(tmp_path):
    rows = [qd.Example("p1", "games", 'A "quoted", comma text'), qd.Example("p2", "science", "Plots\ngraphs"),
            qd.Example("p3", "games", "Chess")]
    qd.write_task(tmp_path, {"train": rows, "dev": rows[:2]})
    with open(tmp_path / "train.csv", newline="") as f:
        assert next(csv.reader(f)) == ["text", "label"]
    data = common.task_data()
    data.update(source=str(tmp_path))
    task = custom.custom_task(data)
    assert task.labels == ("games", "science")
    train = custom.read_split(task, str(tmp_path), "train")
    assert train.text_a == [e.text for e in rows]
    assert train.labels.tolist() == [0, 1, 0]


def write_lists(directory, per_section):
    """A Packages list (plain) and a gzipped Translation-en with `per_section` usable packages per section."""
    packages, translations = [], []
    for section in qd.SECTIONS:
        for i in range(per_section):
            name = f"{section}{i}"
            packages.append(f"Package: {name}\nDescription: {section} program {i}\nDescription-md5: m{name}\n"
                            f"Section: {section}\n")
            translations.append(f"Package: {name}\nDescription-md5: m{name}\nDescription-en: {section} program "
                                f"{i}\n It does {section} things.\n")
        packages.append(f"Package: {section}-doc\nDescription: manual\nSection: doc\n")
    (directory / "deb_dists_x_main_binary-amd64_Packages").write_text("\n".join(packages))
    with gzip.open(directory / "deb_dists_x_main_i18n_Translation-en.gz", "wt") as f:
        f.write("\n".join(translations))


def test_cli_writes_both_tasks(tmp_path, capsys):
    write_lists(tmp_path, qd.PER_LABEL)
    assert qd.main(["--out", str(tmp_path / "out"), "--lists", str(tmp_path), "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert "debian8" in printed and "debian2" in printed and "note:" not in printed
    with open(tmp_path / "out" / "debian8" / "train.csv", newline="") as f:
        train = list(csv.DictReader(f))
    assert len(train) == 3584
    assert train[0]["text"].endswith("things.") and train[0]["label"] in qd.SECTIONS
    with open(tmp_path / "out" / "debian2" / "dev.csv", newline="") as f:
        assert sorted({row["label"] for row in csv.DictReader(f)}) == sorted(qd.PAIR)
    # the general-distillation corpus: every other description, one sentence a line, none of a dev text
    with open(tmp_path / "out" / "debian8" / "dev.csv", newline="") as f:
        dev = [row["text"] for row in csv.DictReader(f)]
    documents = (tmp_path / "out" / "corpus.txt").read_text().strip().split("\n\n")
    assert len(documents) == 8 * qd.PER_LABEL - len(dev)
    assert not {document.replace("\n", " ") for document in documents} & set(dev)
    assert all(len(document.splitlines()) == 2 for document in documents)  # "X program i." / "It does X things."


def test_cli_without_lists_exits_2_naming_the_fix(tmp_path, capsys):
    assert qd.main(["--out", str(tmp_path / "out"), "--lists", str(tmp_path / "none")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and str(tmp_path / "none") in error and "apt-get update" in error
    assert "\n" not in error


def test_glove_text_from_numpy_and_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from tinybert_jax.data.glove import load_glove

    vectors = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    np.save(tmp_path / "emb.npy", vectors)
    pq.write_table(pa.table({"index": ["the", "two words", ",", "of", "and"]}), tmp_path / "index.parquet")
    out = tmp_path / "glove.txt"
    assert qd.write_glove_text(out, root=tmp_path, max_words=3) == 3
    words, read = load_glove(out)
    # the word with a space is skipped: the text format could not tell it from its vector
    assert words == ["the", ",", "of"]
    np.testing.assert_array_equal(read, vectors[[0, 2, 3]])


def test_quality_report_summarises_the_seeds(tmp_path, capsys):
    from tinybert_jax.bench import quality_report

    task = tmp_path / "debian8"
    (task / "teacher").mkdir(parents=True)
    (task / "teacher" / "report.json").write_text(json.dumps(
        {"score": 0.8, "best_step": 448, "stopped_at": 784, "dev_curve": {"112": 0.5, "448": 0.8}}))
    for seed, (student, baseline) in enumerate([(0.78, 0.70), (0.76, 0.74)]):
        (task / f"seed_{seed}").mkdir()
        (task / f"seed_{seed}" / "report.json").write_text(json.dumps(
            {"student_score": student, "baseline_score": baseline, "baseline_best_setting": "lr 0.0003, 20 epochs"}))
    assert quality_report.main([str(tmp_path), "--json", str(tmp_path / "q.json")]) == 0
    summary = json.loads((tmp_path / "q.json").read_text())["tasks"]["debian8"]
    assert summary["student_mean"] == pytest.approx(0.77) and summary["student_std"] == pytest.approx(0.01)
    assert summary["retention_percent"] == pytest.approx(96.25)
    assert summary["gain_over_baseline_points"] == pytest.approx(5.0)
    assert "| debian8 | 80.0% | 77.0 +- 1.0% | 96.2% | 72.0 +- 2.0% | +5.0 points | 2 |" in capsys.readouterr().out
    assert quality_report.main([str(tmp_path / "none")]) == 2
    (tmp_path / "debian2" / "teacher").mkdir(parents=True)  # a task whose seeds have not run yet
    (tmp_path / "debian2" / "teacher" / "report.json").write_text((task / "teacher" / "report.json").read_text())
    assert quality_report.main([str(tmp_path)]) == 0
    assert "| debian2 | 80.0% | (no seed finished) |" in capsys.readouterr().out
