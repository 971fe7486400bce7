"""SQuAD span metrics and NER entity metrics against hand-checked cases and independent re-implementations."""
import re
import string
from collections import Counter

import numpy as np
import pytest
from seqeval.metrics import classification_report

from tinybert_jax.task.span_metrics import NO_SPAN_MARGIN, best_spans, exact_match, f1, normalize_answer, squad_scores
from tinybert_jax.task.tag_metrics import entity_scores, word_predictions


@pytest.mark.parametrize("text, expected", [
    ("The Cat", "cat"), ("  An  apple,\ta day!\n", "apple day"), ("theater anthem", "theater anthem"),
    ("Hello, World.", "hello world"), ("the-end", "theend"), ("A.B.C.", "abc"), ("THE", ""), ("", ""),
    ("the a an", ""), ("it's 1,000 (one)", "its 1000 one")])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("with_no_answer", [False, True])
def test_exact_match_and_f1_hand_checked(with_no_answer):
    assert exact_match("The Cat!", ["cat"]) == 1.0
    assert exact_match("cat", ["dog", "a cat."]) == 1.0
    assert exact_match("cats", ["cat"]) == 0.0
    version = {"with_no_answer": with_no_answer}
    assert f1("the cat sat", ["cat sat on mat"], **version) == pytest.approx(2 / 3)  # P = 1, R = 1/2
    assert f1("cat cat cat", ["cat"], **version) == pytest.approx(0.5)  # each gold token overlaps once: P = 1/3
    assert f1("black cat", ["dog", "a black cat sat", "cat"], **version) == pytest.approx(max(0, 0.8, 2 / 3))
    assert f1("dog", ["cat"], **version) == 0.0


@pytest.mark.parametrize("with_no_answer", [False, True])
def test_f1_of_answers_normalising_to_nothing_follows_the_version(with_no_answer):
    # v1.1 scores F1 by common tokens, none when a side is empty; v2.0 counts an empty side as a no-answer, right
    # exactly when both are. Exact match is normalised equality in both.
    both_empty = 1.0 if with_no_answer else 0.0
    assert f1("the", ["a"], with_no_answer=with_no_answer) == both_empty
    assert f1("", ["a"], with_no_answer=with_no_answer) == both_empty
    assert f1("the", ["a", "dog"], with_no_answer=with_no_answer) == both_empty
    assert exact_match("the", ["a"]) == 1.0 and exact_match("", ["a"]) == 1.0
    assert f1("the", ["cat"], with_no_answer=with_no_answer) == 0.0
    assert f1("cat", ["the"], with_no_answer=with_no_answer) == 0.0
    scores = squad_scores(["the", "the cat"], np.zeros(2), [["a"], ["cat"]], with_no_answer=with_no_answer)
    assert scores["exact_match"] == 1.0 and scores["f1"] == (1.0 if with_no_answer else 0.5)


def test_no_answer_golds_need_the_empty_prediction():
    assert exact_match("", []) == 1.0 and f1("", [], with_no_answer=True) == 1.0
    assert exact_match("cat", []) == 0.0 and f1("cat", [], with_no_answer=True) == 0.0
    # a span, even one that normalises to nothing
    assert exact_match("the", []) == 0.0 and f1("the", [], with_no_answer=True) == 0.0


