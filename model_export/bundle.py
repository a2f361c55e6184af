"""Write a model bundle: tokenizer, ONNX variants and a manifest with hashes, scores and provenance."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.engine.bundle import MANIFEST, Manifest, Precision, RuntimeName, Score, file_entry

log = logging.getLogger(__name__)

BUNDLE_FILE_NAMES: dict[str, str] = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


class BundleTooLarge(RuntimeError):
    """The bundle exceeds its size budget."""


def write_bundle(
    out_dir: Path,
    *,
    onnx_files: dict[str, Path],
    tokenizer: Path,
    name: str,
    languages: list[str],
    base_model: str,
    max_seq_length: int,
    doc_stride: int,
    max_query_length: int,
    input_names: list[str],
    output_names: list[str],
    scores: Sequence[Score | dict[str, Any]] = (),
    validation: dict[str, object] | None = None,
    training: dict[str, object] | None = None,
    command: str | None = None,
    max_bytes: int | None = None,
    extra: dict[str, Any] | None = None,
    runtimes: dict[str, RuntimeName] | None = None,
) -> Path:
    """Assemble the bundle in a sibling temp dir and rename it into place, so a bundle is whole or absent.

    `runtimes` names the runtime a variant was built for where it is not ONNX Runtime (static int8: OpenVINO).
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    files = {}
    shutil.copyfile(tokenizer, tmp / "tokenizer.json")
    files["tokenizer.json"] = file_entry(tmp / "tokenizer.json")
    variants: dict[str, str] = {}
    for precision, src in onnx_files.items():
        dst_name = BUNDLE_FILE_NAMES[precision]
        shutil.copyfile(src, tmp / dst_name)
        prec: Precision = precision  # type: ignore[assignment]
        files[dst_name] = file_entry(tmp / dst_name, prec, (runtimes or {}).get(precision))
        variants[precision] = dst_name
    total = sum(e.bytes for e in files.values())
    if max_bytes is not None and total > max_bytes:
        shutil.rmtree(tmp)
        sizes = ", ".join(f"{k} {v.bytes / 2**20:.1f} MiB" for k, v in files.items())
        raise BundleTooLarge(f"bundle would be {total / 2**20:.1f} MiB > {max_bytes / 2**20:.1f} MiB ({sizes})")
    manifest = Manifest(
        name=name,
        languages=languages,
        base_model=base_model,
        max_seq_length=max_seq_length,
        doc_stride=doc_stride,
        max_query_length=max_query_length,
        input_names=input_names,
        output_names=output_names,
        variants=variants,
        files=files,
        scores=[s if isinstance(s, Score) else Score.model_validate(s) for s in scores],
        validation=validation or {},
        training=training or {},
        command=command if command is not None else " ".join(sys.argv),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **(extra or {}),  # Manifest allows extra fields: build config and the like, for provenance
    )
    (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    if out_dir.exists():
        if not (out_dir / MANIFEST).is_file() and any(out_dir.iterdir()):
            shutil.rmtree(tmp)
            raise FileExistsError(f"{out_dir} exists and is not a bundle; refusing to replace it")
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    log.info("bundle %s: %s, %.1f MiB", out_dir, sorted(files), total / 2**20)
    return out_dir


def rewrite_manifest(bundle_dir: Path, manifest: Manifest) -> None:
    """Replace a written bundle's manifest whole: a build killed mid-write must not leave a truncated one, which
    the service would refuse to load."""
    tmp = bundle_dir / f".{MANIFEST}.tmp"
    tmp.write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(bundle_dir / MANIFEST)
