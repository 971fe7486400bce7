"""The fused distillation step in-process: frozen teacher, falling losses, metrics, optimizers."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import STEP_STUDENT as STUDENT
from helpers import STEP_TEACHER as TEACHER
from helpers import padded_batch

from tinybert_jax import sharding
from tinybert_jax.distill.layer_map import resolve_layer_map
from tinybert_jax.distill.matches import preset_matches
from tinybert_jax.distill.spec import init_trainable
from tinybert_jax.distill.step import DistillSpec, make_distill_step, trim_teacher
from tinybert_jax.models.bert import abstract_params, init_params
from tinybert_jax.train.engine import create_state
from tinybert_jax.train.optimizer import make_optimizer


def optimizer_config(name="adamw", lr=3e-3):
    return ml_collections.ConfigDict(dict(name=name, learning_rate=lr, schedule="constant", warmup_ratio=0.0,
                                          b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, clip_norm=1.0))


def setup(weights=(("embedding", 1.0), ("attention", 1.0), ("hidden", 1.0)), mode="tinybert", opt="adamw",
          layer_map="uniform", dtype="float32"):
    teacher_params = init_params(TEACHER, jax.random.PRNGKey(1))
    lm = resolve_layer_map(layer_map, TEACHER.num_hidden_layers, STUDENT.num_hidden_layers)
    predict = "prediction" in dict(weights)
    teacher_cfg, teacher_params = trim_teacher(TEACHER, teacher_params,
                                               TEACHER.num_hidden_layers if predict else lm.teacher_depth, predict,
                                               dtype=dtype)
    student = STUDENT.replace(dtype=dtype)
    terms = {"embedding": 0.0, "attention": 0.0, "hidden": 0.0, "prediction": 0.0, **dict(weights)}
    spec = DistillSpec(student, teacher_cfg, preset_matches("tinybert", terms, lm, student, teacher_cfg), mode)
    tx, schedule = make_optimizer(optimizer_config(opt), 100)
    mesh = sharding.make_mesh(-1, 1)
    state, _ = create_state(lambda rng: init_trainable(spec, rng), tx, 0, mesh, [])
    batch = dict(zip(("input_ids", "token_type_ids", "attention_mask"),
                     (jnp.asarray(x, jnp.int32) for x in padded_batch(50, batch=4, length=12))))
    return spec, jax.jit(make_distill_step(spec, tx, schedule)), state, teacher_params, batch


def test_teacher_frozen_and_trimmed():
    spec, step, state, teacher_params, batch = setup(layer_map="bottom")
    assert spec.teacher.num_hidden_layers == 2 and len(teacher_params["layers"]) == 2
    before = jax.tree.map(np.array, teacher_params)
    grads = jax.grad(lambda tp: step(state, tp, batch)[1]["loss"])(teacher_params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
    for _ in range(3):
        state, metrics = step(state, teacher_params, batch)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(teacher_params)):
        assert np.array_equal(a, np.asarray(b))
    assert int(state.step) == 3


def test_bfloat16_teacher_stores_only_its_matrices_in_bfloat16():
    """Kernels and embedding tables bfloat16; LayerNorm parameters and biases float32, as abstract_params (which
    the teacher's shardings are built from) declares them."""
    cfg, params = trim_teacher(TEACHER, init_params(TEACHER, jax.random.PRNGKey(1)), TEACHER.num_hidden_layers,
                               keep_mlm_head=True, dtype="bfloat16")
    dtypes = {jax.tree_util.keystr(path): (path[-1].key, x.dtype)
              for path, x in jax.tree_util.tree_leaves_with_path(params)}
    assert {name for name, _ in dtypes.values()} == {"embedding", "kernel", "scale", "bias"}
    for where, (name, dtype) in dtypes.items():
        assert dtype == (jnp.bfloat16 if name in ("embedding", "kernel") else jnp.float32), where
    declared = nn.meta.unbox(abstract_params(cfg))
    assert {jax.tree_util.keystr(path): (path[-1].key, x.dtype)
            for path, x in jax.tree_util.tree_leaves_with_path(declared)} == dtypes


@pytest.mark.parametrize("mode,opt,dtype", [("tinybert", "bert_adam", "float32"), ("masked", "adamw", "float32"),
                                            ("tinybert", "adamw", "bfloat16")])
def test_losses_fall_and_metrics_are_reported(mode, opt, dtype):
    weights = (("embedding", 1.0), ("attention", 1.0), ("hidden", 1.0), ("prediction", 1.0))
    spec, step, state, teacher_params, batch = setup(weights, mode, opt, dtype=dtype)
    history = []
    for _ in range(30):
        state, metrics = step(state, teacher_params, batch)
        history.append(jax.device_get(metrics))
    assert set(history[0]) == {"embedding", "attention", "hidden", "prediction", "loss", "learning_rate",
                               "grad_norm"}
    for term in ("embedding", "attention", "hidden", "loss"):
        assert history[-1][term] < 0.9 * history[0][term], (term, history[0][term], history[-1][term])
    # soft cross-entropy is bounded below by the teacher's entropy, already close for a random teacher
    assert history[-1]["prediction"] < history[0]["prediction"]
    total = sum(history[0][name] for name in ("embedding", "attention", "hidden", "prediction"))
    np.testing.assert_allclose(history[0]["loss"], total, rtol=1e-6)
    assert history[0]["grad_norm"] > 0 and history[0]["learning_rate"] == pytest.approx(3e-3)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))  # trainable: float32 always


@pytest.mark.parametrize("preset, student", [
    ("minilm_v1", STUDENT.replace(num_attention_heads=4)),
    ("minilm_v2", STUDENT.replace(num_attention_heads=2)),  # head count differs from the teacher's 4
    ("distilbert", TEACHER.replace(num_hidden_layers=2)),  # cosine needs the teacher's width
])
def test_every_recipe_runs_on_the_same_step_and_learns(preset, student):
    from tinybert_jax.distill.matches import preset_matches
    from tinybert_jax.distill.step import DistillSpec

    # Without the masked-LM term here: it pulls the student away from this random teacher's near-uniform logits
    # (the masking itself runs in test_recipes.py and test_mlm.py).
    matches = preset_matches(preset, {"mlm": 0.0}, None, student, TEACHER)
    teacher_cfg, teacher_params = trim_teacher(TEACHER, init_params(TEACHER, jax.random.PRNGKey(1)), 4,
                                               preset == "distilbert")
    spec = DistillSpec(student, teacher_cfg, matches, relation_heads=4, temperature=2.0)
    tx, schedule = make_optimizer(optimizer_config(), 100)
    state, _ = create_state(lambda rng: init_trainable(spec, rng), tx, 0, sharding.make_mesh(-1, 1), [])
    step = jax.jit(make_distill_step(spec, tx, schedule))
    batch = dict(zip(("input_ids", "token_type_ids", "attention_mask"),
                     (jnp.asarray(x, jnp.int32) for x in padded_batch(50, batch=4, length=12))))
    history = []
    for _ in range(40):
        state, metrics = step(state, teacher_params, batch)
        history.append({name: float(value) for name, value in metrics.items()})
    terms = {m.term for m in matches}
    assert terms <= set(history[0]) and all(np.isfinite(h["loss"]) for h in history)
    for term in terms:
        assert np.mean([h[term] for h in history[-5:]]) < 0.7 * np.mean([h[term] for h in history[:5]]), term
