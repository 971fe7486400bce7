"""This machine's CPU as Linux reports it in /proc/cpuinfo: the first processor's fields and its feature flags.

Read by machine.py (the `machine` object of every bench JSON) and by cpu_isa.py (checking jaxlib's feature table
before restricting it); it imports neither.
"""
from __future__ import annotations

from pathlib import Path


def first_fields(cpuinfo: str) -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo text."""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def feature_flags(fields: dict[str, str]) -> set[str]:
    """The feature flags among `first_fields` (x86's `flags`, Arm's `Features`)."""
    return set((fields.get("flags") or fields.get("Features") or "").split())


def this_cpuinfo() -> str:
    """This machine's /proc/cpuinfo text ('' where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.read_text() if cpuinfo.is_file() else ""


def cpu_flags() -> set[str]:
    """Every feature flag this machine's CPU reports (empty without /proc/cpuinfo)."""
    return feature_flags(first_fields(this_cpuinfo()))
