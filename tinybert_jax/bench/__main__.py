"""python -m tinybert_jax.bench {step,inference,data,augment,task,all} [options] [--json=FILE]

Each sub-benchmark prints a table and, with --json, writes its numbers (the step's under `step`, e.g.
`step.examples_per_s`). Warm-up calls are excluded; medians are reported with min/max over the repetitions.
`all` is step, inference and data; `augment` and `task` (minutes at BERT-base size on a CPU) run on their own.
"""
from __future__ import annotations

import argparse
import json
import sys

from tinybert_jax.bench import augment, cpu_isa, data, inference, memory, step, task
from tinybert_jax.bench.machine import machine_info
from tinybert_jax.bench.timing import matmul_ceiling
from tinybert_jax.errors import InputError
from tinybert_jax.models.bert import BertConfig
from tinybert_jax.threefry import lower_threefry_unrolled_on_cpu


def model_size(text: str, vocab: int, where: str) -> BertConfig:
    """'layers,hidden,ffn,heads' -> BertConfig."""
    try:
        layers, hidden, ffn, heads = (int(x) for x in text.split(","))
        return BertConfig(vocab_size=vocab, num_hidden_layers=layers, hidden_size=hidden, intermediate_size=ffn,
                          num_attention_heads=heads)
    except ValueError as e:
        raise InputError(f"--{where}={text!r}: expected 'layers,hidden,ffn,heads' of a valid BERT ({e})") from None