def _reference_normalize(s):
    s = s.lower().translate(str.maketrans("", "", string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _reference_f1(prediction, gold, with_no_answer):
    """The official scripts' F1: v1.1 from common token counts alone, v2.0 first 1 or 0 when either side is
    empty, as int(gold_toks == pred_toks)."""
    p, g = _reference_normalize(prediction).split(), _reference_normalize(gold).split()
    if with_no_answer and (len(p) == 0 or len(g) == 0):
        return int(p == g)
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("with_no_answer", [False, True])
def test_f1_and_exact_match_match_reference_on_random_pairs(with_no_answer):
    rng = np.random.default_rng(0)
    words = ["the", "The", "a", "An", "cat", "Cat.", "dog", "dog,", "theater", "an-", "(1,000)", "1000", "x",
             "  ", "!", "sat", "mat's", "mats"]

    def phrase():
        return " ".join(rng.choice(words, rng.integers(0, 6)))

    for _ in range(200):
        prediction, golds = phrase(), [phrase() for _ in range(rng.integers(1, 4))]
        assert f1(prediction, golds, with_no_answer=with_no_answer) == pytest.approx(
            max(_reference_f1(prediction, g, with_no_answer) for g in golds))
        expected_em = max(float(_reference_normalize(prediction) == _reference_normalize(g)) for g in golds)
        assert exact_match(prediction, golds) == expected_em


# One window of 8 tokens: [CLS] q q [SEP] then context tokens 4..7 covering "abcd" one character each.
CONTEXT = "abcd"
OFFSETS = np.array([[-1, -1]] * 4 + [[i, i + 1] for i in range(4)])


def _logits(start_at, end_at, cls=0.0):
    start, end = np.zeros(8), np.zeros(8)
    start[0] = end[0] = cls
    for position, value in start_at.items():
        start[position] = value
    for position, value in end_at.items():
        end[position] = value
    return start[None], end[None]


def _one_window(start, end, **kwargs):
    answers, margin = best_spans(start, end, OFFSETS[None], np.array([0]), [CONTEXT], **kwargs)
    return answers[0], float(margin[0])


def test_best_span_simple_and_null_margin():
    start, end = _logits({5: 3.0}, {6: 2.0}, cls=1.5)
    answer, margin = _one_window(start, end)
    assert answer == "bc"
    assert margin == pytest.approx(3.0 - 5.0)  # [CLS] 1.5 + 1.5 minus span 3 + 2


def test_best_span_respects_max_answer_len():
    start, end = _logits({4: 5.0, 6: 1.0}, {7: 5.0})
    assert _one_window(start, end, max_answer_len=4)[0] == "abcd"
    assert _one_window(start, end, max_answer_len=3)[0] == "cd"  # 4..7 is 4 tokens; 6..7 scores 6


def test_best_span_excludes_end_before_start():
    start, end = _logits({6: 5.0, 4: 1.0}, {5: 5.0})
    assert _one_window(start, end)[0] == "ab"  # 6..5 would score 10


def test_best_span_excludes_non_context_tokens():
    start, end = _logits({2: 9.0, 3: 9.0, 5: 1.0}, {3: 9.0, 7: 1.0}, cls=9.0)
    answer, margin = _one_window(start, end)
    assert answer == "bcd"
    assert margin == pytest.approx(18.0 - 2.0)


def test_best_span_restricted_to_n_best_context_tokens():
    # The question tokens' 9.0 takes no slot. Context starts rank 6, 4, 5, 7 and ends 4, 5, 7, 6: the best span
    # 6..7 needs the third end, 4..4 the second start, and the first start and end make no span.
    start, end = _logits({1: 9.0, 2: 9.0, 4: -2.0, 5: -3.0, 6: 3.0, 7: -4.0},
                         {1: 9.0, 3: 9.0, 4: 2.0, 5: 1.5, 6: -3.0, 7: -1.0})
    assert _one_window(start, end, n_best=3) == ("cd", pytest.approx(0.0 - 2.0))
    assert _one_window(start, end, n_best=2) == ("a", pytest.approx(0.0 - 0.0))
    assert _one_window(start, end, n_best=1) == ("", NO_SPAN_MARGIN)


# One window of 48 positions: [CLS] q q [SEP], context "abcdefgh" at 4..11, [SEP] at 12; its real length 13 puts it
# in the bucket of 16, past which a bucketed forward leaves 0.0.
PADDED_OFFSETS = np.array([[-1, -1]] * 4 + [[i, i + 1] for i in range(8)] + [[-1, -1]] * 36)
REAL_LENGTH, BUCKET_LENGTH = 13, 16
# A trained model's context logits are mostly negative, its [CLS] (here -8 each) and question logits lower.
CROWDED_OUT = ([-4.0, -2.0, -5.0, -3.0, -6.0, -4.0, -5.0, -6.0], [-6.0, -5.0, -3.0, -1.5, -4.0, -5.0, -6.0, -6.0])
START_AFTER_END = ([-4.0, -3.0, -5.0, -5.0, -6.0, -1.0, -5.0, -6.0], [-6.0, -5.0, -1.0, -5.0, -2.5, -5.0, -6.0, -6.0])


def _padded_window(context_logits, padding):
    """Start or end logits [1, 48] of the window: -8 at the special, question and padding tokens of a forward at
    fixed padding, 0.0 past the bucket length in a bucketed one, or any values outside the context."""
    logits = np.full(48, -8.0)
    logits[4:12] = context_logits
    if padding == "bucketed":
        logits[BUCKET_LENGTH:] = 0.0
    elif padding == "arbitrary":
        outside = PADDED_OFFSETS[:, 0] == -1
        outside[0] = False  # [CLS]: the null score
        logits[outside] = np.random.default_rng(5).normal(size=39) * 10
    return logits[None]


@pytest.mark.parametrize("padding", ["fixed", "bucketed", "arbitrary"])
@pytest.mark.parametrize("context_logits, answer, score", [(CROWDED_OUT, "bcd", -3.5), (START_AFTER_END, "bc", -4.0)])
def test_best_span_ignores_logits_outside_the_context(padding, context_logits, answer, score):
    # START_AFTER_END: its best start, 9, lies after its best end, 6; the best span with s <= e is 5..6.
    start, end = (_padded_window(values, padding) for values in context_logits)
    answers, margin = best_spans(start, end, PADDED_OFFSETS[None], np.array([0]), ["abcdefgh"])
    assert answers == [answer]
    np.testing.assert_allclose(margin, [-16.0 - score])


def test_best_span_across_overlapping_windows():
    # Context "abcdef"; window 0 covers "abcd" (tokens 4..7), window 1 covers "cdef". Example 1 has one window.
    contexts = ["abcdef", "xyzw"]
    offsets = np.array([OFFSETS, [[-1, -1]] * 4 + [[i, i + 1] for i in range(2, 6)], OFFSETS])
    start, end = np.zeros((3, 8)), np.zeros((3, 8))
    start[0, 5], end[0, 6] = 2.0, 2.0  # "bc", 4
    start[1, 6], end[1, 7] = 3.0, 2.5  # window 1 tokens 6..7 are "ef", 5.5
    start[:, 0], end[:, 0] = [1.0, 0.5, 4.0], [1.0, 0.0, 4.0]  # [CLS] scores 2, 0.5, 8
    start[2, 7], end[2, 7] = 1.0, 1.0  # "w", 2
    answers, margin = best_spans(start, end, offsets, np.array([0, 0, 1]), contexts)
    assert answers == ["ef", "w"]
    np.testing.assert_allclose(margin, [0.5 - 5.5, 8.0 - 2.0])


def _brute_force_spans(start, end, offsets, example_index, contexts, n_best, max_answer_len):
    best = {}
    for w in range(len(start)):
        context = np.flatnonzero(offsets[w, :, 0] != -1)
        starts = context[np.argsort(-start[w, context], kind="stable")[:n_best]]
        ends = context[np.argsort(-end[w, context], kind="stable")[:n_best]]
        for s in starts:
            for e in ends:
                if e < s or e - s + 1 > max_answer_len:
                    continue
                score = start[w, s] + end[w, e]
                example = example_index[w]
                if example not in best or score > best[example][0]:
                    best[example] = (score, contexts[example][offsets[w, s, 0]:offsets[w, e, 1]])
    return best


def test_best_spans_match_brute_force_on_random_windows():
    rng = np.random.default_rng(1)
    windows, tokens = 40, 24
    example_index = np.sort(np.concatenate([np.arange(15), rng.integers(0, 15, windows - 15)]))
    contexts = ["".join(rng.choice(list("abcdefgh"), 30)) for _ in range(15)]
    offsets = np.full((windows, tokens, 2), -1)
    for w in range(windows):
        first, stride = int(rng.integers(2, 10)), int(rng.integers(0, 10))
        for t in range(first, tokens - 1):
            character = stride + t - first
            if character < 30:
                offsets[w, t] = [character, character + 1]
    start, end = rng.normal(size=(2, windows, tokens))  # continuous: no ties
    for n_best, max_answer_len in [(5, 4), (tokens, 30), (3, 1)]:
        answers, margin = best_spans(start, end, offsets, example_index, contexts, n_best, max_answer_len)
        expected = _brute_force_spans(start, end, offsets, example_index, contexts, n_best, max_answer_len)
        for example in range(15):
            cls = min(start[w, 0] + end[w, 0] for w in np.flatnonzero(example_index == example))
            if example in expected:
                assert answers[example] == expected[example][1]
                assert margin[example] == pytest.approx(cls - expected[example][0])
            else:
                assert answers[example] == "" and margin[example] == NO_SPAN_MARGIN


def test_best_spans_agree_between_fixed_padding_and_buckets():
    """Windows of different real lengths decoded from a forward at fixed padding, from a bucketed one (0.0 past each
    window's bucket of a multiple of 8) and with any other values outside the context: equal answers and margins."""
    rng = np.random.default_rng(4)
    windows, tokens, examples = 30, 48, 15
    example_index = np.arange(windows) // 2
    contexts = ["".join(rng.choice(list("abcdefgh"), 40)) for _ in range(examples)]
    lengths = rng.integers(8, tokens + 1, windows)
    offsets = np.full((windows, tokens, 2), -1)
    for w, length in enumerate(lengths):  # [CLS] q q q [SEP] context [SEP]
        offsets[w, 5:length - 1] = np.stack([np.arange(length - 6), np.arange(1, length - 5)], axis=-1)
    start, end = rng.normal(size=(2, windows, tokens)) - 4.0
    inside_bucket = np.arange(tokens) < (-(-lengths // 8) * 8)[:, None]
    outside_context = offsets[..., 0] == -1
    outside_context[:, 0] = False  # [CLS]: the null score
    fixed = best_spans(start, end, offsets, example_index, contexts)
    assert all(fixed[0]) and np.all(fixed[1] < NO_SPAN_MARGIN)  # every window has context tokens
    for other in (np.where(inside_bucket, start, 0.0), np.where(inside_bucket, end, 0.0)), (
            np.where(outside_context, rng.normal(size=start.shape) * 10, start),
            np.where(outside_context, rng.normal(size=end.shape) * 10, end)):
        answers, margin = best_spans(*other, offsets, example_index, contexts)
        assert answers == fixed[0]
        np.testing.assert_array_equal(margin, fixed[1])


def test_squad_v1_scores_average_the_predictions():
    scores = squad_scores(["the cat", "dog", ""], np.zeros(3), [["cat"], ["a dog sat"], ["x"]], with_no_answer=False)
    assert scores == pytest.approx({"exact_match": 1 / 3, "f1": (1 + 2 * (1 / 2) / 1.5 + 0) / 3})


def test_squad_v2_hand_checked():
    predictions = ["cat", "dog", "mouse"]
    golds = [["cat"], [], ["a mouse sat"]]  # span F1 1, -1 (no answer), 2/3
    margin = np.array([0.0, 1.0, 2.0])
    scores = squad_scores(predictions, margin, golds, with_no_answer=True)
    # Thresholds -1, 0, 1, 2 give totals 1, 2, 1, 5/3: best at 0, where only "cat" is answered.
    assert scores == pytest.approx({"exact_match": 2 / 3, "f1": 2 / 3, "no_answer_threshold": 0.0,
                                    "has_answer_f1": 0.5, "no_answer_f1": 1.0})


def test_squad_v2_tied_margins_switch_together():
    # At margin 0 a right answer (+1) comes first, then two spans on unanswerable questions (-1 each): stopping
    # after the first is no threshold, so the best is to answer nothing (total 2 of 4).
    predictions, golds = ["cat", "x", "y", "dog"], [["cat"], [], [], ["dog sat"]]
    scores = squad_scores(predictions, np.array([0.0, 0.0, 0.0, 1.0]), golds, with_no_answer=True)
    assert scores == pytest.approx({"exact_match": 0.5, "f1": 0.5, "no_answer_threshold": -1.0,
                                    "has_answer_f1": 0.0, "no_answer_f1": 1.0})


def test_squad_v2_threshold_is_best_over_all_candidates():
    rng = np.random.default_rng(2)
    vocabulary = ["cat", "dog", "a mouse", "the big cat", "sat", ""]
    for _ in range(20):
        count = 50
        predictions = list(rng.choice(vocabulary, count))
        golds = [[] if rng.random() < 0.4 else list(rng.choice(vocabulary[:-1], rng.integers(1, 3)))
                 for _ in range(count)]
        margin = np.round(rng.normal(size=count), 1)  # rounding makes ties
        scores = squad_scores(predictions, margin, golds, with_no_answer=True)

        def f1_at(threshold):
            return np.mean([f1("" if m > threshold else p, g, with_no_answer=True)
                            for p, m, g in zip(predictions, margin, golds)])

        candidates = sorted(set(margin.tolist())) + [margin.min() - 1.0]
        best = max(f1_at(t) for t in candidates)
        assert scores["f1"] == pytest.approx(best)
        assert f1_at(scores["no_answer_threshold"]) == pytest.approx(best)
        final = ["" if m > scores["no_answer_threshold"] else p for p, m in zip(predictions, margin)]
        assert scores["exact_match"] == pytest.approx(np.mean([exact_match(p, g) for p, g in zip(final, golds)]))
        answerable = [bool(g) for g in golds]
        assert scores["has_answer_f1"] == pytest.approx(
            np.mean([f1(p, g, with_no_answer=True) for p, g, a in zip(final, golds, answerable) if a]))
        assert scores["no_answer_f1"] == pytest.approx(
            np.mean([f1(p, g, with_no_answer=True) for p, g, a in zip(final, golds, answerable) if not a]))


def test_entity_scores_iob2_hand_counted():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    # Gold PER, LOC, ORG; predicted PER, ORG (wrong type), ORG: 2 of 3 each way; 5 of 6 tags.
    assert entity_scores(gold, predicted) == pytest.approx(
        {"f1": 2 / 3, "precision": 2 / 3, "recall": 2 / 3, "accuracy": 5 / 6})


def test_entity_scores_iob1_hand_counted():
    gold = [["I-PER", "I-PER", "O", "I-LOC", "B-LOC"], ["I-MISC", "I-ORG"]]
    predicted = [["I-PER", "I-PER", "O", "I-LOC", "I-LOC"], ["I-MISC", "I-ORG"]]
    # Gold: PER 0-1, LOC 3, LOC 4 (B- splits), MISC, ORG (a type change splits); predicted: PER, LOC 3-4, MISC, ORG.
    precision, recall = 3 / 4, 3 / 5
    assert entity_scores(gold, predicted) == pytest.approx({"f1": 2 * precision * recall / (precision + recall),
                                                            "precision": precision, "recall": recall,
                                                            "accuracy": 6 / 7})


def test_entity_scores_agree_with_classification_report():
    rng = np.random.default_rng(3)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
    gold = [list(rng.choice(tags, rng.integers(1, 12))) for _ in range(50)]
    predicted = [[t if rng.random() < 0.7 else str(rng.choice(tags)) for t in sentence] for sentence in gold]
    report = classification_report(gold, predicted, output_dict=True)["micro avg"]
    scores = entity_scores(gold, predicted)
    assert scores["precision"] == pytest.approx(report["precision"])
    assert scores["recall"] == pytest.approx(report["recall"])
    assert scores["f1"] == pytest.approx(report["f1-score"])
    assert 0 < scores["f1"] < 1


def test_entity_scores_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="sentences"):
        entity_scores([["O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="sentence 1"):
        entity_scores([["O"], ["O", "B-PER"]], [["O"], ["O"]])


def test_word_predictions_reads_first_pieces_and_cut_off_words_are_o():
    tags = ("O", "B-X", "I-X")
    logits = np.zeros((2, 5, 3))
    argmax = [[1, 0, 2, 1, 2], [1, 2, 0, 1, 0]]  # position 0 is never "O", so reading it for -1 would show
    for i, row in enumerate(argmax):
        logits[i, np.arange(5), row] = 1.0
    positions = np.array([[1, 2, -1, 4], [3, -1, -1, -1]], np.int32)
    assert word_predictions(logits, positions, [4, 2], tags) == [["O", "I-X", "O", "I-X"], ["B-X", "O"]]
    assert word_predictions(logits, positions, [2, 0], tags) == [["O", "I-X"], []]
