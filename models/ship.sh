#!/usr/bin/env bash
# Make a trained tumor bundle the shipped default, and regenerate everything that shows it:
#
#   bash models/ship.sh /path/to/trained_bundle      # about 1 h on a 2-core CPU, most of it the audit
#   TTA=none bash models/ship.sh BUNDLE               # keep it without test-time augmentation
#
# Copies the bundle to models/default (named "default"), fits the temperature with and without flip TTA and
# keeps the one with the lower twin-free validation NLL, refits the competence checks, evaluates into the
# model card, runs the full focus audit (which stores the explanation to show first), then
# `models/regenerate.sh figures explanations review serve` and the competence benchmark. Session 9 shipped
# the focus-guided default this way. Then update the numbers in README.md, models/README.md,
# audits/default/README.md and xai_bt/samples/README.md by hand, and commit it all in one change.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:?usage: bash models/ship.sh TRAINED_BUNDLE}
PY=${PY:-python}
DATA=${DATA:-../shared/data}
D=$DATA/brain-tumor-mri
export MPLBACKEND=Agg TF_CPP_MIN_LOG_LEVEL=2
run() { echo "+ $*" >&2; "$@"; }
nll() { "$PY" -c "import json; print(json.load(open('models/default/bundle.json'))['calibration']['after']['nll'])"; }

rm -rf models/default && cp -r "$SRC" models/default && rm -rf models/default/checkpoints
"$PY" -c "from xai_bt.model.bundle import read_config, write_config; c = read_config('models/default'); c['name'] = 'default'; write_config('models/default', c)"
run "$PY" -m xai_bt calibrate models/default --data "$D" --tta none --overwrite
if [ "${TTA:-auto}" = auto ]; then   # TTA=none: never flip (an ensemble with flips would pass 20 ms per scan)
  none=$(nll)
  run "$PY" -m xai_bt calibrate models/default --data "$D" --tta hflip --overwrite
  flip=$(nll)
  echo "twin-free validation NLL after temperature scaling: no TTA $none, flip TTA $flip" >&2
  if "$PY" -c "import sys; sys.exit(0 if $none < $flip else 1)"; then
    run "$PY" -m xai_bt calibrate models/default --data "$D" --tta none --overwrite
  fi
fi
run "$PY" -m xai_bt competence models/default --data "$D" --overwrite
run "$PY" -m xai_bt evaluate models/default --data "$D" --update-card
run "$PY" -m xai_bt audit models/default --data "$DATA/brisc2025" --train-data "$D" --faithfulness 40 --sanity 6 \
  --gallery 4 --batch-size 32 --out audits/default --overwrite
PY="$PY" DATA="$DATA" bash models/regenerate.sh figures explanations review serve
run "$PY" benchmarks/bench_competence.py --model models/default --brisc 1000 --scans 50 --seed 1 --scores --write
