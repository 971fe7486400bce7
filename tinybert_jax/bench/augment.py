"""`augment`: TinyBERT data augmentation, batched Augmenter vs one masked input per forward (the original's way).

Both run the same algorithm on the same corpus sentences with the same MLM (default: a random-init model of the
given size over a WordPiece vocabulary trained on the corpus; its predictions are as valid a workload as a
trained model's) and GloVe vectors (default: random vectors for the corpus's words), and must agree exactly.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from tinybert_jax.data.augment import Augmenter, AugmentStats, load_augmenter, split_words
from tinybert_jax.data.corpus import CorpusStats, iter_documents
from tinybert_jax.data.glove import DEFAULT_MAX_WORDS, load_glove
from tinybert_jax.data.prepare import load_tokenizer
from tinybert_jax.data.wordpiece import train_wordpiece
from tinybert_jax.models.bert import BertConfig, init_params

MIN_WORDS, MAX_WORDS = 5, 40  # GLUE-like single sentences; shorter docstring lines are mostly headings
RANDOM_GLOVE_DIM = 100


def corpus_sentences(count: int) -> list[str]:
    """The first `count` sentences of MIN_WORDS..MAX_WORDS words of the embedded corpus."""
    chosen = []
    for document in iter_documents("embedded", CorpusStats()):
        chosen += [s for s in document if MIN_WORDS <= len(split_words(s)) <= MAX_WORDS]
        if len(chosen) >= count:
            return chosen[:count]
    return chosen


def write_random_glove(path: Path, dim: int, seed: int = 0, corpus: str = "embedded") -> Path:
    """Random vectors for the corpus's distinct lower-cased alphabetic words (at most 100k)."""
    words: dict[str, None] = {}
    for document in iter_documents(corpus, CorpusStats()):
        for sentence in document:
            for a, b in split_words(sentence):
                if sentence[a:b].isalpha() and len(words) < DEFAULT_MAX_WORDS:
                    words.setdefault(sentence[a:b].lower())
    vectors = np.random.default_rng(seed).normal(size=(len(words), dim))
    with open(path, "w") as out:
        for word, vector in zip(words, vectors):
            out.write(word + " " + " ".join(f"{x:.5f}" for x in vector) + "\n")
    return path


def build_augmenter(tmp: Path, mlm: str, glove: str, size: BertConfig, batch: int, max_seq_len: int,
                    corpus: str = "embedded") -> Augmenter:
    """The given MLM and GloVe file, or a random MLM over a WordPiece vocabulary and random vectors for the words
    of `corpus` (a data source)."""
    settings = dict(batch_size=batch, max_seq_len=max_seq_len)
    glove = glove or str(write_random_glove(tmp / "glove.txt", RANDOM_GLOVE_DIM, corpus=corpus))
    if mlm:
        return load_augmenter(mlm, glove, **settings)
    tokenizer_dir = train_wordpiece(corpus, tmp / "tokenizer", vocab_size=size.vocab_size)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    # The model keeps the requested vocabulary size (the MLM head's cost) even if the corpus yields fewer pieces.
    cfg = size.replace(vocab_size=max(size.vocab_size, len(tokenizer)), mlm_head=True, pooler=False)
    return Augmenter(cfg, init_params(cfg, jax.random.PRNGKey(0)), tokenizer, load_glove(glove),
                     glove_path=glove, **settings)


def bench_augment(size: BertConfig, sentences: int, reference_sentences: Optional[int], batch: int,
                  max_seq_len: int, mlm: str = "", glove: str = "", corpus: str = "embedded") -> dict:
    """Sentences/s of both paths, each timed once after compiling every shape it needs; the reference runs on
    the first `reference_sentences` sentences (None: all) when it is too slow to run on all of them. `corpus` is
    what a random MLM's vocabulary and random GloVe vectors are made from."""
    texts = corpus_sentences(sentences)
    subset = texts[:reference_sentences] if reference_sentences else texts
    with tempfile.TemporaryDirectory() as tmp:
        augmenter = build_augmenter(Path(tmp), mlm, glove, size, batch, max_seq_len, corpus)
        start = time.perf_counter()
        augmenter.warm_up(texts)
        compile_s = time.perf_counter() - start
        stats, reference_stats = AugmentStats(), AugmentStats()
        start = time.perf_counter()
        batched = augmenter.augment(texts, stats=stats)
        batched_s = time.perf_counter() - start
        start = time.perf_counter()
        reference = augmenter.augment_one_mask_per_forward(subset, stats=reference_stats)
        reference_s = time.perf_counter() - start
    batched_rate, reference_rate = len(texts) / batched_s, len(subset) / reference_s
    return {"mlm": mlm or f"random init, {size.num_hidden_layers} layers x {size.hidden_size}, "
                          f"vocab {size.vocab_size}",
            "glove": glove or f"random {RANDOM_GLOVE_DIM}-d vectors of the corpus words",
            "sentences": len(texts), "reference_sentences": len(subset), "batch": batch, "max_seq_len": max_seq_len,
            "k": augmenter.k, "p_t": augmenter.p_t, "n_a": augmenter.n_a,
            "masked_inputs_per_sentence": stats.mlm_positions / len(texts),
            "glove_words_per_sentence": stats.glove_positions / len(texts),
            "variants_per_sentence": stats.variants / len(texts),
            "compile_s": compile_s,
            "batched_s": batched_s, "batched_sentences_per_s": batched_rate,
            "batched_masked_inputs_per_s": stats.mlm_positions / batched_s,
            "reference_s": reference_s, "reference_sentences_per_s": reference_rate,
            "reference_masked_inputs_per_s": reference_stats.mlm_positions / reference_s,
            "speedup": batched_rate / reference_rate,
            "same_outputs": batched[:len(subset)] == reference}
