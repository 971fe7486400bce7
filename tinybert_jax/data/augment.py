"""TinyBERT data augmentation (the TinyBERT paper, Algorithm 1), batched and jitted.

Per sentence:
1. Words: runs of letters and digits, an apostrophe between two such runs included (contractions such as
   don't, it's, we'll, o'clock, rock'n'roll are one word); every other non-space character is a word of its own
   (BERT's basic tokenizer splits punctuation the same way). The text between words is kept, so a variant
   differs from the original only in the replaced words.
2. Candidate positions: alphabetic words not in STOP_WORDS (so never a contraction).
3. Candidates of a position:
   - the word is a single WordPiece of the MLM's tokenizer: the MLM reads `[CLS] masked [SEP] original [SEP]`
     (token types 0, then 1) with that piece masked; of the top-K predictions at the mask, `##` pieces, special
     tokens and `[unusedN]`-style placeholders are dropped (top-K, then drop, as the original: fewer than K
     may remain);
   - otherwise the K nearest GloVe words by cosine similarity, itself excluded; none without GloVe or for a word
     GloVe lacks.
   Candidates of a Title-case word are capitalised (from both sources: an uncased MLM predicts lower case).
4. N_a trials: at every position that has candidates, with probability p_t the word is replaced by a uniformly
   drawn candidate; the trial's sentence is kept if it differs from the original and from those kept before.
Randomness comes from a numpy Generator per sentence seeded with (seed, column, sentence index), so the output
depends neither on the batch size nor on how the data is cut into chunks.

Speed: the masked inputs of many sentences are padded to a few lengths (multiples of LENGTH_STEP) and run in
fixed-shape batches of `batch_size` rows through one jitted forward that returns only the top-K token ids at
the mask positions; the MLM head runs on those positions alone. GloVe neighbours of many words come from one
matrix product. `Augmenter.augment_one_mask_per_forward` runs the same forward on one masked input at a time,
the original's way, and returns the same output: it is the benchmark's reference.

Augmented task data (`augment_examples`) is one record per example: each original example, then the variants of
text_a paired with the original text_b, then the variants of text_b paired with the original text_a (the columns
are augmented independently; the original code mutated text_a while augmenting text_b). Labels are copied. The
files (resumable parts, shards, metadata.json, reading back) are data/augmented_files.py's.
SQuAD and CoNLL records (data/augment_tasks.py) keep their labels aligned through `Augmenter.augment_variants`:
words inside protected character ranges are never replaced, and each variant lists its replacements.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
from pathlib import Path
from typing import Any, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from tinybert_jax import sharding
from tinybert_jax.data.augmented_files import write_augmented
from tinybert_jax.data.glove import GloveIndex, load_glove
from tinybert_jax.data.prepare import load_tokenizer
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import Bert, BertConfig, unstack_layers

log = logging.getLogger(__name__)

STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both but
by can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only or
other our ours ourselves out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which while who whom
why will with would you your yours yourself yourselves
""".split())
LENGTH_STEP = 16  # masked inputs are padded to a multiple of this: few compiled shapes, little padding
# sentences planned and resolved together and saved as one part (bounds host memory and the work an interruption
# loses; feeds the progress bar)
CHUNK_SENTENCES = 1024
GLOVE_QUERY_BATCH = 256

Choice = tuple[tuple[int, int], list[str]]  # (character span of a word, its candidates)
Edit = tuple[tuple[int, int], str]  # (character span of a replaced word, its replacement)

# A contraction is one word, and not an alphabetic one, so no part of it is a candidate: its pieces ("don", "t",
# "s" of it's) are not words, and replacing one makes non-words such as "don'x".
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*|\S")
_PLACEHOLDER = re.compile(r"^\[.*\]$")  # [unused0], [PAD], ...: vocabulary entries that are not words


def split_words(text: str) -> list[tuple[int, int]]:
    """Character spans of the words of `text` (module docstring, step 1)."""
    return [match.span() for match in _WORD.finditer(text)]


def is_candidate(word: str) -> bool:
    return word.isalpha() and word.lower() not in STOP_WORDS


