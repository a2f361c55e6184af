"""Per-window logits of held-out questions for calibration: a checkpoint's, or a bundle's through the file the CPU
service would serve; saved as npz, whole or not at all, and read back."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from app.engine.bundle import Manifest, read_manifest
from app.engine.hardware import cpu_flags, pick_runtime, pick_variant
from app.engine.runtime import Runtime, open_runtime, openvino_version
from app.engine.windows import Window, WindowSpec, encode_windows, pad_batch, pad_token_id
from model_export.data import Example, cross_article_pairs, load_examples
from model_export.evaluate import open_checkpoint

# each question's per-window (start, end) logits, in encode_windows order
Logits = list[list[tuple[np.ndarray, np.ndarray]]]
LogitsOf = Callable[[Sequence[Example]], Logits]


def calibration_questions(data: str, articles: str) -> list[Example]:
    """The questions of `articles` that calibration runs: the answerable ones. A SQuAD 2.0 question without an
    answer would count as a wrong answer, where it is a null answer's right one."""
    return [e for e in load_examples(data, articles) if e.answers]


def pairs_of(examples: Sequence[Example]) -> list[tuple[str, str]]:
    return [(e.question, e.context) for e in examples]


def save_logits(path: Path, examples: Sequence[Example], logits: Logits) -> None:
    """Per-window start/end logits of each example, flattened (encode_windows order)."""
    flat = [pair for per in logits for pair in per]
    np.savez(
        path,
        ids=np.array([e.id for e in examples]),
        windows_per_example=np.array([len(per) for per in logits]),
        lengths=np.array([len(s) for s, _ in flat]),
        start=np.concatenate([s for s, _ in flat]).astype(np.float32),
        end=np.concatenate([e for _, e in flat]).astype(np.float32),
    )


def load_logits(z: Any, prefix: str = "") -> tuple[list[str], Logits]:
    """(question ids, their logits) of a `save_logits` file, or of the `prefix` part of a `write_dev_logits` one."""
    counts, lengths = z[f"{prefix}windows_per_example"], z[f"{prefix}lengths"]
    starts = np.split(z[f"{prefix}start"], np.cumsum(lengths)[:-1])
    ends = np.split(z[f"{prefix}end"], np.cumsum(lengths)[:-1])
    out, pos = [], 0
    for n in counts:
        out.append(list(zip(starts[pos : pos + n], ends[pos : pos + n], strict=True)))
        pos += n
    return [str(i) for i in z[f"{prefix}ids"]], out


def write_dev_logits(logits_of: LogitsOf, examples: Sequence[Example], path: Path) -> Path:
    """own/ (each question with its paragraph) and cross/ (with another article's) logits in one npz;
    `logits_of` is a checkpoint's (`checkpoint_logits`) or a bundle's (`ServedBundle.logits`)."""
    cross = cross_article_pairs(list(examples), random.Random(0))
    tmp = path.with_suffix(".parts")
    tmp.mkdir(parents=True, exist_ok=True)
    save_logits(tmp / "own.npz", examples, logits_of(examples))
    save_logits(tmp / "cross.npz", cross, logits_of(cross))
    with np.load(tmp / "own.npz") as own, np.load(tmp / "cross.npz") as neg:
        both = {f"own/{k}": own[k] for k in own.files} | {f"cross/{k}": neg[k] for k in neg.files}
        np.savez(tmp / "both.npz", **both)
    # the build reuses any file at `path`, so one cut short (a build stopped at the end of a sitting) must not
    # appear there: the rename is atomic
    (tmp / "both.npz").replace(path)
    shutil.rmtree(tmp)
    return path


def checkpoint_logits(model_dir: Path, examples: Sequence[Example], spec: WindowSpec, threads: int = 2) -> Logits:
    """Per-window logits of a transformers checkpoint (GPU when there is one), in encode_windows order."""
    predictor = open_checkpoint(model_dir, spec, 64, threads)
    per = encode_windows(predictor.tokenizer, pairs_of(examples), spec)
    flat = predictor._logits([x for ws in per for x in ws])
    out, pos = [], 0
    for ws in per:
        out.append(flat[pos : pos + len(ws)])
        pos += len(ws)
    return out


def manifest_windows(m: Manifest) -> WindowSpec:
    """The windows a bundle is served with."""
    return WindowSpec(m.max_seq_length, m.doc_stride, m.max_query_length)


def served_file(m: Manifest) -> dict[str, str]:
    """The file and runtime the CPU service picks for a bundle on this machine, and why: what calibration and
    the test figures run through."""
    variant = pick_variant(m.variants, "auto", False, cpu_flags())
    file = m.variants[variant.name]
    runtime = pick_runtime(m.files[file].runtime, "auto", False, openvino_version())
    return {"file": file, "runtime": runtime.name, "why": f"{variant.reason}; {runtime.reason}"}


@dataclass(frozen=True)
class ServedBundle:
    """A bundle opened once as the CPU service would open it: its manifest, the file picked on this machine
    (`served`), that file's session and the tokenizer. Every run through it reuses the session."""

    manifest: Manifest
    served: dict[str, str]
    runtime: Runtime
    tokenizer: Tokenizer

    @classmethod
    def open(cls, bundle_dir: Path, threads: int = 2) -> ServedBundle:
        m = read_manifest(bundle_dir)
        served = served_file(m)
        rt = open_runtime(bundle_dir / served["file"], m.input_names, m.output_names, served["runtime"], "cpu", threads)
        return cls(m, served, rt, Tokenizer.from_file(str(bundle_dir / m.tokenizer)))

    def windows_and_logits(self, examples: Sequence[Example]) -> tuple[list[list[Window]], Logits]:
        """Each question's windows and their logits, one window per call as the CPU service runs them."""
        pad = pad_token_id(self.tokenizer)
        per = encode_windows(self.tokenizer, pairs_of(examples), manifest_windows(self.manifest))
        logits = []
        for ws in per:
            out = []
            for w in ws:
                s, e = self.runtime.run(pad_batch([w], pad, self.runtime.pad_multiple))
                out.append((s[0, : len(w)], e[0, : len(w)]))
            logits.append(out)
        return per, logits

    def logits(self, examples: Sequence[Example]) -> Logits:
        return self.windows_and_logits(examples)[1]
