"""Raw-text corpora as a stream of documents, each a list of sentences.

Three kinds of source, chosen by the `source` string:
- "" or "embedded": the docstrings of this Python installation's standard library, read with `ast`, one module
  per document (a small English corpus every machine has, so a quick start needs no download);
- "tfds:NAME[/CONFIG][:SPLIT]": a TFDS dataset the user has prepared in ArrayRecord form, one document per record;
- anything else: a glob of local text files, one sentence per line and a blank line between documents (the
  format of the original TinyBERT / BERT pre-training corpora).
Everything streams: memory holds one document at a time, and documents are cut into pieces of at most
MAX_DOCUMENT_SENTENCES sentences (a text file without blank lines is read piece by piece).
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import glob
import os
import re
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator, Optional

from tinybert_jax.errors import InputError

EMBEDDED = "embedded"
TFDS_PREFIX = "tfds:"
MAX_DOCUMENT_SENTENCES = 10_000

# Standard-library folders that hold tests, GUI code samples or third-party packages rather than documented API.
_SKIPPED_STDLIB_DIRS = frozenset({"test", "tests", "idlelib", "turtledemo", "site-packages", "dist-packages",
                                  "__pycache__", "__phello__"})
# A sentence ends at . ! or ? (optionally closed by a quote or bracket) followed by space and a capital or digit.
_SENTENCE_END = re.compile(r"(?<=[.!?])(?<!\be\.g\.)(?<!\bi\.e\.)[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_TFDS_VERSION = re.compile(r"\d+\.\d+\.\d+")
_MIN_ALPHA_FRACTION = 0.5  # lines below this are code, tables or ASCII art, not prose


@dataclasses.dataclass
class CorpusStats:
    """What the reader saw; every dropped or altered piece of input is counted here."""
    files: int = 0
    documents: int = 0
    sentences: int = 0
    characters: int = 0
    invalid_utf8_lines: int = 0
    empty_documents: int = 0
    split_documents: int = 0
    unparsable_files: int = 0
    expected_records: Optional[int] = None  # source records, when the source knows its size (TFDS)

    def summary(self) -> str:
        """One line for the log: what was read, then everything skipped or altered."""
        read = f"{self.documents} documents, {self.sentences} sentences, {self.characters} characters"
        if self.files:
            read += f" from {self.files} files"
        dropped = [f"{n} {what}" for n, what in ((self.invalid_utf8_lines, "invalid UTF-8 lines skipped"),
                                                 (self.empty_documents, "empty documents skipped"),
                                                 (self.split_documents, "over-long documents split"),
                                                 (self.unparsable_files, "unparsable files skipped")) if n]
        return "; ".join([read] + dropped)


def iter_documents(source: str, stats: CorpusStats, tfds_data_dir: str = "",
                   tfds_text_key: str = "text") -> Iterator[list[str]]:
    """Yields the documents of `source` in a deterministic order, each a non-empty list of non-empty sentences."""
    if source in ("", EMBEDDED):
        raw = _embedded_documents(stats)
    elif source.startswith(TFDS_PREFIX):
        raw = _tfds_documents(source, stats, tfds_data_dir, tfds_text_key)
    else:
        raw = _text_file_documents(source, stats)
    for document in raw:
        if not document:
            stats.empty_documents += 1
            continue
        if len(document) > MAX_DOCUMENT_SENTENCES:
            stats.split_documents += 1
        for start in range(0, len(document), MAX_DOCUMENT_SENTENCES):
            piece = document[start:start + MAX_DOCUMENT_SENTENCES]
            stats.documents += 1
            stats.sentences += len(piece)
            stats.characters += sum(map(len, piece))
            yield piece


def split_sentences(text: str, wrapped: bool = True) -> list[str]:
    """Sentences of running text, split at sentence ends within each paragraph.

    Paragraphs are separated by blank lines; with `wrapped` (hard-wrapped text such as docstrings) the lines of
    a paragraph are joined first, otherwise every line is a paragraph of its own (a heading stays apart from the
    text under it). Lines that are doctests (>>> / ...) or mostly non-alphabetic (code, tables, rules) are dropped.
    """
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text) if wrapped else text.splitlines():
        prose = " ".join(line for line in map(str.strip, paragraph.splitlines()) if line and _is_prose(line))
        sentences += [s.strip() for s in _SENTENCE_END.split(prose) if s.strip()]
    return sentences


def _is_prose(line: str) -> bool:
    if line.startswith((">>>", "...")):
        return False
    letters = sum(c.isalpha() for c in line)
    return letters >= _MIN_ALPHA_FRACTION * len(line.replace(" ", ""))


# ------------------------------------------------------------------------------------------- embedded
def _embedded_documents(stats: CorpusStats) -> Iterator[list[str]]:
    for path in _stdlib_files(Path(sysconfig.get_paths()["stdlib"])):
        stats.files += 1
        sentences = _module_sentences(path)
        if sentences is None:
            stats.unparsable_files += 1
            continue
        yield list(sentences)


@functools.lru_cache(maxsize=None)
def _module_sentences(path: Path) -> Optional[tuple[str, ...]]:
    """The sentences of a stdlib module's docstrings (None: unparsable), read once per process: a run reads the
    corpus twice (tokenizer training, then sequence preparation), and parsing is most of its cost."""
    try:
        # Parse, never import: importing runs module code (and some stdlib modules have side effects).
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return None
    # One module is one document: its docstrings in source order read as connected text, so the true next
    # segment of a sequence is usually about the same thing (single docstrings are mostly 1-2 sentences).
    return tuple(sentence for docstring in _docstrings(tree) for sentence in split_sentences(docstring))


def _docstrings(tree: ast.Module) -> Iterator[str]:
    """Docstrings in source order, visiting statements only (expressions, most of the tree, hold none)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=True)
            if docstring:
                yield docstring
        for field in ("finalbody", "orelse", "handlers", "cases", "body"):  # pushed in reverse source order
            children = getattr(node, field, None)
            if isinstance(children, list):
                stack.extend(reversed(children))


