"""SQuAD v1.1 and v2.0 extractive question answering: readers for the official JSON files and TFDS squad, and
encoding into overlapping windows of a long context.

Tasks are "squad_v1" (every question has an answer) and "squad_v2" (some questions have none: is_impossible).
Splits are "train" and "dev".

Sources (`read_split(task_name, source, split)`):
- "tfds": the TFDS dataset squad/v1.1 or squad/v2.0, prepared by the user in ArrayRecord form and read with
  tfds.data_source (splits train, validation). Features: id, title, context, question, answers {text: [..],
  answer_start: [..]}, for v2.0 also is_impossible (plausible_answers is ignored).
- anything else: a directory holding the official files train-v1.1.json / dev-v1.1.json or train-v2.0.json /
  dev-v2.0.json:
    {"version": ..., "data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [
        {"id": ..., "question": ..., "answers": [{"text": ..., "answer_start": <character index>}, ...],
         "is_impossible": <v2.0 only; missing means false>, "plausible_answers": <v2.0, ignored>}]}]}]}

Each answer is (text, character start in its context); contexts are kept exactly as given, so that the start
indices stay valid, and every answer must be found at its start. Train files have one answer per question, dev
files several (the metric takes the best match). An impossible question has no answers.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinybert_jax.data import corpus
from tinybert_jax.data.glue import ENCODE_BATCH, TFDS_SOURCE
from tinybert_jax.errors import InputError

VERSIONS = {"squad_v1": "v1.1", "squad_v2": "v2.0"}
SPLITS = ("train", "dev")
_TFDS_SPLITS = {"train": "train", "dev": "validation"}
NO_ANSWER = 0  # start and end position of a window without the answer: its [CLS] token


@dataclasses.dataclass
class SquadExamples:
    """The questions of one split, each with its context and gold answers."""
    ids: list[str]
    questions: list[str]
    contexts: list[str]
    answers: list[list[tuple[str, int]]]  # (text, character start in the context); [] when there is no answer

    def __len__(self) -> int:
        return len(self.ids)


def read_split(task_name: str, source: str, split: str, tfds_data_dir: str = "") -> SquadExamples:
    """The questions of `split` ("train" or "dev") of squad_v1 / squad_v2 from the official JSON files in the
    directory `source` or, for source "tfds", from TFDS squad."""
    if task_name not in VERSIONS:
        raise InputError(f"unknown SQuAD task {task_name!r}; valid tasks: {', '.join(VERSIONS)}")
    if split not in SPLITS:
        raise InputError(f"SQuAD has no split {split!r}; valid splits: {', '.join(SPLITS)}")
    version = VERSIONS[task_name]
    examples = SquadExamples([], [], [], [])
    if source == TFDS_SOURCE:
        where = _read_tfds(version, split, tfds_data_dir, examples)
    else:
        where = _read_json(version, source, split, examples)
    if not examples.ids:
        raise InputError(f"{where}: no questions in split {split!r} of {task_name}")
    return examples


def _add(examples: SquadExamples, where: str, question_id: str, question: str, context: str,
         answers: list[tuple[str, int]], impossible: bool) -> None:
    """Checks one question's answers against its context and appends it; `where` starts the error messages."""
    if impossible and answers:
        raise InputError(f"{where}: question {question_id}: is_impossible is true but it has {len(answers)} "
                         f"answers (expected none)")
    if not impossible and not answers:
        raise InputError(f"{where}: question {question_id}: no answers (an answerable question needs at least one; "
                         f"SQuAD v2.0 marks one without by is_impossible)")
    for text, start in answers:
        if not text:
            raise InputError(f"{where}: question {question_id}: an answer at character {start} has empty text")
        found = context[start:start + len(text)] if start >= 0 else ""
        if found != text:
            raise InputError(f"{where}: question {question_id}: answer {text!r} is not at character {start} of its "
                             f"context (found {found!r})")
    examples.ids.append(question_id)
    examples.questions.append(question)
    examples.contexts.append(context)
    examples.answers.append(answers)


