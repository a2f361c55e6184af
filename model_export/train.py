"""Fine-tune an encoder with a start/end head: AdamW, linear warmup/decay, accumulation, checkpoints, resume."""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.engine.hardware import cpu_flags
from app.engine.windows import pad_batch, pad_token_id
from model_export.checkpoint import load_tokenizer
from model_export.config import TrainConfig
from model_export.data import Example, Feature, load_examples, negative_examples, training_features
from model_export.evaluate import WindowPredictor, evaluate_predictor, torch_logits_fn

log = logging.getLogger(__name__)


# x86 instructions that multiply bf16 in hardware; without them bf16 autocast is emulated, and slower than fp32
CPU_BF16 = frozenset({"avx512_bf16", "amx_bf16"})


def auto_precision(on_cuda: bool, cuda_bf16: bool, flags: frozenset[str]) -> str:
    """bf16 autocast where the device multiplies bf16 natively, else fp32.

    On a 2-core AMD EPYC with AVX512-BF16 the recipe's step ran 1.5 times as fast in bf16 as in fp32
    (bench/train_step.py, interleaved; model card), and the GPU recipe trains in bf16, so CPU runs match it.
    """
    if on_cuda:
        return "bf16" if cuda_bf16 else "fp32"
    return "bf16" if flags & CPU_BF16 else "fp32"


class TrainingStopped(Exception):
    """A signal stopped training after a step, with a checkpoint saved: the same command resumes from it."""

    def __init__(self, signum: int, step: int, output_dir: Path) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name}: stopped at step {step} with a checkpoint in {output_dir}; rerun to resume")
        self.exit_code = 128 + signum  # what a shell reports for a process the signal ended


@contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """SIGTERM and SIGINT ask training to stop once the current step is done and saved (a job's grace period,
    the end of a sitting); a second signal interrupts at once. The yielded list holds the signals received.
    Only the main thread can take signals, so elsewhere this changes nothing."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, _frame: object) -> None:
        if got:
            raise KeyboardInterrupt
        got.append(signum)
        log.warning("%s: stopping after this step, with a checkpoint", signal.Signals(signum).name)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield got
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def set_seed(seed: int) -> None:
    import torch  # noqa: PLC0415 - torch: export extra, seconds to import

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def length_grouped_batches(features: list[Feature], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, then sort within mega-batches by length so CPU time is not spent on padding."""
    order = list(range(len(features)))
    rng.shuffle(order)
    mega = batch_size * 50
    batches: list[list[int]] = []
    for i in range(0, len(order), mega):
        chunk = sorted(order[i : i + mega], key=lambda j: len(features[j].window), reverse=True)
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _checkpoints(out: Path) -> list[Path]:
    """checkpoint-N dirs, oldest first; a save cut short leaves its dir without state.pt."""
    return sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def _whole_checkpoints(out: Path) -> list[Path]:
    return [d for d in _checkpoints(out) if (d / "state.pt").is_file()]


def _latest_checkpoint(out: Path) -> Path | None:
    """The newest whole checkpoint."""
    whole = _whole_checkpoints(out)
    return whole[-1] if whole else None


