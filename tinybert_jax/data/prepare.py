"""Tokenise a corpus into BERT pre-training sequences and stream them into ArrayRecord shards (+ metadata.json).

Sequences are built as Google's create_pretraining_data does (Devlin et al. 2019; docs/data.md):
sentences of a document are accumulated up to a target length (seq_len - 3, or for `short_seq_prob` of the
sequences a random shorter one), split at a random point into segment A and the true next segment B, or with
probability 0.5 B is taken from another document; the longer segment is trimmed from a random end until
[CLS] A [SEP] B [SEP] fits in seq_len. Differences, all for streaming: the target length is drawn per sequence
(so `short_seq_prob` is the fraction of sequences), the other document comes from a bounded window of nearby
documents instead of the whole corpus, sentences longer than seq_len - 3 tokens are cut into pieces instead
of being truncated, and each document is used once (no duplication factor: there is no masking to vary).

Record layout (format_version 1): each record is the bytes of a little-endian int32 array
    [type_a_length, input_ids[0], ..., input_ids[length - 1]]
with input_ids = [CLS] A [SEP] B [SEP] unpadded (length = bytes / 4 - 1 <= seq_len) and type_a_length =
len(A) + 2, the number of leading tokens with token_type_id 0; the remaining ones (B [SEP]) have type 1.
The loader pads to seq_len with tokenizer.pad_id. Shards are sequences-NNNNN.array_record (group_size:1,
as random access needs); metadata.json describes the settings, tokenizer, counts and shards.
token_counts.npy (named by metadata["token_counts"]) holds the int64 [vocab_size] occurrences of every token id
in the written input_ids, [CLS]/[SEP] included, for frequency-smoothed masking; directories prepared before it
was added lack the key.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import random
import sys
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
from tqdm import tqdm

from tinybert_jax import hf_checkpoint
from tinybert_jax.data import shards
from tinybert_jax.data.corpus import TFDS_PREFIX, CorpusStats, iter_documents
from tinybert_jax.data.loader import FORMAT_VERSION, METADATA_FILE, TOKEN_COUNTS_FILE, check_prepared
from tinybert_jax.errors import InputError, run_cli
from tinybert_jax.files import atomic_output_dir, is_empty_dir

log = logging.getLogger(__name__)

DEFAULT_RECORDS_PER_SHARD = 50_000
TOKEN_COUNT_BATCH = 1 << 20  # tokens buffered before one np.bincount over them
RANDOM_NEXT_PROB = 0.5
RANDOM_DOCUMENT_WINDOW = 256  # documents kept in memory to draw "random next" segments from
TOKENIZE_BATCH_SENTENCES = 2048

Document = list[np.ndarray]  # one int32 token-id array per sentence


@dataclasses.dataclass
class SequenceStats:
    sequences: int = 0
    tokens: int = 0  # including [CLS]/[SEP], excluding padding
    random_next: int = 0
    split_sentences: int = 0  # sentences longer than seq_len - 3 tokens, cut into pieces
    empty_sentences: int = 0  # sentences that tokenise to nothing


# -------------------------------------------------------------------------------------------- tokenizer
def load_tokenizer(tokenizer_path: str):
    """The teacher's fast tokenizer, from a local directory or a hub id."""
    local = Path(tokenizer_path).expanduser()
    if local.is_file():
        raise InputError(f"tokenizer {tokenizer_path} is a file; give the teacher's directory or its hub id")
    if local.is_dir() and not any((local / name).is_file() for name in hf_checkpoint.TOKENIZER_FILES):
        raise InputError(f"tokenizer {tokenizer_path}: no tokenizer files; expected one of "
                         f"{', '.join(hf_checkpoint.TOKENIZER_FILES)} (the teacher's Hugging Face directory)")
    import transformers  # heavy (it imports torch when present); only needed when preparing

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(local) if local.is_dir() else tokenizer_path)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"tokenizer {tokenizer_path}: cannot load a Hugging Face tokenizer ({reason}); give the "
                         f"teacher's directory (with tokenizer.json or vocab.txt) or its hub id") from None
    if not tokenizer.is_fast:
        raise InputError(f"tokenizer {tokenizer_path}: only a slow tokenizer is available; add tokenizer.json "
                         f"(save the fast tokenizer with save_pretrained) so tokenisation runs batched in Rust")
    missing = [t for t in ("cls", "sep", "pad") if getattr(tokenizer, f"{t}_token_id") is None]
    if missing:
        raise InputError(f"tokenizer {tokenizer_path}: no {'/'.join(missing)} token; BERT sequences need "
                         f"[CLS], [SEP] and [PAD]")
    return tokenizer


