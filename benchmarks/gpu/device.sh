#!/usr/bin/env bash
# The one command for a lent GPU machine, run from the repository root:
#   OUT=results-folder bash benchmarks/gpu/device.sh CARRY [extra benchmarks.gpu options]
# CARRY holds what the machine cannot download: the wheels of podium's dependencies missing from
# its image (whl/*.whl, installed with --target, not into the image), the CIFAR-10 JPEG tarball
# (cifar10.tar.gz) and torchvision's ImageNet MobileNetV2 weights (mobilenet_v2-b0353104.pth).
set -uo pipefail
CARRY=${1:?usage: device.sh CARRY_DIR [options]}
shift
OUT=${OUT:-gpu-bench-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/podium-site \
    "$CARRY"/whl/*.whl || { echo "wheel install failed"; exit 3; }
export PYTHONPATH="/tmp/podium-site:$PWD/src:$PWD" PYTHONUNBUFFERED=1
python3 -m benchmarks.gpu --out "$OUT" --data "$CARRY/cifar10.tar.gz" \
    --weights "$CARRY/mobilenet_v2-b0353104.pth" "$@" 2>&1 | tee "$OUT/log.txt"
