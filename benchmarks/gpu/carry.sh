#!/usr/bin/env bash
# Builds, on a machine with pip access, the folder benchmarks/gpu/device.sh needs on a GPU machine
# without internet:  bash benchmarks/gpu/carry.sh CARRY_DIR
#   CARRY_DIR/whl/   wheels (CPython 3.12, manylinux x86-64) of podium's dependencies that the GPU
#                    image lacks (its package list, 2026-11: torch, torchvision, timm, lightning,
#                    torchmetrics, pandas, pyarrow, scikit-learn, onnx, onnxruntime, opencv are
#                    there; pydantic and albumentations and theirs are not), at the versions
#                    installed here (PYTHON, default .venv/bin/python)
#   CARRY_DIR/cifar10.tar.gz, CARRY_DIR/mobilenet_v2-b0353104.pth   from ../shared
set -euo pipefail
CARRY=${1:?usage: carry.sh CARRY_DIR}
PYTHON=${PYTHON:-.venv/bin/python}
SHARED=${SHARED:-../shared}
mkdir -p "$CARRY/whl"
for name in pydantic pydantic_core annotated-types typing-inspection typing_extensions \
            albumentations albucore simsimd stringzilla; do
  version=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('$name'))")
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$CARRY/whl" "$name==$version"
done
cp "$SHARED/data/cifar10.tar.gz" "$SHARED/weights/mobilenet_v2-b0353104.pth" "$CARRY/"
du -sh "$CARRY"
