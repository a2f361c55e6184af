#!/usr/bin/env bash
# Replays the Dockerfile's cpu-builder stage (its COPY and `pip install` lines, read from the
# Dockerfile itself) in a clean virtualenv, then checks the serving environment: the runtime deps
# import, torch does not. Downloads packages, so CI runs it outside pytest.
# Usage: scripts/check_docker_install.sh [STAGE]   (default cpu-builder; PYTHON=python3.11)
set -euo pipefail

stage="${1:-cpu-builder}"
python="${PYTHON:-python3.11}"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/check-docker-install.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# The stage's instructions, from its FROM line up to the next FROM (comments dropped).
stage_lines="$(awk -v stage="$stage" '
  /^FROM / { inside = (tolower($NF) == tolower(stage)); next }
  inside && !/^[[:space:]]*#/ && NF { print }
' "$root/Dockerfile")"
[[ -n "$stage_lines" ]] || { echo "no stage '$stage' in Dockerfile" >&2; exit 1; }
if grep -q '\\$' <<<"$stage_lines"; then
  echo "stage '$stage' has continued lines; keep its COPY/RUN lines on one line" >&2; exit 1
fi

mkdir -p "$work/src"
"$python" -m venv "$work/venv"
export PATH="$work/venv/bin:$PATH" VIRTUAL_ENV="$work/venv" PIP_DISABLE_PIP_VERSION_CHECK=1

ran=0
while IFS= read -r line; do
  case "$line" in
    COPY\ --from=*) ;;  # other stages: not part of installing
    COPY\ *)
      read -r -a parts <<<"${line#COPY }"
      dest="${parts[-1]}"
      unset 'parts[-1]'
      # Unquoted on purpose: globs such as README* expand as Docker expands them.
      (cd "$root" && for src in ${parts[*]}; do
        if [[ -e "$src" ]]; then cp -r "$src" "$work/src/$dest"; fi
      done)
      ;;
    RUN\ *pip\ install*)
      cmd="${line#RUN }"
      echo "+ $cmd"
      (cd "$work/src" && bash -euo pipefail -c "$cmd")
      ran=$((ran + 1))
      ;;
  esac
done <<<"$stage_lines"
[[ $ran -gt 0 ]] || { echo "no 'RUN ... pip install' line in stage '$stage'" >&2; exit 1; }

cd "$work"  # away from the repo, so imports resolve from the venv only
python -c "import onnxruntime, openvino, uvloop, httptools, fastapi, uvicorn, tokenizers, numpy, prometheus_client, app.settings"
# the demo page ships as package data; without it the image would serve / as a 500
python -c "from app.api.demo import STATIC_DIR as d; missing = [f for f in ('index.html', 'app.css', 'app.js') if not (d / f).is_file()]; assert not missing, missing"
for heavy in torch transformers optimum; do
  if python -c "import $heavy" 2>/dev/null; then
    echo "FAIL: $heavy is importable in the serving environment" >&2
    exit 1
  fi
done
pip check
echo "OK: stage '$stage' installs the serving deps without torch/transformers/optimum"
