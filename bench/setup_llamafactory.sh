#!/usr/bin/env bash
# A bench-only virtual environment with LLaMA-Factory, the peer bench/data_scale.py (and train_bench.py) compare
# against. LLaMA-Factory is never a dependency of tunelab: it lives in its own venv, bench/.work/llamafactory-venv,
# with the CPU torch pinned through bench/llamafactory-constraints.txt.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${LLAMAFACTORY_VENV:-$here/.work/llamafactory-venv}"
version="${LLAMAFACTORY_VERSION:-0.9.5}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import llamafactory" 2>/dev/null; then
  echo "LLaMA-Factory already installed in $venv"; exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q -c "$here/llamafactory-constraints.txt" torch==2.13.0
"$venv/bin/python" -m pip install -q -c "$here/llamafactory-constraints.txt" "llamafactory==$version"
# torchvision/torchaudio come as LF's multimodal requirements, built for other torch releases (their ops fail to
# load against the CPU torch 2.13); text-only SFT preprocessing and training need neither.
"$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio
"$venv/bin/python" -c "import llamafactory, torch; print('llamafactory', llamafactory.__version__, 'torch', torch.__version__)"
