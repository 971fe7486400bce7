"""Every benchmark runs at tiny sizes and reports sane, positive numbers (speed itself is not asserted)."""
import importlib.metadata
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pytest
from helpers import FILLER, VOCAB, run_bench, save_model, write_corpus

from tinybert_jax.bench import cpu_isa
from tinybert_jax.bench.breakdown import PHASES, dropout_shapes
from tinybert_jax.bench.machine import cpu_description
from tinybert_jax.bench.proc_cpuinfo import cpu_flags
from tinybert_jax.models.bert import Bert, BertConfig, init_params

# Installed here but not on the accelerator hosts (README, "Performance"): the accelerator benchmark runs without them.
ABSENT_ON_ACCELERATOR_HOSTS = ("grain", "ml_collections", "tensorflow_datasets", "tensorflow", "tensorboardX",
                               "array_record", "seqeval")
TINY = ["--teacher=2,32,64,4", "--student=1,16,32,4", "--vocab=120", "--batch=4", "--seq-len=16", "--reps=2",
        "--warmup=1", "--inference-batches", "4", "1"]


def positive_numbers(tree):
    if isinstance(tree, dict):
        return all(positive_numbers(v) for v in tree.values())
    if isinstance(tree, list):
        return all(positive_numbers(v) for v in tree)
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return math.isfinite(tree) and tree > 0
    return True