def match_case(candidate: str, word: str) -> str:
    return candidate[:1].upper() + candidate[1:] if word.istitle() else candidate


@dataclasses.dataclass
class AugmentStats:
    """Counts over the distinct sentences of each chunk (a sentence repeated within a chunk is resolved once)."""
    sentences: int = 0
    positions: int = 0  # candidate positions
    mlm_positions: int = 0
    glove_positions: int = 0
    positions_without_candidates: int = 0  # not in GloVe / no GloVe / every prediction dropped
    mlm_forwards: int = 0  # device calls of the MLM forward
    variants: int = 0  # sentences produced beyond the originals


@dataclasses.dataclass(frozen=True)
class Variant:
    """A sentence and the word replacements that made it from the original (none for the original)."""
    text: str
    edits: tuple[Edit, ...] = ()  # in text order

    def position(self, index: int) -> int:
        """Where character `index` of the original, outside every replaced word, is in this variant (answer
        offsets of SQuAD contexts follow the text around them)."""
        return index + sum(len(new) - (stop - start) for (start, stop), new in self.edits if stop <= index)


@dataclasses.dataclass(frozen=True)
class MaskedInput:
    ids: np.ndarray  # int32 [CLS] masked [SEP] original [SEP], unpadded
    type_a_length: int  # leading tokens with token type 0
    mask_index: int


