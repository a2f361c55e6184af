#!/usr/bin/env bash
# One device call (see scripts/device/gpu_train.py): carry .whl (transformers 4.57 and friends, the versions
# pyproject pins) and .gpu (the 4-bit-packed pruned base and the training articles only). Arguments go to
# gpu_train.py: `bash scripts/device/run_gpu_train.sh --no-sweep` trains the config's recipe only and returns the
# delta and final.json. The call only trains: the build calibrates the shipped model on the CPU, on its served file.
set -uo pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
python3 -c "import torch, transformers, onnxruntime as o; print('torch', torch.__version__, 'transformers', transformers.__version__, 'ORT', o.__version__, o.get_available_providers())"
python3 scripts/device/q4pack.py unpack .gpu/base.npz /tmp/base || exit 1
PYTHONUNBUFFERED=1 TQDM_DISABLE=1 python3 scripts/device/gpu_train.py --base /tmp/base --data .gpu/korquad_train.json \
    --out "$OUT" --work /tmp/work --budget-s "${SWEEP_BUDGET_S:-300}" "$@" 2>&1 | grep -v "local model:"
ls -la "$OUT"