def tokenizer_metadata(tokenizer, tokenizer_path: str) -> dict[str, Any]:
    """Identity of the tokenizer: the fingerprint is the sha256 of the vocabulary in id order."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    fingerprint = hashlib.sha256(json.dumps([token for token, _ in vocab]).encode()).hexdigest()
    return {"path": str(tokenizer_path), "fingerprint": fingerprint, "vocab_size": len(vocab),
            "pad_id": tokenizer.pad_token_id, "cls_id": tokenizer.cls_token_id, "sep_id": tokenizer.sep_token_id,
            "mask_id": tokenizer.mask_token_id}


def tokenize_documents(documents: Iterable[list[str]], tokenizer, max_tokens: int,
                       stats: SequenceStats) -> Iterator[Document]:
    """Documents of sentences -> documents of token-id arrays, tokenised many sentences per call.

    Sentences longer than `max_tokens` are cut into consecutive pieces; those tokenising to nothing are dropped.
    """
    pending: list[list[str]] = []
    pending_sentences = 0
    for document in documents:
        pending.append(document)
        pending_sentences += len(document)
        if pending_sentences >= TOKENIZE_BATCH_SENTENCES:
            yield from _tokenize_batch(pending, tokenizer, max_tokens, stats)
            pending, pending_sentences = [], 0
    yield from _tokenize_batch(pending, tokenizer, max_tokens, stats)


def _tokenize_batch(documents: list[list[str]], tokenizer, max_tokens: int,
                    stats: SequenceStats) -> Iterator[Document]:
    if not documents:
        return
    sentences = [sentence for document in documents for sentence in document]
    ids = tokenizer(sentences, add_special_tokens=False, return_attention_mask=False,
                    return_token_type_ids=False, verbose=False)["input_ids"]
    start = 0
    for document in documents:
        tokenized: Document = []
        for sentence_ids in ids[start:start + len(document)]:
            if not sentence_ids:
                stats.empty_sentences += 1
            elif len(sentence_ids) > max_tokens:
                stats.split_sentences += 1
                tokenized += [np.asarray(sentence_ids[i:i + max_tokens], np.int32)
                              for i in range(0, len(sentence_ids), max_tokens)]
            else:
                tokenized.append(np.asarray(sentence_ids, np.int32))
        start += len(document)
        if tokenized:
            yield tokenized


# -------------------------------------------------------------------------------------------- sequences
def pair_sequences(documents: Iterable[Document], rng: random.Random, max_tokens: int, short_seq_prob: float,
                   stats: SequenceStats,
                   window: int = RANDOM_DOCUMENT_WINDOW) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(segment A, segment B) token pairs with len(A) + len(B) <= max_tokens, from a stream of documents.

    Each document is processed once about window/2 documents after it arrives, so "random next" segments can
    come from up to window - 1 documents around it (earlier and later ones).
    """
    recent: deque[Document] = deque()
    lookahead = window // 2
    unprocessed = 0  # how many documents at the right end of `recent` still need processing

    def process(position: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        def other_document() -> Document:
            if len(recent) == 1:  # a one-document corpus: like the original, fall back to the same document
                return recent[0]
            pick = rng.randrange(len(recent) - 1)
            return recent[pick + (pick >= position)]
        return _document_pairs(recent[position], other_document, rng, max_tokens, short_seq_prob, stats)

    for document in documents:
        recent.append(document)
        unprocessed += 1
        if unprocessed > lookahead:
            yield from process(len(recent) - unprocessed)
            unprocessed -= 1
            if len(recent) > window:
                recent.popleft()
    while unprocessed:
        yield from process(len(recent) - unprocessed)
        unprocessed -= 1


def _document_pairs(document: Document, other_document: Callable[[], Document], rng: random.Random,
                    max_tokens: int, short_seq_prob: float,
                    stats: SequenceStats) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    target = _target_length(rng, max_tokens, short_seq_prob)
    chunk: Document = []
    chunk_tokens = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        chunk_tokens += len(document[i])
        if i == len(document) - 1 or chunk_tokens >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            segment_a = np.concatenate(chunk[:a_end])
            if len(chunk) == 1 or rng.random() < RANDOM_NEXT_PROB:
                stats.random_next += 1
                segment_b = _random_segment(other_document(), target - len(segment_a), rng)
                i -= len(chunk) - a_end  # the unused sentences start the next chunk instead of being lost
            else:
                segment_b = np.concatenate(chunk[a_end:])
            yield _truncate_pair(segment_a, segment_b, max_tokens, rng)
            chunk, chunk_tokens = [], 0
            target = _target_length(rng, max_tokens, short_seq_prob)
        i += 1


def _target_length(rng: random.Random, max_tokens: int, short_seq_prob: float) -> int:
    # Shorter sequences now and then reduce the mismatch with short inputs at fine-tuning time.
    return rng.randint(2, max_tokens) if rng.random() < short_seq_prob else max_tokens


def _random_segment(document: Document, min_tokens: int, rng: random.Random) -> np.ndarray:
    start = rng.randrange(len(document))
    pieces, tokens = [], 0
    for sentence in document[start:]:
        pieces.append(sentence)
        tokens += len(sentence)
        if tokens >= min_tokens:
            break
    return np.concatenate(pieces)


def _truncate_pair(a: np.ndarray, b: np.ndarray, max_tokens: int,
                   rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """Trims one token at a time from the longer segment (B on ties), from the front or back at random."""
    bounds = [[0, len(a)], [0, len(b)]]
    while sum(end - start for start, end in bounds) > max_tokens:
        longer = bounds[0] if bounds[0][1] - bounds[0][0] > bounds[1][1] - bounds[1][0] else bounds[1]
        if rng.random() < 0.5:
            longer[0] += 1
        else:
            longer[1] -= 1
    return a[bounds[0][0]:bounds[0][1]], b[bounds[1][0]:bounds[1][1]]


def encode_record(segment_a: np.ndarray, segment_b: np.ndarray, cls_id: int, sep_id: int) -> bytes:
    """[CLS] A [SEP] B [SEP] in the record layout of the module docstring."""
    return np.concatenate([[len(segment_a) + 2, cls_id], segment_a, [sep_id], segment_b, [sep_id]]
                          ).astype("<i4").tobytes()


# ---------------------------------------------------------------------------------------------- writing
class TokenCounter:
    """Occurrences of each token id, counted with one np.bincount per ~TOKEN_COUNT_BATCH buffered tokens."""

    def __init__(self, vocab_size: int):
        self.counts = np.zeros(vocab_size, np.int64)
        self._pending: list[np.ndarray] = []
        self._pending_tokens = 0

    def add(self, ids: np.ndarray) -> None:
        self._pending.append(ids)
        self._pending_tokens += len(ids)
        if self._pending_tokens >= TOKEN_COUNT_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        ids = np.concatenate(self._pending)
        self._pending, self._pending_tokens = [], 0
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.counts)):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise InputError(f"tokenizer produced token id {bad}, outside its vocabulary of {len(self.counts)} "
                             f"tokens; use a tokenizer whose ids are 0 .. vocab size - 1")
        self.counts += np.bincount(ids, minlength=len(self.counts))

    def result(self) -> np.ndarray:
        self.flush()
        return self.counts


