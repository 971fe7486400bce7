"""Task-pipeline caches and carry-overs, in process: fingerprints, the teacher-logit cache, the general-distillation
projection W_h and the chance level of the teacher check."""
import json

import jax
import ml_collections
import numpy as np
import pytest
from flax import serialization
from helpers import counted_traces

from tinybert_jax import convert
from tinybert_jax.data import glue
from tinybert_jax.distill.projection import PROJECTION_FILE
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import BertConfig, init_params
from tinybert_jax.pipelines import task as pipeline
from tinybert_jax.task import fingerprint
from tinybert_jax.task.evaluate import jitted_logits, predict
from tinybert_jax.task.glue_metrics import chance_score

TEACHER = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                     max_position_embeddings=32, num_labels=2, pooler=True)


def arrays(count, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 40, (count, 12)).astype(np.int32)
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": np.ones_like(ids),
            "labels": rng.integers(0, 2, count).astype(np.int32)}


def test_fingerprint_difference_names_the_first_differing_key(tmp_path):
    stored = tmp_path / "fingerprint.json"
    current = {"augment.n_a": 20, "teacher.weights": "abc", "data.seq_len": 64, "perm": (1, 0)}
    assert "(missing)" in fingerprint.difference_from_stored(stored, current)
    fingerprint.write(stored, current)
    assert fingerprint.difference_from_stored(stored, current) is None  # tuples compare as the lists JSON keeps
    assert fingerprint.difference_from_stored(stored, {**current, "augment.n_a": 10}) == "augment.n_a: 20 vs 10"
    assert fingerprint.difference_from_stored(stored, {**current, "new": 1}) == "new: (missing) vs 1"


def test_digests_follow_content_not_objects():
    params = init_params(TEACHER, jax.random.key(0))
    copy = jax.tree.map(lambda x: np.array(x, copy=True), params)
    assert fingerprint.digest_arrays(params) == fingerprint.digest_arrays(copy)
    copy["classifier"]["bias"] = copy["classifier"]["bias"] + 1e-3
    assert fingerprint.digest_arrays(params) != fingerprint.digest_arrays(copy)
    assert fingerprint.digest_texts(["a b", "c"], None) != fingerprint.digest_texts(["a", "b c"], None)
    assert fingerprint.digest_texts(["a"], None) != fingerprint.digest_texts(["a"], [""])


def test_teacher_logit_cache_is_recomputed_for_other_inputs(tmp_path):
    params = init_params(TEACHER, jax.random.key(0))
    first, second = arrays(10), arrays(14, seed=1)
    logits = pipeline.teacher_logits(TEACHER, params, None, first, 4, {"train.examples": 10}, tmp_path)
    np.testing.assert_allclose(logits, predict(TEACHER, params, first, 4), rtol=1e-6)
    # another data set: another fingerprint, so the cache is made again instead of misaligning the targets
    logits = pipeline.teacher_logits(TEACHER, params, np.array([1, 0]), second, 4, {"train.examples": 14}, tmp_path)
    np.testing.assert_allclose(logits, predict(TEACHER, params, second, 4)[:, ::-1], rtol=1e-6)
    assert json.loads((tmp_path / "stage2" / "teacher_logits.json").read_text()) == {"train.examples": 14}
    # a cache whose rows do not match what its fingerprint promises is refused, naming it
    np.save(tmp_path / "stage2" / "teacher_logits.npy", logits[:5])
    with pytest.raises(InputError, match="teacher_logits.npy: 5 rows for 14 training examples"):
        pipeline.teacher_logits(TEACHER, params, None, second, 4, {"train.examples": 14}, tmp_path)


def test_stage_directory_of_other_inputs_is_refused(tmp_path):
    stage = tmp_path / "stage1"
    pipeline.check_stage(stage, {"seed": 0}, "stage 1")  # nothing there yet
    fingerprint.write(stage / "fingerprint.json", {"seed": 0, "teacher.weights": "aaa"})
    pipeline.check_stage(stage, {"seed": 0, "teacher.weights": "aaa"}, "stage 1")
    with pytest.raises(InputError, match=r"stage1 holds stage 1 made from other inputs \(teacher.weights: aaa vs bbb"):
        pipeline.check_stage(stage, {"seed": 0, "teacher.weights": "bbb"}, "stage 1")


def student_export(directory, hidden, projection_shape=None):
    cfg = BertConfig(vocab_size=40, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=24, max_position_embeddings=32)
    extra = {}
    if projection_shape is not None:
        rng = np.random.default_rng(0)
        projection = {"dense": {"kernel": rng.normal(size=projection_shape).astype(np.float32),
                                "bias": rng.normal(size=projection_shape[1:]).astype(np.float32)}}
        extra = {PROJECTION_FILE: serialization.msgpack_serialize(projection)}
    convert.save_hf_bert(cfg, init_params(cfg, jax.random.key(1)), directory / "export", extra_files=extra)
    return (projection if extra else None), ml_collections.ConfigDict({"student": {"init": str(directory)}})


def test_stage1_starts_from_the_general_distillation_projection(tmp_path):
    saved, config = student_export(tmp_path / "general", 16, (16, 32))
    _, _, projection = pipeline.load_student(config, TEACHER)
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(projection["dense"][name], saved["dense"][name])
    # another teacher width: the saved W_h does not fit and stage 1 starts it from random
    assert pipeline.load_student(config, TEACHER.replace(hidden_size=48, intermediate_size=64))[2] is None
    assert pipeline.load_student(student_export(tmp_path / "none", 16)[1], TEACHER)[2] is None
    (tmp_path / "general" / "export" / PROJECTION_FILE).write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="projection.msgpack: not a saved projection"):
        pipeline.load_student(config, TEACHER)


@pytest.mark.parametrize("task, labels, chance", [
    ("sst2", [0, 0, 0, 1], 0.75),  # the majority class
    ("mnli", [0, 1, 2, 2, 2], 0.6),
    ("mrpc", [0, 1, 1, 1], 2 * 3 / (2 * 3 + 1)),  # F1 of calling everything positive
    ("cola", [0, 1, 1, 1], 0.0),  # Matthews correlation of any constant prediction
    ("stsb", [0.5, 4.0, 2.0], 0.0),
])
def test_chance_score(task, labels, chance):
    assert chance_score(glue.get_task(task), np.asarray(labels)) == pytest.approx(chance)


def test_repeated_evaluation_traces_the_forward_once():
    """A run evaluates on dev every eval.every_steps steps: the forward is traced and compiled at the first
    evaluation only (a fresh jit each time would trace, lower and compile it again)."""
    jitted_logits.cache_clear()  # as at the start of a run: nothing traced yet
    params = init_params(TEACHER, jax.random.PRNGKey(0))
    with counted_traces() as traces:
        first = predict(TEACHER, params, arrays(10), batch_size=4)
        traced_first = len(traces)
        second = predict(TEACHER, params, arrays(10, seed=1), batch_size=4)
    assert traced_first > 0 and len(traces) == traced_first
    assert first.shape == second.shape == (10, 2) and not np.allclose(first, second)
