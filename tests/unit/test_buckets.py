"""Length buckets for task data: settings, the bucketed batch plan (coverage, one bucket per batch, determinism,
process-count invariance, resume mid-epoch), cut batches, bucketed predictions, and the masked-mode loss equal
to the fixed-padding one."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import STEP_STUDENT as STUDENT
from helpers import STEP_TEACHER as TEACHER

from tinybert_jax.distill.layer_map import resolve_layer_map
from tinybert_jax.distill.matches import preset_matches
from tinybert_jax.distill.spec import init_trainable
from tinybert_jax.distill.step import DistillSpec, distillation_losses, trim_teacher
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import Bert, BertConfig, init_params
from tinybert_jax.task.arrays import batch_shapes, batches_per_epoch, bucket_lengths, eval_batches, train_iterator
from tinybert_jax.task.evaluate import predict
from tinybert_jax.train.engine import stage_length


@pytest.mark.parametrize("setting, seq_len, expected", [
    ("auto", 64, (8, 16, 24, 32, 40, 48, 56, 64)),
    ("auto", 384, tuple(range(32, 385, 32))),
    ("16", 64, (16, 32, 48, 64)),
    ("16,32", 64, (16, 32, 64)),
    ([24, 8], 30, (8, 24, 30)),
    ("", 64, None),
    (0, 64, None),
])
def test_bucket_settings(setting, seq_len, expected):
    assert bucket_lengths(setting, seq_len) == expected


@pytest.mark.parametrize("setting", ["x", "-8", "16,128"])
def test_bad_bucket_settings_are_one_line(setting):
    with pytest.raises(InputError, match="data.buckets="):
        bucket_lengths(setting, 64)


def task_arrays(count=203, seq_len=32, seed=0):
    """Examples of random real lengths 3..seq_len, every array the task data can hold."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(0.08, count) + 2, seq_len)
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32)
    return {"input_ids": (rng.integers(5, 50, (count, seq_len)) * mask).astype(np.int32),
            "token_type_ids": np.zeros((count, seq_len), np.int32), "attention_mask": mask,
            "labels": rng.integers(0, 3, count).astype(np.int32),
            "teacher_logits": rng.normal(size=(count, seq_len, 3)).astype(np.float32),
            "index": np.arange(count)}


def take(iterator, batches):
    return [next(iterator) for _ in range(batches)]


@pytest.mark.parametrize("buckets", ["", "8"])
@pytest.mark.parametrize("epochs", [1.0, 3.0])
def test_num_epochs_means_every_example_seen_that_many_times(buckets, epochs):
    """The step count of num_epochs=E over the batches the iterator really makes: each example E times or more
    (bucketed epochs are ceil(N / B) batches, the last completed with repeats), and no more than one extra epoch."""
    arrays, batch = task_arrays(count=193), 16  # 12.06 batches: E * N / B steps would leave a bucketed epoch short
    lengths = bucket_lengths(buckets, 32)
    stage = ml_collections.ConfigDict(dict(num_steps=0, num_epochs=epochs, min_steps=0))
    steps = stage_length(stage, "stage1", 193, batches_per_epoch(arrays, batch, lengths)).num_steps
    seen = np.bincount(np.concatenate([b["index"] for b in take(train_iterator(arrays, batch, 3, buckets=lengths),
                                                                  steps)]), minlength=193)
    assert seen.min() >= epochs and seen.min() <= epochs + 1


def test_min_steps_raises_short_stages_and_says_why():
    stage = ml_collections.ConfigDict(dict(num_steps=0, num_epochs=3.0, min_steps=100))
    length = stage_length(stage, "stage2", 203, 203 / 16)
    assert length.num_steps == 100 and "below stage2.min_steps=100" in length.reason and "7.88 epochs" in length.reason
    stage.min_steps = 20
    assert stage_length(stage, "stage2", 203, 203 / 16).num_steps == 39
    stage.num_steps = 7
    assert stage_length(stage, "stage2", 203, 203 / 16).num_steps == 7  # an explicit count is kept as it is


