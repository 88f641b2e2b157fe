"""The CPU a benchmark ran on: its model name, cores and the vector features that decide
which kernels and precisions are fast (printed with every figure)."""

from __future__ import annotations

import os
import platform
import re

FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu() -> dict:
    """The CPU's model name, core count and which of FEATURES it has."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "cores": os.cpu_count(), "features": []}
    model = re.search(r"model name\s*:\s*(.*)", info)
    flags_line = set(re.search(r"flags\s*:\s*(.*)", info).group(1).split())
    return {"model": model.group(1) if model else platform.machine(), "cores": os.cpu_count(),
            "features": [f for f in FEATURES if f in flags_line]}
