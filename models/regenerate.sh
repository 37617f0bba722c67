#!/usr/bin/env bash
# Regenerate everything committed under figures/ and audits/ from the shipped models, in one command:
#
#   bash models/regenerate.sh            # all of it (about 1 h on a 2-core CPU, most of it the audits)
#   bash models/regenerate.sh figures explanations review serve   # some stages only
#
# Stages: figures (paper figures and tables of the four tumor bundles, figures/<model>/ and the comparison),
# explanations (figures/explanations/: every method on the meningioma sample), review (the review report with
# the default methods),
# serve (the web page's screenshot, through its headless-Chromium test), audits (every audits/<model>/ that
# records its command in summary.json, rerun with that command). Expects the shared data at ../shared/data.
# tests/test_committed_artefacts.py fails when a committed sidecar, prediction table or audit no longer
# matches what the shipped model computes: run this, then commit what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
DATA=${DATA:-../shared/data}
export MPLBACKEND=Agg TF_CPP_MIN_LOG_LEVEL=2
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(figures explanations review serve audits)

run() { echo "+ $*" >&2; "$@"; }

for stage in "${stages[@]}"; do
  case "$stage" in
    figures)
      run "$PY" -m xai_bt figures models/default models/default192 models/two_stage models/cascade \
        --data "$DATA/brain-tumor-mri" --out figures/ --overwrite ;;
    explanations)
      run "$PY" -m xai_bt explain xai_bt/samples/meningioma.jpg --methods all --out figures/explanations --overwrite
      rm -f figures/explanations/index.csv ;;   # a run log, not a result
    review)
      run "$PY" -m xai_bt report xai_bt/samples/meningioma.jpg --out figures/review/report_meningioma.html \
        --overwrite ;;   # the bundle's default methods: its audit's recommendation, then Grad-CAM
    serve)
      XAI_BT_SCREENSHOT="$PWD/figures/review/serve.png" run "$PY" -m pytest -q tests/test_serve.py ;;
    audits)
      for summary in audits/*/summary.json; do
        echo "+ audit recorded in $summary" >&2
        "$PY" - "$summary" "$DATA" <<'PYEOF'
import json, shlex, subprocess, sys
summary, data = sys.argv[1], sys.argv[2]
argv = shlex.split(json.load(open(summary)).get("command", ""))
if argv[:4] != ["python", "-m", "xai_bt", "audit"]:
    print(f"skip {summary}: no audit command recorded", file=sys.stderr)
    sys.exit(0)
argv = [sys.executable] + [a.replace("../shared/data", data, 1) for a in argv[1:]]
argv += [] if "--overwrite" in argv else ["--overwrite"]
print("+ " + shlex.join(argv), file=sys.stderr)
sys.exit(subprocess.run(argv).returncode)
PYEOF
      done ;;
    *) echo "unknown stage '$stage' (figures, explanations, review, serve, audits)" >&2; exit 2 ;;
  esac
done