def masked_lm_input(pieces: np.ndarray, position: int, max_len: int, cls_id: int, sep_id: int,
                    mask_id: int) -> MaskedInput:
    """[CLS] pieces-with-`position`-masked [SEP] pieces [SEP], at most `max_len` tokens.

    Too long: the original copy is cut at its end; if the masked copy alone does not fit, the input is a window
    of the masked copy around the mask, without the original copy.
    """
    masked = pieces.copy()
    masked[position] = mask_id
    original_room = max_len - 3 - len(pieces)
    if original_room > 0:
        ids = np.concatenate([[cls_id], masked, [sep_id], pieces[:original_room], [sep_id]])
        return MaskedInput(ids.astype(np.int32), len(pieces) + 2, position + 1)
    width = min(len(pieces), max_len - 2)
    start = min(max(position - width // 2, 0), len(pieces) - width)
    ids = np.concatenate([[cls_id], masked[start:start + width], [sep_id]])
    return MaskedInput(ids.astype(np.int32), len(ids), position - start + 1)


def padded_length(length: int, max_len: int) -> int:
    return min(math.ceil(length / LENGTH_STEP) * LENGTH_STEP, max_len)


def _top_k_at_mask(params: dict, ids: jax.Array, types: jax.Array, attention_mask: jax.Array,
                   mask_index: jax.Array, *, cfg: BertConfig, k: int) -> jax.Array:
    """[rows, k] token ids, best first, predicted at each row's mask position.

    The encoder runs without heads and the MLM head only on the mask positions: [rows, T, vocab] logits are never
    formed (on BERT-base they would be ~25% of the forward's FLOPs and ~100x the bytes of the answer).
    """
    encoder_params = {name: value for name, value in params.items() if name not in ("mlm_head", "pooler")}
    encoder = Bert(cfg.replace(mlm_head=False, pooler=False))
    hidden = encoder.apply({"params": encoder_params}, ids, types, attention_mask, deterministic=True,
                           output_layers=()).hidden_states[-1]
    at_mask = jnp.take_along_axis(hidden, mask_index[:, None, None], axis=1)[:, 0]
    model = Bert(cfg).bind({"params": params})
    logits = model.mlm_head(at_mask, model.embeddings.word_embeddings)
    return jax.lax.top_k(logits, k)[1]


def _check_settings(cfg: BertConfig, k: int, p_t: float, n_a: int, batch_size: int, max_seq_len: int) -> None:
    if not cfg.mlm_head:
        raise InputError("the MLM model has no masked-LM head: TinyBERT DA needs a BertForMaskedLM checkpoint "
                         "(with cls.predictions weights)")
    if k < 1:
        raise InputError(f"augmentation k={k}: the number of candidates per word must be at least 1")
    if not 0 <= p_t <= 1:
        raise InputError(f"augmentation p_t={p_t} is not a probability in [0, 1]")
    if n_a < 0:
        raise InputError(f"augmentation n_a={n_a}: the number of trials per sentence must be >= 0")
    if batch_size < 1:
        raise InputError(f"augmentation batch_size={batch_size} must be at least 1")
    if not 8 <= max_seq_len <= cfg.max_position_embeddings:
        raise InputError(f"augmentation max_seq_len={max_seq_len} must be in [8, {cfg.max_position_embeddings}] "
                         f"(the MLM's max_position_embeddings)")


class Augmenter:
    """TinyBERT DA with a masked-LM teacher (module docstring). Settings are fixed at construction.

    `glove`: (words, vectors) as `load_glove` returns them, or None (multi-piece words then keep their form).
    `mlm_path` / `glove_path` are only recorded in the metadata `augment_examples` writes.
    """

    def __init__(self, mlm_cfg: BertConfig, mlm_params: dict[str, Any], tokenizer,
                 glove: Optional[tuple[list[str], np.ndarray]] = None, *, k: int = 15, p_t: float = 0.4,
                 n_a: int = 20, seed: int = 0, batch_size: int = 64, max_seq_len: int = 128, mlm_path: str = "",
                 glove_path: str = ""):
        _check_settings(mlm_cfg, k, p_t, n_a, batch_size, max_seq_len)
        if len(tokenizer) > mlm_cfg.vocab_size:
            raise InputError(f"the tokenizer has {len(tokenizer)} tokens but the MLM's vocabulary only "
                             f"{mlm_cfg.vocab_size}: they do not belong together")
        self.k, self.p_t, self.n_a, self.seed = k, p_t, n_a, seed
        self.batch_size, self.max_seq_len = batch_size, max_seq_len
        self.mlm_path, self.glove_path = mlm_path, glove_path
        self._tokenizer = tokenizer
        self._special = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id)
        self._pad_id, self._unk_id = tokenizer.pad_token_id, tokenizer.unk_token_id
        self._predictable = self._predictable_words(tokenizer)
        # The MLM is frozen: per-layer arrays run faster than slices of stacked ones (see unstack_layers).
        cfg, params = unstack_layers(mlm_cfg, mlm_params)
        # Every masked-LM batch is split by rows over this process's devices (output independent of their count).
        self._mesh = sharding.local_rows_mesh()
        self._params = sharding.put_replicated(params, self._mesh)
        self._top_k = min(k, mlm_cfg.vocab_size)
        self._forward = jax.jit(functools.partial(_top_k_at_mask, cfg=cfg, k=self._top_k))
        self._glove = GloveIndex(*glove) if glove is not None else None
        if self._glove is None:
            log.warning("augmentation without GloVe: words that are not a single WordPiece of the MLM's "
                        "vocabulary are left unchanged")

    @staticmethod
    def _predictable_words(tokenizer) -> list[Optional[str]]:
        """Token id -> the word it stands for, None for pieces that cannot replace a word."""
        special = set(tokenizer.all_special_ids)
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        # token None: an id the vocabulary skips (a vocab.txt listing a token twice leaves a gap)
        return [None if token is None or i in special or token.startswith("##") or _PLACEHOLDER.match(token)
                else token for i, token in enumerate(tokens)]

    def settings(self) -> dict[str, Any]:
        return {"k": self.k, "p_t": self.p_t, "n_a": self.n_a, "seed": self.seed, "max_seq_len": self.max_seq_len,
                "mlm": self.mlm_path, "glove": self.glove_path or None}

    # ------------------------------------------------------------------------------------------- public
    def augment(self, texts: list[str], column: int = 0, first_index: int = 0, progress: bool = True,
                stats: Optional[AugmentStats] = None) -> list[list[str]]:
        """For each text: [the text, up to n_a distinct variants].

        `column` and `first_index` (the dataset index of texts[0]) select the random streams, so augmenting a
        dataset in pieces gives what one call on all of it gives.
        """
        return [[variant.text for variant in variants]
                for variants in self._augment(texts, column, first_index, progress, stats, self.batch_size)]

    def augment_variants(self, texts: list[str], column: int = 0, first_index: int = 0,
                         stats: Optional[AugmentStats] = None,
                         keep: Optional[list[list[tuple[int, int]]]] = None) -> list[list[Variant]]:
        """As `augment`, with each variant's replacements; no word overlapping keep[i]'s character ranges is
        replaced in texts[i] (entities of a tagged sentence, the answer in a SQuAD context)."""
        return self._augment(texts, column, first_index, False, stats, self.batch_size, keep)

    def augment_one_mask_per_forward(self, texts: list[str], column: int = 0, first_index: int = 0,
                                     progress: bool = True, stats: Optional[AugmentStats] = None) -> list[list[str]]:
        """The same algorithm and output as `augment`, one masked input and one GloVe query per device call, as
        the original runs it: the reference the benchmark and tests compare `augment` with."""
        return [[variant.text for variant in variants]
                for variants in self._augment(texts, column, first_index, progress, stats, 1)]

    def warm_up(self, texts: list[str]) -> None:
        """Compiles every shape that augmenting `texts` needs, batched and one at a time."""
        ignored = AugmentStats()
        inputs, glove_rows = self._plan([split_words(text) for text in texts], texts, ignored)[:2]
        one_per_length = {padded_length(len(x.ids), self.max_seq_len): x for x in inputs}
        for rows in (self.batch_size, 1):
            self._mlm_top_k(list(one_per_length.values()), rows, ignored)
            if glove_rows:
                self._glove.neighbours(glove_rows[:1], self.k, min(GLOVE_QUERY_BATCH, rows))

    # ----------------------------------------------------------------------------------------- pipeline
    def _augment(self, texts: list[str], column: int, first_index: int, progress: bool,
                 stats: Optional[AugmentStats], rows: int,
                 keep: Optional[list[list[tuple[int, int]]]] = None) -> list[list[Variant]]:
        stats = AugmentStats() if stats is None else stats
        out: list[list[Variant]] = []
        with tqdm(total=len(texts), desc="augment", unit="sentence", disable=not progress, smoothing=0.1) as bar:
            for start in range(0, len(texts), CHUNK_SENTENCES):
                chunk = texts[start:start + CHUNK_SENTENCES]
                distinct = list(dict.fromkeys(chunk))
                choices = dict(zip(distinct, self._choices(distinct, rows, stats)))
                for offset, text in enumerate(chunk):
                    rng = np.random.default_rng((self.seed, column, first_index + start + offset))
                    kept = keep[start + offset] if keep is not None else ()
                    allowed = [choice for choice in choices[text]
                               if not any(choice[0][0] < end and begin < choice[0][1] for begin, end in kept)]
                    out.append(sample_variants(text, allowed, self.n_a, self.p_t, rng))
                    stats.variants += len(out[-1]) - 1
                stats.sentences += len(chunk)
                bar.update(len(chunk))
        return out

    def _choices(self, texts: list[str], rows: int, stats: AugmentStats) -> list[list[Choice]]:
        """Per text: (word span, candidates) for every candidate position with candidates, in text order."""
        spans = [split_words(text) for text in texts]
        inputs, glove_rows, mlm_slots, glove_slots = self._plan(spans, texts, stats)
        predicted = self._mlm_top_k(inputs, rows, stats)
        distinct_rows = list(dict.fromkeys(glove_rows))  # a word repeated in the chunk is looked up once
        neighbours = {}
        if distinct_rows:
            found_rows = self._glove.neighbours(distinct_rows, self.k, min(GLOVE_QUERY_BATCH, rows))
            neighbours = dict(zip(distinct_rows, found_rows))
        found: list[dict[int, list[str]]] = [{} for _ in texts]
        for (sentence, position), ids in zip(mlm_slots, predicted):
            found[sentence][position] = [self._predictable[i] for i in ids
                                         if i < len(self._predictable) and self._predictable[i] is not None]
        for (sentence, position), row in zip(glove_slots, glove_rows):
            found[sentence][position] = neighbours[row]
        result = []
        for sentence, by_position in enumerate(found):
            text, sentence_spans = texts[sentence], spans[sentence]
            choices = []
            for position in sorted(by_position):
                span = sentence_spans[position]
                word = text[span[0]:span[1]]
                candidates = list(dict.fromkeys(match_case(c, word) for c in by_position[position]))
                if candidates:
                    choices.append((span, candidates))
            stats.positions_without_candidates += len(by_position) - len(choices)
            result.append(choices)
        return result

    def _plan(self, spans: list[list[tuple[int, int]]], texts: list[str], stats: AugmentStats):
        """Masked MLM inputs and GloVe rows to resolve, with the (sentence, word position) each belongs to."""
        words = {text[a:b] for text, sentence in zip(texts, spans) for a, b in sentence}
        word_list = sorted(words)
        encoded = self._tokenizer(word_list, add_special_tokens=False, return_attention_mask=False,
                                  return_token_type_ids=False)["input_ids"] if word_list else []
        pieces = dict(zip(word_list, encoded))
        inputs, glove_rows, mlm_slots, glove_slots = [], [], [], []
        for sentence, (text, sentence_spans) in enumerate(zip(texts, spans)):
            sentence_words = [text[a:b] for a, b in sentence_spans]
            sentence_pieces = np.asarray([p for word in sentence_words for p in pieces[word]], np.int32)
            offset = 0
            for position, word in enumerate(sentence_words):
                word_pieces = pieces[word]
                if is_candidate(word):
                    stats.positions += 1
                    if len(word_pieces) == 1 and word_pieces[0] != self._unk_id:
                        stats.mlm_positions += 1
                        inputs.append(masked_lm_input(sentence_pieces, offset, self.max_seq_len, *self._special))
                        mlm_slots.append((sentence, position))
                    elif self._glove is not None and (row := self._glove.row(word)) is not None:
                        stats.glove_positions += 1
                        glove_rows.append(row)
                        glove_slots.append((sentence, position))
                    else:
                        stats.positions_without_candidates += 1
                offset += len(word_pieces)
        return inputs, glove_rows, mlm_slots, glove_slots

    def _mlm_top_k(self, inputs: list[MaskedInput], rows: int, stats: AugmentStats) -> np.ndarray:
        """[len(inputs), k] predicted ids: inputs grouped by padded length into batches of exactly `rows` (plus
        padding rows up to a multiple of the local device count), each split over the devices."""
        devices = self._mesh.devices.size
        padded_rows = -(-rows // devices) * devices
        by_length: dict[int, list[int]] = {}
        for index, x in enumerate(inputs):
            by_length.setdefault(padded_length(len(x.ids), self.max_seq_len), []).append(index)
        pending = []
        for length, indices in sorted(by_length.items()):
            for start in range(0, len(indices), rows):
                batch = indices[start:start + rows]
                arrays = sharding.put_rows(_pad_batch([inputs[i] for i in batch], padded_rows, length, self._pad_id),
                                           self._mesh)
                pending.append((batch, self._forward(self._params, *arrays)))  # async: the host builds the next
        stats.mlm_forwards += len(pending)
        predicted = np.zeros((len(inputs), self._top_k), np.int32)
        for batch, ids in pending:
            predicted[batch] = np.asarray(ids)[:len(batch)]
        return predicted


def _pad_batch(inputs: list[MaskedInput], rows: int, length: int, pad_id: int) -> tuple[np.ndarray, ...]:
    """ids, token types, attention mask [rows, length] and mask index [rows]; missing rows are all padding."""
    ids = np.full((rows, length), pad_id, np.int32)
    types = np.zeros((rows, length), np.int32)
    attention_mask = np.zeros((rows, length), np.int32)
    mask_index = np.zeros(rows, np.int32)
    for row, x in enumerate(inputs):
        ids[row, :len(x.ids)] = x.ids
        types[row, x.type_a_length:len(x.ids)] = 1
        attention_mask[row, :len(x.ids)] = 1
        mask_index[row] = x.mask_index
    return ids, types, attention_mask, mask_index


def sample_variants(text: str, choices: list[Choice], n_a: int, p_t: float,
                    rng: np.random.Generator) -> list[Variant]:
    """[text, distinct variants]: n_a trials replacing each word of `choices` with probability p_t by a uniformly
    drawn candidate of its list (step 4 of the module docstring)."""
    variants = [Variant(text)]
    if not choices or n_a == 0:
        return variants
    replace = rng.random((n_a, len(choices))) < p_t
    picks = rng.integers(0, [len(candidates) for _, candidates in choices], size=(n_a, len(choices)))
    seen = {text}
    for trial in range(n_a):
        parts, end, edits = [], 0, []
        for j in np.flatnonzero(replace[trial]):
            (start, stop), candidates = choices[j]
            edits.append(((start, stop), candidates[picks[trial, j]]))
            parts += [text[end:start], edits[-1][1]]
            end = stop
        variant = "".join(parts) + text[end:]
        if variant not in seen:
            seen.add(variant)
            variants.append(Variant(variant, tuple(edits)))
    return variants


def load_augmenter(mlm_path: str, glove_path: Optional[str] = None, **settings) -> Augmenter:
    """An Augmenter from a Hugging Face BertForMaskedLM directory (weights + tokenizer) and a GloVe text file."""
    from tinybert_jax.convert import load_hf_bert

    cfg, params = load_hf_bert(mlm_path)
    if not cfg.mlm_head:
        raise InputError(f"{mlm_path}: no masked-LM head (cls.predictions weights); TinyBERT DA needs a "
                         f"BertForMaskedLM checkpoint such as bert-base-uncased")
    glove = load_glove(glove_path) if glove_path else None
    return Augmenter(cfg, params, load_tokenizer(mlm_path), glove, mlm_path=str(mlm_path),
                     glove_path=str(glove_path or ""), **settings)


# ------------------------------------------------------------------------------------------ task data files
def _example_records(a_variants: list[str], b_variants: Optional[list[str]], label) -> Iterable[dict]:
    b_original = b_variants[0] if b_variants is not None else None
    for text_a in a_variants:
        yield {"text_a": text_a, "text_b": b_original, "label": label}
    for text_b in (b_variants or [])[1:]:
        yield {"text_a": a_variants[0], "text_b": text_b, "label": label}


def augment_examples(examples, augmenter: Augmenter, out_dir: str | Path, overwrite: bool = False,
                     chunk_size: int = CHUNK_SENTENCES, resume_key: Optional[dict] = None) -> dict[str, Any]:
    """Augments task examples (any object with text_a, text_b or None, labels) into `out_dir` (resumable, on
    every process: `write_augmented`); returns the metadata. Record order in the module docstring, their fields
    in data/augmented_files.py's."""
    text_a, text_b, labels = list(examples.text_a), examples.text_b, np.asarray(examples.labels)
    if (text_b is not None and len(text_b) != len(text_a)) or len(labels) != len(text_a):
        raise InputError(f"examples have {len(text_a)} text_a, {'no' if text_b is None else len(text_b)} text_b "
                         f"and {len(labels)} labels; every column needs one entry per example")

    def chunk_records(start: int, stop: int, stats: AugmentStats) -> Iterable[dict]:
        a_variants = augmenter.augment(text_a[start:stop], 0, start, progress=False, stats=stats)
        b_variants = (augmenter.augment(list(text_b[start:stop]), 1, start, progress=False, stats=stats)
                      if text_b is not None else [None] * len(a_variants))
        for offset, (a, b) in enumerate(zip(a_variants, b_variants)):
            yield from _example_records(a, b, labels[start + offset].item())

    return write_augmented(out_dir, len(text_a), chunk_records, augmenter, overwrite, chunk_size, resume_key,
                           new_stats=AugmentStats, pair=text_b is not None, label_dtype=labels.dtype.str)
