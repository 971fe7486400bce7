"""CoNLL-2003 English named-entity recognition: readers for the original files and TFDS conll2003, and encoding
into WordPiece rows with one label per word.

Tags are ids into TAGS, TFDS conll2003's ClassLabel order, for both sources. The original files tag in IOB1
(an entity may start with I-, B- only separating two adjacent entities of one type) and some copies in IOB2;
both are read as given, never converted, since the entity-level metric reads either.

Sources (`read_split(source, split)`, splits "train", "dev", "test"):
- "tfds": the TFDS dataset conll2003, prepared by the user in ArrayRecord form and read with tfds.data_source
  (splits train, dev, test); features tokens (strings) and ner (tag ids). Empty records (the builder writes one
  at the end of a file that ends with a blank line) are skipped.
- anything else: a directory holding train.txt, valid.txt and test.txt in the CoNLL-2003 layout: one word per
  line with 4 space-separated columns `word POS chunk NER`, a blank line after each sentence, and
  `-DOCSTART- -X- -X- O` lines between documents (skipped). Runs of blank lines, a missing final blank line and
  CRLF line ends are all fine.
"""
from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinybert_jax.data import corpus
from tinybert_jax.data.glue import ENCODE_BATCH, TFDS_SOURCE
from tinybert_jax.errors import InputError

TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
FILES = {"train": "train.txt", "dev": "valid.txt", "test": "test.txt"}
IGNORED_LABEL = -100  # positions the loss and metric skip: a word's later pieces, special tokens, padding
DOCSTART = "-DOCSTART-"
COLUMNS = ("word", "POS", "chunk", "NER")
_TAG_IDS = {tag: index for index, tag in enumerate(TAGS)}
_FIELD_SEPARATOR = re.compile(r"[ \t]+")


@dataclasses.dataclass
class TaggedExamples:
    """The sentences of one split: their words and each word's tag id (int32, an index into TAGS)."""
    words: list[list[str]]
    tags: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.words)


def read_split(source: str, split: str, tfds_data_dir: str = "") -> TaggedExamples:
    """The sentences of `split` ("train", "dev" or "test") from a CoNLL-2003 directory or, for source "tfds",
    from TFDS conll2003."""
    if split not in FILES:
        raise InputError(f"CoNLL-2003 has no split {split!r}; valid splits: {', '.join(FILES)}")
    examples = TaggedExamples([], [])
    if source == TFDS_SOURCE:
        where = _read_tfds(split, tfds_data_dir, examples)
    else:
        where = _read_file(source, split, examples)
    if not examples.words:
        raise InputError(f"{where}: no sentences in split {split!r} of CoNLL-2003")
    return examples


# ----------------------------------------------------------------------------------------------- files
def _read_file(directory: str, split: str, examples: TaggedExamples) -> str:
    files = ", ".join(FILES.values())
    if not Path(directory).is_dir():
        raise InputError(f"CoNLL-2003 source {directory!r}: no such directory; give a directory with {files} or "
                         f"{TFDS_SOURCE!r}")
    path = Path(directory) / FILES[split]
    if not path.is_file():
        raise InputError(f"{path}: not found; a CoNLL-2003 directory holds {files}")
    words: list[str] = []
    tags: list[int] = []

    def end_sentence():
        if words:
            examples.words.append(list(words))
            examples.tags.append(np.asarray(tags, np.int32))
            words.clear()
            tags.clear()

    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").strip(" \t\r\n")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{line_number}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            fields = _FIELD_SEPARATOR.split(line) if line else []
            if not fields or fields[0] == DOCSTART:
                end_sentence()  # a blank line, or a document boundary (always followed by one anyway)
                continue
            if len(fields) != len(COLUMNS):
                raise InputError(f"{path}:{line_number}: {len(fields)} space-separated columns, expected "
                                 f"{len(COLUMNS)} ({' '.join(COLUMNS)})")
            if fields[3] not in _TAG_IDS:
                raise InputError(f"{path}:{line_number}: tag {fields[3]!r} is not a CoNLL-2003 tag "
                                 f"({', '.join(TAGS)})")
            words.append(fields[0])
            tags.append(_TAG_IDS[fields[3]])
    end_sentence()  # a file without a final blank line
    return str(path)


