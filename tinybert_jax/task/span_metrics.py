"""SQuAD v1.1 / v2.0 evaluation from a span model's start/end logits, in plain numpy.

Answers are compared the way the official SQuAD scripts do: after `normalize_answer`, exact match is string
equality and F1 is the overlap of whitespace tokens, each the maximum over an example's gold answers. The two
versions' scripts differ when a side normalises to no tokens (e.g. "the"): v1.1's F1 is 0.0 without a common token,
v2.0 takes an empty side for a no-answer, 1.0 exactly when both are empty. An example with no gold answers
(`golds == []`, SQuAD 2.0's unanswerable questions) scores 1.0 exactly when the prediction is the empty string: a
non-empty span is a wrong answer even if it normalises to nothing, which is also what the official threshold search
assumes.

Scores are fractions in [0, 1], not percentages.
"""
from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
# Stands for "no valid span" in null margins: finite so that margins still sort and serialise.
NO_SPAN_MARGIN = 1e9


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the as whole words, collapse whitespace (in this order,
    as the official script does: "the-end" loses its hyphen before the article test sees "theend")."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: list[str]) -> float:
    if not golds:
        return float(prediction == "")
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(gold) for gold in golds))


def _token_f1(prediction_tokens: list[str], gold_tokens: list[str], with_no_answer: bool) -> float:
    if with_no_answer and (not prediction_tokens or not gold_tokens):
        return float(prediction_tokens == gold_tokens)
    common = sum((Counter(prediction_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, golds: list[str], *, with_no_answer: bool) -> float:
    """Token F1 by the v2.0 script when `with_no_answer`, else by v1.1's (they differ on empty sides)."""
    if not golds:
        return float(prediction == "")
    tokens = normalize_answer(prediction).split()
    return max(_token_f1(tokens, normalize_answer(gold).split(), with_no_answer) for gold in golds)


def best_spans(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray, example_index: np.ndarray,
               contexts: list[str], n_best: int = 20, max_answer_len: int = 30) -> tuple[list[str], np.ndarray]:
    """(answer text per example, null margin per example) from the logits [F, T] of F windows over E examples.

    A candidate span (s, e) of a window has s among the `n_best` highest start logits of the window's context
    tokens (offset != -1) and e among their `n_best` highest end logits, s <= e and at most `max_answer_len`
    tokens; its score is start[s] + end[e]. The n best are taken among context tokens only, not over all T
    positions as BERT's reference code does, because padding and question positions must not take candidate
    slots: a bucketed forward leaves 0.0 past its bucket length, above a trained model's mostly negative context
    logits, so the decode would change with the buckets. The example's answer is the best candidate over all its
    windows (the first window on ties), cut from the context by the character offsets, or "" when no window has a
    candidate.

    The null margin is the example's smallest [CLS] score start[0] + end[0] over its windows minus its best span
    score: the higher, the more the model believes there is no answer (`NO_SPAN_MARGIN` without a candidate).
    """
    start = np.asarray(start_logits, np.float64)
    end = np.asarray(end_logits, np.float64)
    offsets = np.asarray(offsets)
    example_index = np.asarray(example_index)
    windows, length = start.shape
    if end.shape != start.shape or offsets.shape != (windows, length, 2) or example_index.shape != (windows,):
        raise ValueError(f"shapes disagree: start {start.shape}, end {end.shape}, offsets {offsets.shape}, "
                         f"example_index {example_index.shape}")
    examples = len(contexts)
    k = min(n_best, length)
    rows = np.arange(windows)[:, None]
    is_context = offsets[..., 0] != -1  # [F, T]
    context_start = np.where(is_context, start, -np.inf)
    context_end = np.where(is_context, end, -np.inf)
    # The k best context positions of each window, unordered: ranking among them is done by the full score below.
    # A window with fewer than k context tokens fills the rest with -inf positions, which score no span.
    top_start = np.argpartition(-context_start, k - 1, axis=1)[:, :k]  # [F, k]
    top_end = np.argpartition(-context_end, k - 1, axis=1)[:, :k]
    score = context_start[rows, top_start][:, :, None] + context_end[rows, top_end][:, None, :]  # [F, k, k]
    span_tokens = top_end[:, None, :] - top_start[:, :, None] + 1
    valid = (span_tokens >= 1) & (span_tokens <= max_answer_len)
    score = np.where(valid, score, -np.inf).reshape(windows, k * k)
    window_best = np.argmax(score, axis=1)
    window_score = score[np.arange(windows), window_best]
    best_start = top_start[np.arange(windows), window_best // k]
    best_end = top_end[np.arange(windows), window_best % k]

    example_score = np.full(examples, -np.inf)
    np.maximum.at(example_score, example_index, window_score)
    null_score = np.full(examples, np.inf)
    np.minimum.at(null_score, example_index, start[:, 0] + end[:, 0])

    answers = [""] * examples
    # Windows reaching their example's best (finite) score, in window order: the first per example wins.
    reaching = np.flatnonzero((window_score == example_score[example_index]) & np.isfinite(window_score))
    chosen_examples, first = np.unique(example_index[reaching], return_index=True)
    for example, window in zip(chosen_examples.tolist(), reaching[first].tolist()):
        s, e = best_start[window], best_end[window]
        answers[example] = contexts[example][offsets[window, s, 0]:offsets[window, e, 1]]
    has_span = np.isfinite(example_score)
    null_margin = np.where(has_span, null_score - np.where(has_span, example_score, 0.0), NO_SPAN_MARGIN)
    return answers, null_margin


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def _best_threshold(gains: np.ndarray, null_margin: np.ndarray, base: float) -> float:
    """The threshold maximising base + the sum of gains over examples with null_margin <= threshold, i.e. the
    official "best_f1_thresh" search: candidates are one value below all margins (every example answers "") and
    each distinct margin, tried in increasing order, a later one winning only when strictly better. Tied margins
    switch together, since no threshold separates them."""
    order = np.argsort(null_margin, kind="stable")
    margins = null_margin[order]
    totals = base + np.cumsum(gains[order])
    group_last = np.append(margins[1:] != margins[:-1], True)
    candidates = np.concatenate([[margins[0] - 1.0], margins[group_last]])
    totals = np.concatenate([[base], totals[group_last]])
    return float(candidates[np.argmax(totals)])  # argmax: the first (lowest) of equal maxima


def squad_scores(predictions: list[str], null_margin: np.ndarray, golds: list[list[str]],
                 with_no_answer: bool) -> dict[str, float]:
    """SQuAD v1.1 ({"exact_match", "f1"} of the predictions as they are, F1 by the v1.1 script) or v2.0 scores.

    v2.0: an example is answered "" when its null margin exceeds a threshold chosen on these examples to maximise
    the total F1 (see `_best_threshold`); exact match and F1 overall, and F1 over the answerable (golds != []) and
    unanswerable examples (0.0 for an empty group), are all measured at that threshold.
    """
    count = len(predictions)
    if len(golds) != count:
        raise ValueError(f"{count} predictions but {len(golds)} gold answer lists")
    if not with_no_answer:
        return {"exact_match": _mean([exact_match(p, g) for p, g in zip(predictions, golds)]),
                "f1": _mean([f1(p, g, with_no_answer=False) for p, g in zip(predictions, golds)])}
    null_margin = np.asarray(null_margin, np.float64)
    if null_margin.shape != (count,):
        raise ValueError(f"null_margin has shape {null_margin.shape}, expected [{count}]")
    if count == 0:
        return dict.fromkeys(["exact_match", "f1", "no_answer_threshold", "has_answer_f1", "no_answer_f1"], 0.0)
    abstain_f1 = np.array([f1("", g, with_no_answer=True) for g in golds])
    gains = np.array([f1(p, g, with_no_answer=True) for p, g in zip(predictions, golds)]) - abstain_f1
    threshold = _best_threshold(gains, null_margin, float(abstain_f1.sum()))
    final = ["" if margin > threshold else p for p, margin in zip(predictions, null_margin.tolist())]
    f1s = np.array([f1(p, g, with_no_answer=True) for p, g in zip(final, golds)])
    answerable = np.array([bool(g) for g in golds])
    return {"exact_match": float(np.mean([exact_match(p, g) for p, g in zip(final, golds)])),
            "f1": float(f1s.mean()),
            "no_answer_threshold": threshold,
            "has_answer_f1": float(f1s[answerable].mean()) if answerable.any() else 0.0,
            "no_answer_f1": float(f1s[~answerable].mean()) if (~answerable).any() else 0.0}
