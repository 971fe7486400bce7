"""DistilBERT- and MiniLM-style recipes on the shared engine: student init from teacher layers, declarative terms,
short runs through `python -m tinybert_jax.main`, the masked-LM export."""
import json

import jax
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from helpers import general_assets, metrics, run_main

from tinybert_jax import convert
from tinybert_jax.distill.layer_map import resolve_layer_map
from tinybert_jax.distill.matches import Match, parse_matches, preset_matches, resolve_matches
from tinybert_jax.distill.student import PRESETS, from_teacher_layers, student_sizes
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import Bert, BertConfig

# the tiny teacher of test_general: 4 layers, width 32, 4 heads, FFN 37
SAME_WIDTH = ["--config.student.preset=", "--config.student.hidden_size=32", "--config.student.num_attention_heads=4",
              "--config.student.intermediate_size=37", "--config.student.num_hidden_layers=2"]


@pytest.fixture(scope="session")
def assets(shared_dir):
    return general_assets(shared_dir, "recipes")


def run(assets, config, workdir, steps, *extra, check=True):
    return run_main(config, workdir, f"--config.teacher.path={assets['teacher']}",
                    f"--config.data.source={assets['corpus']}", f"--config.data.prepared_dir={assets['data']}",
                    "--config.data.seq_len=32", "--config.train.batch_size=8", f"--config.train.num_steps={steps}",
                    "--config.log.every_steps=1", "--config.checkpoint.every_steps=1000", *extra, check=check)


def falls(history, term, steps, factor):
    start = np.mean([history[s][term] for s in range(1, 6)])
    end = np.mean([history[s][term] for s in range(steps - 4, steps + 1)])
    return end < factor * start, (term, start, end)


def test_student_initialisation_copies_exactly_the_chosen_teacher_layers(assets):
    teacher_cfg, teacher = convert.load_hf_bert(str(assets["teacher"]))
    student_cfg = teacher_cfg.replace(num_hidden_layers=2)
    section = ml_collections.ConfigDict(dict(init_layers="2,4"))
    params = from_teacher_layers(section, student_cfg, teacher_cfg, teacher)
    for got, want in zip(jax.tree.leaves(params["layers"]), jax.tree.leaves(teacher["layers"])):
        np.testing.assert_array_equal(got, np.asarray(want)[[1, 3]])
    for name in ("embeddings", "mlm_head"):
        for got, want in zip(jax.tree.leaves(params[name]), jax.tree.leaves(teacher[name])):
            np.testing.assert_array_equal(got, want)
    # default: spread first..last, DistilBERT's 0,2,4,7,9,11 for 12 -> 6
    assert resolve_layer_map("spread", 12, 6).teacher_layers == (1, 3, 5, 8, 10, 12)
    spread = from_teacher_layers(ml_collections.ConfigDict(dict(init_layers="")), student_cfg, teacher_cfg, teacher)
    np.testing.assert_array_equal(spread["layers"]["query"]["kernel"],
                                  np.asarray(teacher["layers"]["query"]["kernel"])[[0, 3]])
    with pytest.raises(InputError, match="needs the teacher's width: hidden_size 16 vs 32"):
        from_teacher_layers(section, student_cfg.replace(hidden_size=16), teacher_cfg, teacher)


def test_student_presets_and_declarative_terms():
    section = ml_collections.ConfigDict(dict(preset="minilm-l6-h384", hidden_size=312, num_hidden_layers=4))
    assert student_sizes(section)["hidden_size"] == 384 and student_sizes(section)["num_hidden_layers"] == 6
    assert set(PRESETS) == {"tinybert4", "tinybert6", "minilm-l6-h384", "distilbert6"}
    with pytest.raises(InputError, match="student.preset='tiny'"):
        student_sizes(ml_collections.ConfigDict(dict(preset="tiny")))
    teacher = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=37, mlm_head=True)
    student = teacher.replace(num_hidden_layers=2)
    tinybert = preset_matches("tinybert", {}, resolve_layer_map("uniform", 4, 2), student, teacher)
    assert tinybert == (Match("embedding", "hidden_mse", 0, 0, 1.0), Match("attention", "attention_mse", 1, 2, 1.0),
                        Match("attention", "attention_mse", 2, 4, 1.0), Match("hidden", "hidden_mse", 1, 2, 1.0),
                        Match("hidden", "hidden_mse", 2, 4, 1.0))
    assert preset_matches("distilbert", {"mlm": 0}, None, student, teacher) == (
        Match("ce", "logits_kl", 0, 0, 5.0), Match("cos", "hidden_cos", 2, 4, 1.0))
    assert parse_matches(["hidden hidden_mse 2 3 0.5", "x attention_mse 1 1 0"]) == (
        Match("hidden", "hidden_mse", 2, 3, 0.5),)
    loss = ml_collections.ConfigDict(dict(preset="custom", matches=["rel qkv_relation_kl 2 4 1"], weights={},
                                          relation_heads=3, relation_layer=0))
    with pytest.raises(InputError, match="relation_heads=3 must divide both widths"):
        resolve_matches(loss, None, student, teacher)
    loss.relation_heads = 0  # once a ZeroDivisionError traceback
    with pytest.raises(InputError, match="relation_heads=0 must divide both widths"):
        resolve_matches(loss, None, student, teacher)
    loss.relation_heads = 3
    loss.matches = ["att attention_kl 3 4 1"]
    with pytest.raises(InputError, match="layers must be in 1..2"):
        resolve_matches(loss, None, student, teacher)
    loss.matches = ["att attention_mse 2 4"]
    with pytest.raises(InputError, match="'att attention_mse 2 4': write 'TERM LOSS STUDENT TEACHER WEIGHT'"):
        resolve_matches(loss, None, student, teacher)
    loss.matches = ["cos hidden_cos 2 4 1"]
    with pytest.raises(InputError, match="cosine needs equal widths"):
        resolve_matches(loss, None, student.replace(hidden_size=16), teacher)


