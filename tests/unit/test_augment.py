"""TinyBERT data augmentation: determinism, where replacements come from, rate, task files, errors, benchmark."""
import json
import logging
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import transformers
from helpers import make_hf_model, run_bench

from tinybert_jax.convert import load_hf_bert
from tinybert_jax.data import conll, squad
from tinybert_jax.data.augment import (
    Augmenter,
    augment_examples,
    is_candidate,
    load_augmenter,
    masked_lm_input,
    match_case,
    split_words,
)
from tinybert_jax.data.augment_tasks import augment_spans, augment_tagged, read_spans, read_tagged
from tinybert_jax.data.augmented_files import read_augmented
from tinybert_jax.data.glove import load_glove
from tinybert_jax.errors import InputError

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]"]
STOP = ["the", "a", "of", "and", "is", "on", "in", "to"]
SINGLE = ["cat", "dog", "bird", "fish", "red", "blue", "green", "runs", "jumps", "sees", "eats", "big", "small",
          "house", "tree", "car", "river", "sky", "sun", "moon"]  # one WordPiece each: MLM candidates
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
VOCAB = list(dict.fromkeys(SPECIAL + STOP + SINGLE + [".", ","] + LETTERS + ["##" + c for c in LETTERS]))
MULTI = ["elephant", "giraffe", "zebra", "purple", "orange", "swims", "flies", "ocean", "forest", "lion"]  # GloVe
UNKNOWN = ["xylophon"]  # in neither: never a candidate
K = 5


def make_sentences(count, pool, seed=0):
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(count):
        words = [str(w) for w in rng.choice(pool + STOP, size=rng.integers(3, 8))]
        words[0] = words[0].capitalize() if rng.random() < 0.5 else words[0]
        sentences.append(" ".join(words) + (" ." if rng.random() < 0.5 else "."))
    return sentences


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("augment")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = transformers.BertTokenizerFast(str(root / "vocab.txt"))
    model = make_hf_model("BertForMaskedLM", vocab_size=len(VOCAB), max_position_embeddings=128)
    model.save_pretrained(root / "mlm")
    tokenizer.save_pretrained(root / "mlm")
    glove_words = MULTI + ["tiger", "mountain", "cat"]
    vectors = np.random.default_rng(1).normal(size=(len(glove_words), 8)).astype(np.float32)
    glove = root / "glove.txt"
    glove.write_text("".join(w + " " + " ".join(f"{x:.6f}" for x in v) + "\n" for w, v in zip(glove_words, vectors)))
    augmenter = load_augmenter(str(root / "mlm"), str(glove), k=K, batch_size=4, max_seq_len=128)
    return types.SimpleNamespace(root=root, tokenizer=tokenizer, model=model, glove=glove, glove_words=glove_words,
                                 vectors=vectors, augmenter=augmenter,
                                 sentences=make_sentences(40, SINGLE + MULTI + UNKNOWN))


def make_augmenter(assets, glove=True, **settings):
    cfg, params = load_hf_bert(str(assets.root / "mlm"))
    return Augmenter(cfg, params, assets.tokenizer, load_glove(assets.glove) if glove else None,
                     **{"k": K, "batch_size": 4, "max_seq_len": 128, **settings})


def replaced_words(original, variant):
    """{position: new word} for a variant of `original` (candidates hold no spaces, so the match is unique)."""
    spans = split_words(original)
    pattern, end, positions = "", 0, []
    for position, (a, b) in enumerate(spans):
        word = original[a:b]
        pattern += re.escape(original[end:a]) + (r"(\S+?)" if is_candidate(word) else re.escape(word))
        positions += [position] if is_candidate(word) else []
        end = b
    match = re.fullmatch(pattern + re.escape(original[end:]), variant)
    assert match, (original, variant)
    return {p: w for p, w in zip(positions, match.groups()) if w != original[slice(*spans[p])]}


