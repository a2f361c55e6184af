"""Export, quantize, validate and bundle the tiny model; the manifest's hashes guard every file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.engine.bundle import BundleError, read_manifest, verify_bundle
from app.engine.runtime import OrtRuntime
from app.engine.windows import WindowSpec, encode_pairs, make_windows, pad_batch, pad_token_id
from model_export.bundle import BundleTooLarge, write_bundle
from model_export.checkpoint import load_tokenizer
from model_export.export import export_all
from model_export.validate import (
    SAMPLE_PAIRS,
    Tolerance,
    ValidationFailed,
    check_structure,
    validate_variant,
    validation_batches,
    validation_windows,
)

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUTS = ["start_logits", "end_logits"]


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def test_bundle_manifest_verifies(tiny_bundle: Path) -> None:
    m = verify_bundle(tiny_bundle)
    assert m.variants == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert m.input_names == INPUTS and m.output_names == OUTPUTS
    assert (m.max_seq_length, m.doc_stride, m.max_query_length) == (128, 32, 32)
    assert set(m.files) == {"tokenizer.json", "model.onnx", "model.int8.onnx"}
    assert m.files["model.int8.onnx"].precision == "int8" and m.files["tokenizer.json"].precision is None
    assert m.files["model.int8.onnx"].bytes < m.files["model.onnx"].bytes / 2
    assert m.created and m.command


def test_manifest_records_validation_within_tolerance(tiny_bundle: Path) -> None:
    variants = read_manifest(tiny_bundle).validation["variants"]
    fp32, int8 = variants["fp32"], variants["int8"]  # type: ignore[index]
    assert fp32["numerically_validated"] and fp32["max_abs_diff"] <= 1e-4 and fp32["argmax_agreement"] == 1.0
    assert int8["numerically_validated"] and int8["max_abs_diff"] <= 0.05
    shapes = fp32["batch_shapes"]
    assert len({b for b, _ in shapes}) > 1 and len({t for _, t in shapes}) > 1


@pytest.mark.parametrize("name", ["model.onnx", "model.int8.onnx", "tokenizer.json"])
def test_tampered_file_is_refused(bundle_copy: Path, name: str) -> None:
    path = bundle_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content: only the hash can tell
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        verify_bundle(bundle_copy)


def test_truncated_or_missing_file_is_refused(bundle_copy: Path) -> None:
    model = bundle_copy / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1])
    with pytest.raises(BundleError, match="bytes"):
        verify_bundle(bundle_copy)
    (bundle_copy / "model.int8.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        verify_bundle(bundle_copy, ["model.int8.onnx"])


def test_graph_has_dynamic_axes_and_runs_on_two_shapes(tiny_bundle: Path) -> None:
    for name in ("model.onnx", "model.int8.onnx"):
        session = ort.InferenceSession(str(tiny_bundle / name), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == INPUTS
        assert [o.name for o in session.get_outputs()] == OUTPUTS
        assert all(isinstance(d, str) for i in session.get_inputs() for d in i.shape)
        for batch, length in ((1, 7), (3, 50)):
            feed = {
                "input_ids": np.full((batch, length), 10, dtype=np.int64),
                "attention_mask": np.ones((batch, length), dtype=np.int64),
                "token_type_ids": np.zeros((batch, length), dtype=np.int64),
            }
            start, end = session.run(OUTPUTS, feed)
            assert start.shape == end.shape == (batch, length) and start.dtype == np.float32


def test_padding_does_not_change_real_token_logits(tiny_bundle: Path) -> None:
    """A window alone and the same window padded in a batch give the same logits (right padding + mask)."""
    tok = load_tokenizer(str(tiny_bundle))
    pair = encode_pairs(tok, [SAMPLE_PAIRS[0]])[0]
    short = make_windows(pair, 128, 32, 32)[0]
    long = validation_windows(tok, [SAMPLE_PAIRS[3]], WindowSpec(128, 32, 32))[0]
    assert len(long) > len(short)
    session = ort.InferenceSession(str(tiny_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    alone = session.run(OUTPUTS, pad_batch([short], pad_token_id(tok)))
    padded = session.run(OUTPUTS, pad_batch([long, short], pad_token_id(tok)))
    for a, p in zip(alone, padded, strict=True):
        np.testing.assert_allclose(p[1, : len(short)], a[0], atol=1e-5)


def test_fp16_variant_keeps_io_types(tiny_bundle: Path, tmp_path: Path) -> None:
    files = export_all(tiny_bundle.parent / "hf", tmp_path / "onnx", fp16=True)
    model = onnx.load(str(files["fp16"]))
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {onnx.TensorProto.INT64}
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {onnx.TensorProto.FLOAT}
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    check_structure(files["fp16"], INPUTS, OUTPUTS)


def test_validation_fails_loudly_with_numbers(tiny_bundle: Path) -> None:
    tok = load_tokenizer(str(tiny_bundle))
    batches, _ = validation_batches(validation_windows(tok, SAMPLE_PAIRS, WindowSpec(128, 32, 32)), pad_token_id(tok))
    session = ort.InferenceSession(str(tiny_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    # a reference that is off by 0.01 everywhere stands in for a graph that drifted from the model
    wrong = [tuple(x + 0.01 for x in session.run(OUTPUTS, b)) for b in batches]
    with pytest.raises(ValidationFailed, match=r"max \|diff\| 0\.01.* > atol 0\.0001"):
        validate_variant(tiny_bundle / "model.onnx", "fp32", batches, wrong, INPUTS, OUTPUTS, Tolerance(1e-4, 0.99))


def test_bundle_size_budget_is_enforced(tiny_bundle: Path, tmp_path: Path) -> None:
    m = read_manifest(tiny_bundle)
    with pytest.raises(BundleTooLarge, match="MiB"):
        write_bundle(
            tmp_path / "big",
            onnx_files={"fp32": tiny_bundle / "model.onnx"},
            tokenizer=tiny_bundle / "tokenizer.json",
            name=m.name,
            languages=m.languages,
            base_model=m.base_model,
            max_seq_length=m.max_seq_length,
            doc_stride=m.doc_stride,
            max_query_length=m.max_query_length,
            input_names=m.input_names,
            output_names=m.output_names,
            max_bytes=100_000,
        )
    assert not (tmp_path / "big").exists() and not (tmp_path / "big.tmp").exists()


def test_runtime_feeds_exactly_the_graph_inputs(tiny_bundle: Path) -> None:

    runtime = OrtRuntime(tiny_bundle / "model.onnx", INPUTS, OUTPUTS, providers="cpu")
    assert runtime.input_names == INPUTS
    with pytest.raises(RuntimeError, match=r"the graph takes \['token_type_ids'\], which the manifest does not list"):
        OrtRuntime(tiny_bundle / "model.onnx", INPUTS[:2], OUTPUTS, providers="cpu")
    with pytest.raises(RuntimeError, match=r"manifest lists inputs \['position_ids'\]"):
        OrtRuntime(tiny_bundle / "model.onnx", [*INPUTS, "position_ids"], OUTPUTS, providers="cpu")


def test_no_torchscript_export_in_our_code() -> None:
    """Exports go through optimum's exporter (which runs its own checks); our code calls no torch.onnx.export."""
    root = Path(__file__).resolve().parents[2]
    offenders = [
        str(p.relative_to(root))
        for d in ("model_export", "app", "tests", "bench", "scripts")
        for p in (root / d).rglob("*.py")
        if "torch.onnx" in p.read_text(encoding="utf-8") and p.name != "test_export.py"
    ]
    assert offenders == []