# ----------------------------------------------------------------------------------------------- TFDS
def _read_tfds(split: str, data_dir: str, examples: TaggedExamples) -> str:
    # Registers the conll2003 builder by itself: tfds' lazy lookup imports every text dataset, which needs
    # TensorFlow.
    importlib.import_module("tensorflow_datasets.text.conll2003")

    where = f"tfds conll2003 {split}"
    records = corpus.open_tfds(f"tfds:conll2003:{split}", data_dir)
    for index in tqdm(range(len(records)), desc=f"read {where}", unit="ex", smoothing=0.1):
        record = records[index]
        missing = [name for name in ("tokens", "ner") if name not in record]
        if missing:
            raise InputError(f"{where}: records have no feature {', '.join(map(repr, missing))} (features: "
                             f"{', '.join(sorted(record))}); expected TFDS conll2003")
        words = [word.decode("utf-8") if isinstance(word, bytes) else str(word) for word in record["tokens"]]
        tags = np.asarray(record["ner"], np.int64).reshape(-1)
        if len(words) != len(tags):
            raise InputError(f"{where}: record {index} has {len(words)} tokens but {len(tags)} ner tags")
        bad = tags[(tags < 0) | (tags >= len(TAGS))]
        if len(bad):
            raise InputError(f"{where}: record {index} has ner tag id {bad[0]}, expected 0..{len(TAGS) - 1} "
                             f"({', '.join(TAGS)})")
        if words:
            examples.words.append(words)
            examples.tags.append(tags.astype(np.int32))
    return where


# ------------------------------------------------------------------------------------------- encoding
def encode(examples: TaggedExamples, tokenizer, seq_len: int) -> dict[str, np.ndarray]:
    """int32 input_ids, token_type_ids (zeros), attention_mask and labels [N, seq_len], and word_positions
    [N, longest sentence's word count].

    labels hold a word's tag id at its first WordPiece and IGNORED_LABEL at its other pieces, at special tokens
    and at padding. word_positions[n, w] is the token index of word w's first piece, -1 where the word has none
    (cut off by truncation at seq_len, or a word the tokenizer turns into no pieces) or the sentence is shorter:
    evaluation maps predictions back to every word through it, a word without a position counting as "O".
    """
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"tokenizer {type(tokenizer).__name__} is not a fast (Rust) tokenizer; word labels need "
                         f"its word_ids")
    special = tokenizer.num_special_tokens_to_add(pair=False)
    if seq_len <= special:
        raise InputError(f"seq_len {seq_len} leaves no room for words after the {special} special tokens")
    count = len(examples)
    arrays = {name: np.zeros((count, seq_len), np.int32) for name in ("input_ids", "token_type_ids",
                                                                      "attention_mask")}
    arrays["labels"] = np.full((count, seq_len), IGNORED_LABEL, np.int32)
    arrays["word_positions"] = np.full((count, max(map(len, examples.words), default=0)), -1, np.int32)
    with tqdm(total=count, desc="tokenise", unit="ex", smoothing=0.1) as bar:
        for start in range(0, count, ENCODE_BATCH):
            stop = min(start + ENCODE_BATCH, count)
            encoded = tokenizer(examples.words[start:stop], is_split_into_words=True, truncation=True,
                                max_length=seq_len, padding="max_length", return_attention_mask=True,
                                return_tensors="np")
            arrays["input_ids"][start:stop] = encoded["input_ids"]
            arrays["attention_mask"][start:stop] = encoded["attention_mask"]
            for row in range(stop - start):
                tags = examples.tags[start + row]
                seen = set()
                for position, word in enumerate(encoded.word_ids(row)):
                    if word is not None and word not in seen:  # the word's first piece
                        seen.add(word)
                        arrays["labels"][start + row, position] = tags[word]
                        arrays["word_positions"][start + row, word] = position
            bar.update(stop - start)
    return arrays
