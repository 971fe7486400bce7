"""GloVe word vectors and nearest-neighbour search on the accelerator (TinyBERT DA's source for multi-piece words).

A GloVe text file has one word per line followed by its vector: `word v1 ... vd`. TinyBERT uses the first
100k words (the most frequent: GloVe files are sorted by frequency).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from tinybert_jax.errors import InputError

DEFAULT_MAX_WORDS = 100_000
# word2vec and fastText .vec files start with a `count dimension` line, which reads as a word with one value.
_HEADER_HINT = "; if line 1 is a word2vec/fastText header (`count dimension`), remove it"


def load_glove(path: str | Path, max_words: int = DEFAULT_MAX_WORDS) -> tuple[list[str], np.ndarray]:
    """(words, float32 [len(words), dim] vectors) from the first `max_words` lines of a GloVe text file.

    The dimension is the first line's; any line with another count of numbers is an InputError naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"GloVe file {path} not found; give a GloVe text file (`word v1 ... vd` per line)")
    words: list[str] = []
    rows: list[np.ndarray] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_number, line in enumerate(f, 1):
            if len(words) == max_words:
                break
            if not line.strip():
                continue
            word, *values = line.rstrip("\n").rstrip(" ").split(" ")
            if not values:
                raise InputError(f"{path}:{line_number}: expected `word v1 ... vd`, found no vector")
            if rows and len(values) != len(rows[0]):
                raise InputError(f"{path}:{line_number}: {len(values)} values after the word, expected dimension "
                                 f"{len(rows[0])} (the first line's){_HEADER_HINT if len(rows[0]) == 1 else ''}")
            rows.append(_vector(path, line_number, word, values))
            words.append(word)
    if not words:
        raise InputError(f"GloVe file {path} is empty")
    return words, np.stack(rows)


def _vector(path: Path, line_number: int, word: str, values: list[str]) -> np.ndarray:
    try:
        vector = np.asarray(values, dtype=np.float32)
    except ValueError:
        vector = None
    if vector is None or not np.isfinite(vector).all():
        bad = next(value for value in values if not _is_finite_number(value))
        raise InputError(f"{path}:{line_number}: the vector of {word!r} has the value {bad!r}; every value after "
                         f"the word must be a finite number")
    return vector


def _is_finite_number(text: str) -> bool:
    try:
        return bool(np.isfinite(np.float32(text)))
    except ValueError:
        return False


@functools.partial(jax.jit, static_argnames="count")
def _nearest_ids(unit_vectors: jax.Array, query_rows: jax.Array, count: int) -> jax.Array:
    """[queries, count] row ids by descending cosine similarity (the query word itself is usually first)."""
    similarity = unit_vectors[query_rows] @ unit_vectors.T
    return jax.lax.top_k(similarity, count)[1]


class GloveIndex:
    """Unit-normalised vectors on the device; nearest neighbours of many words per matrix product."""

    def __init__(self, words: list[str], vectors: np.ndarray):
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.words = words
        # setdefault: a word listed twice keeps its first (more frequent) vector
        self._row: dict[str, int] = {}
        for row, word in enumerate(words):
            self._row.setdefault(word, row)
        self._unit_vectors = jax.device_put(vectors / np.maximum(norms, 1e-12))  # zero vectors stay zero

    def row(self, word: str) -> Optional[int]:
        """The word's row: the exact word, else its lower case (GloVe 6B is lower-cased), else None."""
        row = self._row.get(word)
        return self._row.get(word.lower()) if row is None else row

    def neighbours(self, rows: list[int], k: int, batch: int) -> list[list[str]]:
        """The k nearest words of each row's word (itself excluded), `batch` queries per device call.

        The last call is padded to `batch` queries, so the search compiles once per batch size.
        """
        count = min(k + 1, len(self.words))
        found: list[list[str]] = []
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            padded = np.zeros(batch, np.int32)
            padded[:len(chunk)] = chunk
            ids = np.asarray(_nearest_ids(self._unit_vectors, padded, count))
            found += [[self.words[i] for i in row_ids if i != row][:k] for row, row_ids in zip(chunk, ids)]
        return found
