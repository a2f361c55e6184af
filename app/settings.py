"""The one Settings object: every knob of the service, read from QA_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.engine.config import EngineConfig, ModelConfig
from app.engine.hardware import cpu_quota

# The bundle committed with the repository; the service serves it when QA_MODEL_DIR is unset.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default"


class Settings(BaseSettings):
    """Service configuration. Each field is the environment variable QA_<FIELD NAME>."""

    model_config = SettingsConfigDict(env_prefix="QA_", env_file=None, extra="ignore")

    # --- model ---
    model_dir: Path = Field(DEFAULT_MODEL_DIR, description="Model bundle directory (manifest.json inside).")
    model_variant: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto",
        description="Which ONNX file of the bundle to run; auto = fp16 on CUDA, int8 on a CPU with int8 dot-product "
        "instructions (VNNI, AMX, Arm dotprod), else fp32 when the bundle has it. /v1/models says what and why.",
    )
    providers: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto uses CUDA when onnxruntime-gpu sees a GPU, else CPU; cuda fails start-up without one."
    )
    runtime: Literal["auto", "onnxruntime", "openvino"] = Field(
        "auto",
        description="What runs the graph; auto = the runtime the bundle's file was built for (OpenVINO for static "
        "int8, ONNX Runtime otherwise) when it is installed, and ONNX Runtime on CUDA. /v1/models says what and why.",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="Threads one inference uses (ORT intra-op, OpenVINO); 0 = the container's CPU quota."
    )
    inter_op_threads: int = Field(1, ge=1, description="ORT inter-op threads; graphs here are sequential.")
    cpu_mem_arena: bool | None = Field(
        None,
        description="ORT CPU arena; unset = on when each call runs one window (the CPU default: 5% faster, and "
        "one window's high-water mark is small), off when batching, where it would keep the largest batch's.",
    )
    warmup: bool = Field(True, description="Run a short and a full-size dummy batch before reporting ready.")

    # --- server ---
    host: str = Field("0.0.0.0", description="Bind address.")  # noqa: S104 - a container service
    port: int = Field(8000, ge=1, le=65535, description="Bind port.")
    graceful_timeout_s: float = Field(
        35.0,
        gt=0,
        description="Drain window after SIGTERM: in-flight requests get this long to finish, the rest a JSON 503. "
        "Longer than the request deadline, so by default nothing in flight is lost.",
    )
    keep_alive_s: float = Field(
        75.0,
        gt=0,
        description="How long an idle keep-alive connection stays open. Longer than the idle timeout of clients "
        "and load balancers in front (5 s for httpx, 60 s for many cloud balancers), so the server never closes "
        "a connection just as a client sends on it, which the client sees as a reset.",
    )
    proxy_headers: bool = Field(
        True, description="Take the client address from X-Forwarded-For, but only from forwarded_allow_ips."
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1", description="Comma-separated proxy addresses (or *) whose forwarded headers are trusted."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the app and uvicorn."
    )
    demo: bool = Field(True, description="Serve the demo page at / (static files, no CDN); off = / is a 404.")

    # --- batching ---
    max_batch_windows: int = Field(
        0,
        ge=0,
        description="Windows per engine call; 0 = auto: 1 on a CPU, where a window's answers must not depend on "
        "its batch (batching would gain at most 15% there: bench/engine_modes.py), 32 on CUDA.",
    )
    max_batch_tokens: int = Field(
        8192, ge=1, description="Padded tokens (windows x longest window) per call; bounds memory."
    )
    max_delay_ms: float = Field(
        0.0,
        ge=0,
        description="How long an idle batcher waits for more windows before it starts. 0: requests that arrive "
        "while a batch runs join the next one anyway, and a lone request should not wait.",
    )
    max_batch_ms: float = Field(
        250.0,
        gt=0,
        description="A batch stops growing once its estimated run time would pass this; it bounds how long a new "
        "request waits for the engine (on a GPU the window budget binds first).",
    )
    stall_timeout_s: float = Field(
        60.0,
        gt=0,
        description="With work waiting and no batch finished for this long, /readyz and /livez report a stall.",
    )
    max_queue_windows: int = Field(2048, ge=1, description="Windows waiting at most; beyond it requests get 429.")
    request_timeout_s: float = Field(30.0, gt=0, description="Deadline per request; later ones get 504.")

    # --- input limits ---
    max_question_chars: int = Field(1000, ge=1, description="Longest question, in characters.")
    max_context_chars: int = Field(30000, ge=1, description="Longest context, in characters.")
    max_windows_per_request: int = Field(64, ge=1, description="Windows one context may need; more is a 422.")
    max_batch_items: int = Field(32, ge=1, description="Items in one /batch_answer body.")
    max_passages: int = Field(50, ge=1, description="Passages in one /read body (a retriever's top 5-50).")
    max_total_chars: int = Field(
        100_000, ge=1, description="Characters of all passages of one /read body together; bounds its windows."
    )
    max_top_k: int = Field(20, ge=1, description="Largest top_k a request may ask for.")
    max_answer_length_limit: int = Field(256, ge=1, description="Largest max_answer_length (tokens) allowed.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body; more is a 413.")
    top_n: int = Field(20, ge=1, description="Start and end candidates per window considered by decoding.")

    # --- access ---
    api_key: SecretStr | None = Field(
        None, description="Bearer token required on the QA endpoints; unset = open. Probes stay open."
    )
    api_keys_file: Path | None = Field(
        None, description="File of bearer tokens, one per line (# comments); adds to api_key. Rotate by editing it."
    )
    metrics_auth: bool = Field(False, description="Require the bearer token on /metrics too.")
    docs: bool = Field(
        True, description="Serve /docs (Swagger UI) and /openapi.json, with files shipped locally (no CDN)."
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.max_batch_tokens < 64:
            raise ValueError("max_batch_tokens must hold at least one window (>= 64 tokens)")
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ValueError(f"api_keys_file {self.api_keys_file} is not a readable file")
        if self.max_queue_windows < self.max_windows_per_request:
            raise ValueError("max_queue_windows must be >= max_windows_per_request, or a valid request never fits")
        return self

    @property
    def threads(self) -> int:
        return self.intra_op_threads or cpu_quota()

    def engine_config(self) -> EngineConfig:
        """What the engine needs of these settings (it never sees the HTTP ones)."""
        return EngineConfig(
            ModelConfig(
                model_dir=self.model_dir,
                variant=self.model_variant,
                providers=self.providers,
                runtime=self.runtime,
                threads=self.intra_op_threads,
                inter_op_threads=self.inter_op_threads,
                cpu_mem_arena=self.cpu_mem_arena,
                batch_windows=self.max_batch_windows,
                top_n=self.top_n,
            ),
            warmup=self.warmup,
            max_batch_tokens=self.max_batch_tokens,
            max_delay_s=self.max_delay_ms / 1000,
            max_batch_s=self.max_batch_ms / 1000,
            max_queue_windows=self.max_queue_windows,
            request_timeout_s=self.request_timeout_s,
            max_windows_per_passage=self.max_windows_per_request,
            graceful_timeout_s=self.graceful_timeout_s,
            stall_timeout_s=self.stall_timeout_s,
        )

    def api_keys(self) -> list[str]:
        """Every accepted bearer token; empty means authentication is off."""
        keys = [self.api_key.get_secret_value()] if self.api_key else []
        if self.api_keys_file is not None:
            lines = (raw.strip() for raw in self.api_keys_file.read_text(encoding="utf-8").splitlines())
            keys.extend(line for line in lines if line and not line.startswith("#"))
        return [k for k in keys if k]