def test_bucketed_batches_cover_every_example_one_bucket_each_and_are_deterministic():
    arrays, batch = task_arrays(), 16
    buckets = bucket_lengths("8", 32)
    per_epoch = -(-203 // batch)
    got = take(train_iterator(arrays, batch, seed=3, buckets=buckets), 2 * per_epoch)
    for epoch in range(2):
        seen = np.concatenate([b["index"] for b in got[epoch * per_epoch:(epoch + 1) * per_epoch]])
        assert set(seen.tolist()) == set(range(203)) and len(seen) == per_epoch * batch
    lengths = arrays["attention_mask"].sum(1)
    for b in got:
        width = b["input_ids"].shape[1]
        assert width in buckets and b["teacher_logits"].shape == (batch, width, 3) and b["labels"].shape == (batch,)
        assert (lengths[b["index"]] <= width).all()
        np.testing.assert_array_equal(b["input_ids"], arrays["input_ids"][b["index"], :width])
    assert len({b["input_ids"].shape[1] for b in got}) > 2  # several buckets, interleaved
    assert [b["index"].tolist() for b in got[:per_epoch]] != [b["index"].tolist() for b in got[per_epoch:]]
    again = take(train_iterator(arrays, batch, seed=3, buckets=buckets), 2 * per_epoch)
    assert all(np.array_equal(a["index"], b["index"]) for a, b in zip(got, again))
    shapes = {shape["input_ids"][0] for shape in batch_shapes(arrays, batch, buckets)}
    assert {b["input_ids"].shape for b in got} <= shapes


def test_bucketed_batches_split_over_processes_and_resume_mid_epoch():
    arrays, batch = task_arrays(seed=1), 8
    buckets = bucket_lengths("auto", 32)
    whole = take(train_iterator(arrays, batch, seed=5, buckets=buckets), 40)
    halves = [take(train_iterator(arrays, batch, seed=5, rows=slice(start, start + 4), buckets=buckets), 40)
              for start in (0, 4)]
    for full, first, second in zip(whole, *halves):
        np.testing.assert_array_equal(full["index"], np.concatenate([first["index"], second["index"]]))
    process = train_iterator(arrays, batch, seed=5, rows=slice(4, 8), buckets=buckets)
    take(process, 31)  # mid-epoch (26 batches an epoch): the state is the next global batch
    alone = train_iterator(arrays, batch, seed=5, buckets=buckets)
    alone.set_state(process.get_state())
    for full, resumed in zip(whole[31:], take(alone, 9)):
        np.testing.assert_array_equal(full["index"], resumed["index"])


def test_bucketed_predictions_equal_fixed_padding():
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=24, max_position_embeddings=32, num_labels=3, pooler=False, task_head="token")
    params = init_params(cfg, jax.random.PRNGKey(0))
    arrays = task_arrays(count=37)
    buckets = bucket_lengths("8", 32)
    assert sorted(np.concatenate([real for _, real in eval_batches(arrays, 8, buckets)]).tolist()) == list(range(37))
    fixed, bucketed = predict(cfg, params, arrays, 8), predict(cfg, params, arrays, 8, buckets=buckets)
    real = arrays["attention_mask"] == 1
    np.testing.assert_allclose(bucketed[real], fixed[real], atol=1e-5)


def distill_losses(mode, batches):
    """The stage-1 loss and its terms (dropout off, no update) of each batch, with one student and teacher."""
    teacher_params = init_params(TEACHER, jax.random.PRNGKey(1))
    layer_map = resolve_layer_map("uniform", TEACHER.num_hidden_layers, STUDENT.num_hidden_layers)
    teacher_cfg, teacher_params = trim_teacher(TEACHER, teacher_params, layer_map.teacher_depth, False)
    terms = {"embedding": 1.0, "attention": 1.0, "hidden": 1.0, "prediction": 0.0}
    spec = DistillSpec(STUDENT, teacher_cfg, preset_matches("tinybert", terms, layer_map, STUDENT, teacher_cfg), mode)
    params = nn.meta.unbox(init_trainable(spec, jax.random.PRNGKey(2)))

    @jax.jit
    def losses(batch):
        inputs = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        teacher_out = Bert(spec.teacher).apply({"params": teacher_params}, *inputs,
                                               output_layers=spec.teacher_output_layers)
        student_out = Bert(spec.student).apply({"params": params["student"]}, *inputs)
        total, by_term = distillation_losses(spec, student_out, teacher_out, params["projection"],
                                             batch["attention_mask"])
        return {"loss": total, **by_term}

    return [{name: float(value) for name, value in losses(batch).items()} for batch in batches]


def test_masked_mode_loss_is_the_same_in_a_bucket_as_with_fixed_padding():
    """Stage 1 in loss.mode=masked: a batch cut to its bucket (8 tokens) gives the loss of the same batch padded
    to 16 (every term); tinybert mode averages over the padded elements too, so there the bucket changes it."""
    arrays = task_arrays(count=4, seq_len=16, seed=2)
    arrays["attention_mask"][:, 8:] = 0
    arrays["input_ids"] *= arrays["attention_mask"]
    full = {name: jnp.asarray(arrays[name]) for name in ("input_ids", "token_type_ids", "attention_mask")}
    cut = {name: value[:, :8] for name, value in full.items()}
    masked_full, masked_cut = distill_losses("masked", (full, cut))
    for name, value in masked_full.items():
        assert masked_cut[name] == pytest.approx(value, rel=1e-5), name
    tinybert_full, tinybert_cut = distill_losses("tinybert", (full, cut))
    assert tinybert_cut["attention"] != pytest.approx(tinybert_full["attention"], rel=1e-3)
