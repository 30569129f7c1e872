"""What this CPU can do fast: its model and the instruction-set flags that decide whether a reduced
precision pays (oneDNN uses AVX-512 VNNI / AVX-VNNI / AMX for int8, AVX-512 BF16 / AMX for bf16)."""

from __future__ import annotations

import os
from typing import Optional

# The CPU features each precision needs to be fast (oneDNN uses them when present).
FAST_WITH = {"bf16": ("avx512_bf16", "amx_bf16"), "int8": ("avx512_vnni", "avx_vnni", "amx_int8")}
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_info() -> dict:
    """The CPU model and the flags that decide reduced-precision speed (from /proc/cpuinfo)."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in CPU_FLAGS if f in flags]}


def speed_warning(precision: str, cpu: dict) -> Optional[str]:
    """A warning when this CPU lacks the instructions that make ``precision`` fast, else None."""
    need = FAST_WITH.get(precision)
    if not need or any(f in cpu["flags"] for f in need):
        return None
    return (f"--precision {precision}: this CPU ({cpu['model']}) has none of {', '.join(need)}; {precision} "
            "will likely be slower than fp32 here (executors with those flags run it fast)")
