"""The one Settings object: every knob of the service, read from QA_* environment variables."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.engine.config import EngineConfig, ModelConfig
from app.engine.hardware import cpu_quota

# The bundle committed with the repository; the service serves it when QA_MODEL_DIR is unset.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default"
ENV_PREFIX = "QA_"
# Kubernetes service links: a Service named qa-<x> injects QA_<X>_SERVICE_HOST, QA_<X>_PORT=tcp://... and
# QA_<X>_PORT_<n>_TCP_*; such names are never a typo of a setting, so they only warn.
SERVICE_LINK = re.compile(
    r"^QA_\w+?_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)$"
)
# How close an unknown QA_* name must be to a setting's to count as its misspelling (difflib's ratio):
# QA_API_KYE is 0.86 from api_key, QA_SERVICE_PORT 0.5 from port.
NEAR_MISS = 0.8
# An origin is scheme://host[:port], with no path: "https://a.example/" never matches a browser's Origin header.
ORIGIN = re.compile(r"^https?://[^/\s]+$")


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
    max_header_bytes: int = Field(
        16384,
        ge=1024,
        description="Longest request line plus headers, in bytes; more is a JSON 431 and the connection closes. "
        "This API's own headers take a few hundred bytes; 16 KiB leaves room for long tokens and proxies' headers, "
        "and bounds what one connection can make the server hold (unbounded, 16 clients with 64 MB headers took "
        "the server from 0.6 to 1.6 GB).",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request line and headers must arrive within this long (counted from the connection's "
        "start, or from the first byte of a later request on a kept alive connection); else a JSON 408 and the "
        "connection closes. Bounds slowloris connections (headers sent slowly); idle kept alive ones follow "
        "keep_alive_s.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A request body must arrive within this long after its headers; else a JSON 408 and the "
        "connection closes. 30 s still takes the largest body (max_body_bytes) at 35 kB/s; connections "
        "sending a body slowly would otherwise stay open forever.",
    )
    max_connections: int = Field(
        512,
        ge=1,
        description="Open connections (and requests in progress) at most; a request beyond it gets a JSON 503 "
        "over_capacity and its connection closes (uvicorn's limit_concurrency). Well below the common limit "
        "of 1,024 open files, so the process always has files left for itself.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        [],
        description="Browser origins allowed to call the API (CORS), separated by commas or as a JSON list, e.g. "
        "https://a.example,http://localhost:3000; * allows any. Empty = no CORS headers at all (pages on "
        "the service's own origin, like the demo, need none).",
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
        None,
        description="Bearer token required on the QA endpoints; unset = open. Probes stay open. Surrounding "
        "whitespace (a file's newline) is stripped; an empty value stops the server from starting.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="File of bearer tokens, one per line (# comments); adds to api_key. Rotate by editing it. "
        "A file with no key stops the server from starting.",
    )
    metrics_auth: bool = Field(False, description="Require the bearer token on /metrics too.")
    docs: bool = Field(
        True, description="Serve /docs (Swagger UI) and /openapi.json, with files shipped locally (no CDN)."
    )

    @field_validator("api_key")
    @classmethod
    def _strip_key(cls, key: SecretStr | None) -> SecretStr | None:
        # a key from a file or a Secret often ends in a newline that no client sends: it would never match
        if key is None:
            return None
        value = key.get_secret_value().strip()
        if not value:
            raise ValueError("is empty or whitespace only; unset it to turn authentication off")
        return SecretStr(value)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)  # a malformed list is a ValueError, reported with the setting's name
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port], no path or trailing slash")
        return origins

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.max_batch_tokens < 64:
            raise ValueError("QA_MAX_BATCH_TOKENS must hold at least one window (>= 64 tokens)")
        if self.api_keys_file is not None:
            if not self.api_keys_file.is_file():
                raise ValueError(f"QA_API_KEYS_FILE: {self.api_keys_file} is not a readable file")
            if not self._file_keys():
                raise ValueError(
                    f"QA_API_KEYS_FILE: {self.api_keys_file} holds no key (only blank or # lines); "
                    "unset it to turn authentication off"
                )
        if self.max_queue_windows < self.max_windows_per_request:
            raise ValueError(
                "QA_MAX_QUEUE_WINDOWS must be >= QA_MAX_WINDOWS_PER_REQUEST, or a valid request never fits"
            )
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

    def _file_keys(self) -> list[str]:
        if self.api_keys_file is None:
            return []
        lines = (raw.strip() for raw in self.api_keys_file.read_text(encoding="utf-8").splitlines())
        return [line for line in lines if line and not line.startswith("#")]

    def api_keys(self) -> list[str]:
        """Every accepted bearer token, stripped; empty means authentication is off."""
        keys = [self.api_key.get_secret_value().strip()] if self.api_key else []
        keys.extend(self._file_keys())
        return [k for k in keys if k]

    @property
    def auth_on(self) -> bool:
        """Whether the QA API needs a bearer token (a keys file turns it on even while it is being rewritten)."""
        return self.api_key is not None or self.api_keys_file is not None


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def check_environment(environ: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """QA_* variables that are no setting: (errors, warnings). A near miss of a setting's name (QA_API_KYE) is
    an error, since the setting it meant (auth!) would silently keep its default; any other name only warns."""
    fields = list(Settings.model_fields)
    errors: list[str] = []
    warnings: list[str] = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper[len(ENV_PREFIX) :].lower() in fields:
            continue
        if SERVICE_LINK.match(upper):
            warnings.append(
                f"{name} is not a setting (a Kubernetes service link? set enableServiceLinks: false); ignored"
            )
            continue
        close = difflib.get_close_matches(upper[len(ENV_PREFIX) :].lower(), fields, n=1, cutoff=NEAR_MISS)
        if close:
            errors.append(f"{name} is not a setting; did you mean {env_name(close[0])}? (unset or rename it)")
        else:
            warnings.append(f"{name} is not a setting; ignored")
    return errors, warnings
