"""`bench --isa=avx2`: run both frameworks on the code paths an AVX2-only CPU gets, on a CPU with AVX-512.

Sessions and users land on AVX-512 machines (Zen4, Zen5) and on AVX2-only ones (Zen3), and where the step loses
time differs between them (README, "Performance"). Every library in the step picks its kernels from the CPU's
feature flags, each in its own way, so each is told separately:
- XLA's generated code: `--xla_cpu_max_isa=AVX2`;
- YNNPACK, which runs XLA:CPU's matrix products: it reads the feature table of the cpuinfo library linked into
  jaxlib, once, and has no setting, so the table's AVX-512 (and AVX-VNNI, AMX) entries are cleared before the first
  computation; the flags YNNPACK then derives are read back and checked;
- PyTorch: `ATEN_CPU_CAPABILITY=avx2`, `ONEDNN_MAX_CPU_ISA=AVX2`, `MKL_ENABLE_INSTRUCTIONS=AVX2`;
- numpy, its OpenBLAS and glibc: their AVX-512 paths off (read at start-up, hence the fresh process).
The cores stay what they are (clock, caches, execution units), so the figures are this machine's speed on the
AVX2 paths, not another CPU's; the JSON's `machine.isa_emulated` says which ISA was emulated.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

import numpy as np

from tinybert_jax.bench.proc_cpuinfo import cpu_flags
from tinybert_jax.errors import InputError

ENV_MARK = "TINYBERT_JAX_BENCH_ISA"
CHOICES = ("native", "avx2")
AVX512_NUMPY = "X86_V4 AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"
AVX2_ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": AVX512_NUMPY, "OPENBLAS_CORETYPE": "Haswell",
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX512ER,-AVX512PF",
}
# cpuinfo's `struct cpuinfo_x86_isa` on x86-64: one bool per feature; the offsets checked against /proc/cpuinfo
# before anything is written, so a jaxlib with another cpuinfo layout is refused, not corrupted
KNOWN_OFFSETS = {"avx": 22, "fma": 24, "f16c": 27, "avx2": 28, "avx512f": 29, "avx512cd": 32, "avx512dq": 33,
                 "avx512bw": 34, "avx512vl": 35, "avx512_vnni": 41, "avx512_bf16": 42}
CLEARED_OFFSETS = (23, *range(29, 53))  # avxvnni; avx512f .. amx_fp16
YNN_AVX2, YNN_AVX512 = 1 << 5, 0x3F80  # ynn::arch_flag bits: avx2; avx512f, bw, vl, dq, vnni, bf16, fp16


def reexec_if_requested(isa: str, argv: list[str]) -> None:
    """With isa 'avx2', replace this process by `python -m tinybert_jax.bench ARGV` in the AVX2 environment
    (restrict_jaxlib still runs there); 'native' and an already restricted process return at once."""
    if isa == "native" or os.environ.get(ENV_MARK) == isa:
        return
    if platform.machine() not in ("x86_64", "AMD64"):
        raise InputError(f"--isa={isa} restricts an x86-64 CPU; this machine is {platform.machine()} "
                         "(use --isa=native)")
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_max_isa=AVX2".strip()
    os.environ.update(AVX2_ENVIRONMENT, XLA_FLAGS=flags, **{ENV_MARK: isa})
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "tinybert_jax.bench", *argv])


def emulated() -> str:
    """The ISA this process emulates ('' for none): the environment carries it to child processes."""
    return os.environ.get(ENV_MARK, "")


def restrict_jaxlib() -> None:
    """In an AVX2-emulating process, clear the AVX-512 entries of jaxlib's cpuinfo table before the first
    computation; raises RuntimeError when this jaxlib cannot be restricted (another layout, stripped symbols) or
    when YNNPACK would still pick AVX-512 kernels."""
    if emulated() != "avx2":
        return
    import jaxlib

    library = Path(jaxlib.__file__).parent / "libjax_common.so"
    if not library.is_file():
        raise RuntimeError(f"{library} not found: this jaxlib cannot be restricted to AVX2 (use --isa=native)")
    loaded_at = load_address(library)
    addresses = {name: loaded_at + offset
                 for name, offset in symbol_offsets(library, ("cpuinfo_isa", "cpuinfo_initialize",
                                                              "_ZN3ynn24get_supported_arch_flagsEv")).items()}
    if not ctypes.CFUNCTYPE(ctypes.c_bool)(addresses["cpuinfo_initialize"])():
        raise RuntimeError(f"{library}: cpuinfo_initialize failed")
    table = (ctypes.c_uint8 * 64).from_address(addresses["cpuinfo_isa"])
    flags = cpu_flags()
    wrong = [name for name, offset in KNOWN_OFFSETS.items() if bool(table[offset]) != (name in flags)]
    if wrong:
        raise RuntimeError(f"{library}: cpuinfo's feature table does not match /proc/cpuinfo at {wrong}; this "
                           "jaxlib cannot be restricted to AVX2 (use --isa=native)")
    for offset in CLEARED_OFFSETS:
        table[offset] = 0
    ynn_flags = ctypes.CFUNCTYPE(ctypes.c_uint64)(addresses["_ZN3ynn24get_supported_arch_flagsEv"])()
    if ynn_flags & YNN_AVX512 or not ynn_flags & YNN_AVX2:
        raise RuntimeError(f"YNNPACK's CPU flags are {ynn_flags:#x} after the restriction: expected AVX2 without "
                           "AVX-512 (did a computation run before restrict_jaxlib?)")


def symbol_offsets(library: Path, names: tuple[str, ...]) -> dict[str, int]:
    """{name: address relative to the load address} from an ELF64 shared library's full symbol table."""
    data = library.read_bytes()
    header = np.frombuffer(data, np.uint8, 64, 0)
    section_at, (entry_size, count) = int(header[0x28:0x30].view("<u8")[0]), header[0x3A:0x3E].view("<u2")
    sections = np.frombuffer(data, np.dtype([("name", "<u4"), ("type", "<u4"), ("flags", "<u8"), ("addr", "<u8"),
                                             ("offset", "<u8"), ("size", "<u8"), ("link", "<u4"), ("info", "<u4"),
                                             ("align", "<u8"), ("entsize", "<u8")]), int(count), section_at)
    assert entry_size == sections.itemsize
    symtab = sections[sections["type"] == 2]  # SHT_SYMTAB: the local symbols too, where .dynsym has only exports
    if not len(symtab):
        raise RuntimeError(f"{library} has no symbol table (stripped): cannot restrict it to AVX2")
    strings = sections[int(symtab["link"][0])]
    names_at = data[int(strings["offset"]):int(strings["offset"] + strings["size"])]
    symbols = np.frombuffer(data, np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"),
                                            ("value", "<u8"), ("size", "<u8")]),
                            int(symtab["size"][0]) // 24, int(symtab["offset"][0]))
    offsets = {}
    for name in names:
        wanted = name.encode() + b"\0"  # also found as the tail of a longer name: linkers share string tails
        starts = []
        at = names_at.find(wanted)
        while at >= 0:
            starts.append(at)
            at = names_at.find(wanted, at + 1)
        hits = symbols["value"][np.isin(symbols["name"], starts) & (symbols["value"] != 0)]
        if not len(hits):
            raise RuntimeError(f"{library} has no symbol {name}: cannot restrict it to AVX2 (use --isa=native)")
        offsets[name] = int(hits[0])
    return offsets


def load_address(library: Path) -> int:
    """Where the library's first segment (file offset 0, virtual address 0) is mapped in this process."""
    real = str(library.resolve())
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == real and int(fields[2], 16) == 0:
            return int(fields[0].split("-")[0], 16)
    raise RuntimeError(f"{library} is not loaded in this process")
