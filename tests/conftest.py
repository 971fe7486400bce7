"""The test environment (set here before jax is first imported), the shared fixtures and the collection hook.
Everything else the tests share (models, fixture data, run_main, made_once) is in helpers.py: import it from there,
never from this file."""
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub; the offline path is what they check
# Many tests compile the same tiny steps, in this process and in the subprocesses they start (which inherit the
# environment): JAX's persistent compilation cache compiles each once per session. Every step still runs.
_CACHE = tempfile.TemporaryDirectory(prefix="tinybert_jax_test_compilations_")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE.name)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# The tiny test models compile far longer than they run: XLA's CPU backend at optimisation level 0 compiles them
# about 40% faster, and its elemental emitters instead of the MLIR fusion emitters another 30-40% (the suite: 110 s
# less compilation, 40 s more running the dropout masks of the longest trainings). Same programs, same results
# within the tests' tolerances; speed is measured by bench/, not here.
XLA_TEST_FLAGS = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0",
                                        "--xla_cpu_use_fusion_emitters=false"]))
os.environ["XLA_FLAGS"] = XLA_TEST_FLAGS

from pathlib import Path

import pytest
from helpers import make_hf_model

from tinybert_jax.threefry import lower_threefry_unrolled_on_cpu

# Every test process (xdist workers included) before it compiles anything, as the entry points do: dropout masks on
# CPU as one fused kernel, bit-identical to JAX's own lowering (tinybert_jax/threefry.py). Subprocesses the tests
# start get it from the entry point they run.
lower_threefry_unrolled_on_cpu()


@pytest.fixture
def hf_checkpoint(tmp_path):
    """Factory: save a random-init model and return (model, directory)."""
    def make(cls_name: str = "BertModel", subdir: str = "hf", seed: int = 0, **overrides):
        model = make_hf_model(cls_name, seed=seed, **overrides)
        out = tmp_path / subdir
        model.save_pretrained(out)
        return model, out
    return make


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    """A directory every pytest worker of the session sees (xdist workers' base temps share a parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


# The slowest tests (seconds on a 2-core machine, made-once fixtures they are first to need included), slowest
# first. pytest-xdist hands tests out in collection order: one collected last would run while the other worker
# idles. Run first, they leave the short tests to fill the end. Named by file name::test name, whichever directory
# under tests/ the file is in.
SLOW_FIRST = (
    "test_scale.py::test_two_processes_match_one_process_then_resume_on_one",  # 55
    "test_reference_runs.py::test_pipelines_reproduce_the_recorded_losses",  # 38
    "test_task.py::test_finetuned_teacher_learns_the_task",  # 36
    "test_custom.py::test_custom_task_fine_tune_and_distil_end_to_end",  # 35
    "test_task.py::test_regression_stage2_distils_the_teachers_predictions",  # 33
    "test_bench.py::test_all_benchmarks_at_tiny_sizes",  # 32
    "test_bench.py::test_accelerator_script_runs_at_ci_size_without_an_accelerator",  # 29
    "test_bench.py::test_task_benchmark_at_tiny_sizes",  # 29
    "test_span_token_tasks.py::test_squad_fine_tune_distil_and_export",  # 27 and 22
    "test_general.py::test_mesh_2x4_matches_one_device",  # 27
    "test_scale.py::test_fsdp_on_8_devices_matches_data_parallel_then_resumes_on_4",  # 26
    "test_task.py::test_stage2_per_seed_reports_each_seed_and_exports_the_best",  # 26
    "test_task.py::test_two_stage_distillation_end_to_end",  # 23
    "test_custom.py::test_custom_regression_pairs_from_jsonl_fine_tune",  # 23
    "test_general.py::test_general_smoke_variant_runs_offline_with_only_a_workdir",  # 22
    "test_span_token_tasks.py::test_conll_fine_tune_distil_and_export",  # 20
    "test_custom.py::test_custom_pair_classification_from_tsv_fine_tune",  # 18
    "test_scale.py::test_sigterm_checkpoints_the_current_step_and_exits_0",  # 17
    "test_general.py::test_interrupt_and_resume_reproduces_the_trajectory",  # 16
    "test_bench.py::test_step_of_the_distilbert_and_minilm_recipes",  # 16
    "test_augment.py::test_augment_benchmark_at_tiny_sizes",  # 15
    "test_augment.py::test_augmentation_is_the_same_on_two_processes_and_on_four_devices",  # 13
    "test_task.py::test_task_stage1_with_minilm_v2_relations",  # 12
    "test_scale.py::test_bfloat16_trains_and_starts_within_bf16_tolerance_of_float32",  # 12
    "test_faults.py::test_sigkill_during_an_asynchronous_save_resumes_from_the_last_complete_checkpoint",  # 12
    "test_general.py::test_losses_fall_metrics_and_export",  # 11
    "test_recipes.py::test_minilm_v2_recipe_with_another_width_and_head_count",  # 11
    "test_recipes.py::test_distilbert_recipe_trains_and_exports_a_masked_lm",  # 10
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.rpartition("/")[2].partition("[")[0], len(rank)))
