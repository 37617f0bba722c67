"""Committed results must be what the shipped models compute now: a retrained or recalibrated model with
stale figures, sidecars or audits fails here. `bash models/regenerate.sh` redraws them all."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import BENCHMARK

ROOT = Path(__file__).resolve().parents[1]
SIDECARS = sorted((ROOT / "figures" / "explanations").glob("*.json"))
#: CAM methods are smooth (upsampled from a few cells): their peak and top-k area are stable to float noise
STABLE_METHODS = ("gradcam", "gradcam++", "layercam")


@pytest.fixture(scope="module")
def default_bundle():
    from xai_bt.model.bundle import load_model

    return load_model(ROOT / "models" / "default")


def _bundle_of(record: dict, default_bundle):
    assert record["model"] == "default", f"sidecar of model {record['model']!r}: extend this test to load it"
    return default_bundle


@pytest.mark.parametrize("sidecar", SIDECARS, ids=[p.stem for p in SIDECARS])
def test_explanation_sidecars_match_the_shipped_model(sidecar, default_bundle):
    from xai_bt.attribution.explain import explain
    from xai_bt.attribution.summary import peak

    record = json.loads(sidecar.read_text())
    bundle = _bundle_of(record, default_bundle)
    scan = ROOT / record["path"]
    probs = bundle.predict([str(scan)]).probabilities[0]
    stale = "stale: rerun `bash models/regenerate.sh explanations`"
    assert np.allclose(probs, [record["probabilities"][c] for c in bundle.class_names], atol=1e-4), stale
    assert record["prediction"] == bundle.class_names[int(np.argmax(probs))], stale
    methods = [m for m in STABLE_METHODS if m in record["methods"]]
    expl = explain(bundle, str(scan), methods=methods)[0]
    assert expl.layer == record["layer"], stale
    for method in methods:
        row, col = peak(expl.maps[method])
        want = record["methods"][method]["peak"]
        assert max(abs(row - want["row"]), abs(col - want["col"])) <= 1, (method, stale)


def test_prediction_table_matches_the_shipped_model(default_bundle):
    """Every 50th row of figures/default/predictions.csv (27 real test scans), predicted again."""
    if not BENCHMARK.is_dir():
        pytest.skip(f"real data not found at {BENCHMARK}")
    with open(ROOT / "figures" / "default" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))[::50]
    probs = default_bundle.predict([str(BENCHMARK / r["path"]) for r in rows], batch_size=32).probabilities
    want = np.array([[float(r[f"p_{c}"]) for c in default_bundle.class_names] for r in rows])
    assert np.allclose(probs, want, atol=1e-4), "stale: rerun `bash models/regenerate.sh figures`"
    assert [default_bundle.class_names[i] for i in probs.argmax(1)] == [r["pred"] for r in rows]


def test_audits_and_review_page_are_of_the_shipped_model(default_bundle):
    """The audit and the review page record the bundle's temperature and prediction as they are now."""
    summary = json.loads((ROOT / "audits" / "default" / "summary.json").read_text())
    assert summary["model"] == "models/default"
    assert summary["temperature"] == pytest.approx(default_bundle.temperature, abs=1e-9), \
        "stale: rerun `bash models/regenerate.sh audits`"
    page = (ROOT / "figures" / "review" / "report_meningioma.html").read_text()
    shown = re.search(r"calibrated probability ([0-9.]+)%", page)
    assert shown, "the review page no longer states the calibrated probability"
    probs = default_bundle.predict([str(ROOT / "xai_bt" / "samples" / "meningioma.jpg")]).probabilities[0]
    assert float(shown.group(1)) == pytest.approx(100 * probs.max(), abs=0.051), \
        "stale: rerun `bash models/regenerate.sh review`"


def test_the_recommended_explanation_is_that_of_the_committed_audit(default_bundle):
    """The bundle's stored recommendation is what `recommend` makes of audits/default, and the review page
    shows it first, captioned with its audit score."""
    from xai_bt.audit.recommend import recommend
    from xai_bt.model.provenance import recommended_explanation

    stored = recommended_explanation(default_bundle)
    assert stored is not None, "models/default has no recommended explanation: rerun its audit"
    summary = json.loads((ROOT / "audits" / "default" / "summary.json").read_text())
    fresh = recommend(summary)
    assert stored["method"] == fresh["method"] and stored["audit_command"] == summary["command"], \
        "stale: rerun `bash models/regenerate.sh audits`"
    assert stored["pointing_game"]["mean"] == pytest.approx(fresh["pointing_game"]["mean"])
    page = (ROOT / "figures" / "review" / "report_meningioma.html").read_text()
    assert "audit: peak inside the tumor" in page, "stale: rerun `bash models/regenerate.sh review`"