def test_same_seed_same_output_any_batch_size_or_chunking_and_reference_agrees(assets):
    texts = assets.sentences
    first = assets.augmenter.augment(texts)
    assert [variants[0] for variants in first] == texts
    assert sum(len(v) - 1 for v in first) > len(texts)  # variants were made
    assert all(len(set(v)) == len(v) <= 1 + assets.augmenter.n_a for v in first)
    big_batch = make_augmenter(assets, batch_size=16)
    assert big_batch.augment(texts) == first
    assert (assets.augmenter.augment(texts[:15]) + assets.augmenter.augment(texts[15:], first_index=15)) == first
    assert assets.augmenter.augment_one_mask_per_forward(texts) == first
    assert make_augmenter(assets, seed=1).augment(texts) != first
    assert assets.augmenter.augment(texts, column=1) != first


def test_replacements_come_from_the_mlm_top_k_or_glove_neighbours(assets):
    unit = assets.vectors / np.linalg.norm(assets.vectors, axis=1, keepdims=True)
    predictable = [t for t in VOCAB if not t.startswith(("##", "["))]
    checked = {"mlm": 0, "glove": 0}
    for text, variants in zip(assets.sentences, assets.augmenter.augment(assets.sentences)):
        spans = split_words(text)
        allowed = {}
        for position, (a, b) in enumerate(spans):
            word = text[a:b]
            if not is_candidate(word):
                continue
            if word.lower() in SINGLE:  # explicit forward of the torch model on [CLS] masked [SEP] text [SEP]
                encoded = assets.tokenizer(text[:a] + "[MASK]" + text[b:], text, return_tensors="pt")
                mask = int((encoded["input_ids"][0] == VOCAB.index("[MASK]")).nonzero()[0, 0])
                with torch.no_grad():
                    logits = assets.model(**encoded).logits[0, mask]
                top = assets.tokenizer.convert_ids_to_tokens(torch.topk(logits, K).indices.tolist())
                allowed[position] = {match_case(t, word) for t in top if t in predictable}
            elif word.lower() in assets.glove_words:
                row = assets.glove_words.index(word.lower())
                order = [i for i in np.argsort(-(unit @ unit[row]), kind="stable") if i != row][:K]
                allowed[position] = {match_case(assets.glove_words[i], word) for i in order}
            else:
                allowed[position] = set()
        for variant in variants[1:]:
            for position, new in replaced_words(text, variant).items():
                assert new in allowed[position], (text, variant, position)
                checked["mlm" if text[slice(*spans[position])].lower() in SINGLE else "glove"] += 1
    assert checked["mlm"] > 20 and checked["glove"] > 20


CONTRACTION = re.compile(r"\w+(?:['\u2019]\w+)+")


def test_split_words_keeps_contractions_whole_and_they_are_never_candidates():
    text = "I don't know, it\u2019s rock'n'roll at o'clock 'quoted' dogs' sun."
    words = [text[a:b] for a, b in split_words(text)]
    assert words == ["I", "don't", "know", ",", "it\u2019s", "rock'n'roll", "at", "o'clock", "'", "quoted", "'",
                     "dogs", "'", "sun", "."]
    assert [w for w in words if is_candidate(w)] == ["know", "quoted", "dogs", "sun"]


def test_contractions_are_never_changed_while_other_words_are(assets):
    # Every piece of these is a single WordPiece of the fixture vocabulary (letters are): split at the apostrophe,
    # "t", "s", "ll", ... would be MLM candidates.
    contractions = ["don't", "it's", "we'll", "o'clock", "rock'n'roll", "didn't"]
    rng = np.random.default_rng(5)
    texts = [f"{rng.choice(contractions)} the {' '.join(rng.choice(SINGLE, 3))} {rng.choice(contractions)} ."
             for _ in range(20)]
    changed_words = 0
    for text, variants in zip(texts, assets.augmenter.augment(texts, progress=False)):
        for variant in variants[1:]:
            assert CONTRACTION.findall(variant) == CONTRACTION.findall(text), (text, variant)
            changed = replaced_words(text, variant)
            assert all(text[slice(*split_words(text)[p])] in SINGLE for p in changed), (text, variant)
            changed_words += len(changed)
    assert changed_words > 50