def test_all_benchmarks_at_tiny_sizes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    corpus = write_corpus(tmp_path / "corpus.txt")  # tiny sizes here; the embedded corpus is the benchmark's
    result = run_bench(capsys, "all", "--vs-pytorch", "--breakdown", *TINY, f"--source={corpus}", f"--json={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    for title in ("step: general distillation", "vs transformers (PyTorch", "inference: forward only", "data: prepare"):
        assert title in result.stdout
    report = json.loads(out.read_text())
    assert positive_numbers(report)
    step = report["step"]
    assert step["examples_per_s"] > 0 and step["compile_s"] > 0
    assert 0 < step["fraction_of_matmul_ceiling"] < 1.5
    # model FLOPs: teacher 2 layers fwd + 3x student 1 layer + projection, per example, times the batch
    t, s = (2 * (4 * 16 * 32 * 32 + 2 * 16 * 16 * 32 + 2 * 16 * 32 * 64) * 2,
            2 * (4 * 16 * 16 * 16 + 2 * 16 * 16 * 16 + 2 * 16 * 16 * 32))
    projection = 2 * 16 * 16 * 32 * 2  # two mapped hidden states (embeddings + layer 1)
    assert step["flops_per_step"] == 4 * (t + 3 * (s + projection))
    assert math.isclose(step["examples_per_s"], 4 / step["step_s"], rel_tol=1e-9)
    assert math.isclose(step["achieved_flops_per_s"], step["flops_per_step"] / step["step_s"], rel_tol=1e-9)
    versus = report["step_vs_pytorch"]
    # the same weights and batch: the PyTorch reference computes our loss (dropout off, before any update)
    assert math.isclose(versus["jax_loss_at_start"], versus["pytorch_loss_at_start"], rel_tol=1e-4)
    for side in ("jax", "pytorch"):
        low, high = versus[f"{side}_step_range_s"]
        assert low <= versus[f"{side}_step_s"] <= high
        assert math.isclose(versus[f"{side}_examples_per_s"], versus["batch"] / versus[f"{side}_step_s"],
                            rel_tol=1e-9)
    assert versus["batch"] == 4 and math.isclose(versus["ratio"], versus["pytorch_step_s"] / versus["jax_step_s"],
                                                 rel_tol=1e-9)
    # peak RSS of each side in a process of its own, above what the imports alone hold
    for side in ("jax", "pytorch"):
        memory = versus[f"{side}_memory"]
        assert memory["peak_rss_bytes"] > memory["rss_after_imports_bytes"] > 50 * 2 ** 20
    assert math.isclose(versus["peak_rss_ratio"], versus["jax_memory"]["peak_rss_bytes"]
                        / versus["pytorch_memory"]["peak_rss_bytes"], rel_tol=1e-9)
    phases = versus["breakdown"]
    assert list(phases) == list(PHASES) and set(phases["dropout_bits"]) == {"jax_s"}
    assert all(set(times) == {"jax_s", "pytorch_s"} for phase, times in phases.items() if phase != "dropout_bits")
    assert "step phases, each on its own" in result.stdout
    machine = report["machine"]
    assert machine["jax"] == importlib.metadata.version("jax") and machine["cpus"] >= 1
    assert machine["platform"] and machine["devices"] and machine["cpu_model"] and isinstance(machine["isa"], list)
    inference = report["inference"]
    assert inference["teacher_params"] > inference["student_params"]
    assert set(inference["batches"]) == {"batch 4", "batch 1"}
    data = report["data"]
    assert data["prepare_tokens"] > 1000 and data["loader_over_step"] > 0


def test_bf16_teacher_step_and_chunked_inference(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = [a for a in TINY if a not in ("--inference-batches", "4", "1")]
    for benchmark in ("step", "inference"):
        result = run_bench(capsys, benchmark, "--teacher-dtype=bfloat16", *args, "--inference-batches", "8",
                           "--inference-chunk=4", f"--json={out}")
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(out.read_text())
        assert positive_numbers(report)
        if benchmark == "step":
            assert report["step"]["teacher_dtype"] == "bfloat16"
    assert set(report["inference"]["batches"]) == {"batch 8", "batch 8 in chunks of 4"}


def test_bad_model_size_is_one_line(capsys):
    result = run_bench(capsys, "step", "--teacher=12,770,3072,12")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --teacher='12,770,3072,12'")


def test_a_measured_process_reports_its_own_peak_not_its_parents():
    """The memory children start from this process (fork + exec): a parent holding 1 GiB must not show up in
    their peak, as it does in getrusage's ru_maxrss."""
    held = np.ones(2 ** 27)  # 1 GiB, written, so resident
    child = subprocess.run([sys.executable, "-c", "from tinybert_jax.bench.memory import _status_bytes; "
                            "print(_status_bytes('VmHWM'))"], capture_output=True, text=True, check=True)
    assert 0 < int(child.stdout) < held.nbytes


def test_breakdown_needs_the_pytorch_comparison(capsys):
    result = run_bench(capsys, "step", "--breakdown", *TINY)
    assert result.returncode == 2 and "add --vs-pytorch" in result.stderr.strip().splitlines()[-1]


def test_breakdown_draws_dropout_bits_at_the_shapes_the_student_draws_them():
    cfg = BertConfig(vocab_size=120, num_hidden_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=4)
    ids = jnp.ones((3, 8), jnp.int32)
    forward = jax.make_jaxpr(lambda params: Bert(cfg).apply({"params": params}, ids, ids * 0, ids, deterministic=False,
                                                            rngs={"dropout": jax.random.PRNGKey(1)}))
    drawn = re.findall(r"random_bits\[bit_width=32 shape=\(([0-9, ]*)\)\]",
                       str(forward(init_params(cfg, jax.random.PRNGKey(0)))))
    assert {tuple(int(n) for n in shape.split(",")) for shape in drawn} == set(dropout_shapes(cfg, 3, 8))


def test_step_of_the_distilbert_and_minilm_recipes(tmp_path, capsys):
    base = ["--teacher=2,32,64,4", "--vocab=120", "--batch=4", "--seq-len=16", "--reps=2", "--warmup=1"]
    runs = {"distilbert": ["--student=1,32,64,4"], "minilm_v2": ["--student=1,16,32,2", "--relation-heads=4"]}
    for recipe, extra in runs.items():
        out = tmp_path / f"{recipe}.json"
        result = run_bench(capsys, "step", f"--recipe={recipe}", *base, *extra, f"--json={out}")
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"step: general distillation ({recipe})" in result.stdout
        report = json.loads(out.read_text())["step"]
        assert report["recipe"] == recipe and report["examples_per_s"] > 0
        if recipe == "distilbert":  # both encoders + both MLM heads (transform + decoder over 120 words), no W_h
            t = 2 * (4 * 16 * 32 * 32 + 2 * 16 * 16 * 32 + 2 * 16 * 32 * 64) * 2 + 2 * 16 * (32 * 32 + 32 * 120)
            s = 2 * (4 * 16 * 32 * 32 + 2 * 16 * 16 * 32 + 2 * 16 * 32 * 64) + 2 * 16 * (32 * 32 + 32 * 120)
            assert report["flops_per_step"] == 4 * (t + 3 * s)
    narrow = run_bench(capsys, "step", "--recipe=distilbert", *base, "--student=1,16,32,4")
    assert narrow.returncode == 2 and narrow.stderr.strip().splitlines()[-1].startswith("error: term 'cos'")


@pytest.mark.slow
def test_task_benchmark_at_tiny_sizes(tmp_path, capsys):
    """Stage-1 throughput with and without buckets on both length distributions, and augmentation on 1 device (in
    this process) and on 8 (in a process of its own)."""
    out = tmp_path / "bench.json"
    mlm = save_model(tmp_path / "mlm", "BertForMaskedLM", vocab=VOCAB, max_position_embeddings=128)
    glove = tmp_path / "glove.txt"  # a given MLM and GloVe file: nothing trained on the whole corpus
    glove.write_text("".join(f"{word} {i % 3}.5 1.0\n" for i, word in enumerate(FILLER)))
    result = run_bench(capsys, "task", "--teacher=2,32,64,4", "--student=1,16,32,4", f"--vocab={len(VOCAB)}",
                       "--task-batch=8", "--task-steps=4", "--task-sentences=96", "--sentences=8",
                       "--augment-batch=8", "--buckets=32", f"--tokenizer={mlm}", f"--mlm={mlm}", f"--glove={glove}",
                       f"--json={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())["task"]
    assert positive_numbers(report)
    for kind, seq_len in (("single", 64), ("pair", 128)):
        r = report[kind]
        assert r["seq_len"] == seq_len and r["ideal"] == pytest.approx(seq_len / r["mean_length"])
        assert r["speedup"] == pytest.approx(r["bucketed"]["examples_per_s"] / r["fixed"]["examples_per_s"])
        assert r["fixed"]["mean_padded_length"] == seq_len and r["bucketed"]["mean_padded_length"] < seq_len
    assert set(report["augment"]["sentences_per_s"]) == {"1", "8"}
    assert "speed-up / ideal" in result.stdout


def test_machine_description_names_the_cpu_generation_and_its_vector_extensions():
    zen3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n" \
           "flags\t\t: fpu sse2 avx fma avx2 bmi2\n"
    assert cpu_description(zen3) == ("AMD EPYC (family 25 model 1)", ["avx", "avx2", "fma"])
    sapphire = "model name\t: Intel(R) Xeon(R) Platinum 8480+\ncpu family\t: 6\nmodel\t\t: 143\nflags\t\t: avx2 " \
               "avx512f avx512_bf16 avx512_fp16 amx_tile amx_bf16 fma avx\n"
    assert cpu_description(sapphire)[1] == ["avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16",
                                            "amx_tile", "amx_bf16"]


@pytest.mark.slow
def test_accelerator_script_runs_at_ci_size_without_an_accelerator(tmp_path):
    """benchmarks/accelerator.sh on a CPU, without the packages the accelerator hosts lack: tiny sizes, said so in
    `device`, every section of the JSON present."""
    # Python imports sitecustomize from PYTHONPATH as it starts. None in sys.modules makes `import NAME` fail, and
    # importlib.util.find_spec(NAME) answer None, as they do when NAME is not installed.
    blocker = tmp_path / "without_packages" / "sitecustomize.py"
    blocker.parent.mkdir()
    blocker.write_text(f"import sys\nsys.modules.update(dict.fromkeys({ABSENT_ON_ACCELERATOR_HOSTS!r}))\n"
                       f"open({str(tmp_path / 'blocked')!r}, 'w').close()\n")
    path = os.pathsep.join(filter(None, [str(blocker.parent), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(["bash", "benchmarks/accelerator.sh", str(tmp_path / "out")], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "PYTHONPATH": path})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "blocked").exists()  # the script's Python ran with those packages blocked
    report = json.loads((tmp_path / "out" / "accelerator.json").read_text())
    assert report["device"].startswith("cpu (no accelerator") and report["machine"]["isa"] is not None
    step = report["step"]
    assert step["largest_batch"] == 16 and 0 < step["mfu"] and 0 < step["largest_batch_mfu"]
    assert set(report["inference"]) == {"batch 8", "batch 1"} and all(v > 0 for v in report["inference"].values())
    assert report["augment"]["same_outputs"] is True and report["augment"]["speedup"] > 0
    for kind in ("single", "pair"):
        assert report["task"][kind]["speedup"] > 0 and report["task"][kind]["ideal"] > 1
    assert report["seconds"] < 600


def test_avx2_emulation_runs_the_step_in_a_restricted_process(tmp_path):
    """`--isa=avx2` replaces the process by one with every library restricted to AVX2 (YNNPACK's flags are read back
    there and checked) and says so in the JSON."""
    out = tmp_path / "bench.json"
    environment = {k: v for k, v in os.environ.items() if k != cpu_isa.ENV_MARK}
    result = subprocess.run([sys.executable, "-m", "tinybert_jax.bench", "step", "--isa=avx2", *TINY[:7],
                             f"--json={out}"], capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(emulating avx2)" in result.stdout
    report = json.loads(out.read_text())
    assert report["machine"]["isa_emulated"] == "avx2" and report["step"]["examples_per_s"] > 0


@pytest.mark.skipif("avx512f" not in cpu_flags(), reason="nothing to restrict on a CPU without AVX-512")
def test_avx2_restriction_after_a_computation_is_refused():
    """YNNPACK reads its flags once, at its first matrix product: restricting later would measure AVX-512 kernels
    under an AVX2 label, so it is an error."""
    code = ("import jax.numpy as jnp; from tinybert_jax.bench import cpu_isa; "
            "(jnp.ones((64, 64)) @ jnp.ones((64, 64))).block_until_ready(); cpu_isa.restrict_jaxlib()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, cpu_isa.ENV_MARK: "avx2"})
    assert result.returncode != 0 and "expected AVX2 without AVX-512" in result.stderr


def test_a_missing_symbol_is_named():
    library = Path(jaxlib.__file__).parent / "libjax_common.so"
    assert set(cpu_isa.symbol_offsets(library, ("cpuinfo_isa",))) == {"cpuinfo_isa"}
    with pytest.raises(RuntimeError, match="has no symbol no_such_symbol_here"):
        cpu_isa.symbol_offsets(library, ("no_such_symbol_here",))