# ----------------------------------------------------------------------------------------------- JSON
def _read_json(version: str, directory: str, split: str, examples: SquadExamples) -> str:
    files = f"train-{version}.json and dev-{version}.json"
    if not Path(directory).is_dir():
        raise InputError(f"SQuAD source {directory!r}: no such directory; give a directory with {files} (the "
                         f"official SQuAD {version} files) or {TFDS_SOURCE!r}")
    path = Path(directory) / f"{split}-{version}.json"
    if not path.is_file():
        raise InputError(f"{path}: not found; a SQuAD {version} directory holds {files}")
    try:
        text = path.read_text(encoding="utf-8")
        root = json.loads(text)
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    shape = (f"expected SQuAD {version} JSON: {{\"data\": [{{\"paragraphs\": [{{\"context\", \"qas\": [{{\"id\", "
             f"\"question\", \"answers\": [{{\"text\", \"answer_start\"}}]}}]}}]}}]}}")
    for a, article in enumerate(_get(root, "data", list, path, "", shape)):
        for p, paragraph in enumerate(_get(article, "paragraphs", list, path, f"data[{a}]", shape)):
            at = f"data[{a}].paragraphs[{p}]"
            context = _get(paragraph, "context", str, path, at, shape)
            for q, qa in enumerate(_get(paragraph, "qas", list, path, at, shape)):
                at = f"data[{a}].paragraphs[{p}].qas[{q}]"
                question_id = _get(qa, "id", str, path, at, shape)
                line = _line_of_id(text, question_id)
                where = f"{path}:{line}" if line else str(path)
                at = f"{at} (question {question_id})"
                answers = []
                for n, answer in enumerate(_get(qa, "answers", list, path, at, shape)):
                    answer_at = f"{at}.answers[{n}]"
                    start = _get(answer, "answer_start", int, path, answer_at, shape)
                    answers.append((_get(answer, "text", str, path, answer_at, shape), start))
                impossible = version != "v1.1" and _get(qa, "is_impossible", bool, path, at, shape, False)
                _add(examples, where, question_id, _get(qa, "question", str, path, at, shape), context, answers,
                     impossible)
    return str(path)


def _get(node, key: str, kind: type, path: Path, at: str, shape: str, default=None):
    """node[key], of type `kind` (an object's missing key gives `default` when one is given)."""
    if not isinstance(node, dict):
        raise InputError(f"{path}: {at or 'the top level'} is a JSON {type(node).__name__}, expected an object; "
                         f"{shape}")
    if key not in node and default is not None:
        return default
    if key not in node:
        raise InputError(f"{path}: {at or 'the top level'} has no key {key!r}; {shape}")
    value = node[key]
    # JSON true/false are bools, which Python also counts as ints: an answer_start of true is not a number.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InputError(f"{path}: {at}.{key} is {json.dumps(value)[:60]}, expected a {kind.__name__}")
    return value


def _line_of_id(text: str, question_id: str) -> int | None:
    """The 1-based line of the file text on which `"id": "<question_id>"` appears, None if it is not found (e.g.
    the id is written with escapes)."""
    match = re.search(r'"id"\s*:\s*' + re.escape(json.dumps(question_id, ensure_ascii=False)), text)
    if match is None:
        match = re.search(r'"id"\s*:\s*' + re.escape(json.dumps(question_id)), text)
    return text.count("\n", 0, match.start()) + 1 if match else None