def test_replacement_rate_is_p_t(assets):
    texts = make_sentences(300, MULTI, seed=3)  # GloVe words only: a candidate never equals the word
    for p_t in (0.0, 0.4, 1.0):
        augmenter = make_augmenter(assets, p_t=p_t, n_a=1)
        replaced = positions = 0
        for text, variants in zip(texts, augmenter.augment(texts, progress=False)):
            positions += sum(is_candidate(text[a:b]) for a, b in split_words(text))
            replaced += len(replaced_words(text, variants[1])) if len(variants) > 1 else 0
        assert abs(replaced / positions - p_t) < 0.05, (p_t, replaced / positions)


def test_without_glove_multi_piece_words_never_change_and_the_log_says_so(assets, caplog):
    with caplog.at_level(logging.WARNING):
        augmenter = make_augmenter(assets, glove=False)
    assert sum("without GloVe" in r.getMessage() for r in caplog.records) == 1
    for text, variants in zip(assets.sentences, augmenter.augment(assets.sentences)):
        for variant in variants[1:]:
            changed = replaced_words(text, variant)
            assert changed and all(text[slice(*split_words(text)[p])].lower() in SINGLE for p in changed)


def test_pair_task_round_trip_keeps_labels_and_the_other_column(assets, tmp_path):
    text_a, text_b = assets.sentences[:12], assets.sentences[12:24]
    labels = np.arange(12) % 3
    examples = types.SimpleNamespace(text_a=text_a, text_b=text_b, labels=labels)
    metadata = augment_examples(examples, assets.augmenter, tmp_path / "pairs", chunk_size=5)
    got_a, got_b, got_labels = read_augmented(tmp_path / "pairs")
    a_variants = assets.augmenter.augment(text_a, column=0)
    b_variants = assets.augmenter.augment(text_b, column=1)
    expected = []
    for a, b, label in zip(a_variants, b_variants, labels):
        expected += [(v, b[0], label) for v in a] + [(a[0], v, label) for v in b[1:]]
    assert list(zip(got_a, got_b, got_labels)) == expected
    assert got_labels.dtype == labels.dtype and metadata["count"] == len(expected) and len(metadata["shards"]) > 1
    assert metadata["settings"] == {"k": K, "p_t": 0.4, "n_a": 20, "seed": 0, "max_seq_len": 128,
                                    "mlm": str(assets.root / "mlm"), "glove": str(assets.glove)}

    single = types.SimpleNamespace(text_a=text_a, text_b=None, labels=np.linspace(0, 5, 12, dtype=np.float32))
    augment_examples(single, assets.augmenter, tmp_path / "single")
    got_a, got_b, got_labels = read_augmented(tmp_path / "single")
    assert got_b is None and got_a == [v for variants in a_variants for v in variants]
    assert got_labels.dtype == np.float32
    assert set(got_labels.tolist()) == set(single.labels.tolist())
    with pytest.raises(InputError, match="already exists"):
        augment_examples(single, assets.augmenter, tmp_path / "single")


def test_masked_input_layout_and_truncation():
    pieces = np.arange(10, 20, dtype=np.int32)
    full = masked_lm_input(pieces, 3, 64, 2, 3, 4)
    assert full.ids.tolist() == [2, 10, 11, 12, 4, 14, 15, 16, 17, 18, 19, 3, *range(10, 20), 3]
    assert (full.type_a_length, full.mask_index) == (12, 4)
    cut = masked_lm_input(pieces, 3, 16, 2, 3, 4)  # the original copy is cut
    assert cut.ids.tolist() == [2, 10, 11, 12, 4, 14, 15, 16, 17, 18, 19, 3, 10, 11, 12, 3]
    window = masked_lm_input(pieces, 8, 8, 2, 3, 4)  # the masked copy alone does not fit
    assert window.ids.tolist() == [2, 14, 15, 16, 17, 4, 19, 3] and window.mask_index == 5


