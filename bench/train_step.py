"""Training step time on this CPU: padding, precision, torch.compile, threads (issue 9: fit a working day).

    python bench/train_step.py --base runs/korquad-e5-small/base [--steps 6] [--batch-size 32]

Runs the recipe's forward + backward + AdamW step (model_export.train's param groups and loss) on windows of
training articles, and prints seconds per step and the implied time for one epoch of the shipped recipe
(7,910 windows). Modes (`--modes`, all by default), each after two untimed steps:
  padded    every window padded to max_seq_length (384), batches in data order, fp32
  grouped   model_export.train's batches: sorted within mega-batches, padded to the longest (x32), fp32
  bf16      the same in bf16 autocast (AVX512-BF16 / AMX do the products)
  compile   the same with the model compiled (torch.compile)
  unfused   bf16 with torch's default (multi-pass) AdamW instead of the trainer's fused one
The last column is the AdamW update's share of the step (its seconds).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch  # every mode trains: the export extra is this script's whole purpose
from transformers import AutoModelForQuestionAnswering

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/train_step.py` finds bench

from app.engine.windows import pad_batch, pad_token_id
from bench.common import DATA, REPO
from model_export.checkpoint import load_tokenizer
from model_export.config import TrainConfig
from model_export.data import load_examples, training_features
from model_export.train import length_grouped_batches, make_optimizer

EPOCH_WINDOWS = 7910
MODES = ("padded", "grouped", "bf16", "compile", "unfused")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, default=REPO / "runs" / "korquad-e5-small" / "base")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # the recipe's defaults: its windows (384, stride 128) and its optimizer's settings
    cfg = TrainConfig("", "", "", freeze_word_embeddings=False)
    tok = load_tokenizer(str(args.base))
    pad = pad_token_id(tok)
    # a sample across all training articles: the first questions' contexts are shorter than the split's, which
    # made the step times about 35% optimistic
    sample = random.Random(0).sample(load_examples(str(args.data), "0:112"), 600)
    feats = training_features(tok, sample, cfg.windows)
    n = args.batch_size * (args.steps + 2)
    grouped = length_grouped_batches(feats, args.batch_size, random.Random(0))[: args.steps + 2]
    plain = [list(range(i, i + args.batch_size)) for i in range(0, n, args.batch_size)]
    print(f"{'mode':36s} {'s/step':>7s} {'windows/s':>10s} {'epoch (min)':>12s} {'update (s)':>11s}", flush=True)
    for mode in args.modes:
        torch.manual_seed(0)
        model = AutoModelForQuestionAnswering.from_pretrained(args.base).train()
        optim = make_optimizer(model, cfg, fused=mode != "unfused")
        runner = torch.compile(model) if mode == "compile" else model
        batches = plain if mode == "padded" else grouped
        bf16 = mode in ("bf16", "compile", "unfused")
        times, updates = [], []
        for k, idx in enumerate(batches):
            fs = [feats[i % len(feats)] for i in idx]
            multiple = cfg.max_seq_length if mode == "padded" else 32
            inputs = {key: torch.from_numpy(v) for key, v in pad_batch([f.window for f in fs], pad, multiple).items()}
            starts = torch.tensor([f.start_position for f in fs])
            ends = torch.tensor([f.end_position for f in fs])
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = runner(**inputs, start_positions=starts, end_positions=ends).loss
            loss.backward()
            t1 = time.perf_counter()
            optim.step()
            optim.zero_grad(set_to_none=True)
            if k >= 2:
                times.append(time.perf_counter() - t0)
                updates.append(time.perf_counter() - t1)
        s = sum(times) / len(times)
        u = sum(updates) / len(updates)
        wps = args.batch_size / s
        label = {
            "padded": "padded to 384, fp32",
            "grouped": "length-grouped, fp32",
            "unfused": "length-grouped, bf16, unfused AdamW",
        }.get(mode, f"length-grouped, {mode}")
        print(f"{label:36s} {s:7.2f} {wps:10.1f} {EPOCH_WINDOWS / wps / 60:12.1f} {u:11.2f}", flush=True)


if __name__ == "__main__":
    main()
