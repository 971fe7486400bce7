"""SQuAD v1.1 / v2.0 and CoNLL-2003 end to end with tiny models: fine-tune a teacher, augment (v2.0), distil in
two stages (CoNLL in length buckets), export BertForQuestionAnswering / BertForTokenClassification with logits
equal to ours; the token and span losses against numpy."""
import json

import numpy as np
import pytest
import torch
import transformers
from helpers import FILLER, TEST_SETTINGS, run_main, save_model

from configs import task as task_config
from tinybert_jax import convert
from tinybert_jax.data import conll, squad
from tinybert_jax.data.augment_tasks import read_spans
from tinybert_jax.data.prepare import load_tokenizer
from tinybert_jax.task import span_metrics
from tinybert_jax.task.evaluate import predict
from tinybert_jax.task.steps import SPAN_LOSSES, TOKEN_LOSSES, PredictionLoss, prediction_distill_loss

ANSWERS = "paris london rome berlin madrid".split()  # the answer of "where" questions: the city in the context
PERSONS, PLACES = "john mary anna".split(), "paris london rome".split()
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "where", "?", "##s"] + ANSWERS
         + [word for word in PERSONS if word not in ANSWERS] + ["smith", "corp", "acme"] + FILLER)
STUDENT_F1_FLOOR = 0.9  # these tiny students reach dev F1 1.0 on both versions
TAIL = ("--config.data.seq_len=32", "--config.data.doc_stride=8", "--config.data.max_query_len=8",
        "--config.eval.every_steps=20", "--config.log.every_steps=10")


def squad_file(path, rng, count, with_impossible):
    """Questions `where ?` over contexts of filler words with one city (the answer) or, for v2.0, a third of
    them with none (no answer); long contexts span several 32-token windows."""
    paragraphs = []
    for index in range(count):
        words = list(rng.choice(FILLER, rng.integers(4, 40)))
        impossible = with_impossible and index % 3 == 0
        answers = []
        if not impossible:
            position = int(rng.integers(0, len(words) + 1))
            words.insert(position, str(rng.choice(ANSWERS)))
            start = len(" ".join(words[:position])) + (1 if position else 0)
            answers = [{"text": words[position], "answer_start": start}]
        qa = {"id": f"q{index}", "question": "where ?", "answers": answers}
        if with_impossible:
            qa["is_impossible"] = impossible
        paragraphs.append({"context": " ".join(words), "qas": [qa]})
    path.write_text(json.dumps({"version": "x", "data": [{"title": "t", "paragraphs": paragraphs}]}))