def test_bad_glove_files(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("cat 0.1 0.2 0.3\ndog 0.1 0.2 0.3\nfish 0.1 0.2\n")
    with pytest.raises(InputError, match=re.escape(f"{bad}:3") + ".*expected dimension 3"):
        load_glove(bad)
    bad.write_text("cat 0.1 0.2 x\n")
    with pytest.raises(InputError, match=re.escape(f"{bad}:1")):
        load_glove(bad)
    bad.write_text("\n")
    with pytest.raises(InputError, match="empty"):
        load_glove(bad)
    with pytest.raises(InputError, match="not found"):
        load_glove(tmp_path / "missing.txt")
    good = tmp_path / "good.txt"
    good.write_text("a 1 2\n\nb 3 4\nc 5\n")  # blank lines are skipped; the bad line lies past max_words
    words, vectors = load_glove(good, max_words=2)
    assert words == ["a", "b"] and vectors.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_mlm_checkpoint_without_head_is_refused(assets, tmp_path):
    make_hf_model("BertModel", vocab_size=len(VOCAB)).save_pretrained(tmp_path / "encoder")
    assets.tokenizer.save_pretrained(tmp_path / "encoder")
    with pytest.raises(InputError, match="cls.predictions"):
        load_augmenter(str(tmp_path / "encoder"))
    cfg, params = load_hf_bert(str(tmp_path / "encoder"))
    with pytest.raises(InputError, match="masked-LM head"):
        Augmenter(cfg, params, assets.tokenizer)


def test_augment_benchmark_at_tiny_sizes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = run_bench(capsys, "augment", "--teacher=2,32,64,4", "--vocab=400", "--sentences=24", "--seq-len=64",
                       "--augment-batch=8", f"--json={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "same outputs" in result.stdout and "one mask per forward" in result.stdout
    report = json.loads(out.read_text())["augment"]
    assert report["same_outputs"] is True
    numbers = [v for v in report.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert all(np.isfinite(v) and v > 0 for v in numbers)
    assert report["sentences"] == 24 and report["masked_inputs_per_sentence"] > 0


def test_squad_augmentation_keeps_every_answer_at_its_offset(assets, tmp_path):
    """Questions vary freely; contexts vary around their answers, whose starts follow the replaced words (GloVe
    candidates differ in length, so they move); an unanswerable question stays unanswerable."""
    rng = np.random.default_rng(3)
    ids, questions, contexts, answers = [], [], [], []
    for index in range(12):
        before, after = (" ".join(rng.choice(MULTI + SINGLE + STOP, 5)) for _ in range(2))
        answer = str(rng.choice(SINGLE))
        contexts.append(f"{before} {answer} {after}.")
        answers.append([] if index == 0 else [(answer, len(before) + 1)])
        ids.append(f"q{index}")
        questions.append(" ".join(rng.choice(SINGLE + STOP, 4)) + " ?")
    examples = squad.SquadExamples(ids, questions, contexts, answers)
    augment_spans(examples, assets.augmenter, tmp_path / "squad")
    got = read_spans(tmp_path / "squad")
    assert got.ids[0] == "q0" and got.answers[0] == [] and got.contexts[0] == contexts[0]
    by_original = {}
    for name, question, context, gold in zip(got.ids, got.questions, got.contexts, got.answers):
        original = int(name.split("#")[0][1:])
        by_original.setdefault(original, []).append((name, question, context, gold))
        for text, begin in gold:
            assert context[begin:begin + len(text)] == text
        assert len(gold) == len(answers[original])
        if "#q" in name:
            assert context == contexts[original] and gold == answers[original]
        if "#c" in name:
            assert question == questions[original] and context != contexts[original]
    assert set(by_original) == set(range(12))
    moved = [gold[0][1] != answers[int(name.split("#")[0][1:])][0][1] for name, _, _, gold in
             zip(got.ids, got.questions, got.contexts, got.answers) if "#c" in name and gold]
    assert any(moved) and len(got) > 2 * len(examples)


def test_tagged_augmentation_replaces_only_words_tagged_o(assets, tmp_path):
    rng = np.random.default_rng(4)
    words, tags = [], []
    for _ in range(15):
        sentence = [str(w) for w in rng.choice(SINGLE + MULTI + STOP, rng.integers(4, 9))]
        sentence_tags = np.zeros(len(sentence), np.int32)
        sentence_tags[rng.integers(0, len(sentence))] = conll.TAGS.index("B-PER")  # a candidate word: kept
        words.append(sentence)
        tags.append(sentence_tags)
    augment_tagged(conll.TaggedExamples(words, tags), assets.augmenter, tmp_path / "conll")
    got = read_tagged(tmp_path / "conll")
    originals = {" ".join(sentence): (sentence, sentence_tags) for sentence, sentence_tags in zip(words, tags)}
    changed = 0
    assert len(got) > 2 * len(words)
    for variant_words, variant_tags in zip(got.words, got.tags):
        matches = [(sentence, sentence_tags) for sentence, sentence_tags in originals.values()
                   if len(sentence) == len(variant_words) and all(
                       a == b for a, b, tag in zip(sentence, variant_words, sentence_tags) if tag != 0)
                   and np.array_equal(sentence_tags, variant_tags)]
        assert matches, variant_words  # the same tags, every entity word in place
        changed += " ".join(variant_words) not in originals
    assert changed > 0


class Interrupted(Exception):
    pass


def test_interrupted_augmentation_resumes_after_its_last_saved_part(assets, tmp_path, monkeypatch):
    """A run stopped in its third part (a half-written shard left behind) resumes: the saved parts are not
    augmented again, and the output equals an uninterrupted run's."""
    texts = assets.sentences[:26]
    examples = types.SimpleNamespace(text_a=texts, text_b=None, labels=np.arange(26) % 2)
    augment_examples(examples, assets.augmenter, tmp_path / "whole", chunk_size=100)
    calls = []
    original = Augmenter.augment

    def counting(self, texts, *args, **kwargs):
        calls.append(len(texts))
        if len(calls) == 3 and stop_at_third:
            (tmp_path / "out.parts" / "augmented-00002.array_record.tmp").write_bytes(b"half")
            raise Interrupted()
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(Augmenter, "augment", counting)
    stop_at_third = True
    with pytest.raises(Interrupted):
        augment_examples(examples, assets.augmenter, tmp_path / "out", chunk_size=10)
    assert not (tmp_path / "out").exists() and len(list((tmp_path / "out.parts").glob("part-*.json"))) == 2
    stop_at_third, calls[:] = False, []
    metadata = augment_examples(examples, assets.augmenter, tmp_path / "out", chunk_size=10)
    assert calls == [6] and not (tmp_path / "out.parts").exists()  # only the last part (sentences 20..25)
    assert read_augmented(tmp_path / "out")[0] == read_augmented(tmp_path / "whole")[0]
    assert metadata["count"] == len(read_augmented(tmp_path / "whole")[0]) and len(metadata["shards"]) == 3


def test_a_stop_at_any_rename_of_the_assembly_loses_nothing(assets, tmp_path, monkeypatch):
    """Stopped at each rename in turn (parts saved, the output being assembled from them), the run started again
    finishes with the uninterrupted run's output, and without augmenting the saved parts again."""
    texts = assets.sentences[:26]
    examples = types.SimpleNamespace(text_a=texts, text_b=None, labels=np.arange(26) % 2)
    augment_examples(examples, assets.augmenter, tmp_path / "whole", chunk_size=10)
    whole = read_augmented(tmp_path / "whole")
    renames = {"os.replace": os.replace, "os.rename": os.rename}
    stop_at = 0
    while True:
        stop_at += 1
        out, calls = tmp_path / f"out{stop_at}", []

        def counted(name):
            def rename(source, target, **kwargs):
                calls.append(name)
                if len(calls) == stop_at:
                    raise Interrupted()
                return renames[name](source, target, **kwargs)
            return rename

        monkeypatch.setattr(os, "replace", counted("os.replace"))
        monkeypatch.setattr(os, "rename", counted("os.rename"))
        try:
            augment_examples(examples, assets.augmenter, out, chunk_size=10)
            finished = True
        except Interrupted:
            finished = False
        monkeypatch.setattr(os, "replace", renames["os.replace"])
        monkeypatch.setattr(os, "rename", renames["os.rename"])
        if finished:  # stop_at is past the last rename: every one of them has been tried
            break
        saved = len(list(out.with_name(out.name + ".parts").glob("part-*.json")))
        augmented = []
        original = Augmenter.augment
        monkeypatch.setattr(Augmenter, "augment", lambda self, texts, *a, **k: (
            augmented.append(len(texts)), original(self, texts, *a, **k))[1])
        augment_examples(examples, assets.augmenter, out, chunk_size=10)
        monkeypatch.setattr(Augmenter, "augment", original)
        assert read_augmented(out)[0] == whole[0] and read_augmented(out)[2].tolist() == whole[2].tolist()
        assert sum(augmented) == sum([10, 10, 6][saved:]), (stop_at, augmented)  # only the parts not yet saved
        assert not out.with_name(out.name + ".parts").exists()
    assert stop_at > 6  # the renames of three parts and of the assembly were each interrupted once


@pytest.mark.slow
def test_augmentation_killed_mid_chunk_resumes_after_its_last_saved_part(assets, tmp_path):
    texts = make_sentences(30, SINGLE + MULTI, seed=8)
    (tmp_path / "sentences.json").write_text(json.dumps(texts))
    examples = types.SimpleNamespace(text_a=texts, text_b=None, labels=np.arange(30) % 2)
    augment_examples(examples, assets.augmenter, tmp_path / "whole", chunk_size=7)
    command = [sys.executable, "tests/augment_worker.py", str(assets.root / "mlm"), str(assets.glove),
               str(tmp_path / "sentences.json"), str(tmp_path / "out"), "7"]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    killed = subprocess.run(command + ["3"], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    # killed while writing its third part (of 7 sentences): two saved, a half-written shard left behind
    assert len(list((tmp_path / "out.parts").glob("part-*.json"))) == 2 and not (tmp_path / "out").exists()
    assert list((tmp_path / "out.parts").glob("*.tmp"))
    resumed = subprocess.run(command, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "14/30" in resumed.stderr and " 0/30" not in resumed.stderr  # the bar starts at the saved sentences
    assert read_augmented(tmp_path / "out")[0] == read_augmented(tmp_path / "whole")[0]


@pytest.mark.slow
def test_augmentation_is_the_same_on_two_processes_and_on_four_devices(assets, tmp_path):
    """Two processes on 127.0.0.1 (two devices each), each augmenting its share of the parts, and one process
    with four devices give the records of one process on one device."""
    texts = make_sentences(30, SINGLE + MULTI, seed=7)
    (tmp_path / "sentences.json").write_text(json.dumps(texts))
    examples = types.SimpleNamespace(text_a=texts, text_b=None, labels=np.arange(30) % 2)
    augment_examples(examples, assets.augmenter, tmp_path / "one", chunk_size=7)
    args = [str(assets.root / "mlm"), str(assets.glove), str(tmp_path / "sentences.json")]

    def worker(out, devices, env):
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags, "PYTHONPATH": os.getcwd(), **env}
        return subprocess.Popen([sys.executable, "tests/augment_worker.py", *args, str(tmp_path / out), "7"],
                                env=env, stderr=subprocess.PIPE, text=True)

    port = 12400 + os.getpid() % 500
    cluster = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2"}
    runs = [worker("two", 2, {**cluster, "JAX_PROCESS_ID": str(i)}) for i in range(2)] + [worker("four", 4, {})]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr[-3000:]
    expected = read_augmented(tmp_path / "one")
    for out in ("two", "four"):
        got = read_augmented(tmp_path / out)
        assert got[0] == expected[0] and np.array_equal(got[2], expected[2])
    assert len(expected[0]) > 60