class ShardWriter:
    """ArrayRecord shards of at most `records_per_shard` records each, named in order."""

    def __init__(self, out_dir: Path, records_per_shard: int):
        self._out_dir = out_dir
        self._records_per_shard = records_per_shard
        self._writer = None  # the open shard's ArrayRecordWriter (shards.writer)
        self._in_shard = 0
        self.shards: list[str] = []

    def write(self, record: bytes) -> None:
        if self._writer is None or self._in_shard == self._records_per_shard:
            self.close()
            self.shards.append(f"sequences-{len(self.shards):05d}.array_record")
            self._writer = shards.writer(self._out_dir / self.shards[-1])
            self._in_shard = 0
        self._writer.write(record)
        self._in_shard += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_settings(seq_len: int, short_seq_prob: float, records_per_shard: int) -> None:
    if seq_len < 5:
        raise InputError(f"seq_len {seq_len} is too short; [CLS] A [SEP] B [SEP] needs at least 5 tokens")
    if not 0 <= short_seq_prob <= 1:
        raise InputError(f"short_seq_prob {short_seq_prob} is not a probability in [0, 1]")
    if records_per_shard < 1:
        raise InputError(f"records_per_shard {records_per_shard} must be at least 1")


def _content_settings(source: str, seq_len: int, seed: int, short_seq_prob: float,
                      tfds_text_key: str) -> dict[str, Any]:
    """The settings that change the prepared sequences: reusing a directory needs all of them to match."""
    return {"source": source, "seq_len": seq_len, "seed": seed, "short_seq_prob": short_seq_prob,
            "tfds_text_key": tfds_text_key if source.startswith(TFDS_PREFIX) else None}


