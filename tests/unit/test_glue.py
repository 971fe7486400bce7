"""GLUE tasks: TSV and TFDS readers, label orders of teachers, encoding and the metrics."""
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
import tensorflow_datasets as tfds
import transformers

from tinybert_jax.data import glue
from tinybert_jax.data.glue import (
    TaskExamples,
    encode,
    get_task,
    label_permutation,
    read_split,
)
from tinybert_jax.errors import InputError
from tinybert_jax.task import glue_metrics as metrics

COLA_TRAIN = ("gj04\t1\t\tThe cat sat on the mat.\n"
              "gj04\t0\t*\tCat the mat on sat.\n"
              "cj99\t1\t\tShe said \"hello\" to him.\n")
SST2_DEV = "sentence\tlabel\nit 's a charming and \"moving\" film . \t1\nthe plot is a mess \t0\n"
MRPC_TRAIN = ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
              "1\t702876\t702977\tThe bank raised rates.\tRates were raised by the bank.\n"
              "0\t2108705\t2108831\tHe left early.\tShe arrived late on Monday.\r\n"
              "\n")
MNLI_PARSES = "\t".join(["(a)", "(b)", "( (a) )", "( (b) )"])
MNLI_TRAIN = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
              "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
              f"0\t31193\t31193n\tgovernment\t{MNLI_PARSES}\tThe sky is blue.\tThe sky has a colour.\tneutral\t"
              "neutral\n"
              f"1\t101457\t101457e\ttelephone\t{MNLI_PARSES}\tI walked home.\tI went home.\tentailment\t"
              "entailment\n")
MNLI_DEV_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                   "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\t"
                   "label5\tgold_label\n")


def mnli_dev_row(index, premise, hypothesis, label):
    return f"{index}\t1\t1e\tfiction\t{MNLI_PARSES}\t{premise}\t{hypothesis}\t" + "\t".join([label] * 6) + "\n"


def write_task_dir(root, files):
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_bytes(text.encode("utf-8"))
    return str(root)


@pytest.fixture
def tokenizer(tmp_path):
    words = "the cat sat on mat a dog ran he left she arrived late bank raised rates".split()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + words) + "\n")
    return transformers.BertTokenizerFast(str(vocab))  # positional: vocab_file= is ignored in transformers 5


