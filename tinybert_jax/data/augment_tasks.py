"""TinyBERT augmentation of every task type, with the labels kept aligned (README, "Question answering ... and
named entities": augmentation).

- Sentences and pairs (GLUE, custom): `augment.augment_examples`; each text varied on its own, labels copied.
- Answer spans (SQuAD): the question is varied freely; the context is varied outside its gold answers, whose
  character starts follow the replaced words before them. One record per original question, question variant
  (with the original context) and context variant (with the original question); the id gets `#qN` / `#cN`.
  Unanswerable questions (v2.0) are varied the same way and stay unanswerable.
- Word tags (CoNLL-2003): only words tagged O are replaced, one word by one word (candidates are single words),
  so every tag stays on its word; a word the augmenter sees as several (U.S. -> U . S .) is left alone when any of
  them is an entity's.
Records are JSON in the ArrayRecord shards `augmented_files.write_augmented` writes, read back by `read_spans` /
`read_tagged`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from tinybert_jax.data import augment, augmented_files, conll, glue, squad
from tinybert_jax.data.augment import Augmenter, AugmentStats


def augment_sentences(examples: glue.TaskExamples, augmenter: Augmenter, out_dir: Path,
                      chunk_size: int = augment.CHUNK_SENTENCES, resume_key: Optional[dict] = None) -> dict:
    """Augments sentences and pairs into `out_dir` (overwritten), resumable from its last saved chunk of
    `chunk_size` examples when `resume_key` is the same (`augmented_files.write_augmented`); the same signature for
    every task kind (task/kinds.py)."""
    return augment.augment_examples(examples, augmenter, out_dir, True, chunk_size, resume_key)


def augment_spans(examples: squad.SquadExamples, augmenter: Augmenter, out_dir: Path,
                  chunk_size: int = augment.CHUNK_SENTENCES, resume_key: Optional[dict] = None) -> dict:
    return augmented_files.write_augmented(
        out_dir, len(examples), lambda start, stop, stats: _squad_records(examples, augmenter, start, stop, stats),
        augmenter, True, chunk_size, resume_key, new_stats=AugmentStats, head="span")


def augment_tagged(examples: conll.TaggedExamples, augmenter: Augmenter, out_dir: Path,
                   chunk_size: int = augment.CHUNK_SENTENCES, resume_key: Optional[dict] = None) -> dict:
    return augmented_files.write_augmented(
        out_dir, len(examples), lambda start, stop, stats: _tagged_records(examples, augmenter, start, stop, stats),
        augmenter, True, chunk_size, resume_key, new_stats=AugmentStats, head="token")


def read_sentences(out_dir: Path) -> glue.TaskExamples:
    """The examples `augment_sentences` wrote, in the type the task's reader returns; likewise for each kind."""
    return glue.TaskExamples(*augmented_files.read_augmented(out_dir))


def read_spans(out_dir: Path) -> squad.SquadExamples:
    _, records = augmented_files.read_records(out_dir, lambda r: (str(r["id"]), str(r["question"]), str(r["context"]),
                                                                  [(str(t), int(s)) for t, s in r["answers"]]))
    ids, questions, contexts, answers = (list(column) for column in zip(*records))
    return squad.SquadExamples(ids, questions, contexts, answers)


def read_tagged(out_dir: Path) -> conll.TaggedExamples:
    _, records = augmented_files.read_records(out_dir, lambda r: ([str(w) for w in r["words"]],
                                                                  np.asarray(r["tags"], np.int32)))
    words, tags = (list(column) for column in zip(*records))
    return conll.TaggedExamples(words, tags)


def _squad_records(examples: squad.SquadExamples, augmenter: Augmenter, start: int, stop: int,
                   stats: AugmentStats) -> Iterable[dict]:
    answers = examples.answers[start:stop]
    questions = augmenter.augment_variants(examples.questions[start:stop], 0, start, stats)
    keep = [[(begin, begin + len(text)) for text, begin in gold] for gold in answers]
    contexts = augmenter.augment_variants(examples.contexts[start:stop], 1, start, stats, keep=keep)
    for index, gold, question_variants, context_variants in zip(range(start, stop), answers, questions, contexts):
        question, context, name = examples.questions[index], examples.contexts[index], examples.ids[index]
        for number, variant in enumerate(question_variants):
            yield {"id": name + (f"#q{number}" if number else ""), "question": variant.text, "context": context,
                   "answers": [[text, begin] for text, begin in gold]}
        for number, variant in enumerate(context_variants[1:], start=1):
            yield {"id": f"{name}#c{number}", "question": question, "context": variant.text,
                   "answers": [[text, variant.position(begin)] for text, begin in gold]}


def _tagged_records(examples: conll.TaggedExamples, augmenter: Augmenter, start: int, stop: int,
                    stats: AugmentStats) -> Iterable[dict]:
    texts, keep = [], []
    for words, tags in zip(examples.words[start:stop], examples.tags[start:stop]):
        texts.append(" ".join(words))
        ends = np.cumsum([len(word) + 1 for word in words])  # one past each word's space
        keep.append([(end - len(word) - 1, end - 1) for word, tag, end in zip(words, tags, ends)
                     if conll.TAGS[tag] != "O"])
    for words, tags, variants in zip(examples.words[start:stop], examples.tags[start:stop],
                                     augmenter.augment_variants(texts, 0, start, stats, keep=keep)):
        for variant in variants:
            new_words = variant.text.split(" ")
            if len(new_words) != len(words):  # candidates are single words: this cannot happen
                raise RuntimeError(f"augmenting {words} changed its word count: {new_words}")
            yield {"words": new_words, "tags": [int(tag) for tag in tags]}
