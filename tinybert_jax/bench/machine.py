"""The machine a benchmark ran on, for the `machine` object of every bench JSON: speed figures are only comparable
on the same CPU kind and instruction set (README, "Performance": one table per CPU kind)."""
from __future__ import annotations

import os
import platform

import jax

from tinybert_jax.bench.cpu_isa import emulated
from tinybert_jax.bench.proc_cpuinfo import feature_flags, first_fields, this_cpuinfo

# the vector and matrix extensions that decide XLA:CPU's speed, in the order they appeared
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8", "asimd", "sve", "sve2")


def cpu_description(cpuinfo: str) -> tuple[str, list[str]]:
    """(model, ISA extensions present) from /proc/cpuinfo text: the model name, with family and model number
    when the name alone does not tell the generation (virtual machines often report just "AMD EPYC")."""
    fields = first_fields(cpuinfo)
    name = fields.get("model name") or fields.get("Model name") or platform.processor() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    flags = feature_flags(fields)
    return name, [flag for flag in ISA_FLAGS if flag in flags]


def machine_info() -> dict:
    model, isa = cpu_description(this_cpuinfo())
    devices = jax.devices()
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu_model": model, "isa": isa,
            "device": devices[0].device_kind if devices else "none", "devices": [str(d) for d in devices],
            "isa_emulated": emulated(), "jax": jax.__version__}
