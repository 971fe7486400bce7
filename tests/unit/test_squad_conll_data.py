"""SQuAD and CoNLL-2003 data: JSON, CoNLL and TFDS readers, their errors, and window / word-label encoding."""
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
import transformers

from tinybert_jax.data import conll, squad
from tinybert_jax.errors import InputError

WORDS = [f"w{i}" for i in range(80)] + "where is the cat sat on mat eu reject ##s peter black ##burn".split()


@pytest.fixture
def tokenizer(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?"] + WORDS) + "\n")
    return transformers.BertTokenizerFast(str(vocab))  # positional: vocab_file= is ignored in transformers 5


def assert_one_line(error):
    assert "\n" not in str(error.value)


def squad_json(version, paragraphs):
    """Official-layout JSON text, indented so that every question id is on a line of its own."""
    return json.dumps({"version": version, "data": [{"title": "T", "paragraphs": paragraphs}]}, indent=1)


def write(directory, name, text):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(text.encode("utf-8"))
    return str(directory)


def line_of(text, needle):
    return next(number for number, line in enumerate(text.splitlines(), start=1) if needle in line)


CONTEXT = "The cat sat on the mat.  Then  it left."
V1_PARAGRAPHS = [{"context": CONTEXT, "qas": [
    {"id": "q1", "question": "Where did the cat sit?",
     "answers": [{"text": "the mat", "answer_start": 15}, {"text": "mat", "answer_start": 19}]},
    {"id": "q2", "question": "What left?", "answers": [{"text": "it", "answer_start": 31}]}]}]


# ---------------------------------------------------------------------------------------------- SQuAD JSON
def test_squad_v1_json_keeps_every_answer_and_the_context_as_given(tmp_path):
    source = write(tmp_path, "dev-v1.1.json", squad_json("1.1", V1_PARAGRAPHS))
    examples = squad.read_split("squad_v1", source, "dev")
    assert len(examples) == 2 and examples.ids == ["q1", "q2"]
    assert examples.questions[1] == "What left?"
    assert examples.contexts == [CONTEXT, CONTEXT]  # the double spaces stay: offsets refer to them
    assert examples.answers == [[("the mat", 15), ("mat", 19)], [("it", 31)]]


def test_squad_v2_json_impossible_question_has_no_answers(tmp_path):
    paragraphs = [{"context": CONTEXT, "qas": [
        {"id": "a", "question": "Where?", "answers": [{"text": "mat", "answer_start": 19}], "is_impossible": False},
        {"id": "b", "question": "Who won?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "cat", "answer_start": 99}]}]}]
    source = write(tmp_path, "train-v2.0.json", squad_json("v2.0", paragraphs))
    examples = squad.read_split("squad_v2", source, "train")
    assert examples.ids == ["a", "b"] and examples.answers == [[("mat", 19)], []]
    with pytest.raises(InputError, match=r"train-v1.1.json: not found; a SQuAD v1.1 directory holds "
                                         r"train-v1.1.json and dev-v1.1.json"):
        squad.read_split("squad_v1", source, "train")


def test_squad_v2_impossible_with_answers_and_answerable_without_are_refused(tmp_path):
    text = squad_json("v2.0", [{"context": CONTEXT, "qas": [
        {"id": "x", "question": "?", "answers": [{"text": "mat", "answer_start": 19}], "is_impossible": True}]}])
    line = line_of(text, '"id": "x"')
    with pytest.raises(InputError, match=rf"dev-v2.0.json:{line}: question x: is_impossible is "
                                         r"true but it has 1 answers") as error:
        squad.read_split("squad_v2", write(tmp_path / "a", "dev-v2.0.json", text), "dev")
    assert_one_line(error)
    text = squad_json("v2.0", [{"context": CONTEXT, "qas": [
        {"id": "y", "question": "?", "answers": [], "is_impossible": False}]}])
    with pytest.raises(InputError, match=r"question y: no answers"):
        squad.read_split("squad_v2", write(tmp_path / "b", "dev-v2.0.json", text), "dev")


def test_squad_wrong_answer_start_names_file_line_id_and_text(tmp_path):
    paragraphs = json.loads(json.dumps(V1_PARAGRAPHS))
    paragraphs[0]["qas"][1]["answers"][0]["answer_start"] = 30
    text = squad_json("1.1", paragraphs)
    source = write(tmp_path, "train-v1.1.json", text)
    line = line_of(text, '"id": "q2"')
    assert line > 1
    with pytest.raises(InputError, match=rf"train-v1.1.json:{line}: question q2: answer 'it' is not at character "
                                         r"30 of its context \(found ' i'\)") as error:
        squad.read_split("squad_v1", source, "train")
    assert str(tmp_path) in str(error.value)
    assert_one_line(error)


def test_squad_missing_directory_bad_json_and_missing_key(tmp_path):
    with pytest.raises(InputError, match=r"no such directory; give a directory with train-v2.0.json and "
                                         r"dev-v2.0.json"):
        squad.read_split("squad_v2", str(tmp_path / "absent"), "dev")
    source = write(tmp_path / "bad", "dev-v1.1.json", '{"data": [\n  {"paragraphs": [}\n]}')
    with pytest.raises(InputError, match=r"dev-v1.1.json:2: not valid JSON") as error:
        squad.read_split("squad_v1", source, "dev")
    assert_one_line(error)
    text = squad_json("1.1", [{"context": CONTEXT, "qas": [{"id": "q9", "answers": []}]}])
    with pytest.raises(InputError, match=r"dev-v1.1.json: data\[0\].paragraphs\[0\].qas\[0\] \(question q9\) has "
                                         r"no key 'question'") as error:
        squad.read_split("squad_v1", write(tmp_path / "key", "dev-v1.1.json", text), "dev")
    assert_one_line(error)
    with pytest.raises(InputError, match="unknown SQuAD task 'squad_v3'"):
        squad.read_split("squad_v3", source, "dev")


# ------------------------------------------------------------------------------------------ SQuAD encode
LONG_CONTEXT = " ".join(f"w{i}" for i in range(60))  # 60 context tokens, one per word


def long_examples():
    start = LONG_CONTEXT.index("w30 w31")
    return squad.SquadExamples(ids=["long", "none"], questions=["where is w30 ?", "where is the cat ?"],
                               contexts=[LONG_CONTEXT, "the cat sat"], answers=[[("w30 w31", start)], []])


def test_squad_windows_overlap_by_doc_stride_and_answers_map_back(tokenizer):
    examples = long_examples()
    seq_len, doc_stride = 24, 5
    train = squad.encode(examples, tokenizer, seq_len=seq_len, doc_stride=doc_stride, max_query_len=8, train=True)
    dev = squad.encode(examples, tokenizer, seq_len=seq_len, doc_stride=doc_stride, max_query_len=8, train=False)
    assert all(values.dtype == np.int32 for values in list(train.values()) + list(dev.values()))
    windows = np.flatnonzero(train["example_index"] == 0)
    assert len(windows) == 5 and train["example_index"].tolist() == [0] * 5 + [1]  # 17 context tokens, step 12
    assert train["input_ids"].shape == (6, seq_len) and dev["offsets"].shape == (6, seq_len, 2)
    assert (train["input_ids"] == dev["input_ids"]).all()
    context_starts = []
    for window in windows:
        offsets = dev["offsets"][window]
        in_context = offsets[:, 0] >= 0
        # Question tokens, [CLS], [SEP]s and padding have no context offsets.
        assert not in_context[:6].any() and (offsets[~in_context] == -1).all()
        context_starts.append([tuple(pair) for pair in offsets[in_context]])
    for previous, following in zip(context_starts, context_starts[1:]):
        assert previous[-doc_stride:] == following[:doc_stride]  # the overlap is doc_stride tokens
    found = []
    for window in windows:
        start, end = train["start_positions"][window], train["end_positions"][window]
        if (start, end) == (0, 0):
            continue
        offsets = dev["offsets"][window]
        found.append(LONG_CONTEXT[offsets[start, 0]:offsets[end, 1]])
    assert found == ["w30 w31"]  # only window 2 (context tokens 24..40) holds the answer wholly
    assert train["start_positions"][windows].tolist() == [0, 0, 12, 0, 0]
    assert (train["start_positions"][5], train["end_positions"][5]) == (0, 0)  # no answer: [CLS]
    assert "start_positions" not in dev and "offsets" not in train


def test_squad_answer_across_a_window_edge_is_not_labelled(tokenizer):
    start = LONG_CONTEXT.index("w13 w14 w15")
    examples = squad.SquadExamples(["edge"], ["w1 ?"], [LONG_CONTEXT], [[("w13 w14 w15", start)]])
    # Context room 20 - 3 - 2 = 15 tokens, overlap 2: windows hold context tokens 0..14, 13..27, ...; the first
    # window cuts the answer (13..15) off, the second holds it wholly.
    encoded = squad.encode(examples, tokenizer, seq_len=20, doc_stride=2, max_query_len=2, train=True)
    assert encoded["start_positions"][0] == encoded["end_positions"][0] == 0
    assert (encoded["start_positions"][1], encoded["end_positions"][1]) == (4, 6)  # after [CLS] w1 ? [SEP]


def test_squad_long_question_is_cut_to_max_query_len(tokenizer):
    examples = squad.SquadExamples(["q"], [" ".join(f"w{i}" for i in range(10))], ["the cat sat"], [[("cat", 4)]])
    encoded = squad.encode(examples, tokenizer, seq_len=16, doc_stride=1, max_query_len=4, train=True)
    question = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0][:7])
    assert question == ["[CLS]", "w0", "w1", "w2", "w3", "[SEP]", "the"]
    assert (encoded["start_positions"][0], encoded["end_positions"][0]) == (7, 7)


def test_squad_encode_refuses_sizes_without_room(tokenizer):
    examples = long_examples()
    with pytest.raises(InputError, match=r"seq_len 11 leaves no room for context after a question of "
                                         r"max_query_len 8") as error:
        squad.encode(examples, tokenizer, seq_len=11, doc_stride=0, max_query_len=8, train=True)
    assert_one_line(error)
    with pytest.raises(InputError, match=r"doc_stride 13 must be in \[0, 13\)"):
        squad.encode(examples, tokenizer, seq_len=24, doc_stride=13, max_query_len=8, train=False)


# ----------------------------------------------------------------------------------------------- CoNLL
CONLL_TRAIN = ("-DOCSTART- -X- -X- O\n\n"
               "EU NNP B-NP I-ORG\r\nrejects VBZ B-VP O\r\n\r\n\r\n\n"
               "-DOCSTART- -X- -X- O\n\n"
               "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER")  # no final blank line


def test_conll_reader_skips_docstart_and_blank_runs(tmp_path):
    source = write(tmp_path, "train.txt", CONLL_TRAIN)
    examples = conll.read_split(source, "train")
    assert examples.words == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert [tags.tolist() for tags in examples.tags] == [[4, 0], [1, 2]]
    assert all(tags.dtype == np.int32 for tags in examples.tags)
    assert [conll.TAGS[i] for i in examples.tags[0]] == ["I-ORG", "O"]  # IOB1 kept as written


def test_conll_errors_name_file_and_line(tmp_path):
    source = write(tmp_path, "valid.txt", "EU NNP B-NP B-ORG\n\nrejects VBZ O\n")
    with pytest.raises(InputError, match=r"valid.txt:3: 3 space-separated columns, expected 4 "
                                         r"\(word POS chunk NER\)") as error:
        conll.read_split(source, "dev")
    assert_one_line(error)
    write(tmp_path, "train.txt", "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nx NN O B-FOO\n")
    with pytest.raises(InputError, match=r"train.txt:4: tag 'B-FOO' is not a CoNLL-2003 tag \(O, B-PER, "):
        conll.read_split(source, "train")
    with pytest.raises(InputError, match=r"test.txt: not found; a CoNLL-2003 directory holds train.txt, "
                                         r"valid.txt, test.txt"):
        conll.read_split(source, "test")
    write(tmp_path, "test.txt", "-DOCSTART- -X- -X- O\n\n\n")
    with pytest.raises(InputError, match=r"test.txt: no sentences"):
        conll.read_split(source, "test")


def test_conll_encode_labels_first_pieces_only(tokenizer):
    examples = conll.TaggedExamples([["EU", "\x07", "rejects", "Peter", "Blackburn"], ["Peter"]],
                                    [np.array([4, 0, 0, 1, 2], np.int32), np.array([1], np.int32)])
    encoded = conll.encode(examples, tokenizer, seq_len=10)
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"][0][:8]) == [
        "[CLS]", "eu", "reject", "##s", "peter", "black", "##burn", "[SEP]"]
    assert encoded["labels"][0].tolist() == [-100, 4, 0, -100, 1, 2, -100, -100, -100, -100]
    assert encoded["labels"][1].tolist() == [-100, 1] + [-100] * 8
    # The control character has no pieces; the second sentence has one word.
    assert encoded["word_positions"].tolist() == [[1, -1, 2, 4, 5], [1, -1, -1, -1, -1]]
    assert encoded["attention_mask"][0].tolist() == [1] * 8 + [0] * 2
    assert not encoded["token_type_ids"].any()
    assert all(values.dtype == np.int32 for values in encoded.values())


def test_conll_encode_truncation_leaves_cut_words_without_position(tokenizer):
    examples = conll.TaggedExamples([["EU", "rejects", "Peter", "Blackburn"]], [np.array([4, 0, 1, 2], np.int32)])
    encoded = conll.encode(examples, tokenizer, seq_len=5)
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"][0]) == ["[CLS]", "eu", "reject", "##s", "[SEP]"]
    assert encoded["labels"][0].tolist() == [-100, 4, 0, -100, -100]
    assert encoded["word_positions"][0].tolist() == [1, 2, -1, -1]


# ------------------------------------------------------------------------------------------------ TFDS
def squad_record(question_id, context, answers, impossible=None):
    record = {"id": question_id.encode(), "title": b"T", "context": context.encode(), "question": b"Where?",
              "answers": {"text": np.array([text.encode() for text, _ in answers], object),
                          "answer_start": np.array([start for _, start in answers], np.int32)}}
    if impossible is not None:
        record["is_impossible"] = np.bool_(impossible)
        record["plausible_answers"] = {"text": np.array([b"zz"], object), "answer_start": np.array([3], np.int32)}
    return record


def test_tfds_squad_v1_and_v2_through_data_source():
    records = {("v1.1", "validation"): [squad_record("a", CONTEXT, [("the mat", 15), ("mat", 19)])],
               ("v1.1", "train"): [squad_record("b", CONTEXT, [("it", 31)])],
               ("v2.0", "train"): [squad_record("c", CONTEXT, [("cat", 4)], False),
                                   squad_record("d", CONTEXT, [], True)]}
    seen = []

    def data_source(builder, split, **kwargs):
        seen.append((builder.name, builder.builder_config.name, split))
        return records[builder.builder_config.name, split]

    with tfds.testing.mock_data(as_data_source_fn=data_source):
        dev = squad.read_split("squad_v1", "tfds", "dev")
        train = squad.read_split("squad_v1", "tfds", "train")
        v2 = squad.read_split("squad_v2", "tfds", "train")
        records["v2.0", "train"].append(squad_record("e", CONTEXT, [("cat", 5)], False))
        with pytest.raises(InputError, match=r"tfds squad/v2.0 train: record 2: question e: answer 'cat' is not at "
                                             r"character 5 of its context \(found 'at '\)") as error:
            squad.read_split("squad_v2", "tfds", "train")
        assert_one_line(error)
    assert seen[:3] == [("squad", "v1.1", "validation"), ("squad", "v1.1", "train"), ("squad", "v2.0", "train")]
    assert dev.ids == ["a"] and dev.answers == [[("the mat", 15), ("mat", 19)]] and dev.contexts == [CONTEXT]
    assert train.answers == [[("it", 31)]] and train.questions == ["Where?"]
    assert v2.ids == ["c", "d"] and v2.answers == [[("cat", 4)], []]


def test_tfds_conll2003_through_data_source():
    records = [{"tokens": np.array([b"EU", b"rejects"], object), "ner": np.array([3, 0]),
                "pos": np.array([0, 0]), "chunks": np.array([0, 0])},
               {"tokens": np.array([], object), "ner": np.array([], np.int64)}]  # the builder's empty last record
    seen = []

    def data_source(builder, split, **kwargs):
        seen.append((builder.name, split))
        return records

    with tfds.testing.mock_data(as_data_source_fn=data_source):
        examples = conll.read_split("tfds", "dev")
        records.append({"tokens": np.array([b"x"], object), "ner": np.array([9])})
        with pytest.raises(InputError, match=r"tfds conll2003 test: record 2 has ner tag id 9, expected 0..8"):
            conll.read_split("tfds", "test")
    assert seen == [("conll2003", "dev"), ("conll2003", "test")]
    assert examples.words == [["EU", "rejects"]] and examples.tags[0].tolist() == [3, 0]
