#!/usr/bin/env bash
# GPU verification of issue #15 on a lent CUDA machine (the session's `device` tool runs it in the repo root).
# Its image has torch, onnx, onnxruntime, scipy, scikit-learn, typer, rich and safetensors but not pydantic,
# torch-pruning or pymoo: download their wheels here first (Python 3.12, x86-64), into .whl/ (kept out of git):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     torch-pruning==1.6.1 pymoo==0.6.2 autograd==1.9.1 cma==4.5.0 alive-progress==3.3.0 about-time==4.2.1 \
#     graphemeu==0.7.2 Deprecated==1.3.1 wrapt==2.5.2 moocore==0.3.2
# then run `bash bench/gpu_check.sh` there with carry [".whl"]; its JSON comes back under $OUT.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --target /tmp/prunekit-deps .whl/*.whl
export PYTHONPATH="$PWD/src:/tmp/prunekit-deps" PRUNEKIT_NO_PROGRESS=1 PYTHONUNBUFFERED=1
python3 bench/gpu_check.py --out "${OUT:-/tmp/gpu-check}"
