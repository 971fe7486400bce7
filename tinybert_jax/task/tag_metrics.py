"""Entity-level scores for sequence tagging (NER), and per-word tags from a token classifier's logits.

Entities are read from the tag sequences by seqeval's default (conlleval-compatible) rules, which accept both
IOB1 and IOB2: an I- tag after O or after another type starts an entity, and a B- tag always does. Precision,
recall and F1 are micro-averaged over entities (an entity counts only if its type and both ends match); accuracy
is per word.
"""
from __future__ import annotations

import warnings

import numpy as np
from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """{"f1", "precision", "recall", "accuracy"} of predicted tag sequences against gold ones, sentence by
    sentence; precision (recall) is 0.0 when nothing is predicted (in the gold)."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    for i, (gold_tags, predicted_tags) in enumerate(zip(gold, predicted)):
        if len(gold_tags) != len(predicted_tags):
            raise ValueError(f"sentence {i} has {len(gold_tags)} gold tags but {len(predicted_tags)} predicted")
    with warnings.catch_warnings():
        # seqeval warns when a ratio is 0/0 (no entities predicted or in the gold) and returns 0.0, as documented.
        warnings.simplefilter("ignore")
        return {"f1": float(f1_score(gold, predicted)), "precision": float(precision_score(gold, predicted)),
                "recall": float(recall_score(gold, predicted)), "accuracy": float(accuracy_score(gold, predicted))}


def word_predictions(logits: np.ndarray, word_positions: np.ndarray, word_counts: list[int],
                     tags: tuple[str, ...]) -> list[list[str]]:
    """The argmax tag of each word, read at the word's first WordPiece: logits [N, T, C], word_positions [N, W]
    (-1 for a word without a position, cut off by truncation or without pieces, which is predicted "O"), and the
    number of words of each sentence (positions beyond it are ignored)."""
    logits, word_positions = np.asarray(logits), np.asarray(word_positions)
    sentences, _, classes = logits.shape
    if len(tags) != classes:
        raise ValueError(f"{len(tags)} tags but logits have {classes} classes")
    if word_positions.shape[0] != sentences or len(word_counts) != sentences:
        raise ValueError(f"{sentences} sentences of logits, {word_positions.shape[0]} of word positions, "
                         f"{len(word_counts)} word counts")
    if any(count > word_positions.shape[1] for count in word_counts):
        raise ValueError(f"a word count exceeds the {word_positions.shape[1]} word positions")
    token_tags = np.argmax(logits, axis=-1)  # [N, T]
    word_tags = np.take_along_axis(token_tags, np.maximum(word_positions, 0), axis=1)
    named = np.array(tags, dtype=object)[word_tags]
    named[word_positions < 0] = "O"
    return [named[i, :count].tolist() for i, count in enumerate(word_counts)]
