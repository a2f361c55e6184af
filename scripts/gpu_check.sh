#!/usr/bin/env bash
# The CUDA path for real, in one command on a CUDA host with this checkout:  bash scripts/gpu_check.sh
#
#  1. a venv (.venv-gpu) with the export deps and onnxruntime-gpu instead of onnxruntime (the two wheels
#     install the same `onnxruntime` module, so only one may be present);
#  2. the peer checkpoint (e5-small shapes, random weights) bundled as fp32, fp16 and int8;
#  3. the service on CUDA (fp32 and fp16, QA_PROVIDERS=cuda: start-up fails if CUDA cannot start) and on the CPU
#     (fp32); top-1 answers on the first 50 test questions must match the CPU's: at least 0.98 for CUDA fp32,
#     0.9 for fp16 (half precision may flip near-ties of a random-weight model);
#  4. the peer benchmark on the GPU: bench/peers.py --device cuda (Optimum ORT on CUDA against the service).
#
# Results (JSON, logs, plot) go to $OUT when set, else runs/gpu_check/. Knobs: GPU_CHECK_VENV, GPU_CHECK_QUESTIONS
# (50), GPU_CHECK_PEER_QUESTIONS (100). Offline hosts: pip honours PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR_OF_WHEELS.
set -euo pipefail

cd "$(dirname "$0")/.."
RESULTS="${OUT:-runs/gpu_check}"
VENV="${GPU_CHECK_VENV:-.venv-gpu}"
QUESTIONS="${GPU_CHECK_QUESTIONS:-50}"
PEER_QUESTIONS="${GPU_CHECK_PEER_QUESTIONS:-100}"
CACHE="runs/gpu_check/cache"
mkdir -p "$RESULTS" "$CACHE"
log() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

log "GPU"
nvidia-smi | tee "$RESULTS/nvidia-smi.txt"

log "install into $VENV"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
# the cpu extra brings OpenVINO, which validates the static int8 file; onnxruntime is swapped for the GPU build below
"$PY" -m pip install -q ".[cpu,export]" httpx matplotlib
"$PY" -m pip uninstall -y -q onnxruntime || true
# the [cuda,cudnn] extras bring CUDA and cuDNN as pip wheels, so the host needs only the driver
"$PY" -m pip install -q "onnxruntime-gpu[cuda,cudnn]"
# make those wheels' libraries visible to ONNX Runtime (and to the servers started below)
NV_LIBS="$("$PY" - <<'EOF'
import glob, os, site
dirs = {os.path.dirname(p) for d in site.getsitepackages() for p in glob.glob(d + "/nvidia/*/lib/*.so*")}
print(":".join(sorted(dirs)))
EOF
)"
export LD_LIBRARY_PATH="${NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$PY" -m pip freeze > "$RESULTS/pip-freeze.txt"
"$PY" - <<'EOF'
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
assert "CUDAExecutionProvider" in ort.get_available_providers(), "onnxruntime-gpu has no CUDAExecutionProvider"
EOF

log "checkpoint and bundle (fp32, fp16, int8)"
"$PY" bench/peers.py --cache "$CACHE" --variants fp32 fp16 int8 --prepare-only 2>&1 | tee "$RESULTS/bundle.log"
BUNDLE="$CACHE/bundle"
cp "$BUNDLE/manifest.json" "$RESULTS/manifest.json"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# start NAME PORT VAR=VALUE...: python -m app on 127.0.0.1:PORT serving the bundle, log in $RESULTS
start() {
  local name=$1 port=$2
  shift 2
  env "$@" QA_MODEL_DIR="$BUNDLE" QA_HOST=127.0.0.1 QA_PORT="$port" "$PY" -m app >"$RESULTS/server-$name.log" 2>&1 &
  PIDS+=($!)
}
wait_ready() {
  "$PY" - "$1" <<'EOF'
import sys, time, httpx
url = sys.argv[1]
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    try:
        if httpx.get(url + "/readyz", timeout=2).status_code == 200:
            print(url, httpx.get(url + "/v1/models").json()["data"][0])
            sys.exit(0)
    except httpx.HTTPError:
        pass
    time.sleep(1)
sys.exit(f"{url} never became ready; see the server logs in the results folder")
EOF
}

log "services: CUDA fp32, CUDA fp16, CPU fp32"
start cuda-fp32 8101 QA_PROVIDERS=cuda QA_MODEL_VARIANT=fp32
start cuda-fp16 8102 QA_PROVIDERS=cuda QA_MODEL_VARIANT=fp16
start cpu-fp32 8103 QA_PROVIDERS=cpu QA_MODEL_VARIANT=fp32
for port in 8101 8102 8103; do wait_ready "http://127.0.0.1:$port" | tee -a "$RESULTS/models.txt"; done

log "answers: CUDA against CPU on $QUESTIONS test questions"
status=0
"$PY" bench/compare_services.py http://127.0.0.1:8103 http://127.0.0.1:8101 --questions "$QUESTIONS" \
  --min-agreement 0.98 --out "$RESULTS/compare_cuda_fp32.json" || status=1
"$PY" bench/compare_services.py http://127.0.0.1:8103 http://127.0.0.1:8102 --questions "$QUESTIONS" \
  --min-agreement 0.9 --out "$RESULTS/compare_cuda_fp16.json" || status=1
cleanup
PIDS=()

log "peer benchmark on the GPU ($PEER_QUESTIONS questions)"
"$PY" bench/peers.py --device cuda --cache "$CACHE" --questions "$PEER_QUESTIONS" \
  --json "$RESULTS/peers.json" --plot "$RESULTS/peers.png" | tee "$RESULTS/peers.md"

if [ "$status" -ne 0 ]; then
  echo "gpu_check: CUDA answers differ from the CPU's more than allowed (see $RESULTS/compare_*.json)" >&2
  exit 1
fi
echo "gpu_check: ok; results in $RESULTS"