def write_squad(directory, version, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    for split, count in (("train", 240), ("dev", 48)):
        squad_file(directory / f"{split}-{version}.json", rng, count, with_impossible=version == "v2.0")
    return directory


def conll_sentence(rng):
    """Filler words (some with two WordPieces: movie ##s) around a person (john smith: B-PER I-PER), a place
    (B-LOC) and an organisation (acme corp: B-ORG I-ORG), in IOB2."""
    words, tags = [], []
    for _ in range(int(rng.integers(2, 5))):
        kind = rng.integers(0, 4)
        chunk = {0: [(str(rng.choice(PERSONS)), "B-PER"), ("smith", "I-PER")], 1: [(str(rng.choice(PLACES)), "B-LOC")],
                 2: [("acme", "B-ORG"), ("corp", "I-ORG")]}.get(kind, [])
        filler = [(str(rng.choice(FILLER)) + ("s" if rng.random() < 0.2 else ""), "O")
                  for _ in range(int(rng.integers(1, 4)))]
        for word, tag in filler + chunk:
            words.append(word)
            tags.append(tag)
    return words, tags


def write_conll(directory, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    for split, count in (("train", 200), ("valid", 40), ("test", 10)):
        lines = ["-DOCSTART- -X- -X- O", ""]
        for _ in range(count):
            words, tags = conll_sentence(rng)
            lines += [f"{word} NN I-NP {tag}" for word, tag in zip(words, tags)] + [""]
        (directory / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return directory


def fine_tune_and_distil(tmp_path, task, data, teacher_epochs, stage2_epochs, augment, buckets=""):
    pretrained = save_model(tmp_path / "pretrained", "BertForMaskedLM", vocab=VOCAB)
    teacher = tmp_path / "teacher"
    result = run_main("finetune", teacher, f"--config.task={task}", f"--config.data.source={data}",
                      f"--config.teacher.path={pretrained}", "--config.train.batch_size=16",
                      f"--config.train.num_epochs={teacher_epochs}", "--config.optimizer.learning_rate=2e-3", *TAIL,
                      settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    student = save_model(tmp_path / "student", "BertModel", vocab=VOCAB, num_hidden_layers=1)
    workdir = tmp_path / "distilled"
    result = run_main("task", workdir, f"--config.task={task}", f"--config.data.source={data}",
                      f"--config.teacher.path={teacher / 'export'}", f"--config.student.init={student}",
                      f"--config.augment.enabled={augment}", f"--config.augment.mlm_path={pretrained}",
                      "--config.augment.n_a=2", "--config.augment.k=5", "--config.augment.max_seq_len=64",
                      "--config.stage1.batch_size=16", f"--config.data.buckets={buckets}",
                      "--config.stage1.num_epochs=1", "--config.stage1.optimizer.learning_rate=1e-3",
                      "--config.stage2.batch_size=16", f"--config.stage2.num_epochs={stage2_epochs}",
                      "--config.stage2.optimizer.learning_rate=3e-3", *TAIL, settings=TEST_SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((teacher / "report.json").read_text()), json.loads((workdir / "report.json").read_text())


def export_logits(export_dir, arrays, class_name):
    """transformers' logits of the export: [N, T, 2] start and end for BertForQuestionAnswering."""
    model = getattr(transformers, class_name).from_pretrained(export_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(**{name: torch.as_tensor(arrays[name], dtype=torch.long)
                       for name in ("input_ids", "token_type_ids", "attention_mask")})
    return (np.stack([out.start_logits.numpy(), out.end_logits.numpy()], axis=-1)
            if class_name == "BertForQuestionAnswering" else out.logits.numpy())


def assert_export_matches_ours(export_dir, best_params_dir, arrays, class_name):
    """transformers' logits of the export equal our forward of the best-on-dev parameters (1e-4)."""
    cfg, params = convert.load_flax_dir(best_params_dir)
    ours = predict(cfg, params, arrays, batch_size=16)
    np.testing.assert_allclose(ours, export_logits(export_dir, arrays, class_name), atol=1e-4, rtol=0)


def assert_reported_squad_scores(scores, answers, null_margin, golds, with_no_answer):
    """The report's exact match and F1 are those of the decoded answers (v2.0: "" past the reported threshold)."""
    if with_no_answer:
        answers = ["" if margin > scores["no_answer_threshold"] else answer
                   for answer, margin in zip(answers, null_margin.tolist())]
    assert scores["exact_match"] == pytest.approx(
        np.mean([span_metrics.exact_match(a, g) for a, g in zip(answers, golds)]), abs=1e-6)
    assert scores["f1"] == pytest.approx(
        np.mean([span_metrics.f1(a, g, with_no_answer=with_no_answer) for a, g in zip(answers, golds)]), abs=1e-6)


@pytest.mark.parametrize("task, version", [("squad_v1", "v1.1"), ("squad_v2", "v2.0")])
def test_squad_fine_tune_distil_and_export(tmp_path, task, version):
    data = write_squad(tmp_path / "squad", version)
    augment = task == "squad_v2"
    teacher, student = fine_tune_and_distil(tmp_path, task, data, teacher_epochs=4, stage2_epochs=2 if augment else 4,
                                            augment=augment)
    assert teacher["score"] >= 0.8, teacher
    if augment:  # every answer of the augmented set still at its offset, unanswerable questions kept
        augmented = read_spans(tmp_path / "distilled" / "augmented")
        assert len(augmented) > 2 * 240 and sum(not gold for gold in augmented.answers) > 2 * 80
        for context, gold in zip(augmented.contexts, augmented.answers):
            assert all(context[begin:begin + len(text)] == text for text, begin in gold)
    assert student["task"] == task and student["metric"] == "f1" and student["retention_percent"] >= 80.0, student
    scores = student["student"]["dev"]
    assert scores["f1"] >= STUDENT_F1_FLOOR, scores
    if task == "squad_v2":  # the threshold chosen on dev, answerable and unanswerable questions both learnt
        assert {"no_answer_threshold", "has_answer_f1", "no_answer_f1"} <= set(scores)
        assert scores["has_answer_f1"] >= 0.6 and scores["no_answer_f1"] >= 0.6, scores
    tokenizer = load_tokenizer(str(tmp_path / "teacher" / "export"))
    dev = squad.read_split(task, str(data), "dev")
    arrays = squad.encode(dev, tokenizer, 32, 8, 8, train=False)
    assert len(arrays["input_ids"]) > len(dev)  # long contexts took several windows
    export, best = tmp_path / "distilled" / "export", tmp_path / "distilled" / "stage2" / "best" / "params"
    cfg, params = convert.load_flax_dir(best)
    fixed = predict(cfg, params, arrays, 16)
    exported = export_logits(export, arrays, "BertForQuestionAnswering")
    np.testing.assert_allclose(fixed, exported, atol=1e-4, rtol=0)

    def decode(logits):
        return span_metrics.best_spans(logits[..., 0], logits[..., 1], arrays["offsets"], arrays["example_index"],
                                       dev.contexts)

    # the run's own evaluation batch size, so that these logits are the report's to the bit
    answers, null_margin = decode(predict(cfg, params, arrays, task_config.get_config().eval.batch_size))
    golds = [[text for text, _ in gold] for gold in dev.answers]
    assert_reported_squad_scores(scores, answers, null_margin, golds, with_no_answer=task == "squad_v2")
    # One decode whatever lies outside the context: a fixed-padding forward's logits at padding (near 0.0 here,
    # above most context logits), 0.0 past each bucket's length, none at all; and through transformers' float32.
    kept = arrays["offsets"][..., :1] != -1
    kept[:, 0] = True  # [CLS]: the null score
    for name, logits in (("fixed padding", fixed),
                         ("buckets", predict(cfg, params, arrays, 16, buckets=(8, 16, 24, 32))),
                         ("context only", np.where(kept, fixed, -1e4)), ("export", exported)):
        other_answers, other_margin = decode(logits)
        assert other_answers == answers, name
        np.testing.assert_allclose(other_margin, null_margin, atol=1e-3, rtol=0, err_msg=name)


def test_conll_fine_tune_distil_and_export(tmp_path):
    data = write_conll(tmp_path / "conll")
    # augmentation of tagged sentences: tests/unit/test_augment.py; here the run in length buckets
    teacher, student = fine_tune_and_distil(tmp_path, "conll2003", data, teacher_epochs=4, stage2_epochs=4,
                                            augment=False, buckets="16")
    assert teacher["score"] >= 0.8, teacher
    assert student["metric"] == "f1" and student["retention_percent"] >= 80.0, student
    export = tmp_path / "distilled" / "export"
    config = transformers.AutoConfig.from_pretrained(export)
    assert config.id2label == dict(enumerate(conll.TAGS))
    tokenizer = load_tokenizer(str(export))
    arrays = conll.encode(conll.read_split(str(data), "dev"), tokenizer, 32)
    assert_export_matches_ours(export, tmp_path / "distilled" / "stage2" / "best" / "params", arrays,
                               "BertForTokenClassification")


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_token_and_span_losses_match_numpy():
    """Token head: cross-entropy at labelled tokens only (-100 elsewhere), soft cross-entropy per real token
    (sum over labels, mean over real tokens); span head: start and end distributions over the real tokens."""
    rng = np.random.default_rng(0)
    batch, length, labels_count, temperature = 3, 7, 5, 2.0
    mask = np.ones((batch, length), np.int32)
    mask[1, 5:] = mask[2, 3:] = 0
    student, teacher = rng.normal(size=(2, batch, length, labels_count)).astype(np.float32) * 3
    labels = np.where(rng.random((batch, length)) < 0.5, rng.integers(0, labels_count, (batch, length)), -100)
    labels[0, 0] = 1
    gold = [-log_softmax(student[b, t])[labels[b, t]] for b in range(batch) for t in range(length) if labels[b, t] >= 0]
    ours = TOKEN_LOSSES.supervised(student, {"labels": labels, "attention_mask": mask}, regression=False)
    np.testing.assert_allclose(ours, np.mean(gold), rtol=1e-5)
    soft = -(np.exp(log_softmax(teacher / temperature)) * log_softmax(student / temperature)).sum(-1)
    for scale, factor in (("hinton", temperature ** 2), ("tinybert", 1 / labels_count)):
        ours = prediction_distill_loss(TOKEN_LOSSES, student, {"teacher_logits": teacher, "attention_mask": mask},
                                       PredictionLoss(temperature, scale), regression=False)
        np.testing.assert_allclose(ours, factor * soft[mask == 1].mean(), rtol=1e-5)
    # with the gold-label term: alpha * soft + (1 - alpha) * the fine-tuning loss
    ours = prediction_distill_loss(TOKEN_LOSSES, student, {"teacher_logits": teacher, "attention_mask": mask,
                                                           "labels": labels}, PredictionLoss(temperature, alpha=0.25),
                                   regression=False)
    np.testing.assert_allclose(ours, 0.25 * temperature ** 2 * soft[mask == 1].mean() + 0.75 * np.mean(gold),
                               rtol=1e-5)

    student, teacher = student[..., :2], teacher[..., :2]
    starts, ends = np.array([1, 4, 0]), np.array([2, 4, 2])
    expected_gold, expected_soft = [], []
    for b in range(batch):
        real = mask[b] == 1
        for which, position in ((0, starts[b]), (1, ends[b])):
            s, t = student[b, real, which], teacher[b, real, which]
            expected_gold.append(-log_softmax(s)[position])
            expected_soft.append(-(np.exp(log_softmax(t / temperature)) * log_softmax(s / temperature)).sum())
    ours = SPAN_LOSSES.supervised(student, {"start_positions": starts, "end_positions": ends, "attention_mask": mask},
                                  regression=False)
    np.testing.assert_allclose(ours, np.mean(expected_gold), rtol=1e-5)
    ours = prediction_distill_loss(SPAN_LOSSES, student, {"teacher_logits": teacher, "attention_mask": mask},
                                   PredictionLoss(temperature), regression=False)
    np.testing.assert_allclose(ours, temperature ** 2 * np.mean(expected_soft), rtol=1e-5)


def shift_first_answer(path):
    squad_json = json.loads(path.read_text())
    squad_json["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 1
    path.write_text(json.dumps(squad_json))


def replace_first(old, new):
    def fault(path):
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
    return fault


@pytest.mark.parametrize("task, write, name, fault, message", [
    ("squad_v1", lambda d: write_squad(d, "v1.1"), "dev-v1.1.json", shift_first_answer, "is not at character"),
    ("conll2003", write_conll, "valid.txt", replace_first("NN I-NP B-PER", "NN B-PER"),
     "3 space-separated columns, expected 4"),
    ("conll2003", write_conll, "train.txt", replace_first("NN I-NP B-LOC", "NN I-NP B-CITY"),
     "tag 'B-CITY' is not a CoNLL"),
])
def test_bad_task_files_stop_the_run_in_one_line(tmp_path, task, write, name, fault, message):
    data = write(tmp_path / "data")
    fault(data / name)
    pretrained = save_model(tmp_path / "pretrained", "BertForMaskedLM", vocab=VOCAB)
    result = run_main("finetune", tmp_path / "teacher", f"--config.task={task}", f"--config.data.source={data}",
                      f"--config.teacher.path={pretrained}", *TAIL, settings=TEST_SETTINGS)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and message in last and f"{name}:" in last, result.stderr[-2000:]
    assert not (tmp_path / "teacher" / "export").exists()
