"""The engine's own configuration: what the model and the scheduler need, and nothing of HTTP."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

VariantChoice = Literal["auto", "fp32", "fp16", "int8"]
ProviderChoice = Literal["auto", "cuda", "cpu"]
RuntimeChoice = Literal["auto", "onnxruntime", "openvino"]


@dataclass(frozen=True)
class ModelConfig:
    """How to open a bundle: which file, on what, with how many threads (`ServedModel.open`)."""

    model_dir: Path
    variant: VariantChoice = "auto"
    providers: ProviderChoice = "auto"
    runtime: RuntimeChoice = "auto"
    threads: int = 0  # intra-op threads; 0 = the container's CPU quota
    inter_op_threads: int = 1
    cpu_mem_arena: bool | None = None  # None: on when each call runs one window (ServedModel decides)
    batch_windows: int = 0  # windows per runtime call; 0 = 1 on a CPU, 32 on CUDA
    top_n: int = 20  # start and end candidates per window that decoding considers


@dataclass(frozen=True)
class EngineConfig:
    """A ServedModel behind the batcher: scheduling, limits and deadlines. Offline callers need only `model`."""

    model: ModelConfig
    warmup: bool = True
    max_batch_tokens: int = 8192
    max_delay_s: float = 0.0
    max_batch_s: float = 0.25
    max_queue_windows: int = 2048
    request_timeout_s: float = 30.0
    max_windows_per_passage: int = 64
    graceful_timeout_s: float = 35.0
    stall_timeout_s: float = 60.0

    @classmethod
    def offline(cls, model: ModelConfig) -> EngineConfig:
        """No latency budget and no request limits: a job scoring a data set, not a server under load."""
        huge = 10**9
        return cls(
            model,
            max_batch_s=math.inf,
            max_queue_windows=huge,
            request_timeout_s=math.inf,
            max_windows_per_passage=huge,
            stall_timeout_s=math.inf,
        )
