#!/usr/bin/env bash
# Install nnU-Net v2 2.8.1 into its own CPU-only venv (benchmarks/.venv-nnunet, git-ignored).
# Idempotent: re-running on a finished venv only checks it.
# Pitfall (see nnunet-v2-facts.md section 1): nnunetv2 -> dynamic-network-architectures -> timm -> torchvision
# pulls a CUDA torch and ~3 GB of nvidia wheels; we pin the CPU torch back and remove the CUDA wheels.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${NNUNET_VENV:-$here/.venv-nnunet}"
py="$venv/bin/python"

if [ -x "$py" ] && "$py" -c "import nnunetv2, torch, importlib.metadata as m; assert m.version('nnunetv2') == '2.8.1'; assert '+cpu' in torch.__version__" 2>/dev/null; then
    echo "nnU-Net venv ready: $venv"
    exit 0
fi

python3 -m venv "$venv"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q torch==2.13.0
# One resolver call: torchvision 0.28.0 pins torch==2.13.0, which the installed +cpu wheel satisfies,
# so pip keeps the CPU torch instead of fetching a CUDA 2.14 one.
"$py" -m pip install -q nnunetv2==2.8.1 torch==2.13.0 torchvision==0.28.0
cuda_wheels="$("$py" -m pip list --format=freeze | cut -d= -f1 | grep -Ei '^(nvidia-|triton$|cuda-)' || true)"
if [ -n "$cuda_wheels" ]; then
    "$py" -m pip uninstall -y $cuda_wheels
fi
"$py" -c "import nnunetv2, torch, importlib.metadata as m; print('nnunetv2', m.version('nnunetv2'), 'torch', torch.__version__)"
echo "nnU-Net venv ready: $venv"
