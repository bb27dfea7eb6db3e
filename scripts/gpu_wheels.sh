#!/usr/bin/env bash
# Wheels for `make gpu-check` on a lent GPU machine that has no network (Python 3.12, x86_64, torch with CUDA and
# transformers/peft/accelerate installed, but none of the packages below). Run here, where PyPI is reachable:
#
#   bash scripts/gpu_wheels.sh [DIR]        # default .whl/ (git-ignored); carry it to the GPU machine
#
# The check installs whichever of them the machine lacks with `pip install --no-index --no-deps --target
# /tmp/site` and runs with PYTHONPATH=/tmp/site:src. Versions are requirements.lock's where it pins them.
# The total is kept under ~55 MB (what can travel with the working tree): bitsandbytes' wheel (41 MB for 0.50.2,
# every CUDA version's kernels) fits beside the 11 MB of the rest; were it over, it is left out and the check
# reports QLoRA as "not available".
# deepspeed publishes no wheel: it is built here from its source (pure Python; its CUDA ops compile on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY=${PY:-.venv/bin/python}
PYVER=${GPU_WHEELS_PYTHON:-3.12}  # the GPU machine's Python (3.11 here only to try the wheels on this machine)
LIMIT_MB=${GPU_WHEELS_LIMIT_MB:-55}
mkdir -p "$DIR"

lock() { grep -i "^$1==" requirements.lock | head -1 || true; }
pin() { local v; v=$(lock "$1"); echo "${v:-$1${2:+==$2}}"; }

# tunelab's own imports on the `tunelab train` path (config, CLI, data checks, export, the app it imports)
CORE=(pydantic pydantic-core annotated-types typing-inspection datasketch gguf uvicorn fastapi starlette
      annotated-doc sqlalchemy click h11)
# DeepSpeed's pure-Python requirements (its own wheel is built below)
DEEPSPEED_REQS=(hjson==3.1.0 msgpack==1.2.4 ninja==1.13.2 py-cpuinfo==9.0.0 einops==0.8.2)
DEEPSPEED=deepspeed==0.19.8
BIG=(bitsandbytes==0.50.2)  # QLoRA (has CUDA 13.0 kernels); dropped when it would take the total over LIMIT_MB

download() {
  "$PY" -m pip download -q --only-binary=:all: --no-deps --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform linux_x86_64 --platform any -d "$1" "${@:2}"
}

specs=()
for p in "${CORE[@]}"; do specs+=("$(pin "$p")"); done
download "$DIR" "${specs[@]}" "${DEEPSPEED_REQS[@]}"
ls "$DIR"/deepspeed-*.whl >/dev/null 2>&1 || "$PY" -m pip wheel -q --no-deps -w "$DIR" "$DEEPSPEED"

size_mb() { du -sm "$1" | cut -f1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
download "$tmp" "${BIG[@]}" || echo "note: could not download ${BIG[*]}"
for w in "$tmp"/*.whl; do
  [ -e "$w" ] || continue
  mb=$(( $(stat -c %s "$w") / 1048576 ))
  if [ $(( $(size_mb "$DIR") + mb )) -le "$LIMIT_MB" ]; then cp "$w" "$DIR/"
  else echo "left out: $(basename "$w") ($mb MB would take $DIR over $LIMIT_MB MB)"; fi
done
echo "$DIR: $(ls "$DIR" | wc -l) wheels, $(size_mb "$DIR") MB"
ls -s --block-size=K "$DIR"