def table(title: str, rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join([title, "-" * len(title)] + [f"{name:<{width}}  {value}" for name, value in rows]) + "\n"


def fmt_range(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    return f"[{values[0] * scale:.{digits}f}, {values[1] * scale:.{digits}f}]"


def mib(n_bytes: int) -> str:
    return f"{n_bytes / 2 ** 20:,.0f} MiB"


def run_step(args, teacher, student, results) -> None:
    ceiling = matmul_ceiling(((1024, 768, 3072), (1024, 3072, 768), (1024, 768, 768)))
    r = step.bench_step(teacher, student, args.batch, args.seq_len, args.reps, args.warmup, ceiling["flops_per_s"],
                        args.teacher_dtype, args.recipe, args.relation_heads)
    r["matmul_ceiling_flops_per_s"] = ceiling["flops_per_s"]
    results["step"] = r
    precision = "fp32" if args.teacher_dtype == "float32" else "bf16 teacher, fp32 student and losses"
    print(table(f"step: general distillation ({args.recipe}), batch {args.batch} x seq {args.seq_len}, {precision}", [
        ("examples/s (median) [min, max]", f"{r['examples_per_s']:.2f} {fmt_range(r['examples_per_s_range'])}"),
        ("tokens/s", f"{r['tokens_per_s']:.0f}"),
        ("model FLOPs per step", f"{r['flops_per_step'] / 1e9:.1f} G (teacher fwd {r['teacher_layers_run']} "
                                 f"layers + student fwd/bwd + projection / MLM heads)"),
        ("achieved FLOP/s", f"{r['achieved_flops_per_s'] / 1e9:.1f} G"),
        ("matmul ceiling (measured)", f"{ceiling['flops_per_s'] / 1e9:.1f} G"),
        ("fraction of ceiling", f"{r['fraction_of_matmul_ceiling']:.1%}"),
        ("compile + first step", f"{r['compile_s']:.1f} s"),
    ]))
    if args.vs_pytorch:
        v = step.bench_step_vs_pytorch(teacher, student, args.batch, args.seq_len, args.reps, args.warmup,
                                       args.teacher_dtype, args.breakdown)
        v["jax_fraction_of_ceiling"] = v["jax_achieved_flops_per_s"] / ceiling["flops_per_s"]
        v["pytorch_fraction_of_ceiling"] = v["pytorch_achieved_flops_per_s"] / ceiling["flops_per_s"]
        for side in memory.SIDES:  # each in a fresh process: one process's peak cannot be split between the two
            v[f"{side}_memory"] = memory.step_peak_rss(side, teacher, student, args.batch, args.seq_len,
                                                         args.teacher_dtype)
        v["peak_rss_ratio"] = v["jax_memory"]["peak_rss_bytes"] / v["pytorch_memory"]["peak_rss_bytes"]
        results["step_vs_pytorch"] = v
        print(table(f"step: ours ({precision}) vs transformers (PyTorch, fp32), timed alternately", [
            ("ours examples/s", f"{v['jax_examples_per_s']:.2f} ({v['jax_fraction_of_ceiling']:.1%} of ceiling)"),
            ("PyTorch examples/s", f"{v['pytorch_examples_per_s']:.2f} "
                                   f"({v['pytorch_fraction_of_ceiling']:.1%} of ceiling)"),
            ("ratio", f"{v['ratio']:.2f}x"),
            ("loss at start, dropout off: ours / PyTorch", f"{v['jax_loss_at_start']:.6g} / "
                                                            f"{v['pytorch_loss_at_start']:.6g}"),
            ("step seconds ours / PyTorch [min, max]", f"{fmt_range(v['jax_step_range_s'])} / "
                                                       f"{fmt_range(v['pytorch_step_range_s'])}"),
            ("peak RSS ours / PyTorch (own process each)", f"{mib(v['jax_memory']['peak_rss_bytes'])} / "
                                                           f"{mib(v['pytorch_memory']['peak_rss_bytes'])} "
                                                           f"({v['peak_rss_ratio']:.2f}x)"),
            ("  of which after imports", f"{mib(v['jax_memory']['rss_after_imports_bytes'])} / "
                                         f"{mib(v['pytorch_memory']['rss_after_imports_bytes'])}"),
        ]))
        if args.breakdown:
            print(table("step phases, each on its own: ours / PyTorch (ms, median)", [
                (phase, " / ".join(f"{times[side] * 1e3:.1f}" if side in times else "-"
                                   for side in ("jax_s", "pytorch_s")))
                for phase, times in v["breakdown"].items()]))


def run_inference(args, teacher, student, results) -> None:
    r = inference.bench_inference(teacher, student, tuple(args.inference_batches), args.seq_len,
                                  max(args.reps // 2, 1), 1, args.inference_chunk)
    results["inference"] = r
    rows = [("parameters teacher / student", f"{r['teacher_params']:,} / {r['student_params']:,} "
                                             f"({r['size_ratio']:.1f}x smaller; paper 7.5x)"),
            ("encoder FLOP ratio", f"{r['flop_ratio']:.1f}x")]
    for run, b in r["batches"].items():
        rows += [(f"{run}: teacher latency [min, max]", f"{b['teacher']['latency_s'] * 1e3:.1f} ms "
                                                        f"{fmt_range(b['teacher']['latency_range_s'], 1e3, 1)}"),
                 (f"{run}: student latency [min, max]", f"{b['student']['latency_s'] * 1e3:.1f} ms "
                                                        f"{fmt_range(b['student']['latency_range_s'], 1e3, 1)}"),
                 (f"{run}: throughput teacher / student", f"{b['teacher']['sequences_per_s']:.1f} / "
                                                          f"{b['student']['sequences_per_s']:.1f} seq/s"),
                 (f"{run}: student speed-up", f"{b['speedup']:.1f}x (paper 9.4x)")]
    print(table(f"inference: forward only, seq {args.seq_len}, fp32", rows))


def run_data(args, teacher, student, results) -> None:
    consumption = results.get("step", {}).get("examples_per_s")
    if consumption is None:  # measure what the step eats, briefly
        consumption = step.bench_step(teacher, student, args.batch, args.seq_len, 3, 1, 1.0)["examples_per_s"]
    r = data.bench_data(args.source, args.tokenizer, args.seq_len, args.batch, args.reps, consumption)
    results["data"] = r
    print(table(f"data: prepare and load ({args.source}, seq {args.seq_len})", [
        ("prepare", f"{r['prepare_tokens_per_s']:.0f} tokens/s ({r['prepare_tokens']:,} tokens, "
                    f"{r['prepare_sequences']:,} sequences in {r['prepare_s']:.1f} s)"),
        ("loader", f"{r['loader_sequences_per_s']:.0f} sequences/s at batch {r['loader_batch']}"),
        ("step consumes", f"{r['step_examples_per_s']:.1f} sequences/s"),
        ("loader / step", f"{r['loader_over_step']:.0f}x"),
    ]))


def run_augment(args, teacher, student, results) -> None:
    r = augment.bench_augment(teacher, args.sentences, args.reference_sentences, args.augment_batch, args.seq_len,
                              args.mlm, args.glove)
    results["augment"] = r
    subset = (f" (timed on the first {r['reference_sentences']} sentences)"
              if r["reference_sentences"] < r["sentences"] else "")
    print(table(f"augment: TinyBERT DA on {r['sentences']} corpus sentences, MLM {r['mlm']}", [
        ("work per sentence", f"{r['masked_inputs_per_sentence']:.1f} masked MLM inputs, "
                              f"{r['glove_words_per_sentence']:.1f} GloVe words, "
                              f"{r['variants_per_sentence']:.1f} variants "
                              f"(k {r['k']}, p_t {r['p_t']}, n_a {r['n_a']})"),
        (f"batched, batch {r['batch']}", f"{r['batched_sentences_per_s']:.2f} sentences/s "
                                         f"({r['batched_masked_inputs_per_s']:.1f} masked inputs/s)"),
        ("one mask per forward", f"{r['reference_sentences_per_s']:.2f} sentences/s "
                                 f"({r['reference_masked_inputs_per_s']:.1f} masked inputs/s){subset}"),
        ("ratio", f"{r['speedup']:.2f}x"),
        ("same outputs", str(r["same_outputs"]).lower()),
        ("compile (both paths, excluded)", f"{r['compile_s']:.1f} s"),
    ]))


def run_task(args, teacher, student, results) -> None:
    r = task.bench_stage1(teacher, student, args.task_batch, args.task_steps, args.task_sentences, args.buckets,
                          args.tokenizer)
    r["augment"] = task.bench_augment_devices(teacher, args.sentences, args.augment_batch, (1, 8), args.mlm,
                                              args.glove)
    results["task"] = r
    rows = []
    for kind in ("single", "pair"):
        k = r[kind]
        rows += [(f"{kind}: seq_len, mean real length", f"{k['seq_len']}, {k['mean_length']:.1f} "
                                                       f"({k['examples']} examples)"),
                 (f"{kind}: fixed padding", f"{k['fixed']['examples_per_s']:.2f} examples/s"),
                 (f"{kind}: bucketed", f"{k['bucketed']['examples_per_s']:.2f} examples/s "
                                       f"(mean padded length {k['bucketed']['mean_padded_length']:.1f}, "
                                       f"{k['bucketed']['shapes']} shapes compiled in "
                                       f"{k['bucketed']['compile_and_first_steps_s']:.1f} s)"),
                 (f"{kind}: speed-up / ideal", f"{k['speedup']:.2f}x / {k['ideal']:.2f}x "
                                               f"({k['fraction_of_ideal']:.0%} of ideal)")]
    rates = r["augment"]["sentences_per_s"]
    rows.append(("augmentation 1 / 8 devices", f"{rates['1']:.2f} / {rates['8']:.2f} sentences/s "
                                               f"({r['augment']['speedup']:.2f}x)"))
    print(table(f"task: stage-1 step, batch {args.task_batch}, {args.task_steps} steps, buckets {args.buckets}",
                rows))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tinybert_jax.bench", description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=("step", "inference", "data", "augment", "task", "all"))
    parser.add_argument("--vs-pytorch", action="store_true", help="step: also time the PyTorch reference "
                        "(tinybert recipe)")
    parser.add_argument("--breakdown", action="store_true", help="step: with --vs-pytorch, also time the step's "
                        "phases (teacher forward, student forward/backward with and without dropout, dropout bits, "
                        "optimizer update) on their own")
    parser.add_argument("--recipe", choices=("tinybert", "distilbert", "minilm_v1", "minilm_v2"), default="tinybert",
                        help="step: the distillation terms (distilbert adds MLM heads and in-step masking)")
    parser.add_argument("--relation-heads", type=int, default=48, help="step: MiniLMv2 relation heads")
    parser.add_argument("--teacher", default="12,768,3072,12", help="layers,hidden,ffn,heads (BERT-base)")
    parser.add_argument("--student", default="4,312,1200,12", help="layers,hidden,ffn,heads (TinyBERT4)")
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--batch", type=int, default=8, help="step and loader batch")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--inference-batches", type=int, nargs="+", default=[128, 1])
    parser.add_argument("--inference-chunk", type=int, default=16,
                        help="inference: batches above this also run as a loop over chunks of this many sequences")
    parser.add_argument("--teacher-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="step: teacher precision (the student and the losses are always float32)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--source", default="embedded", help="data: corpus (as data.source)")
    parser.add_argument("--tokenizer", default="", help="data and task: tokenizer dir ('' = WordPiece trained on the "
                                                    "corpus)")
    parser.add_argument("--mlm", default="", help="augment: BertForMaskedLM directory ('' = random init of "
                                                  "--teacher size)")
    parser.add_argument("--glove", default="", help="augment: GloVe text file ('' = random vectors)")
    parser.add_argument("--sentences", type=int, default=200, help="augment: corpus sentences")
    parser.add_argument("--reference-sentences", type=int, default=None,
                        help="augment: time the one-mask-per-forward reference on this many (default all)")
    parser.add_argument("--augment-batch", type=int, default=64, help="augment: masked inputs per forward")
    parser.add_argument("--task-batch", type=int, default=32, help="task: stage-1 batch")
    parser.add_argument("--task-steps", type=int, default=16, help="task: timed steps per padding")
    parser.add_argument("--task-sentences", type=int, default=2048, help="task: corpus sentences")
    parser.add_argument("--buckets", default="auto", help="task: data.buckets")
    parser.add_argument("--isa", choices=cpu_isa.CHOICES, default="native",
                        help="avx2: run on the kernels an AVX2-only CPU gets, on a CPU that also has AVX-512 "
                             "(bench/cpu_isa.py; this machine's cores, another code path)")
    parser.add_argument("--json", default="", help="write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        teacher = model_size(args.teacher, args.vocab, "teacher")
        student = model_size(args.student, args.vocab, "student")
        if args.breakdown and not args.vs_pytorch:
            raise InputError("--breakdown compares the phases with PyTorch's: add --vs-pytorch")
        if args.vs_pytorch and args.recipe != "tinybert":
            raise InputError(f"--vs-pytorch has a PyTorch reference for the tinybert recipe only, not {args.recipe}")
        if args.benchmark in ("step", "all"):
            step.recipe_spec(args.recipe, teacher, student, args.relation_heads)  # sizes unfit for the recipe
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        cpu_isa.reexec_if_requested(args.isa, sys.argv[1:] if argv is None else argv)
        cpu_isa.restrict_jaxlib()
    except (InputError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Before anything is compiled: dropout masks (and random initialisation) on CPU as one fused kernel, bit-identical
    # to JAX's own lowering (tinybert_jax/threefry.py); the steps measured are those training runs compile.
    lower_threefry_unrolled_on_cpu()
    results = {"machine": machine_info()}
    emulated = f" (emulating {results['machine']['isa_emulated']})" if results["machine"]["isa_emulated"] else ""
    print(f"machine: {results['machine']['cpu_model']}, {results['machine']['cpus']} CPUs, "
          f"{' '.join(results['machine']['isa'])}{emulated}; {results['machine']['device']}")
    chosen = ("step", "inference", "data") if args.benchmark == "all" else (args.benchmark,)
    runners = {"step": run_step, "inference": run_inference, "data": run_data, "augment": run_augment,
               "task": run_task}
    for name in chosen:
        runners[name](args, teacher, student, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