def assert_one_line(error):
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------------ tasks
def test_task_table_is_consistent():
    assert set(glue.TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    for task in glue.TASKS.values():
        assert task.main_metric in task.metrics
        assert len(task.text_columns) == len(task.tfds_text_features) in (1, 2)
        assert len(task.tsv_labels) == len(task.labels)
        assert task.num_labels == (1 if task.is_regression else len(task.labels))
        assert metrics.task_metrics(task, np.zeros((2, task.num_labels)), np.zeros(2)).keys() == set(task.metrics)
    assert get_task("mnli").labels == ("entailment", "neutral", "contradiction")
    assert get_task("wnli").labels == ("not_entailment", "entailment")
    assert get_task("mnli").dev_splits == ("dev_matched", "dev_mismatched")
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert get_task("SST-2") is get_task("sst2") and get_task("STS-B").name == "stsb"
    assert get_task(" CoLA ").main_metric == "matthews_corr"


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(InputError, match="unknown GLUE task 'mnli-mm'; valid tasks: cola, sst2, mrpc") as error:
        get_task("mnli-mm")
    assert_one_line(error)


# -------------------------------------------------------------------------------------------- TSV files
def test_cola_without_header_and_sst2_with_header(tmp_path):
    cola = read_split(get_task("cola"), write_task_dir(tmp_path / "CoLA", {"train.tsv": COLA_TRAIN}), "train")
    assert cola.text_a == ["The cat sat on the mat.", "Cat the mat on sat.", 'She said "hello" to him.']
    assert cola.text_b is None and len(cola) == 3
    assert cola.labels.dtype == np.int32 and cola.labels.tolist() == [1, 0, 1]

    sst2 = read_split(get_task("sst2"), write_task_dir(tmp_path / "SST-2", {"dev.tsv": SST2_DEV}), "dev")
    assert sst2.text_a == ['it \'s a charming and "moving" film . ', "the plot is a mess "]
    assert sst2.text_b is None and sst2.labels.tolist() == [1, 0]


def test_mrpc_pairs_with_byte_order_mark_and_crlf(tmp_path):
    examples = read_split(get_task("mrpc"), write_task_dir(tmp_path, {"train.tsv": MRPC_TRAIN}), "train")
    assert examples.text_a == ["The bank raised rates.", "He left early."]
    assert examples.text_b == ["Rates were raised by the bank.", "She arrived late on Monday."]
    assert examples.labels.tolist() == [1, 0]


def test_mnli_train_and_both_dev_sets(tmp_path):
    source = write_task_dir(tmp_path, {
        "train.tsv": MNLI_TRAIN,
        "dev_matched.tsv": MNLI_DEV_HEADER + mnli_dev_row(0, "A man runs.", "A man sleeps.", "contradiction"),
        "dev_mismatched.tsv": MNLI_DEV_HEADER + mnli_dev_row(0, "Rain fell.", "It was wet.", "entailment")
                              + mnli_dev_row(1, "He sang.", "He sang well.", "neutral")})
    task = get_task("mnli")
    train = read_split(task, source, "train")
    assert train.text_a == ["The sky is blue.", "I walked home."]
    assert train.text_b == ["The sky has a colour.", "I went home."]
    assert train.labels.tolist() == [1, 0]  # neutral, entailment
    matched = read_split(task, source, "dev_matched")
    assert (matched.text_a, matched.text_b, matched.labels.tolist()) == (["A man runs."], ["A man sleeps."], [2])
    mismatched = read_split(task, source, "dev_mismatched")
    assert mismatched.text_b == ["It was wet.", "He sang well."] and mismatched.labels.tolist() == [0, 1]
    with pytest.raises(InputError, match="no split 'dev'; valid splits: train, dev_matched, dev_mismatched"):
        read_split(task, source, "dev")


def test_stsb_scores_are_float(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    rows = ("0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane takes off.\t"
            "An air plane is taking off.\t5.000\n"
            "1\tmain-news\theadlines\t2013\t0002\tnone\tnone\tA cat eats.\tA dog runs.\t0.25\n")
    examples = read_split(get_task("stsb"), write_task_dir(tmp_path, {"dev.tsv": header + rows}), "dev")
    assert examples.labels.dtype == np.float32 and examples.labels.tolist() == [5.0, 0.25]
    assert examples.text_b == ["An air plane is taking off.", "A dog runs."]
    with pytest.raises(InputError, match=r"dev.tsv:2: score '7' is not a number in \[0.0, 5.0\]"):
        bad = write_task_dir(tmp_path / "bad", {"dev.tsv": header + rows.replace("5.000", "7")})
        read_split(get_task("stsb"), bad, "dev")


def test_wrong_column_count_names_file_and_line(tmp_path):
    source = write_task_dir(tmp_path, {"train.tsv": COLA_TRAIN + "gj04\t1\tno notation column\n"})
    with pytest.raises(InputError, match=r"train.tsv:4: 3 tab-separated fields, expected 4 \(source, label, "
                                         r"original_notation, sentence\)") as error:
        read_split(get_task("cola"), source, "train")
    assert str(tmp_path) in str(error.value)
    assert_one_line(error)


def test_label_outside_the_task_names_value_and_valid_labels(tmp_path):
    source = write_task_dir(tmp_path, {"dev.tsv": "index\tsentence1\tsentence2\tlabel\n"
                                                  "0\tA.\tB.\tentailment\n1\tC.\tD.\tneutral\n"})
    with pytest.raises(InputError, match=r"dev.tsv:3: label 'neutral' is not one of rte's labels "
                                         r"entailment, not_entailment") as error:
        read_split(get_task("rte"), source, "dev")
    assert_one_line(error)
    with pytest.raises(InputError, match=r"dev.tsv:2: label 'entailment' is not one of wnli's labels 0, 1"):
        read_split(get_task("wnli"), source, "dev")


def test_missing_file_column_and_empty_split(tmp_path):
    source = write_task_dir(tmp_path, {"dev.tsv": "sentence\tlabel\n", "train.tsv": "text\tlabel\nhi\t1\n"})
    with pytest.raises(InputError, match=r"dev_matched.tsv: not found; a GLUE mnli directory holds train.tsv, "
                                         r"dev_matched.tsv, dev_mismatched.tsv"):
        read_split(get_task("mnli"), source, "dev_matched")
    with pytest.raises(InputError, match=r"train.tsv: header has no column 'sentence' \(header: text, label\)"):
        read_split(get_task("sst2"), source, "train")
    with pytest.raises(InputError, match=r"dev.tsv: no examples in split 'dev' of task sst2"):
        read_split(get_task("sst2"), source, "dev")
    with pytest.raises(InputError, match="no such directory"):
        read_split(get_task("sst2"), str(tmp_path / "absent"), "dev")


# ------------------------------------------------------------------------------------------------- TFDS
def test_tfds_glue_through_data_source():
    with tfds.testing.mock_data(num_examples=6):
        sst2 = read_split(get_task("sst2"), "tfds", "dev")
        mnli = read_split(get_task("mnli"), "tfds", "dev_mismatched")
        stsb = read_split(get_task("stsb"), "tfds", "train")
    assert len(sst2) == 6 and sst2.text_b is None and all(isinstance(text, str) for text in sst2.text_a)
    assert sst2.labels.dtype == np.int32 and set(sst2.labels.tolist()) <= {0, 1}
    assert len(mnli.text_b) == 6 and set(mnli.labels.tolist()) <= {0, 1, 2}
    assert stsb.labels.dtype == np.float32 and len(stsb.text_b) == 6


def test_tfds_test_labels_are_refused():
    records = [{"sentence": b"a fine film", "label": np.int64(1), "idx": 0},
               {"sentence": b"no label here", "label": np.int64(-1), "idx": 1}]
    seen = []

    def data_source(builder, split, **kwargs):
        seen.append((builder.name, builder.builder_config.name, split))
        return records

    with tfds.testing.mock_data(as_data_source_fn=data_source):
        with pytest.raises(InputError, match=r"glue/sst2 validation: record 1 has no label \(-1") as error:
            read_split(get_task("sst2"), "tfds", "dev")
        assert_one_line(error)
        with pytest.raises(InputError, match="no split 'test'"):
            read_split(get_task("sst2"), "tfds", "test")
        records.pop()
        assert read_split(get_task("sst2"), "tfds", "train").text_a == ["a fine film"]
    assert seen == [("glue", "sst2", "validation"), ("glue", "sst2", "train")]


def test_tfds_glue_not_prepared_says_how_to_build_it(tmp_path):
    with pytest.raises(InputError, match=r"tfds build glue/mnli --data_dir=.*array_record") as error:
        read_split(get_task("mnli"), "tfds", "dev_matched", tfds_data_dir=str(tmp_path))
    assert "validation_matched" in str(error.value)
    assert_one_line(error)


# ------------------------------------------------------------------------------------------ label order
def test_hf_mnli_teacher_is_permuted_to_canonical_order():
    task = get_task("mnli")
    perm = label_permutation(task, {"0": "CONTRADICTION", "1": "entailment", "2": "Neutral"})
    teacher_logits = np.array([[9.0, 1.0, 2.0],  # contradiction
                               [0.0, 5.0, 1.0]])  # entailment
    canonical = teacher_logits[..., perm]
    assert perm.tolist() == [1, 2, 0]
    assert [task.labels[i] for i in canonical.argmax(-1)] == ["contradiction", "entailment"]
    assert label_permutation(task, {0: "contradictory", 1: "entailment", 2: "neutral"}).tolist() == [1, 2, 0]


def test_label_permutation_none_when_nothing_to_reorder():
    assert label_permutation(get_task("mnli"), {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}) is None
    assert label_permutation(get_task("mnli"), None) is None
    assert label_permutation(get_task("sst2"), {"0": "NEGATIVE", "1": "POSITIVE"}) is None
    assert label_permutation(get_task("stsb"), {0: "LABEL_0"}) is None
    assert label_permutation(get_task("rte"), {1: "entailment", 0: "not entailment"}).tolist() == [1, 0]


def test_label_permutation_mismatch_is_an_error():
    with pytest.raises(InputError, match=r"teacher labels \['negative', 'positive'\] do not match task rte's "
                                         r"labels \['entailment', 'not_entailment'\]") as error:
        label_permutation(get_task("rte"), {0: "negative", 1: "positive"})
    assert_one_line(error)
    with pytest.raises(InputError, match="do not match"):
        label_permutation(get_task("mnli"), {0: "entailment", 1: "not_entailment"})
    with pytest.raises(InputError, match="do not match"):
        label_permutation(get_task("qnli"), {0: "entailment", 1: "entailment"})
    with pytest.raises(InputError, match="keys must be label ids 0..1"):
        label_permutation(get_task("qnli"), {0: "entailment", 2: "not_entailment"})


# --------------------------------------------------------------------------------------------- encoding
def test_encode_pairs(tokenizer):
    examples = TaskExamples(["the cat sat", "he left . " * 20], ["a dog ran", "she arrived late"],
                            np.array([1, 0], np.int32))
    arrays = encode(examples, tokenizer, seq_len=12)
    assert set(arrays) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    for name in ("input_ids", "token_type_ids", "attention_mask"):
        assert arrays[name].shape == (2, 12) and arrays[name].dtype == np.int32
    vocab = tokenizer.get_vocab()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    first = arrays["input_ids"][0]
    assert first[:9].tolist() == [cls] + tokenizer.convert_tokens_to_ids("the cat sat".split()) + [sep] \
        + tokenizer.convert_tokens_to_ids("a dog ran".split()) + [sep]
    assert (first[9:] == vocab["[PAD]"]).all() and arrays["attention_mask"][0].tolist() == [1] * 9 + [0] * 3
    assert arrays["token_type_ids"][0].tolist() == [0] * 5 + [1] * 4 + [0] * 3
    # The long first text is trimmed ("longest_first"), the second kept whole, the whole fitting in seq_len.
    second = arrays["input_ids"][1]
    assert arrays["attention_mask"][1].all() and second[-1] == sep
    assert second[-5:].tolist() == [sep] + tokenizer.convert_tokens_to_ids("she arrived late".split()) + [sep]
    assert arrays["token_type_ids"][1].tolist() == [0] * 8 + [1] * 4  # [CLS] 6 tokens [SEP] | 3 tokens [SEP]
    np.testing.assert_array_equal(arrays["labels"], examples.labels)


def test_encode_single_sentences_in_batches(tokenizer, monkeypatch):
    monkeypatch.setattr(glue, "ENCODE_BATCH", 2)
    examples = TaskExamples(["the cat", "a dog ran on the mat . " * 5, "she left", ""], None,
                            np.array([0, 1, 1, 0], np.int32))
    arrays = encode(examples, tokenizer, seq_len=8)
    assert arrays["input_ids"].shape == (4, 8) and not arrays["token_type_ids"].any()
    assert arrays["attention_mask"].sum(1).tolist() == [4, 8, 4, 2]
    assert arrays["input_ids"][2].tolist() == tokenizer("she left", max_length=8, padding="max_length")["input_ids"]
    with pytest.raises(InputError, match="seq_len 2 leaves no room"):
        encode(examples, tokenizer, seq_len=2)


# ---------------------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("seed", range(5))
def test_metrics_agree_with_sklearn_and_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    labels = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < 0.7, labels, 1 - labels)
    assert metrics.accuracy(pred, labels) == pytest.approx(sklearn.metrics.accuracy_score(labels, pred), abs=1e-6)
    assert metrics.f1(pred, labels) == pytest.approx(sklearn.metrics.f1_score(labels, pred), abs=1e-6)
    assert metrics.matthews_corr(pred, labels) == pytest.approx(sklearn.metrics.matthews_corrcoef(labels, pred),
                                                                abs=1e-6)
    x = rng.normal(size=n)
    y = x + rng.normal(size=n)
    x_ties, y_ties = np.round(x * 2) / 2, rng.integers(0, 6, n).astype(np.float32)  # many tied values
    for a, b in ((x, y), (x_ties, y_ties), (x_ties, y)):
        assert metrics.pearson(a, b) == pytest.approx(scipy.stats.pearsonr(a, b)[0], abs=1e-6)
        assert metrics.spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b)[0], abs=1e-6)


