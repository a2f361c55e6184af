"""Issue 9's training on a rented GPU, inside one short call: [sweep, pick,] final run, pack. Training only.

The training a CPU build does with `python -m model_export build configs/korquad-e5-small.toml` happens here with
the same code (model_export.train); only the device differs. What comes back:
  results.jsonl               every trial's dev-slice scores by epoch (with the sweep)
  delta-*.npz                 final (trained on the config's training articles) minus base, fp16, under the file limit
  final.json                  its training record
Calibration is not done here: the build fits the shipped model's score map on its own served file, on the CPU,
after the export (docs/calibration.md). Rebuild the checkpoint with `apply_delta`, put it in the build's
work_dir/train/final, and the build reuses it.

    python scripts/device/gpu_train.py --base BASE_DIR --data TRAIN_JSON --out OUT [--budget-s 300]
    python scripts/device/gpu_train.py ... --no-sweep   # the config's [train] recipe only
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from model_export.config import BuildConfig, load_build_config
from model_export.sweep import best_trial, run_sweep, trial_config
from model_export.train import TrainingStopped, train

log = logging.getLogger("gpu_train")
FILE_LIMIT = 15 * 2**20


def base_key(name: str) -> str:
    """A QA checkpoint's tensor name as the base encoder names it ("bert.encoder..." -> "encoder...")."""
    return name.split(".", 1)[1] if name.startswith("bert.") else name


def pack_delta(final_dir: Path, base_dir: Path, out: Path) -> list[Path]:
    """(final - base) in fp16, embedding rows that moved only; split into files under the transfer limit."""
    from safetensors.numpy import load_file  # noqa: PLC0415 - export extra (safetensors), as in model_export

    final = load_file(str(final_dir / "model.safetensors"))
    base = load_file(str(base_dir / "model.safetensors"))
    arrays: list[tuple[str, np.ndarray]] = []
    for name, w in final.items():
        b = base.get(base_key(name))
        if b is None or b.shape != w.shape:
            arrays.append((f"full/{name}", w.astype(np.float32)))
            continue
        d = (w.astype(np.float32) - b.astype(np.float32)).astype(np.float16)
        if name.endswith("word_embeddings.weight"):
            rows = np.flatnonzero(np.any(d != 0, axis=1))
            arrays.append((f"rows/{name}", rows.astype(np.int32)))
            for i in range(0, len(rows), 8192):
                arrays.append((f"rowdelta/{i}/{name}", d[rows[i : i + 8192]]))
        else:
            arrays.append((f"delta/{name}", d))
    files: list[Path] = []
    chunk: dict[str, np.ndarray] = {}
    size = 0
    for key, a in arrays:
        if chunk and size + a.nbytes > FILE_LIMIT:
            files.append(out / f"delta-{len(files)}.npz")
            np.savez(files[-1], **chunk)
            chunk, size = {}, 0
        chunk[key], size = a, size + a.nbytes
    files.append(out / f"delta-{len(files)}.npz")
    np.savez(files[-1], **chunk)
    return files


def apply_delta(base_dir: Path, delta_files: list[Path], out: Path) -> Path:
    """The inverse of pack_delta, run on the CPU side: base + delta -> a Hugging Face QA checkpoint dir."""
    from safetensors.numpy import load_file, save_file  # noqa: PLC0415 - export extra, as in model_export
    from transformers import AutoConfig  # noqa: PLC0415 - export extra, as in model_export

    base = load_file(str(base_dir / "model.safetensors"))
    loaded: dict[str, np.ndarray] = {}
    for f in delta_files:
        with np.load(f) as z:
            loaded.update({k: z[k] for k in z.files})
    tensors: dict[str, np.ndarray] = {}
    for key, a in loaded.items():
        kind, name = key.split("/", 1)
        if kind == "full":
            tensors[name] = a
        elif kind == "delta":
            tensors[name] = base[base_key(name)] + a.astype(np.float32)
    for key in [k for k in loaded if k.startswith("rows/")]:
        name = key.split("/", 1)[1]
        rows = loaded[key]
        parts = sorted(
            (int(k.split("/")[1]), v) for k, v in loaded.items() if k.startswith("rowdelta/") and k.endswith(name)
        )
        w = base[base_key(name)].copy()
        w[rows] += np.concatenate([v for _, v in parts]).astype(np.float32)
        tensors[name] = w
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = AutoConfig.from_pretrained(base_dir)
    config.architectures = ["BertForQuestionAnswering"]
    config.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (base_dir / f).is_file():
            (out / f).write_bytes((base_dir / f).read_bytes())
    return out


def sweep(
    cfg: BuildConfig, args: argparse.Namespace, out: Path, work: Path, t0: float
) -> tuple[str, dict[str, object]]:
    """The sweep's trials on its dev slice; returns the best one's name and recipe overrides."""
    results = run_sweep(cfg, args.base, Path(args.trials), work / "sweep", args.budget_s)
    (out / "results.jsonl").write_bytes((work / "sweep" / "results.jsonl").read_bytes())
    best = best_trial(results)
    log.info("best trial %s after %.0f s", best["name"], time.monotonic() - t0)
    return best["name"], dict(best["overrides"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/korquad-e5-small.toml")
    ap.add_argument("--trials", default="configs/sweep-korquad.toml")
    ap.add_argument("--base", required=True)
    ap.add_argument("--data", required=True, help="SQuAD JSON holding the training articles")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="runs/gpu-work")
    ap.add_argument("--budget-s", type=float, default=300, help="sweep budget; the final run comes after")
    ap.add_argument("--final-epochs", type=float, default=None, help="override the chosen recipe's epochs")
    ap.add_argument("--smoke", action="store_true", help="tiny steps and examples: check the plumbing on a CPU")
    ap.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True, help="else the config's [train]")
    ap.add_argument("--final", action=argparse.BooleanOptionalAction, default=True, help="train, pack the final model")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a build config override")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    overrides = [f'data.file="{args.data}"', *args.set]
    if args.smoke:
        overrides += ["train.max_steps=2", "train.max_examples=24"]
    cfg = load_build_config(Path(args.config), overrides)
    trial, recipe = "the config's [train]", {}
    if args.sweep:
        trial, recipe = sweep(cfg, args, out, work, t0)
    if not args.final:
        return 0

    if args.final_epochs:
        recipe["epochs"] = args.final_epochs
    final = train(trial_config(cfg, args.base, work / "final", cfg.data.train_articles, None, recipe))
    (out / "final.json").write_text(
        json.dumps(
            {
                "trial": trial,
                "overrides": recipe,
                "training": json.loads((final / "training.json").read_text()),
            },
            indent=1,
        )
    )
    files = pack_delta(final, Path(args.base), out)
    log.info(
        "packed %s after %.0f s", [f"{f.name} {f.stat().st_size / 2**20:.1f} MiB" for f in files], time.monotonic() - t0
    )
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except TrainingStopped as e:  # checkpoint saved: the same command resumes
        log.warning("%s", e)
        raise SystemExit(e.exit_code) from None