def test_custom_terms_as_one_string():
    listed = parse_matches(["hidden hidden_mse 2 6 1", "attention attention_mse 2 6 0.5"])
    assert parse_matches("hidden hidden_mse 2 6 1; attention attention_mse 2 6 0.5;") == listed == (
        Match("hidden", "hidden_mse", 2, 6, 1.0), Match("attention", "attention_mse", 2, 6, 0.5))
    assert parse_matches("hidden hidden_mse 2 6 1") == listed[:1] and parse_matches("") == ()
    with pytest.raises(InputError, match="^loss.matches entry 'attention attention_mse 2': write 'TERM LOSS "
                                         "STUDENT TEACHER WEIGHT'") as error:
        parse_matches("hidden hidden_mse 2 6 1; attention attention_mse 2")
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="^loss.matches=12: write a list of .* or one string of them separated"):
        parse_matches(12)  # what the command line gives for --config.loss.matches=12


def test_custom_terms_from_the_command_line(assets):
    workdir = assets["root"] / "custom"
    result = run(assets, "general", workdir, 2, *SAME_WIDTH, "--config.loss.preset=custom",
                 "--config.loss.matches=hidden hidden_mse 2 4 1; attention attention_mse 1 2 0.5")
    assert ("distillation terms (student <- teacher): hidden: hidden_mse 2 <- 4 x 1, "
            "attention: attention_mse 1 <- 2 x 0.5;") in result.stderr
    history = metrics(workdir)
    assert {"hidden", "attention"} <= set(history[2]) and "embedding" not in history[2]


def test_distilbert_recipe_trains_and_exports_a_masked_lm(assets):
    workdir = assets["root"] / "distilbert"
    # A random start: a student copied from this random-init teacher would begin at ce ~ 0 and cos ~ 0, and the
    # fixture corpus of uniformly random words leaves the masked-LM term at its entropy, so nothing could fall.
    run(assets, "distilbert", workdir, 60, *SAME_WIDTH, "--config.student.init=random",
        "--config.optimizer.learning_rate=1e-3")
    history = metrics(workdir)
    assert {"ce", "mlm", "cos", "loss"} <= set(history[1]) and "hidden" not in history[1]
    for term, factor in (("ce", 0.8), ("cos", 0.8), ("loss", 0.95)):  # 2 x mlm (~2 x 4.1) dominates the total
        ok, detail = falls(history, term, 60, factor)
        assert ok, detail
    model, info = transformers.BertForMaskedLM.from_pretrained(workdir / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    cfg, params = convert.load_bert(str(workdir / "export"))
    assert cfg.mlm_head and cfg.num_hidden_layers == 2
    ids = np.random.default_rng(0).integers(5, cfg.vocab_size, (2, 10))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    ours = np.asarray(Bert(cfg).apply({"params": params}, ids, np.zeros_like(ids), mask).logits)
    with torch.no_grad():
        theirs = model.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(ours[mask == 1], theirs[mask == 1], atol=1e-4)


def test_minilm_v2_recipe_with_another_width_and_head_count(assets):
    workdir = assets["root"] / "minilm"
    run(assets, "minilm", workdir, 60, "--config.student.preset=", "--config.student.hidden_size=16",
        "--config.student.num_attention_heads=2", "--config.student.intermediate_size=24",
        "--config.student.num_hidden_layers=2", "--config.loss.relation_heads=4",
        "--config.optimizer.learning_rate=3e-3", "--config.optimizer.warmup_ratio=0")
    history = metrics(workdir)
    assert set(history[1]) >= {"relations", "loss"} and "attention" not in history[1]
    ok, detail = falls(history, "relations", 60, 0.8)
    assert ok, detail
    exported = json.loads((workdir / "export" / "config.json").read_text())
    assert (exported["hidden_size"], exported["num_attention_heads"]) == (16, 2)


def test_recipe_input_errors(assets, tmp_path):
    no_head = tmp_path / "no_head"
    transformers.BertModel(transformers.BertConfig.from_pretrained(assets["teacher"])).save_pretrained(no_head)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (assets["teacher"] / name).is_file():
            (no_head / name).write_bytes((assets["teacher"] / name).read_bytes())
    result = run(assets, "distilbert", tmp_path / "w", 5, *SAME_WIDTH, f"--config.teacher.path={no_head}",
                 check=False)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("error: term 'ce'")
    assert "needs its MLM head" in result.stderr.strip().splitlines()[-1]
    narrow = run(assets, "distilbert", tmp_path / "w2", 5, check=False)  # distilbert6 is wider than the teacher
    assert narrow.stderr.strip().splitlines()[-1].startswith("error: student.init=teacher copies teacher layers")
    assert not (tmp_path / "w" / "checkpoints").exists() and not (tmp_path / "w2" / "checkpoints").exists()
