"""A Hugging Face checkpoint's tokenizer and windows: the fast tokenizer, the Rust one the bundle ships, the window
settings it was trained with or can take, and the error a checkpoint that cannot become a bundle raises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from app.engine.windows import WindowSpec, window_capacity

# Architectures whose position ids start after the padding index (RoBERTa's convention)
PADDING_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "data2vec-text", "xlm-roberta-xl"}


class ExportError(RuntimeError):
    """A checkpoint that cannot become a bundle; the message says what the user can do about it."""


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    """The model dir's tokenizer.json as a `tokenizers.Tokenizer` (a hub id where there is no such file)."""
    path = Path(model_dir) / "tokenizer.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    return Tokenizer.from_pretrained(str(model_dir))


def load_fast_tokenizer(source: str | Path, local_files_only: bool = False) -> Any:
    """The checkpoint's tokenizer as a transformers fast tokenizer; offsets need the Rust implementation."""
    from transformers import AutoTokenizer  # noqa: PLC0415 - export extra

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), use_fast=True, local_files_only=local_files_only)
    except Exception as e:  # transformers raises OSError, ValueError, TypeError or ImportError here
        raise ExportError(
            f"{source}: cannot load its tokenizer ({type(e).__name__}: {str(e)[:300]}). Save the tokenizer the "
            "model was fine-tuned with beside it (tokenizer.save_pretrained(DIR)); tokenizer.json is best"
        ) from e
    if not tokenizer.is_fast:
        raise ExportError(
            f"{source}: {type(tokenizer).__name__} has no fast (Rust) version, and the service needs one for "
            "character offsets. Save a fast tokenizer beside the model: load it with "
            "AutoTokenizer.from_pretrained(DIR, use_fast=True) (sentencepiece-based ones need `pip install "
            "sentencepiece protobuf` to convert) or build a PreTrainedTokenizerFast, then save_pretrained(DIR)"
        )
    return tokenizer


def backend_tokenizer(tokenizer: Any) -> Tokenizer:
    """The Rust tokenizer behind a transformers fast tokenizer, with its pair template, never truncating or padding.

    Windowing cuts contexts itself; a truncation setting left in tokenizer.json would drop context silently.
    """
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def save_backend_tokenizer(tokenizer: Any, path: Path) -> Tokenizer:
    """tokenizer.json for the bundle (see `backend_tokenizer`); returns the tokenizer saved."""
    backend = backend_tokenizer(tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    backend.save(str(path))
    return backend


def training_record(model_dir: Path) -> dict[str, Any]:
    """training.json written by model_export.train, if the checkpoint has one (as it is: a checkpoint of older
    code may record fields this version no longer has; see TrainConfig.from_record)."""
    path = Path(model_dir) / "training.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _trained(training: dict[str, Any]) -> dict[str, Any]:
    """The recorded training config of a training.json, or nothing."""
    config = training.get("config", {}) if isinstance(training, dict) else {}
    return config if isinstance(config, dict) else {}


def position_limit(config: Any, tokenizer: Any) -> int:
    """The longest window the model can take: its position table, and the tokenizer's stated maximum."""
    limits = []
    mpe = getattr(config, "max_position_embeddings", None)
    if mpe:
        offset = (int(config.pad_token_id) + 1) if config.model_type in PADDING_OFFSET_POSITIONS else 0
        limits.append(int(mpe) - offset)
    tml = getattr(tokenizer, "model_max_length", None)
    if tml and tml < 100_000:  # transformers' "no limit" is a huge sentinel
        limits.append(int(tml))
    return min(limits) if limits else 512


def default_windows(
    config: Any, tokenizer: Any, training: dict[str, Any], overrides: dict[str, int | None]
) -> WindowSpec:
    """`bundle`'s windows: flags win; else what the checkpoint was trained with (training.json); else the SQuAD
    recipe within the model's limits.

    A max_seq_length flag also resets the defaults derived from it, so `--max-seq-length 128` alone works even
    for a checkpoint trained with doc_stride 128.
    """
    limit = position_limit(config, tokenizer)
    trained = {} if overrides.get("max_seq_length") else _trained(training)
    msl = int(overrides.get("max_seq_length") or trained.get("max_seq_length") or min(384, limit))
    if msl > limit:
        raise ExportError(f"max_seq_length {msl} exceeds what the model takes ({limit} positions)")
    stride = overrides.get("doc_stride")
    stride = int(stride if stride is not None else trained.get("doc_stride", min(128, msl // 3)))
    query = int(overrides.get("max_query_length") or trained.get("max_query_length") or min(64, msl // 4))
    return WindowSpec(msl, stride, query)


def checkpoint_windows(model_dir: Path, overrides: dict[str, int | None]) -> WindowSpec:
    """`evaluate`'s windows for a checkpoint: explicit arguments, else its training.json, else WindowSpec's
    defaults."""
    values = {f: getattr(WindowSpec(), f) for f in ("max_seq_length", "doc_stride", "max_query_length")}
    trained = _trained(training_record(model_dir))
    values.update({k: int(trained[k]) for k in values if trained.get(k) is not None})
    values.update({k: v for k, v in overrides.items() if v is not None})
    return WindowSpec(**values)


def check_windows(windows: WindowSpec, backend: Tokenizer) -> None:
    """Every window must hold more than doc_stride context tokens next to the longest question, or none advances."""
    n_special = sum(1 for s in backend.encode("a", "b").sequence_ids if s is None)
    room = window_capacity(n_special, windows.max_query_length, windows.max_seq_length)
    if room <= windows.doc_stride:
        raise ExportError(
            f"max_seq_length {windows.max_seq_length} leaves {room} context tokens next to a "
            f"{windows.max_query_length}-token question and {n_special} special tokens, not more than "
            f"doc_stride {windows.doc_stride}: lower --doc-stride or --max-query-length, or raise --max-seq-length"
        )
