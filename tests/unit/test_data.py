"""Data pipeline: corpus readers, sequence building, prepared ArrayRecord shards and the Grain loader."""
import itertools
import json
import random
import shutil
import subprocess
import sys

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
import transformers

from tinybert_jax.data import corpus, loader, prepare
from tinybert_jax.data.corpus import CorpusStats, iter_documents
from tinybert_jax.errors import InputError

WORDS = ("the cat dog sat on a mat and ran to big small red house tree saw it with under over then "
         "quick brown fox jumps lazy bird sings song water flows river").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SEQ_LEN = 24


def make_tokenizer(directory, words=WORDS):
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + [".", ","] + list(words)) + "\n")
    transformers.BertTokenizerFast(str(vocab)).save_pretrained(directory)  # positional: vocab_file= is ignored
    return directory


def corpus_text(num_documents, seed=0):
    """Documents of 1-8 sentences, one per line, a blank line between documents."""
    rng = random.Random(seed)
    documents = []
    for _ in range(num_documents):
        sentences = [" ".join(rng.choices(WORDS, k=rng.randint(2, 9))) + " ." for _ in range(rng.randint(1, 8))]
        documents.append("\n".join(sentences))
    return "\n\n".join(documents) + "\n"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory):
    """Two files of plain documents, plus an invalid UTF-8 line, an empty document and an over-long sentence."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "a.txt").write_text(corpus_text(40, seed=1))
    long_sentence = " ".join(WORDS * 3)  # longer than SEQ_LEN - 3 tokens
    (root / "sub").mkdir()
    (root / "sub" / "b.txt").write_bytes(corpus_text(40, seed=2).encode() + b"\n\nthe cat \xff\xfe sat .\n"
                                         + b"the dog ran .\n\n\n\n\xc3\x28 .\n\n" + long_sentence.encode() + b"\n")
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, text_corpus, tokenizer_dir):
    out = tmp_path_factory.mktemp("prepared") / "data"
    metadata = prepare.prepare(str(text_corpus / "**" / "*.txt"), out, str(tokenizer_dir), SEQ_LEN, seed=0,
                               records_per_shard=20)
    return out, metadata


def read_all(prepared_dir):
    metadata = loader.read_metadata(prepared_dir)
    source = grain.sources.ArrayRecordDataSource([str(prepared_dir / name) for name in metadata["shards"]])
    return [source[i] for i in range(len(source))]


# ------------------------------------------------------------------------------------------------ corpus
def test_text_files_count_invalid_empty_and_split_documents(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "MAX_DOCUMENT_SENTENCES", 3)
    (tmp_path / "1.txt").write_bytes(b"one .\n  two .  \n\n\n\nthree .\nbad \xff line\nfour .\n\n\xc0\xaf\n\n"
                                     b"a\nb\nc\nd\ne\nf\ng\n\nx\ny\nz\n")
    (tmp_path / "2.txt").write_bytes(b"")
    (tmp_path / "3.txt").write_bytes(b"\n\n   \n")
    stats = CorpusStats()
    documents = list(iter_documents(str(tmp_path / "*.txt"), stats))
    assert documents == [["one .", "two ."], ["three .", "four ."], ["a", "b", "c"], ["d", "e", "f"], ["g"],
                         ["x", "y", "z"]]
    assert (stats.files, stats.invalid_utf8_lines, stats.empty_documents, stats.split_documents) == (3, 2, 3, 1)
    assert (stats.documents, stats.sentences) == (6, 14)
    assert "2 invalid UTF-8 lines skipped" in stats.summary() and "3 empty documents" in stats.summary()


def test_split_sentences_reflows_and_drops_code():
    text = ("Return the sum of a\nand b.  Raises ValueError if\nthey differ!\n\n"
            ">>> add(1, 2)\n3\n... more\n\n    ======  ------\nSee also: sub() (e.g. Foo).")
    assert corpus.split_sentences(text) == ["Return the sum of a and b.", "Raises ValueError if they differ!",
                                            "See also: sub() (e.g. Foo)."]


def test_unwrapped_text_keeps_every_line_apart():
    text = "Early life\nHe was born in 1900. He died.\n\n1900 | 2000 | 3000\nLater years"
    assert corpus.split_sentences(text, wrapped=False) == ["Early life", "He was born in 1900.", "He died.",
                                                           "Later years"]


def test_embedded_corpus_is_prose_in_a_fixed_order():
    stats = CorpusStats()
    first = list(itertools.islice(iter_documents("embedded", stats), 300))
    assert len(first) == 300 and stats.files > 3
    assert all(document and all(isinstance(s, str) and s and s == s.strip() for s in document)
               for document in first)
    assert sum(map(len, first)) > 500
    assert list(itertools.islice(iter_documents("", CorpusStats()), 300)) == first


def test_missing_glob_is_one_line_input_error(tmp_path):
    pattern = str(tmp_path / "nothing" / "*.txt")
    with pytest.raises(InputError, match="no files match") as error:
        list(iter_documents(pattern, CorpusStats()))
    assert pattern in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("source, expected", [
    ("tfds:wikipedia/20230601.en", ("wikipedia/20230601.en", "train")),
    ("tfds:glue/sst2:validation", ("glue/sst2", "validation")),
    ("tfds:imdb_reviews:1.0.0", ("imdb_reviews:1.0.0", "train")),
    ("tfds:imdb_reviews/plain_text:1.0.0:test", ("imdb_reviews/plain_text:1.0.0", "test")),
])
def test_parse_tfds_source(source, expected):
    assert corpus.parse_tfds_source(source) == expected


def test_tfds_source_reads_records_through_data_source(tmp_path, tokenizer_dir):
    with tfds.testing.mock_data(num_examples=7):
        stats = CorpusStats()
        documents = list(iter_documents("tfds:imdb_reviews", stats))
        assert stats.expected_records == 7
        assert len(documents) + stats.empty_documents == 7 and all(document and all(document) for document in documents)
        with pytest.raises(InputError, match="no field 'body'.*tfds_text_key"):
            list(iter_documents("tfds:imdb_reviews", CorpusStats(), tfds_text_key="body"))
        metadata = prepare.prepare("tfds:imdb_reviews", tmp_path / "out", str(tokenizer_dir), SEQ_LEN, seed=0)
    assert metadata["count"] > 0 and metadata["corpus_stats"]["expected_records"] == 7


def test_tfds_text_field_may_be_bytes_and_lines_are_paragraphs():
    records = [{"text": b"Title\nFirst one. Second one."}, {"text": ""}, {"text": "Only \xe9t\xe9 here"}]
    with tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **kwargs: records):
        stats = CorpusStats()
        documents = list(iter_documents("tfds:imdb_reviews:test", stats))
    assert documents == [["Title", "First one.", "Second one."], ["Only \xe9t\xe9 here"]]
    assert (stats.expected_records, stats.empty_documents) == (3, 1)


def test_tfds_dataset_not_prepared_says_how_to_build_it(tmp_path):
    with pytest.raises(InputError, match=r"tfds build imdb_reviews --data_dir=.*array_record") as error:
        list(iter_documents("tfds:imdb_reviews", CorpusStats(), tfds_data_dir=str(tmp_path)))
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="no TFDS dataset 'no_such_dataset_xyz'"):
        list(iter_documents("tfds:no_such_dataset_xyz", CorpusStats(), tfds_data_dir=str(tmp_path)))


# ----------------------------------------------------------------------------------------------- prepare
def test_prepared_sequences_are_well_formed(prepared, tokenizer_dir):
    out, metadata = prepared
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = metadata["tokenizer"]
    assert (ids["pad_id"], ids["cls_id"], ids["sep_id"], ids["mask_id"]) == (0, 2, 3, 4)
    assert ids["vocab_size"] == len(tokenizer.get_vocab())
    records = read_all(out)
    assert len(records) == metadata["count"] > 50
    assert len(metadata["shards"]) == -(-len(records) // 20)
    batch = loader.decode_records(records, SEQ_LEN, ids["pad_id"])
    for input_ids, token_types, mask in zip(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]):
        length = int(mask.sum())
        assert 5 <= length <= SEQ_LEN and mask[:length].all()
        assert input_ids[0] == ids["cls_id"] and (input_ids[length:] == ids["pad_id"]).all()
        seps = np.flatnonzero(input_ids == ids["sep_id"])
        a_len = int((token_types == 0).sum()) - (SEQ_LEN - length)
        assert list(seps) == [a_len - 1, length - 1] and a_len >= 3 and length - a_len >= 2
        assert (token_types[:a_len] == 0).all() and (token_types[a_len:length] == 1).all()
        assert (token_types[length:] == 0).all()
    lengths = batch["attention_mask"].sum(1)
    assert (lengths == SEQ_LEN).mean() > 0.5  # most sequences are filled to the target length
    corpus_stats, sequence_stats = metadata["corpus_stats"], metadata["sequence_stats"]
    assert (corpus_stats["invalid_utf8_lines"], corpus_stats["empty_documents"]) == (2, 1)
    assert sequence_stats["split_sentences"] == 1 and 0 < sequence_stats["random_next"] < len(records)
    assert sequence_stats["tokens"] == int(lengths.sum())
    assert json.loads((out / loader.METADATA_FILE).read_text()) == metadata


def test_prepared_token_counts_are_the_counts_of_the_written_ids(prepared):
    out, metadata = prepared
    assert metadata["token_counts"] == loader.TOKEN_COUNTS_FILE == "token_counts.npy"
    vocab_size = metadata["tokenizer"]["vocab_size"]
    expected = np.zeros(vocab_size, np.int64)
    for record in read_all(out):
        expected += np.bincount(np.frombuffer(record, "<i4")[1:], minlength=vocab_size)
    stored = np.load(out / "token_counts.npy")
    assert stored.dtype == np.int64 and stored.shape == (vocab_size,)
    np.testing.assert_array_equal(stored, expected)
    assert stored.sum() == metadata["sequence_stats"]["tokens"]
    assert stored[metadata["tokenizer"]["cls_id"]] == metadata["count"]
    assert stored[metadata["tokenizer"]["sep_id"]] == 2 * metadata["count"]
    assert stored[metadata["tokenizer"]["pad_id"]] == 0
    counts = loader.read_token_counts(out)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, expected)


def test_token_counts_are_batched_across_flushes(tmp_path, text_corpus, tokenizer_dir, prepared, monkeypatch):
    monkeypatch.setattr(prepare, "TOKEN_COUNT_BATCH", 50)  # many np.bincount batches instead of one
    prepare.prepare(str(text_corpus / "**" / "*.txt"), tmp_path / "out", str(tokenizer_dir), SEQ_LEN, seed=0,
                    records_per_shard=20)
    np.testing.assert_array_equal(loader.read_token_counts(tmp_path / "out"), loader.read_token_counts(prepared[0]))


def _copy_prepared(prepared, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared[0], copy)
    return copy, json.loads((copy / loader.METADATA_FILE).read_text())


def _write_metadata(directory, metadata):
    (directory / loader.METADATA_FILE).write_text(json.dumps(metadata))


def _counts_error(directory, match):
    with pytest.raises(InputError, match=match) as error:
        loader.read_token_counts(directory)
    message = str(error.value)
    assert str(directory / "token_counts.npy") in message and "\n" not in message
    assert f"delete {directory} and prepare it again" in message
    return message


def test_read_token_counts_without_the_metadata_key(prepared, tmp_path):
    copy, metadata = _copy_prepared(prepared, tmp_path)
    del metadata["token_counts"]  # as written before token counts existed
    _write_metadata(copy, metadata)
    assert loader.read_metadata(copy)["count"] == metadata["count"]  # such a directory still loads for training
    _counts_error(copy, "not recorded in metadata.json")


def test_read_token_counts_missing_or_unreadable_file(prepared, tmp_path):
    copy, _ = _copy_prepared(prepared, tmp_path)
    (copy / "token_counts.npy").unlink()
    _counts_error(copy, "not found")
    (copy / "token_counts.npy").write_bytes(b"not an npy file")
    _counts_error(copy, "not a readable .npy array")
    np.save(copy / "token_counts.npy", np.zeros(3, object), allow_pickle=True)
    _counts_error(copy, "not a readable .npy array")
    np.save(copy / "token_counts.npy", np.ones(len(np.load(prepared[0] / "token_counts.npy")), np.float32))
    _counts_error(copy, "dtype float32")


def test_read_token_counts_wrong_length(prepared, tmp_path):
    copy, metadata = _copy_prepared(prepared, tmp_path)
    vocab_size = metadata["tokenizer"]["vocab_size"]
    np.save(copy / "token_counts.npy", np.ones(vocab_size - 1, np.int64))
    _counts_error(copy, rf"shape \[{vocab_size - 1}\], expected \[{vocab_size}\]")
    np.save(copy / "token_counts.npy", np.ones((vocab_size, 2), np.int64))
    _counts_error(copy, rf"shape \[{vocab_size}, 2\], expected")
    np.save(copy / "token_counts.npy", np.ones(vocab_size, np.int64))
    del metadata["tokenizer"]["vocab_size"]
    _write_metadata(copy, metadata)
    _counts_error(copy, "no valid tokenizer.vocab_size")


def test_prepare_is_deterministic_for_a_seed(tmp_path, text_corpus, tokenizer_dir, prepared):
    source = str(text_corpus / "**" / "*.txt")
    prepare.prepare(source, tmp_path / "same", str(tokenizer_dir), SEQ_LEN, seed=0, records_per_shard=1000)
    prepare.prepare(source, tmp_path / "other", str(tokenizer_dir), SEQ_LEN, seed=1)
    assert read_all(tmp_path / "same") == read_all(prepared[0])
    assert read_all(tmp_path / "other") != read_all(prepared[0])


def test_pairs_are_contiguous_text_and_fit():
    """A is a contiguous run of its document; B continues it or is a contiguous run of another document."""
    rng = random.Random(0)
    documents, token = [], 0
    for _ in range(30):
        document = []
        for _ in range(rng.randint(1, 12)):
            length = rng.randint(1, 9)
            document.append(np.arange(token, token + length, dtype=np.int32))
            token += length
        documents.append(document)
    owner = {int(t): d for d, document in enumerate(documents) for sentence in document for t in sentence}
    stats = prepare.SequenceStats()
    pairs = list(prepare.pair_sequences(documents, random.Random(1), 20, 0.1, stats, window=8))
    assert len(pairs) > 30
    from_other_document = 0
    for a, b in pairs:
        assert len(a) and len(b) and len(a) + len(b) <= 20
        for segment in (a, b):
            assert (np.diff(segment) == 1).all() and owner[int(segment[0])] == owner[int(segment[-1])]
        if owner[int(a[0])] == owner[int(b[0])]:
            assert b[0] > a[-1]  # the true next segment (truncation may have trimmed the tokens in between)
        else:
            from_other_document += 1
    assert from_other_document == stats.random_next and 5 < stats.random_next < len(pairs) - 5


def test_ensure_prepared_reuses_or_names_the_mismatch(prepared, text_corpus, tokenizer_dir, tmp_path, monkeypatch):
    out, metadata = prepared
    source = str(text_corpus / "**" / "*.txt")
    monkeypatch.setattr(prepare, "prepare", lambda *a, **k: pytest.fail("should reuse"))
    assert prepare.ensure_prepared(source, out, str(tokenizer_dir), SEQ_LEN, 0) == metadata
    with pytest.raises(InputError, match="seq_len=24, not 32; delete the directory"):
        prepare.ensure_prepared(source, out, str(tokenizer_dir), 32, 0)
    with pytest.raises(InputError, match="seed=0, not 5"):
        prepare.ensure_prepared(source, out, str(tokenizer_dir), SEQ_LEN, 5)
    other_tokenizer = make_tokenizer(tmp_path / "other_tokenizer", words=WORDS[::-1])
    with pytest.raises(InputError, match="another tokenizer"):
        prepare.ensure_prepared(source, out, str(other_tokenizer), SEQ_LEN, 0)


def test_corpus_without_sequences_writes_nothing(tmp_path, tokenizer_dir):
    (tmp_path / "empty.txt").write_bytes(b"\n\n\xff\n\n")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"source '.*empty.txt': no training sequences \(0 documents.*1 invalid"):
        prepare.prepare(str(tmp_path / "empty.txt"), out, str(tokenizer_dir), SEQ_LEN, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]  # no output, no temporary directory


def test_tokenizer_directory_without_tokenizer_files(tmp_path):
    with pytest.raises(InputError, match="no tokenizer files"):
        prepare.load_tokenizer(str(tmp_path))


def test_cli_prints_summary_and_reuses(tmp_path, text_corpus, tokenizer_dir, capsys):
    argv = [f"--source={text_corpus / 'a.txt'}", f"--tokenizer={tokenizer_dir}", f"--out={tmp_path / 'out'}",
            "--seq_len=32", "--seed=3"]
    assert prepare.main(argv) == 0
    assert "sequences of at most 32 tokens" in capsys.readouterr().out
    assert prepare.main(argv) == 0


@pytest.mark.slow  # starts processes
def test_cli_input_error_exits_1_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tinybert_jax.data.prepare", f"--tokenizer={tmp_path}",
                             f"--out={tmp_path / 'out'}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no tokenizer files" in errors[0], result.stderr


# ------------------------------------------------------------------------------------------------ loader
def test_batches_have_the_training_shapes(prepared):
    out, metadata = prepared
    batch = next(loader.make_train_iterator(out, 8, seed=0))
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"}
    for value in batch.values():
        assert value.shape == (8, SEQ_LEN) and value.dtype == np.int32
    assert ((batch["input_ids"] != 0) == (batch["attention_mask"] == 1)).all()


def first_epoch(prepared_dir, epochs=1, seed=0):
    """Rows (as bytes) of the first `epochs` epochs, batch size 1."""
    count = loader.read_metadata(prepared_dir)["count"]
    it = loader.make_train_iterator(prepared_dir, 1, seed)
    return [next(it)["input_ids"].tobytes() for _ in range(epochs * count)], count


def test_processes_read_their_rows_of_the_same_global_batches(prepared):
    out, _ = prepared
    whole = loader.make_train_iterator(out, 8, seed=3)
    parts = [loader.make_train_iterator(out, 8, seed=3, rows=slice(start, start + 4)) for start in (0, 4)]
    for _ in range(12):
        batch = next(whole)
        halves = [next(part) for part in parts]
        for key in batch:
            assert halves[0][key].shape[0] == 4
            np.testing.assert_array_equal(np.concatenate([half[key] for half in halves]), batch[key])


def test_every_epoch_is_a_new_permutation(prepared):
    out, _ = prepared
    rows, count = first_epoch(out, epochs=3)
    epochs = [rows[i * count:(i + 1) * count] for i in range(3)]
    assert len(set(epochs[0])) == count
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(epochs[2])
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert epochs[0] != first_epoch(out, seed=1)[0]


def test_iterator_state_restores_the_position_on_another_process_count(prepared):
    out, _ = prepared
    it = loader.make_train_iterator(out, 4, seed=7, rows=slice(2, 4))  # process 1 of 2
    for _ in range(23):  # past the first epoch boundary
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
    expected = [next(it) for _ in range(5)]

    alone = loader.make_train_iterator(out, 4, seed=7)  # resumed by a single process
    alone.set_state(state)
    for want, got in zip(expected, [next(alone) for _ in range(5)]):
        for key in want:
            np.testing.assert_array_equal(want[key], got[key][2:4])


def test_loader_input_errors(prepared, tmp_path):
    out, metadata = prepared
    with pytest.raises(InputError, match="fewer than one global batch"):
        loader.make_train_iterator(out, metadata["count"] + 1, seed=0)
    with pytest.raises(InputError, match="metadata.json: not found"):
        loader.make_train_iterator(tmp_path, 2, seed=0)
    (tmp_path / loader.METADATA_FILE).write_text("{}")
    with pytest.raises(InputError, match="missing format_version"):
        loader.read_metadata(tmp_path)
