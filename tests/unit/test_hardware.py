"""The variant the engine serves follows the device and the CPU's instruction sets, unless overridden."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.engine.bundle import BundleError
from app.engine.hardware import cpu_flags, pick_runtime, pick_variant
from model_export.train import auto_precision

ZEN4 = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
SAPPHIRE_RAPIDS = ZEN4 | {"amx_int8", "amx_bf16", "amx_tile"}
HASWELL = frozenset({"avx2", "fma"})
GRAVITON3 = frozenset({"asimd", "asimddp", "i8mm", "bf16"})


@pytest.mark.parametrize("flags", [ZEN4, SAPPHIRE_RAPIDS, GRAVITON3])
def test_int8_where_the_cpu_has_int8_dot_products(flags: frozenset[str]):
    pick = pick_variant(["fp32", "int8"], "auto", False, flags)
    assert pick.name == "int8"
    assert any(f in pick.reason for f in ("vnni", "amx_int8", "asimddp", "i8mm"))


def test_fp32_where_int8_would_saturate():
    assert pick_variant(["fp32", "int8"], "auto", False, HASWELL).name == "fp32"
    only = pick_variant(["int8"], "auto", False, HASWELL)
    assert only.name == "int8" and "lacks" in only.reason


def test_cuda_prefers_fp16_then_fp32():
    assert pick_variant(["fp32", "fp16", "int8"], "auto", True, ZEN4).name == "fp16"
    assert pick_variant(["fp32", "int8"], "auto", True, ZEN4).name == "fp32"


def test_override_wins_and_must_exist():
    assert pick_variant(["fp32", "int8"], "fp32", False, ZEN4).reason == "QA_MODEL_VARIANT=fp32"
    with pytest.raises(BundleError, match="not in bundle"):
        pick_variant(["int8"], "fp16", False, ZEN4)


def test_cpu_flags_reads_x86_and_arm(tmp_path: Path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512_vnni"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert cpu_flags(arm) == {"fp", "asimd", "asimddp"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_fp32_only_bundle_says_so():
    assert pick_variant(["fp32"], "auto", False, ZEN4).reason == "CPU: the bundle has no int8"


def test_static_int8_runs_on_openvino_where_installed() -> None:
    assert pick_runtime("openvino", "auto", False, "2026.4.1").name == "openvino"
    assert pick_runtime("onnxruntime", "auto", False, "2026.4.1").name == "onnxruntime"


def test_static_int8_falls_back_to_onnxruntime_and_says_why() -> None:
    fallback = pick_runtime("openvino", "auto", False, None)
    assert fallback.name == "onnxruntime" and "not installed" in fallback.reason
    assert pick_runtime("openvino", "auto", True, "2026.4.1").name == "onnxruntime"  # CUDA


def test_runtime_override_is_obeyed_or_refused_with_the_reason() -> None:
    assert pick_runtime("openvino", "onnxruntime", False, "2026.4.1").reason == "QA_RUNTIME=onnxruntime"
    with pytest.raises(BundleError, match="not installed"):
        pick_runtime("onnxruntime", "openvino", False, None)
    with pytest.raises(BundleError, match="CPU only"):
        pick_runtime("onnxruntime", "openvino", True, "2026.4.1")


@pytest.mark.parametrize(
    ("on_cuda", "cuda_bf16", "flags", "want"),
    [
        (False, False, ZEN4, "bf16"),  # AVX512-BF16
        (False, False, SAPPHIRE_RAPIDS, "bf16"),  # AMX
        (False, False, HASWELL, "fp32"),  # bf16 would be emulated, slower than fp32
        (False, False, GRAVITON3, "fp32"),  # not measured on Arm: the exact choice
        (True, True, HASWELL, "bf16"),  # the GPU decides, not the host CPU
        (True, False, SAPPHIRE_RAPIDS, "fp32"),
    ],
)
def test_training_autocasts_to_bf16_only_where_the_device_multiplies_it(
    on_cuda: bool, cuda_bf16: bool, flags: frozenset[str], want: str
) -> None:
    assert auto_precision(on_cuda, cuda_bf16, flags) == want