def test_undefined_metrics_are_zero():
    ones = np.ones(6, int)
    assert metrics.matthews_corr(ones, np.array([0, 1, 0, 1, 1, 0])) == 0.0
    assert metrics.f1(np.zeros(4), np.zeros(4)) == 0.0
    assert metrics.pearson(np.ones(5), np.arange(5)) == 0.0 and metrics.spearman(np.arange(5), np.ones(5)) == 0.0


def test_task_metrics_from_logits_and_scores():
    labels = np.array([0, 1, 1, 0])
    logits = np.array([[2.0, -1.0], [0.0, 3.0], [1.0, 0.5], [0.2, 0.1]])  # predicts 0, 1, 0, 0
    assert metrics.task_metrics(get_task("mrpc"), logits, labels) == {"f1": pytest.approx(2 / 3),
                                                                      "accuracy": 0.75}
    assert metrics.task_metrics(get_task("cola"), logits, labels)["matthews_corr"] == pytest.approx(
        sklearn.metrics.matthews_corrcoef(labels, [0, 1, 0, 0]))
    scores = np.array([0.5, 1.0, 4.0, 2.0])
    gold = np.array([0.0, 1.5, 5.0, 2.0])  # same order as the scores, not linear
    stsb = metrics.task_metrics(get_task("stsb"), scores[:, None], gold)
    assert stsb == metrics.task_metrics(get_task("stsb"), scores, gold)
    assert stsb["spearman"] == pytest.approx(1.0)
    assert stsb["pearson_spearman_mean"] == pytest.approx((stsb["pearson"] + 1.0) / 2)
    with pytest.raises(ValueError, match=r"mnli predictions have shape \(4, 2\), expected logits \[4, 3\]"):
        metrics.task_metrics(get_task("mnli"), logits, labels)