# ----------------------------------------------------------------------------------------------- TFDS
def _read_tfds(version: str, split: str, data_dir: str, examples: SquadExamples) -> str:
    # Registers the squad builder by itself: tfds' lazy lookup imports every dataset, which needs TensorFlow.
    importlib.import_module("tensorflow_datasets.datasets.squad.squad_dataset_builder")

    where = f"tfds squad/{version} {_TFDS_SPLITS[split]}"
    records = corpus.open_tfds(f"tfds:squad/{version}:{_TFDS_SPLITS[split]}", data_dir)
    features = ("id", "question", "context", "answers") + (("is_impossible",) if version == "v2.0" else ())
    for index in tqdm(range(len(records)), desc=f"read {where}", unit="ex", smoothing=0.1):
        record = records[index]
        missing = [name for name in features if name not in record]
        if missing:
            raise InputError(f"{where}: records have no feature {', '.join(map(repr, missing))} (features: "
                             f"{', '.join(sorted(record))}); expected TFDS squad/{version}")
        answers = record["answers"]
        texts, starts = list(answers["text"]), list(answers["answer_start"])
        question_id = _text(record["id"])
        if len(texts) != len(starts):
            raise InputError(f"{where}: record {index} (question {question_id}): {len(texts)} answer texts but "
                             f"{len(starts)} answer starts")
        impossible = bool(record["is_impossible"]) if version == "v2.0" else False
        _add(examples, f"{where}: record {index}", question_id, _text(record["question"]),
             _text(record["context"]), [(_text(t), int(s)) for t, s in zip(texts, starts)], impossible)
    return where


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------------------------------- encoding
def encode(examples: SquadExamples, tokenizer, seq_len: int, doc_stride: int, max_query_len: int,
           train: bool) -> dict[str, np.ndarray]:
    """Windows ("features") of [CLS] question [SEP] context-window [SEP], padded to seq_len, as int32 arrays.

    Questions are cut to their first max_query_len WordPieces. A context too long for one window is split into
    several, consecutive windows sharing `doc_stride` tokens (Hugging Face's `stride`: the overlap, not the step
    between window starts as in Google's original BERT code). Returns input_ids, token_type_ids, attention_mask
    [F, seq_len] and example_index [F] (the example each window comes from), and
    - train: start_positions, end_positions [F], the window's token indices of the first gold answer's first and
      last token, or 0 ([CLS]) when the example has no answer or the answer is not wholly inside the window;
    - else: offsets [F, seq_len, 2], the (start, end) character offsets in the context of each context token,
      (-1, -1) for question tokens, special tokens and padding.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"tokenizer {type(tokenizer).__name__} is not a fast (Rust) tokenizer; SQuAD windows need "
                         f"its offsets")
    special = tokenizer.num_special_tokens_to_add(pair=True)
    room = seq_len - max_query_len - special  # context tokens per window when the question is longest
    if max_query_len < 1 or room < 1:
        raise InputError(f"seq_len {seq_len} leaves no room for context after a question of max_query_len "
                         f"{max_query_len} and {special} special tokens; use seq_len > {max_query_len + special}")
    if not 0 <= doc_stride < room:
        raise InputError(f"doc_stride {doc_stride} must be in [0, {room}): the overlap of consecutive windows must "
                         f"be less than the {room} context tokens a window holds (seq_len {seq_len} - "
                         f"max_query_len {max_query_len} - {special} special tokens)")
    parts: dict[str, list[np.ndarray]] = {}
    count = len(examples)
    with tqdm(total=count, desc="tokenise", unit="ex", smoothing=0.1) as bar:
        for start in range(0, count, ENCODE_BATCH):
            stop = min(start + ENCODE_BATCH, count)
            for name, values in _encode_batch(examples, start, stop, tokenizer, seq_len, doc_stride,
                                              max_query_len, train).items():
                parts.setdefault(name, []).append(values)
            bar.update(stop - start)
    return {name: np.concatenate(values).astype(np.int32) for name, values in parts.items()}


def _cut_questions(questions: list[str], tokenizer, max_query_len: int) -> list[str]:
    """Each question cut after its max_query_len-th WordPiece (at that piece's character end, so the prefix
    tokenises to exactly those pieces)."""
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    return [question if len(offsets) <= max_query_len else question[:offsets[max_query_len - 1][1]]
            for question, offsets in zip(questions, encoded["offset_mapping"])]


def _encode_batch(examples: SquadExamples, start: int, stop: int, tokenizer, seq_len: int, doc_stride: int,
                  max_query_len: int, train: bool) -> dict[str, np.ndarray]:
    questions = _cut_questions(examples.questions[start:stop], tokenizer, max_query_len)
    encoded = tokenizer(questions, examples.contexts[start:stop], truncation="only_second", max_length=seq_len,
                        stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                        padding="max_length", return_token_type_ids=True, return_attention_mask=True,
                        return_tensors="np")
    windows = len(encoded["input_ids"])
    example_index = encoded["overflow_to_sample_mapping"].astype(np.int64) + start
    arrays = {name: encoded[name] for name in ("input_ids", "token_type_ids", "attention_mask")}
    arrays["example_index"] = example_index
    # Context tokens are those of the second sequence; the rest (question, specials, padding) get no offsets.
    in_context = np.array([[sequence == 1 for sequence in encoded.sequence_ids(window)] for window in range(windows)],
                          bool).reshape(windows, seq_len)
    offsets = np.where(in_context[..., None], encoded["offset_mapping"], -1)
    if not train:
        arrays["offsets"] = offsets
        return arrays
    positions = np.full((windows, 2), NO_ANSWER, np.int64)
    for window in range(windows):
        answers = examples.answers[example_index[window]]
        if answers:
            positions[window] = _answer_tokens(offsets[window], answers[0])
    arrays["start_positions"], arrays["end_positions"] = positions[:, 0], positions[:, 1]
    return arrays


def _answer_tokens(offsets: np.ndarray, answer: tuple[str, int]) -> tuple[int, int]:
    """Token indices of the first and last context token that overlap the answer's characters, (0, 0) when the
    answer is not wholly inside this window's context."""
    text, char_start = answer
    char_end = char_start + len(text)
    tokens = np.flatnonzero(offsets[:, 0] >= 0)
    if len(tokens) == 0 or offsets[tokens[0], 0] > char_start or offsets[tokens[-1], 1] < char_end:
        return NO_ANSWER, NO_ANSWER
    # Overlapping tokens: those ending after the answer starts and starting before it ends (answers may begin or
    # end inside a token, e.g. "Broncos" in "Broncos'").
    overlap = tokens[(offsets[tokens, 1] > char_start) & (offsets[tokens, 0] < char_end)]
    if len(overlap) == 0:
        return NO_ANSWER, NO_ANSWER
    return int(overlap[0]), int(overlap[-1])
