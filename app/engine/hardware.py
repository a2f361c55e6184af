"""What this machine offers the model: its CPU's instruction sets, and the bundle variant that suits them."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from app.engine.bundle import BundleError

# int8 dot products in hardware: x86 VNNI (AVX-512 or AVX) and AMX tiles, Arm's dot-product and matrix
# extensions. ONNX Runtime's int8 kernels use them; without them x86 falls back to u8*s8 pairs that can
# saturate (the reason for the quantizer's reduce_range), which costs accuracy as well as speed.
INT8_DOT = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})
REPORTED = INT8_DOT | {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fp16", "bf16"}


def cpu_quota() -> int:
    """CPUs this process may use: the cgroup quota when set (containers), else the affinity mask.

    ONNX Runtime sizes its pool from the host's cores and ignores container limits, so the
    default thread count must come from here.
    """
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


@dataclass(frozen=True)
class Pick:
    name: str  # the variant or runtime chosen
    reason: str


def _cpuinfo_value(cpuinfo: Path, keys: tuple[str, ...]) -> str | None:
    """The first processor's value for the first of `keys` present; None where /proc is not Linux's."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in keys:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's feature flags (x86 'flags', Arm 'Features'); empty where /proc is not Linux's."""
    return frozenset((_cpuinfo_value(cpuinfo, ("flags", "Features")) or "").split())


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name, for reports next to speeds measured on it."""
    return _cpuinfo_value(cpuinfo, ("model name",)) or "unknown CPU"


def pick_variant(variants: Iterable[str], requested: str, on_cuda: bool, flags: frozenset[str]) -> Pick:
    """The bundle variant to serve: the requested one, else the fastest faithful one for this device."""
    have = list(variants)
    if requested != "auto":
        if requested not in have:
            raise BundleError(f"variant {requested!r} not in bundle (has {sorted(have)})")
        return Pick(requested, f"QA_MODEL_VARIANT={requested}")
    if on_cuda:
        for v, why in (("fp16", "CUDA: fp16 tensor cores"), ("fp32", "CUDA: the bundle has no fp16")):
            if v in have:
                return Pick(v, why)
    else:
        dot = sorted(flags & INT8_DOT)
        if "int8" in have and dot:
            return Pick("int8", f"CPU has int8 dot-product instructions ({', '.join(dot)})")
        if "fp32" in have and "int8" in have:
            return Pick("fp32", "CPU lacks int8 dot-product instructions (VNNI, AMX): fp32 is exact there")
        if "fp32" in have:
            return Pick("fp32", "CPU: the bundle has no int8")
        if "int8" in have:
            return Pick("int8", "the bundle's only CPU variant; this CPU lacks VNNI/AMX, so int8 runs slower there")
    return Pick(have[0], "the bundle's only variant")


def pick_runtime(built_for: str | None, requested: str, on_cuda: bool, openvino: str | None) -> Pick:
    """The runtime for the chosen file: the one it was built and validated for, unless told otherwise.

    `built_for` is the manifest's `runtime` for the file (None: ONNX Runtime, as in bundles that predate the
    field); `openvino` is OpenVINO's version, None when absent.
    """
    if requested != "auto":
        if requested == "openvino" and on_cuda:
            raise BundleError("QA_RUNTIME=openvino runs on the CPU only; use QA_PROVIDERS=cpu")
        if requested == "openvino" and openvino is None:
            raise BundleError("QA_RUNTIME=openvino but openvino is not installed (pip install openvino)")
        return Pick(requested, f"QA_RUNTIME={requested}")
    if built_for == "openvino":
        if on_cuda:
            return Pick("onnxruntime", "CUDA: OpenVINO here runs on the CPU only")
        if openvino is None:
            return Pick("onnxruntime", "built for OpenVINO, which is not installed: ONNX Runtime runs it, slower")
        return Pick("openvino", "the file is static int8 (QDQ), which OpenVINO runs in int8 end to end")
    return Pick("onnxruntime", "the file uses ONNX Runtime's fused operators")