def rotate_checkpoints(out: Path, keep: int) -> None:
    """Keep the newest `keep` whole checkpoints. Dirs of saves cut short go too: counted among the kept, they
    would leave fewer checkpoints to resume from than `keep` promises."""
    kept = set(_whole_checkpoints(out)[-keep:])
    for d in _checkpoints(out):
        if d not in kept:
            shutil.rmtree(d)


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) fine-tuning; returns the directory of the final model. SIGTERM or SIGINT stops it after
    the step in progress, with a checkpoint, by raising TrainingStopped."""
    with stop_on_signals() as stop:
        return _train(cfg, stop)


@dataclass
class _Run:
    """A run's model, optimizer state and position: what a checkpoint saves and a resumed run restores."""

    model: Any
    optim: Any
    sched: Any
    scaler: Any
    total: int  # optimizer steps of the whole run
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: list[dict[str, object]] = field(default_factory=list)  # dev scores by epoch
    losses: list[float] = field(default_factory=list)

    def save(self, out: Path, keep: int) -> None:
        import torch  # noqa: PLC0415 - torch: export extra, seconds to import

        d = out / f"checkpoint-{self.step}"
        d.mkdir(exist_ok=True)
        state = {
            "model": self.model.state_dict(),
            "optim": self.optim.state_dict(),
            "sched": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "torch_rng": torch.get_rng_state(),
            "dev": self.history,
        }
        torch.save(state, d / "state.pt.tmp")
        (d / "state.pt.tmp").rename(d / "state.pt")  # a checkpoint is whole or absent
        rotate_checkpoints(out, keep)

    def resume(self, ckpt: Path) -> None:
        import torch  # noqa: PLC0415 - torch: export extra, seconds to import

        state = torch.load(ckpt / "state.pt", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])
        self.sched.load_state_dict(state["sched"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        torch.set_rng_state(state["torch_rng"])
        self.history = state.get("dev", [])
        log.info("resumed from %s at step %d", ckpt, self.step)


def _precision(cfg: TrainConfig, device: Any) -> str:
    """The config's precision, with "auto" resolved for this device."""
    import torch  # noqa: PLC0415 - torch: export extra, seconds to import

    if cfg.precision != "auto":
        return cfg.precision
    on_cuda = device.type == "cuda"
    return auto_precision(on_cuda, on_cuda and torch.cuda.is_bf16_supported(), cpu_flags())


def _training_data(cfg: TrainConfig, tokenizer: Any) -> tuple[list[Example], list[Feature]]:
    """The training examples (with their unanswerable pairs) and every window of them, labelled."""
    examples = load_examples(cfg.train_file, cfg.train_articles)
    if cfg.max_examples:
        examples = examples[: cfg.max_examples]
    if cfg.negatives:
        examples = examples + negative_examples(examples, cfg.negatives, random.Random(cfg.seed))
    return examples, training_features(tokenizer, examples, cfg.windows)


def _start(cfg: TrainConfig, device: Any, n_features: int, precision: str) -> _Run:
    """The model with its head, AdamW and the linear warmup/decay schedule, at step 0."""
    import torch  # noqa: PLC0415 - torch: export extra, seconds to import
    from transformers import (  # noqa: PLC0415 - export extra
        AutoModelForQuestionAnswering,
        get_linear_schedule_with_warmup,
    )

    model = AutoModelForQuestionAnswering.from_pretrained(cfg.base_model).to(device)
    if cfg.freeze_word_embeddings:
        # 250k x 384 embeddings dominate the parameter count; freezing them keeps AdamW cheap on CPU
        # and keeps rows for pieces unseen in the small training set exactly as pretrained.
        model.base_model.embeddings.word_embeddings.weight.requires_grad_(False)
    optim = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(math.ceil(n_features / cfg.batch_size) / cfg.grad_accum)
    total = cfg.max_steps or max(1, int(steps_per_epoch * cfg.epochs))
    sched = get_linear_schedule_with_warmup(optim, int(total * cfg.warmup_ratio), total)
    # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and needs none
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return _Run(model, optim, sched, scaler, total)


def _step(
    run: _Run, feature_groups: list[list[Feature]], max_grad_norm: float, pad_id: int, device: Any, amp_dtype: Any
) -> None:
    """One optimizer step: the loss of each batch of the accumulation group, clipped gradients, AdamW."""
    import torch  # noqa: PLC0415 - torch: export extra, seconds to import

    for feats in feature_groups:
        inputs = {
            k: torch.from_numpy(v).to(device) for k, v in pad_batch([f.window for f in feats], pad_id, 32).items()
        }
        starts = torch.tensor([f.start_position for f in feats], device=device)
        ends = torch.tensor([f.end_position for f in feats], device=device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = run.model(**inputs, start_positions=starts, end_positions=ends).loss
        run.scaler.scale(loss / len(feature_groups)).backward()
        run.losses.append(float(loss.detach()))
    run.scaler.unscale_(run.optim)
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_grad_norm)
    run.scaler.step(run.optim)
    run.scaler.update()
    run.sched.step()
    run.optim.zero_grad(set_to_none=True)


def _train(cfg: TrainConfig, stop: list[int]) -> Path:
    import torch  # noqa: PLC0415 - torch: export extra, seconds to import
    from tqdm.auto import tqdm  # noqa: PLC0415 - export extra

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = _precision(cfg, device)
    log.info("training precision: %s", precision)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    tokenizer = load_tokenizer(cfg.base_model)
    examples, features = _training_data(cfg, tokenizer)
    dev = load_examples(cfg.train_file, cfg.eval_articles) if cfg.eval_articles else []
    pad_id = pad_token_id(tokenizer)
    log.info("%d examples -> %d windows", len(examples), len(features))

    run = _start(cfg, device, len(features), precision)
    ckpt = _latest_checkpoint(out)
    if ckpt is not None:
        run.resume(ckpt)

    def score_dev() -> None:
        run.history.append({"epoch": run.epoch, "step": run.step, **dev_scores(run.model, tokenizer, dev, cfg, device)})

    run.model.train()
    bar = tqdm(total=run.total, initial=run.step, desc="train", dynamic_ncols=True, mininterval=5)
    t0 = time.time()
    while run.step < run.total:
        # the batch order of an epoch depends only on seed+epoch, so a resumed run sees the same order
        batches = length_grouped_batches(features, cfg.batch_size, random.Random(cfg.seed + run.epoch))
        while run.batch_in_epoch < len(batches) and run.step < run.total:
            group = batches[run.batch_in_epoch : run.batch_in_epoch + cfg.grad_accum]
            _step(run, [[features[i] for i in idx] for idx in group], cfg.max_grad_norm, pad_id, device, amp_dtype)
            run.batch_in_epoch += len(group)
            run.step += 1
            bar.update(1)
            lr = run.sched.get_last_lr()[0]
            bar.set_postfix(loss=f"{np.mean(run.losses[-20:]):.3f}", lr=f"{lr:.2e}", epoch=run.epoch)
            if run.step % cfg.save_every == 0 or stop:
                run.save(out, cfg.keep_checkpoints)
            if stop:
                raise TrainingStopped(stop[0], run.step, out)
        if run.batch_in_epoch >= len(batches):
            run.epoch, run.batch_in_epoch = run.epoch + 1, 0
            if dev:
                score_dev()
                log.info("dev after epoch %d: %s", run.epoch, run.history[-1])
                run.model.train()
    bar.close()
    if dev and (not run.history or run.history[-1]["step"] != run.step):  # a run cut short by max_steps is scored too
        score_dev()
    record = {
        "precision": precision,  # what "auto" resolved to on this device
        "device": device.type,
        "steps": run.step,
        "windows": len(features),
        "examples": len(examples),
        "seconds": round(time.time() - t0, 1),
        "final_loss": float(np.mean(run.losses[-50:])) if run.losses else None,
        "dev": run.history,
    }
    return _save_final(cfg, run.model, out, record)


def _save_final(cfg: TrainConfig, model: Any, out: Path, record: dict[str, object]) -> Path:
    """out/final: the model, the base's tokenizer files and training.json (the config and `record`)."""
    # written beside final/ and renamed: the build reuses a final/ it finds, so a cut-short one must not exist
    final, staging = out / "final", out / "final.partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    # all of them: transformers reads special tokens and casing from the config files, not tokenizer.json alone
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(cfg.base_model) / name).is_file():
            shutil.copy(Path(cfg.base_model) / name, staging / name)
    (staging / "training.json").write_text(json.dumps({"config": asdict(cfg), **record}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    log.info("saved %s", final)
    return final


def make_optimizer(model, cfg: TrainConfig, fused: bool = True):  # noqa: ANN001, ANN201 - torch
    """AdamW over param_groups, fused into one kernel per tensor where torch has one (CPU and CUDA); `fused`
    False is torch's default AdamW, for comparison (bench/train_step.py).

    The unfused update makes several passes over each tensor: on 2 CPU cores the 250k x 384 embedding's update
    took 0.75 s a step unfused against 0.10 s fused (the whole step is 15-20 s).
    """
    import torch  # noqa: PLC0415 - torch: export extra, seconds to import

    device = next(model.parameters()).device.type
    fused = fused and device in ("cpu", "cuda")
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.learning_rate, fused=fused)


def param_groups(model, cfg: TrainConfig) -> list[dict[str, object]]:  # noqa: ANN001 - a transformers model
    """AdamW groups: no decay on biases, LayerNorm and embeddings; lr scaled down layer by layer toward the input.

    Embedding rows of pieces the training text never uses get no gradient, so without weight decay they stay
    exactly as pretrained: pruning the vocabulary before or after training gives the same model.
    """
    n_layers = int(model.config.num_hidden_layers)
    groups: dict[tuple[float, float], list[object]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if ".layer." in name:
            depth = int(name.split(".layer.")[1].split(".")[0]) + 1
        elif "embeddings" in name:
            depth = 0
        else:  # pooler, QA head
            depth = n_layers + 1
        lr = cfg.learning_rate * cfg.layer_decay ** (n_layers + 1 - depth)
        no_decay = p.ndim == 1 or "LayerNorm" in name or "embeddings" in name
        groups.setdefault((lr, 0.0 if no_decay else cfg.weight_decay), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def dev_scores(model, tokenizer, dev: list[Example], cfg: TrainConfig, device) -> dict[str, float]:  # noqa: ANN001
    """EM/F1 (both metrics) on the dev slice, decoded exactly as the service decodes."""
    model.eval()
    predictor = WindowPredictor(tokenizer, torch_logits_fn(model, device), cfg.windows, pad_token_id(tokenizer), 64)
    result = evaluate_predictor(predictor, dev)
    return {
        "korquad_f1": result["korquad"]["f1"],
        "korquad_em": result["korquad"]["exact_match"],
        "squad_f1": result["squad"]["f1"],
    }