def _stdlib_files(root: Path) -> Iterator[Path]:
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_STDLIB_DIRS and not d.startswith("config-"))
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(directory, name)


# ----------------------------------------------------------------------------------------------- TFDS
def parse_tfds_source(source: str) -> tuple[str, str]:
    """"tfds:NAME[/CONFIG][:VERSION][:SPLIT]" -> (TFDS name with config and version, split; default "train")."""
    name, _, split = source[len(TFDS_PREFIX):].rpartition(":")
    if not name or _TFDS_VERSION.fullmatch(split):
        name, split = source[len(TFDS_PREFIX):], "train"
    if not name:
        raise InputError(f"source {source!r}: expected tfds:NAME[/CONFIG][:SPLIT], e.g. tfds:wikipedia/20230601.en")
    return name, split


def _tfds_documents(source: str, stats: CorpusStats, data_dir: str, text_key: str) -> Iterator[list[str]]:
    records = open_tfds(source, data_dir)
    stats.expected_records = len(records)
    for index in range(len(records)):
        yield _tfds_document(records[index], source, text_key)


def _tfds_document(record: dict, source: str, text_key: str) -> list[str]:
    if text_key not in record:
        raise InputError(f"source {source!r}: records have no field {text_key!r} (fields: "
                         f"{', '.join(sorted(record))}); set data.tfds_text_key to the text field")
    text = record[text_key]
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return split_sentences(str(text), wrapped=False)


def open_tfds(source: str, data_dir: str):
    import tensorflow_datasets as tfds  # heavy import, only needed for this kind of source

    name, split = parse_tfds_source(source)
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    how = (f"prepare it with `tfds build {name.split(':')[0]} --data_dir={where} --file_format=array_record` "
           f"or set data.tfds_data_dir to where it is prepared")
    try:
        # download=False: a missing dataset is the user's to build, never something to fetch mid-run.
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except tfds.core.registered.DatasetNotFoundError:
        raise InputError(f"source {source!r}: no TFDS dataset {name!r} registered or prepared in {where}; "
                         f"{how}") from None
    except (NotImplementedError, ValueError, KeyError, FileNotFoundError, AssertionError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"source {source!r}: cannot read split {split!r} of {name!r} from {where} ({reason}); "
                         f"{how}") from None


# ----------------------------------------------------------------------------------------- text files
def _text_file_documents(pattern: str, stats: CorpusStats) -> Iterator[list[str]]:
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not paths:
        raise InputError(f"source {pattern!r}: no files match this glob; give text files (one sentence per line, "
                         f"blank line between documents), 'embedded', or tfds:NAME[:SPLIT]")
    for path in paths:
        stats.files += 1
        try:
            with open(path, "rb") as f:
                yield from _split_documents(f, stats)
        except OSError as e:
            raise InputError(f"source {pattern!r}: cannot read {path} ({e.strerror})") from None


def _split_documents(lines: Iterable[bytes], stats: CorpusStats) -> Iterator[list[str]]:
    """Blank lines end a document. A document whose every line was dropped, or a file with no text at all, is
    yielded empty (and so counted as an empty document). Over-long documents are yielded in pieces as they are
    read, so a file without blank lines never has to fit in memory."""
    document: list[str] = []
    in_document = False  # a non-blank line (kept or dropped) was seen since the last blank line
    continued = False  # pieces of the current document were already yielded
    file_has_text = False
    for raw in lines:
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            stats.invalid_utf8_lines += 1
            in_document = file_has_text = True
            continue
        if line:
            if len(document) == MAX_DOCUMENT_SENTENCES:
                stats.split_documents += not continued
                yield document
                document, continued = [], True
            document.append(line)
            in_document = file_has_text = True
        elif in_document:
            if document or not continued:
                yield document
            document, in_document, continued = [], False, False
    if (in_document and (document or not continued)) or not file_has_text:
        yield document
