"""Shrink a SentencePiece-unigram model's vocabulary to the pieces Korean, English, digits and punctuation need."""

from __future__ import annotations

import json
import shutil
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

META = "\u2581"


def _script(ch: str) -> str:
    o = ord(ch)
    if 0xAC00 <= o <= 0xD7A3 or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F:
        return "hangul"
    if o < 0x80:
        return "ascii" if ch.isalnum() else "symbol"
    if o <= 0x24F:
        return "latin"  # Latin-1 supplement and Latin Extended-A/B: accented English words, names
    if unicodedata.category(ch)[0] in "PSNZ":
        return "symbol"
    return "other"


def piece_kind(piece: str) -> str:
    body = piece.replace(META, "")
    if not body:
        return "meta"
    kinds = {_script(c) for c in body}
    if len(body) == 1:
        return "char"  # every single character stays, so pruning never creates an unknown token
    if kinds <= {"hangul", "symbol", "ascii"} and "hangul" in kinds:
        return "hangul"
    if kinds <= {"symbol"}:
        return "symbol"
    if kinds <= {"ascii", "symbol"}:
        return "ascii"
    if kinds <= {"ascii", "latin", "symbol"}:
        return "latin"
    return "other"


@dataclass(frozen=True)
class PruneSpec:
    """Which pieces survive: by script, by unigram score rank, and whatever the training text used."""

    ascii_top: int = 40000  # multi-character ASCII pieces, best unigram scores first
    latin_top: int = 6000  # multi-character pieces with accented Latin letters
    other_top: int = 0  # pieces of other scripts (CJK words, kana, ...) beyond what the training text uses


def select_pieces(
    vocab: list[tuple[str, float]], special_ids: Iterable[int], used_ids: Iterable[int], spec: PruneSpec
) -> list[int]:
    """Ids to keep, ascending (so specials at the front keep their ids)."""
    keep = set(special_ids) | set(used_ids)
    ranked: dict[str, list[tuple[float, int]]] = {"ascii": [], "latin": [], "other": []}
    for i, (piece, score) in enumerate(vocab):
        kind = piece_kind(piece)
        if kind in ("meta", "char", "hangul", "symbol"):
            keep.add(i)
        else:
            ranked[kind].append((-score, i))
    for kind, top in (("ascii", spec.ascii_top), ("latin", spec.latin_top), ("other", spec.other_top)):
        keep.update(i for _, i in sorted(ranked[kind])[:top])
    return sorted(keep)


def _remap_tokenizer(tok: dict, keep: list[int]) -> dict:
    new_id = {old: new for new, old in enumerate(keep)}
    tok = json.loads(json.dumps(tok))
    model = tok["model"]
    model["vocab"] = [model["vocab"][i] for i in keep]
    model["unk_id"] = new_id[model["unk_id"]]
    for added in tok.get("added_tokens", []):
        added["id"] = new_id[added["id"]]
    post = tok.get("post_processor") or {}
    for key in ("cls", "sep"):
        if key in post:
            post[key] = [post[key][0], new_id[post[key][1]]]
    return tok


def prune_model_dir(src: Path, dst: Path, keep: list[int]) -> dict[str, int]:
    """Copy an HF model dir, keeping embedding rows `keep` and the matching tokenizer pieces."""
    from safetensors.numpy import load_file, save_file  # noqa: PLC0415 - export extra

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(src / "model.safetensors"))
    names = [k for k in tensors if k.endswith("word_embeddings.weight")]
    if len(names) != 1:
        raise ValueError(f"{src}: expected one word embedding table, found {names}")
    old_rows = tensors[names[0]].shape[0]
    tensors[names[0]] = np.ascontiguousarray(tensors[names[0]][keep])
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["vocab_size"] = len(keep)
    tok = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    new_tok = _remap_tokenizer(tok, keep)
    if "pad_token_id" in config and config["pad_token_id"] is not None:
        config["pad_token_id"] = keep.index(config["pad_token_id"])
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    (dst / "tokenizer.json").write_text(json.dumps(new_tok, ensure_ascii=False))
    for extra in ("tokenizer_config.json", "special_tokens_map.json", "training.json"):
        if (src / extra).exists():
            shutil.copy(src / extra, dst / extra)
    return {"rows_before": old_rows, "rows_after": len(keep)}


def used_piece_ids(tokenizer_path: Path, texts: Iterable[str]) -> set[int]:
    tok = Tokenizer.from_file(str(tokenizer_path))
    used: set[int] = set()
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == 256:
            for e in tok.encode_batch(batch, add_special_tokens=False):
                used.update(e.ids)
            batch = []
    for e in tok.encode_batch(batch, add_special_tokens=False):
        used.update(e.ids)
    return used


def tokenization_stats(tokenizer_path: Path, texts: list[str]) -> dict[str, float]:
    """Unknown-token rate and tokens per character: what pruning costs on a text sample."""
    tok = Tokenizer.from_file(str(tokenizer_path))
    unk = tok.token_to_id("<unk>")
    n_tok = n_unk = n_chars = 0
    for e, t in zip(tok.encode_batch(texts, add_special_tokens=False), texts, strict=True):
        n_tok += len(e.ids)
        n_unk += sum(1 for i in e.ids if i == unk)
        n_chars += len(t)
    return {
        "texts": len(texts),
        "tokens": n_tok,
        "unk_rate": n_unk / max(1, n_tok),
        "tokens_per_char": n_tok / max(1, n_chars),
    }


def prune(
    src: Path, dst: Path, train_texts: Iterable[str], spec: PruneSpec, measure: dict[str, list[str]] | None = None
) -> dict[str, object]:
    """Prune `src` into `dst`; report the kept count and before/after tokenization stats per sample."""
    tok = json.loads((Path(src) / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = [(p, float(s)) for p, s in tok["model"]["vocab"]]
    specials = [a["id"] for a in tok.get("added_tokens", [])] + [tok["model"]["unk_id"]]
    keep = select_pieces(vocab, specials, used_piece_ids(Path(src) / "tokenizer.json", train_texts), spec)
    report: dict[str, object] = {"spec": spec.__dict__, **prune_model_dir(src, dst, keep)}
    for name, texts in (measure or {}).items():
        report[name] = {
            "before": tokenization_stats(Path(src) / "tokenizer.json", texts),
            "after": tokenization_stats(Path(dst) / "tokenizer.json", texts),
        }
    (Path(dst) / "prune.json").write_text(json.dumps(report, indent=2))
    return report
