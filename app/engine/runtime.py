"""The runtimes that run a bundle's graph: ONNX Runtime (CPU or CUDA, IOBinding there) and OpenVINO (CPU).

Both take a padded batch of numpy inputs and return (start, end) logits; the engine sees only `Runtime`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class HeapTrimmer:
    """Hands freed heap pages back to the OS after large batches (glibc only; a no-op elsewhere).

    With the arena off ONNX Runtime frees a batch's activations, but glibc keeps the freed pages: one
    8 x 384-token batch of e5-small left RSS at 521 MB, and malloc_trim brought it back to 121 MB.
    """

    def __init__(self, min_tokens: int, min_interval_s: float = 1.0) -> None:
        self.min_tokens = min_tokens
        self.min_interval_s = min_interval_s
        self._last = 0.0
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        self._trim = getattr(libc, "malloc_trim", None)

    def after_batch(self, padded_tokens: int) -> None:
        now = time.monotonic()
        if self._trim is None or padded_tokens < self.min_tokens or now - self._last < self.min_interval_s:
            return
        self._last = now
        self._trim(0)


def cuda_available() -> bool:
    return CUDA in ort.get_available_providers()


def openvino_version() -> str | None:
    """OpenVINO's version when it is installed and imports, else None."""
    try:
        import openvino as ov  # noqa: PLC0415 - optional (the cpu extra has it, the gpu extra not), and heavy
    except ImportError:
        return None
    return str(ov.get_version()).split("-")[0]


class Runtime(Protocol):
    provider: str  # what runs the graph, for logs and /v1/models
    input_names: list[str]  # what `run` must be fed: exactly the graph's inputs
    pad_multiple: int  # a lone window is padded to a multiple of this many tokens

    def run(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...


def _check_inputs(model_path: Path, input_names: list[str], graph_inputs: list[str]) -> None:
    missing = set(input_names) - set(graph_inputs)
    if missing:
        raise RuntimeError(f"{model_path}: manifest lists inputs {sorted(missing)} the graph does not have")
    unfed = set(graph_inputs) - set(input_names)
    if unfed:
        raise RuntimeError(f"{model_path}: the graph takes {sorted(unfed)}, which the manifest does not list")


class OrtRuntime:
    """Runs padded batches; one instance is driven by one thread (the batcher's executor)."""

    # ORT handles any sequence length without re-planning, so a lone window runs unpadded
    pad_multiple = 1

    def __init__(
        self,
        model_path: Path,
        input_names: list[str],
        output_names: list[str],
        providers: str = "auto",
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        cpu_mem_arena: bool = False,
    ) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_cpu_mem_arena = cpu_mem_arena
        # spinning worker threads burn the CPU between batches; the batcher already amortizes wake-ups
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        wanted: list[str | tuple[str, dict[str, str]]]
        if providers == "cpu" or (providers == "auto" and not cuda_available()):
            wanted = [CPU]
        else:
            wanted = [(CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), CPU]
        self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=wanted)
        self.provider = self.session.get_providers()[0]
        if providers == "cuda" and self.provider != CUDA:
            raise RuntimeError("QA_PROVIDERS=cuda but ONNX Runtime could not start CUDAExecutionProvider")
        graph_inputs = [i.name for i in self.session.get_inputs()]
        _check_inputs(model_path, input_names, graph_inputs)
        # feed exactly what the graph declares (XLM-R, RoBERTa and DistilBERT graphs take no token_type_ids)
        self.input_names = graph_inputs
        self.output_names = output_names
        self._binding = self.session.io_binding() if self.provider == CUDA else None
        log.info("onnxruntime %s: %s with %d intra-op threads", ort.__version__, self.provider, intra_op_threads)

    def run(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Start and end logits, (batch, seq) float32 each."""
        if self._binding is None:
            start, end = self.session.run(self.output_names, {n: batch[n] for n in self.input_names})
            return np.asarray(start, dtype=np.float32), np.asarray(end, dtype=np.float32)
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name in self.input_names:
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(batch[name], "cuda", 0))
        for name in self.output_names:
            binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        start, end = binding.copy_outputs_to_cpu()
        return np.asarray(start, dtype=np.float32), np.asarray(end, dtype=np.float32)


class OpenVinoRuntime:
    """OpenVINO on the CPU, for static int8 (QDQ) graphs: its int8 kernels run the whole encoder, attention
    included, in int8 with the calibrated scales, where ONNX Runtime turns a QDQ graph into slow fp32 islands.
    One instance is driven by one thread (the batcher's executor)."""

    # OpenVINO plans each new input shape on first sight (about 30 ms here) and keeps the plan, about 10 MB
    # each for e5-small. Padding a lone window to a multiple of 32 leaves 12 shapes for 384 tokens, all
    # planned at warm-up: RSS 395 MB, against 692 MB for a multiple of 8 (48 shapes), at the same speed
    # (23.5 and 23.2 questions/s, bench/engine_modes.py), although a window carries 16 padding tokens on average
    pad_multiple = 32

    def __init__(self, model_path: Path, input_names: list[str], output_names: list[str], threads: int = 1) -> None:
        import openvino as ov  # noqa: PLC0415 - optional (the cpu extra has it, the gpu extra not), and heavy

        core = ov.Core()
        model = core.read_model(str(model_path))
        graph_inputs = [i.get_any_name() for i in model.inputs]
        _check_inputs(model_path, input_names, graph_inputs)
        self.input_names = graph_inputs
        config = {
            "INFERENCE_NUM_THREADS": threads,
            # one request at a time on all the threads: the batcher, not OpenVINO, decides what runs together
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        self.compiled = core.compile_model(model, "CPU", config)
        outputs = {o.get_any_name(): o for o in self.compiled.outputs}
        missing = set(output_names) - set(outputs)
        if missing:
            raise RuntimeError(f"{model_path}: manifest lists outputs {sorted(missing)} the graph does not have")
        self._outputs = [outputs[n] for n in output_names]
        self._request = self.compiled.create_infer_request()
        self.provider = f"OpenVINO {openvino_version()} CPU"
        log.info("%s with %d threads", self.provider, threads)

    def run(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Start and end logits, (batch, seq) float32 each."""
        result = self._request.infer({n: batch[n] for n in self.input_names})
        # the request reuses its output buffers: copy before the next call overwrites them
        start, end = (np.array(result[o], dtype=np.float32) for o in self._outputs)
        return start, end


def open_runtime(
    model_path: Path,
    input_names: list[str],
    output_names: list[str],
    runtime: str = "onnxruntime",
    providers: str = "cpu",
    threads: int = 1,
    inter_op_threads: int = 1,
    cpu_mem_arena: bool = False,
) -> Runtime:
    """The runtime named by `runtime` ("openvino" or "onnxruntime") on `model_path`."""
    if runtime == "openvino":
        return OpenVinoRuntime(model_path, input_names, output_names, threads)
    return OrtRuntime(model_path, input_names, output_names, providers, threads, inter_op_threads, cpu_mem_arena)