def _counted(documents: Iterable[list[str]], bar: tqdm, corpus_stats: CorpusStats) -> Iterator[list[str]]:
    for document in documents:
        if bar.total is None and corpus_stats.expected_records:
            bar.total = corpus_stats.expected_records  # known only once the source is open
        bar.update()
        yield document


def prepare(source: str, out_dir: str | Path, tokenizer_path: str, seq_len: int, seed: int, *,
            tfds_data_dir: str = "", tfds_text_key: str = "text", short_seq_prob: float = 0.1,
            records_per_shard: int = DEFAULT_RECORDS_PER_SHARD) -> dict[str, Any]:
    """Writes `out_dir` (shards + token_counts.npy + metadata.json) in one atomic rename; returns the metadata."""
    _check_settings(seq_len, short_seq_prob, records_per_shard)
    tokenizer = load_tokenizer(tokenizer_path)
    token_ids = tokenizer_metadata(tokenizer, tokenizer_path)
    corpus_stats, stats = CorpusStats(), SequenceStats()
    rng = random.Random(seed)
    max_tokens = seq_len - 3
    counter = TokenCounter(token_ids["vocab_size"])
    with atomic_output_dir(out_dir) as tmp:
        with ShardWriter(tmp, records_per_shard) as writer, \
                tqdm(desc=f"prepare {source or 'embedded'}", unit="doc", smoothing=0.1) as bar:
            documents = _counted(iter_documents(source, corpus_stats, tfds_data_dir, tfds_text_key), bar,
                                 corpus_stats)
            tokenized = tokenize_documents(documents, tokenizer, max_tokens, stats)
            for segment_a, segment_b in pair_sequences(tokenized, rng, max_tokens, short_seq_prob, stats):
                record = encode_record(segment_a, segment_b, token_ids["cls_id"], token_ids["sep_id"])
                writer.write(record)
                counter.add(np.frombuffer(record, "<i4")[1:])  # exactly the input_ids written
                stats.sequences += 1
                stats.tokens += len(segment_a) + len(segment_b) + 3
                if stats.sequences % 1000 == 0:
                    bar.set_postfix_str(f"{stats.sequences} sequences", refresh=False)
            bar.set_postfix_str(f"{stats.sequences} sequences")
        log.info("prepare %s: %s", source or "embedded", corpus_stats.summary())
        if not stats.sequences:
            raise InputError(f"source {source!r}: no training sequences ({corpus_stats.summary()})")
        np.save(tmp / TOKEN_COUNTS_FILE, counter.result())
        metadata = {"format_version": FORMAT_VERSION,
                    **_content_settings(source, seq_len, seed, short_seq_prob, tfds_text_key),
                    "random_next_prob": RANDOM_NEXT_PROB, "random_document_window": RANDOM_DOCUMENT_WINDOW,
                    "tokenizer": token_ids, "count": stats.sequences, "shards": writer.shards,
                    "token_counts": TOKEN_COUNTS_FILE,
                    "sequence_stats": dataclasses.asdict(stats), "corpus_stats": dataclasses.asdict(corpus_stats)}
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    log.info("prepare %s: %d sequences (%d tokens, %d random-next, %d long sentences split) in %d shards at %s",
             source or "embedded", stats.sequences, stats.tokens, stats.random_next, stats.split_sentences,
             len(writer.shards), out_dir)
    return metadata


