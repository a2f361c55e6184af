"""Prometheus metrics by stage, in base units, on a registry owned by one app instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
_TOKENS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # a registry per app: tests build many apps in one process
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "qa_requests", "HTTP requests by endpoint and outcome", ["endpoint", "outcome"], registry=r
        )
        self.request_seconds = Histogram(
            "qa_request_duration_seconds", "End-to-end request time", ["endpoint"], buckets=_LATENCY, registry=r
        )
        self.tokenize_seconds = Histogram(
            "qa_tokenize_seconds", "Tokenize + window time per request", buckets=_LATENCY, registry=r
        )
        self.queue_seconds = Histogram(
            "qa_queue_seconds", "Time a window waited for its batch", buckets=_LATENCY, registry=r
        )
        self.inference_seconds = Histogram(
            "qa_inference_seconds", "ONNX Runtime time per batch", buckets=_LATENCY, registry=r
        )
        self.decode_seconds = Histogram(
            "qa_decode_seconds", "Span decoding time per request", buckets=_LATENCY, registry=r
        )
        self.batch_windows = Histogram("qa_batch_windows", "Windows per batch", buckets=_SIZES, registry=r)
        self.batch_tokens = Histogram("qa_batch_tokens", "Padded tokens per batch", buckets=_TOKENS, registry=r)
        self.batch_failures = Counter("qa_batch_failures", "Batches that raised", ["reason"], registry=r)
        self.skipped_windows = Counter("qa_skipped_windows", "Windows dropped before inference", ["reason"], registry=r)
        self.queue_depth = Gauge("qa_queue_windows", "Windows waiting for a batch", registry=r)
