"""Issue 9's training on a rented GPU, inside one short call: sweep, pick, calibration logits, final run, pack.

Everything a CPU build does with `python -m model_export build configs/korquad-e5-small.toml` happens here with
the same code (model_export.train); only the device differs. What comes back:
  results.jsonl / results.md  every trial's dev-slice scores by epoch
  dev_logits.npz              the chosen recipe's fit-split model on the dev slice: own paragraphs and
                              cross-article pairs (for the null threshold and the temperature, fitted on the CPU)
  delta-*.npz                 final (trained on all training articles) minus base, fp16, under the file limit
  final.json                  its training record
  calibrate/fold-I-of-K/dev_logits.npz
                              with --folds K: each fold model's logits on the articles it was trained without
                              (the build's calibrate.folds; copy calibrate/ into the build's work_dir to reuse)

    python scripts/device/gpu_train.py --base BASE_DIR --data TRAIN_JSON --out OUT [--budget-s 300]
    python scripts/device/gpu_train.py ... --no-sweep --no-final --folds 4   # out-of-fold calibration only
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from model_export.config import BuildConfig, TrainConfig, load_build_config
from model_export.data import load_examples
from model_export.held_out import checkpoint_logits, write_dev_logits
from model_export.sweep import best_trial, run_sweep, trial_config

log = logging.getLogger("gpu_train")
FILE_LIMIT = 15 * 2**20


def pack_delta(final_dir: Path, base_dir: Path, out: Path) -> list[Path]:
    """(final - base) in fp16, embedding rows that moved only; split into files under the transfer limit."""
    from safetensors.numpy import load_file

    final = load_file(str(final_dir / "model.safetensors"))
    base = load_file(str(base_dir / "model.safetensors"))
    arrays: list[tuple[str, np.ndarray]] = []
    for name, w in final.items():
        b = base.get(name.split(".", 1)[1] if name.startswith("bert.") else name)
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
    from safetensors.numpy import load_file, save_file
    from transformers import AutoConfig

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
            tensors[name] = base[name.split(".", 1)[1]] + a.astype(np.float32)
    for key in [k for k in loaded if k.startswith("rows/")]:
        name = key.split("/", 1)[1]
        rows = loaded[key]
        parts = sorted(
            (int(k.split("/")[1]), v) for k, v in loaded.items() if k.startswith("rowdelta/") and k.endswith(name)
        )
        w = base[name.split(".", 1)[1]].copy()
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


def sweep_and_dev_logits(
    cfg: BuildConfig, args: argparse.Namespace, out: Path, work: Path, t0: float
) -> tuple[str, dict[str, object]]:
    """The sweep's trials on the dev slice, the best one's dev logits; returns its name and recipe overrides."""
    results = run_sweep(cfg, args.base, Path(args.trials), work / "sweep", args.budget_s)
    (out / "results.jsonl").write_bytes((work / "sweep" / "results.jsonl").read_bytes())
    best = best_trial(results)
    log.info("best trial %s after %.0f s", best["name"], time.monotonic() - t0)

    windows = TrainConfig.from_record(json.loads(Path(best["dir"], "training.json").read_text())["config"]).windows
    dev = load_examples(args.data, best["dev_articles"])
    write_dev_logits(lambda exs: checkpoint_logits(Path(best["dir"]), exs, windows), dev, out / "dev_logits.npz")
    log.info("dev logits written after %.0f s", time.monotonic() - t0)
    return best["name"], dict(best["overrides"])


def fold_logits(cfg: BuildConfig, args: argparse.Namespace, out: Path, work: Path, t0: float) -> None:
    """The build's out-of-fold calibration models, trained here; only their logits go back. They are the PyTorch
    checkpoints' (this host has no exporter or OpenVINO): the build uses them with calibrate.logits = 'checkpoint'."""
    from model_export.build import held_out_logits
    from model_export.config import fold_splits

    cfg = cfg.model_copy(update={"calibrate": cfg.calibrate.model_copy(update={"logits": "checkpoint"})})
    training = load_examples(args.data, cfg.data.train_articles)
    for fit, held, name in fold_splits(args.data, cfg.data.train_articles, args.folds):
        logits = held_out_logits(cfg, Path(args.base), fit, held, work / name, training)
        (out / "calibrate" / name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(logits, out / "calibrate" / name / "dev_logits.npz")
        log.info("fold %s (held out %s) after %.0f s", name, held, time.monotonic() - t0)


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
    ap.add_argument("--folds", type=int, default=0, help="also the out-of-fold calibration models' logits")
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
        trial, recipe = sweep_and_dev_logits(cfg, args, out, work, t0)
    if args.folds:
        fold_logits(cfg.model_copy(update={"train": cfg.train.model_copy(update=recipe)}), args, out, work, t0)
    if not args.final:
        return 0

    from model_export.train import train

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
    from model_export.train import TrainingStopped

    try:
        raise SystemExit(main())
    except TrainingStopped as e:  # checkpoint saved: the same command resumes
        log.warning("%s", e)
        raise SystemExit(e.exit_code) from None