def ensure_prepared(source: str, out_dir: str | Path, tokenizer_path: str, seq_len: int, seed: int, *,
                    tfds_data_dir: str = "", tfds_text_key: str = "text", short_seq_prob: float = 0.1,
                    records_per_shard: int = DEFAULT_RECORDS_PER_SHARD) -> dict[str, Any]:
    """Reuses `out_dir` if it was prepared with the same settings and tokenizer and its shards are intact, else
    prepares it; a damaged or foreign `out_dir` is an InputError, never deleted."""
    if not Path(out_dir).exists() or is_empty_dir(Path(out_dir)):
        return prepare(source, out_dir, tokenizer_path, seq_len, seed, tfds_data_dir=tfds_data_dir,
                       tfds_text_key=tfds_text_key, short_seq_prob=short_seq_prob,
                       records_per_shard=records_per_shard)
    existing = check_prepared(out_dir)
    for key, value in _content_settings(source, seq_len, seed, short_seq_prob, tfds_text_key).items():
        if existing.get(key) != value:
            raise InputError(f"{out_dir} was prepared with {key}={existing.get(key)!r}, not {value!r}; "
                             f"delete the directory or choose another one")
    fingerprint = tokenizer_metadata(load_tokenizer(tokenizer_path), tokenizer_path)["fingerprint"]
    if existing["tokenizer"].get("fingerprint") != fingerprint:
        raise InputError(f"{out_dir} was prepared with another tokenizer ({existing['tokenizer'].get('path')}, "
                         f"vocabulary differs from {tokenizer_path}); delete the directory or choose another one")
    log.info("reusing prepared data in %s (%d sequences of %d tokens)", out_dir, existing["count"], seq_len)
    return existing


# --------------------------------------------------------------------------------------------------- CLI
def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tinybert_jax.data.prepare",
                                     description="Tokenise a corpus into pre-training sequences (ArrayRecord).")
    parser.add_argument("--source", default="embedded",
                        help="'embedded' (stdlib docstrings), tfds:NAME[/CONFIG][:SPLIT], or a glob of text files "
                             "(one sentence per line, blank line between documents)")
    parser.add_argument("--tokenizer", required=True, help="teacher directory or hub id with the tokenizer")
    parser.add_argument("--out", required=True, help="output directory (reused if prepared with the same settings)")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--short_seq_prob", type=float, default=0.1)
    parser.add_argument("--records_per_shard", type=int, default=DEFAULT_RECORDS_PER_SHARD)
    parser.add_argument("--tfds_data_dir", default="", help="TFDS data dir for tfds: sources")
    parser.add_argument("--tfds_text_key", default="text", help="text field of tfds: records")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)

    def prepare_and_summarise() -> str:
        metadata = ensure_prepared(args.source, args.out, args.tokenizer, args.seq_len, args.seed,
                                   tfds_data_dir=args.tfds_data_dir, tfds_text_key=args.tfds_text_key,
                                   short_seq_prob=args.short_seq_prob, records_per_shard=args.records_per_shard)
        stats = metadata["sequence_stats"]
        return (f"{args.out}: {metadata['count']} sequences of at most {metadata['seq_len']} tokens "
                f"({stats['tokens']} tokens) in {len(metadata['shards'])} shards; "
                f"{CorpusStats(**metadata['corpus_stats']).summary()}")

    return run_cli(prepare_and_summarise)


if __name__ == "__main__":
    sys.exit(main())
