"""The task kinds, one table entry each (docs/data.md, "Task kinds"): sequence classification or regression
(GLUE, your own files), token classification (CoNLL-2003 NER) and answer spans (SQuAD). An entry says everything
a stage needs to know about a kind: the model head, the default length, the encoding, the dev set with its
metric and chance level, the fine-tuning and stage-2 losses, whether teacher outputs follow its label names, the
settings its encoding depends on, the transformers class of its export, its augmentation, and whether `predict`
serves it. Fine-tuning, task distillation, evaluation, predict, export, fingerprints and augmentation read it;
a new kind is one entry plus its functions."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from tinybert_jax.data import augment_tasks, conll, glue, squad
from tinybert_jax.task import catalog, fingerprint, glue_metrics, span_metrics, steps, tag_metrics
from tinybert_jax.task.arrays import Arrays, DevSet, bucket_lengths
from tinybert_jax.task.spec import Task

if TYPE_CHECKING:
    import ml_collections

# TinyBERT's task lengths (docs/data.md): single sentences, pairs; CoNLL sentences, and SQuAD windows as BERT's
# SQuAD runs
SINGLE_SENTENCE_SEQ_LEN, PAIR_SEQ_LEN, TOKEN_SEQ_LEN, SPAN_SEQ_LEN = 64, 128, 128, 384

# (task, examples, tokenizer, seq_len, data config) -> the encoded arrays or the dev set
Encoder = Callable[[Task, Any, Any, int, "ml_collections.ConfigDict"], Any]


@dataclasses.dataclass(frozen=True)
class TaskKind:
    head: str  # the model's task head (models/bert.py TASK_HEADS)
    default_seq_len: Callable[[Task], int]  # data.seq_len=0
    encode_train: Encoder  # the training arrays: inputs and the targets the head trains on
    dev_set: Encoder  # a dev split's arrays with its metric and chance level
    losses: steps.HeadLosses  # fine-tuning (gold labels) and stage 2 (the teacher's outputs)
    auto_class: str  # the transformers class that loads an export
    # augment(examples, augmenter, out_dir, chunk_size, resume_key) and the reader of what it wrote
    augment: Callable[..., dict]
    read_augmented: Callable[[Path], Any]
    digest: Callable[[Any], str]  # the texts and labels of a split, for fingerprints (task/cache_keys.py)
    label_order: bool = True  # outputs are labels, reordered by a checkpoint's id2label (span: start and end)
    encoding_keys: tuple[str, ...] = ()  # data.* settings the encoded arrays depend on besides data.seq_len
    predicts: bool = False  # `predict` writes its test predictions


def kind_of(task: Task) -> TaskKind:
    return KINDS[task.kind]


# ------------------------------------------------------------------------------------------ sequences
def _sequence_seq_len(task: Task) -> int:
    return SINGLE_SENTENCE_SEQ_LEN if len(task.text_columns) == 1 else PAIR_SEQ_LEN


def _encode_sequences(task: Task, examples: glue.TaskExamples, tokenizer, seq_len: int, data) -> Arrays:
    return glue.encode(examples, tokenizer, seq_len)


def _digest_sequences(examples: glue.TaskExamples) -> str:
    return fingerprint.digest_texts(examples.text_a, examples.text_b) + fingerprint.digest_arrays(examples.labels)


def _sequence_dev_set(task: Task, examples: glue.TaskExamples, tokenizer, seq_len: int, data) -> DevSet:
    arrays = glue.encode(examples, tokenizer, seq_len)
    labels = arrays["labels"]
    return DevSet(arrays, lambda logits: glue_metrics.task_metrics(task, logits, labels),
                  chance=glue_metrics.chance_score(task, labels))


# ------------------------------------------------------------------------------------------ word tags
def _encode_tagged(task: Task, examples: conll.TaggedExamples, tokenizer, seq_len: int, data) -> Arrays:
    arrays = conll.encode(examples, tokenizer, seq_len)
    return {name: values for name, values in arrays.items() if name != "word_positions"}


def _digest_tagged(examples: conll.TaggedExamples) -> str:
    words = ["\x1c".join(sentence) for sentence in examples.words]
    return fingerprint.digest_texts(words) + fingerprint.digest_arrays(np.concatenate(examples.tags))


def _tagged_dev_set(task: Task, examples: conll.TaggedExamples, tokenizer, seq_len: int, data) -> DevSet:
    """Entity F1 over every word; words cut off by seq_len count as predicted O."""
    arrays = conll.encode(examples, tokenizer, seq_len)
    gold = [[task.labels[tag] for tag in tags] for tags in examples.tags]

    def tag_scores(logits: np.ndarray) -> dict[str, float]:
        predicted = tag_metrics.word_predictions(logits, arrays["word_positions"], [len(w) for w in gold],
                                                 task.labels)
        return tag_metrics.entity_scores(gold, predicted)

    return DevSet(arrays, tag_scores, chance=0.0)


# ------------------------------------------------------------------------------------------ answer spans
def _encode_spans(task: Task, examples: squad.SquadExamples, tokenizer, seq_len: int, data) -> Arrays:
    """One row per context window, with start_positions and end_positions."""
    return squad.encode(examples, tokenizer, seq_len, data.doc_stride, data.max_query_len, train=True)


def _digest_spans(examples: squad.SquadExamples) -> str:
    answers = ["\x1d".join(f"{text}\x1c{start}" for text, start in answer) for answer in examples.answers]
    return fingerprint.digest_texts(examples.ids, examples.questions, examples.contexts, answers)


def _span_dev_set(task: Task, examples: squad.SquadExamples, tokenizer, seq_len: int, data) -> DevSet:
    """Answers from the best start/end pair over all windows of a question; with unanswerable questions (v2.0)
    answering nothing everywhere scores their share."""
    arrays = squad.encode(examples, tokenizer, seq_len, data.doc_stride, data.max_query_len, train=False)
    golds = [[text for text, _ in answers] for answers in examples.answers]
    with_no_answer = "no_answer_f1" in task.metrics

    def span_scores(logits: np.ndarray) -> dict[str, float]:
        answers, null_margin = span_metrics.best_spans(logits[..., 0], logits[..., 1], arrays["offsets"],
                                                       arrays["example_index"], examples.contexts)
        return span_metrics.squad_scores(answers, null_margin, golds, with_no_answer=with_no_answer)

    no_answer_share = float(np.mean([not gold for gold in golds])) if with_no_answer else 0.0
    return DevSet(arrays, span_scores, chance=no_answer_share)


KINDS: dict[str, TaskKind] = {
    "sequence": TaskKind(
        head="sequence", default_seq_len=_sequence_seq_len, encode_train=_encode_sequences,
        dev_set=_sequence_dev_set, losses=steps.SEQUENCE_LOSSES, auto_class="AutoModelForSequenceClassification",
        augment=augment_tasks.augment_sentences, read_augmented=augment_tasks.read_sentences, digest=_digest_sequences,
        predicts=True),
    "token": TaskKind(
        head="token", default_seq_len=lambda task: TOKEN_SEQ_LEN, encode_train=_encode_tagged,
        dev_set=_tagged_dev_set, losses=steps.TOKEN_LOSSES, auto_class="AutoModelForTokenClassification",
        augment=augment_tasks.augment_tagged, read_augmented=augment_tasks.read_tagged, digest=_digest_tagged),
    "span": TaskKind(
        head="span", default_seq_len=lambda task: SPAN_SEQ_LEN, encode_train=_encode_spans,
        dev_set=_span_dev_set, losses=steps.SPAN_LOSSES, auto_class="AutoModelForQuestionAnswering",
        augment=augment_tasks.augment_spans, read_augmented=augment_tasks.read_spans, digest=_digest_spans,
        label_order=False,
        encoding_keys=("doc_stride", "max_query_len")),
}


def seq_len_for(task: Task, configured: int) -> int:
    """data.seq_len, or when 0 the kind's default length."""
    return configured or kind_of(task).default_seq_len(task)


def encode_train(task: Task, examples, tokenizer, seq_len: int, data: ml_collections.ConfigDict) -> Arrays:
    return kind_of(task).encode_train(task, examples, tokenizer, seq_len, data)


def load_dev_sets(task: Task, data: ml_collections.ConfigDict, tokenizer, seq_len: int) -> dict[str, DevSet]:
    """Every dev split of the task (MNLI: matched and mismatched), encoded, with its metric and buckets."""
    buckets = bucket_lengths(data.buckets, seq_len)
    make = kind_of(task).dev_set
    return {split: dataclasses.replace(make(task, catalog.read_split(task, data, split), tokenizer, seq_len, data),
                                       buckets=buckets) for split in task.dev_splits}
