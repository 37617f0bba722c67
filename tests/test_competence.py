"""Competence warnings: a scan unlike the training scans (a photo, a chart, noise) is said to be so, a real scan
is not, and the fitted feature check travels in bundle.json."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES

from xai_bt.model import competence
from xai_bt.model.bundle import Bundle, read_config, write_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "default"


def _scan_like(seed: int = 0, size: int = 224) -> np.ndarray:
    """A grey MRI-like slice: a textured bright ellipse on a dark, slightly noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    head = ((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.34 * size)) ** 2 <= 1
    img = rng.normal(8, 3, (size, size))
    img[head] = rng.normal(110, 25, head.sum())
    import cv2

    return np.clip(cv2.GaussianBlur(img, (0, 0), 1.2), 0, 255).astype(np.uint8)


def _chart_png(path: Path) -> Path:
    """A matplotlib line chart saved as a PNG, as a user might upload one."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3), dpi=80)
    ax = fig.subplots()
    ax.plot(np.cumsum(np.random.default_rng(0).normal(size=60)))
    ax.set_title("validation loss")
    fig.savefig(path)
    return path


def _noise_png(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (224, 224), dtype=np.uint8)).save(path)
    return path


def test_colour_check_fires_on_colour_not_on_grey():
    gray = _scan_like()
    grey_rgb = np.repeat(gray[..., None], 3, axis=2)
    tinted = grey_rgb.astype(np.int16)
    tinted[..., 0] = np.clip(tinted[..., 0] + 60, 0, 255)      # a red cast over the whole image
    tinted[..., 2] = np.clip(tinted[..., 2] - 40, 0, 255)
    colour = "in colour"
    assert not any(colour in w for w in competence.scan_warnings(gray))
    assert not any(colour in w for w in competence.scan_warnings(gray, grey_rgb))
    assert any(colour in w for w in competence.scan_warnings(gray, tinted.astype(np.uint8)))
    stats = competence.image_statistics(gray, grey_rgb)
    assert set(stats) == set(competence.STAT_KEYS) and stats["colour_fraction"] == 0


def test_synthetic_scan_passes_and_edits_of_it_warn():
    gray = _scan_like()
    assert competence.scan_warnings(gray) == []
    assert any("bright" in w for w in competence.scan_warnings(255 - gray))             # inverted
    assert any("noise" in w for w in competence.scan_warnings(
        np.random.default_rng(2).integers(0, 256, gray.shape, dtype=np.uint8)))
    assert any("blank" in w for w in competence.scan_warnings(np.full(gray.shape, 100, np.uint8) + (gray > 250)))


def _fake_bundle(path: Path, record: dict | None) -> Bundle:
    """A bundle folder with a bundle.json only (no network): enough for the stored record's round trip."""
    config = {"format": "xai_bt-bundle", "format_version": 1, "kind": "single", "name": "fake",
              "class_names": ["a", "b"], "preprocessing": {"image_size": 64, "crop_to_head": True,
                                                            "denoise": None, "intensity": "none"},
              "last_conv_layer": "conv", "temperature": 1.0}
    if record is not None:
        config[competence.RECORD_KEY] = record
    path.mkdir(parents=True, exist_ok=True)
    write_config(path, config)
    return Bundle(path, read_config(path), {})


def test_fitted_reference_and_threshold_round_trip_through_bundle_json(tmp_path):
    rng = np.random.default_rng(0)
    feats = np.r_[rng.normal(0, 1, (200, 300)), rng.normal(0.5, 1, (200, 300))]
    labels = np.r_[np.zeros(200, int), np.ones(200, int)]
    spec = competence._projection_spec(300)
    proj = competence._projection(spec, 300)
    ref = competence.fit_reference(competence._project(feats, proj), labels)
    direct = competence._distances(competence._project(feats[:5], proj), ref["mean"], ref["whiten"], ref["centres"])
    threshold = competence.threshold_from(direct)
    dim = ref["whiten"].shape[0]
    record = {"feature_check": {
        "network": "model", "features": 300, "projection": spec, "threshold": threshold, "n_val": 5,
        "reference": {"dim": dim, "classes": ["a", "b"], "mean": competence._encode(ref["mean"]),
                      "class_centres": competence._encode(ref["centres"]),
                      "whitening_lower": competence._encode(ref["whiten"][np.tril_indices(dim)])}}}
    bundle = _fake_bundle(tmp_path / "b", record)
    assert bundle.config[competence.RECORD_KEY]["feature_check"]["threshold"] == threshold   # JSON keeps the float
    assert np.allclose(competence.feature_scores(bundle, feats[:5]), direct, rtol=1e-4)
    far = feats[:2] + 40.0
    assert competence.feature_warnings(bundle, far) == [[competence.PREFIX + competence._feature_message(bundle)]] * 2
    assert competence.feature_warnings(bundle, feats[:1]) == [[]]


def test_a_bundle_without_a_record_gets_image_checks_only(tmp_path):
    bundle = _fake_bundle(tmp_path / "plain", None)
    assert not competence.has_feature_check(bundle)
    assert competence.feature_warnings(bundle, np.zeros((3, 8))) == [[], [], []]


def test_shipped_default_records_its_fit():
    record = read_config(DEFAULT)[competence.RECORD_KEY]
    check, val = record["feature_check"], record["validation"]
    assert check["n_val"] == val["n"] and val["n"] > 100
    assert check["threshold"] > check["validation_distances"]["max"]
    assert val["false_alarm_rate"] <= 0.02
    assert [c["name"] for c in record["image_checks"]] == [c.name for c in competence.IMAGE_CHECKS]


@pytest.fixture(scope="module")
def default_bundle():
    from xai_bt.model.bundle import load_model

    return load_model(DEFAULT)


def test_chart_and_noise_warn_and_real_samples_do_not(default_bundle, tmp_path):
    chart, noise = _chart_png(tmp_path / "chart.png"), _noise_png(tmp_path / "noise.png")
    for path in (chart, noise):
        found = competence.warnings(default_bundle, path)
        assert found and all(w.startswith(competence.PREFIX) for w in found), path
    for sample in sorted(SAMPLES.glob("*.jpg")):
        assert competence.warnings(default_bundle, sample) == [], sample


def test_refitting_needs_overwrite(default_bundle):
    with pytest.raises(competence.CompetenceExists, match="overwrite"):
        competence.fit_competence(default_bundle, "/nonexistent")


def test_predict_json_rows_carry_warnings(tmp_path, capsys):
    from xai_bt.cli import main

    chart, sample = _chart_png(tmp_path / "chart.png"), SAMPLES / "glioma.jpg"
    out = tmp_path / "p.json"
    assert main(["predict", str(sample), str(chart), "--json", str(out)]) == 0
    rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())["results"]}
    assert rows["glioma.jpg"]["warnings"] == []
    assert rows["chart.png"]["warnings"]
    printed = capsys.readouterr().out
    assert "warning: unlike the training scans" in printed


def test_sidecar_and_title_carry_warnings(tmp_path):
    from xai_bt.attribution.result import Explanation
    from xai_bt.io.explanation_files import save_explanation
    from xai_bt.plots.explanation import _title

    expl = Explanation(image=np.zeros((32, 32), np.float32), maps={"gradcam": np.zeros((32, 32), np.float32)},
                       target=0, target_name="a", probabilities=np.array([0.9, 0.1]), class_names=("a", "b"),
                       model_name="m", path="x.png")
    assert "WARNING" not in _title(expl)
    save_explanation(expl, tmp_path, formats=())
    assert json.loads((tmp_path / "x.json").read_text())["warnings"] == []
    expl.warnings = [competence.PREFIX + "the image is in colour (a photo or a chart?)", competence.PREFIX + "x"]
    title = _title(expl)
    assert "WARNING: unlike the training scans" in title and "the image is in colour (+1 more)" in title
    save_explanation(expl, tmp_path, formats=(), overwrite=True)
    assert json.loads((tmp_path / "x.json").read_text())["warnings"] == expl.warnings


def test_review_page_shows_warnings_of_a_chart_and_none_for_a_scan(default_bundle, tmp_path):
    from xai_bt.review.case import review_scan
    from xai_bt.review.html import case_html

    chart = _chart_png(tmp_path / "chart.png")
    case = review_scan(default_bundle, chart.read_bytes(), name="chart.png", methods=["gradcam"])
    assert case["warnings"] and all(w.startswith(competence.PREFIX) for w in case["warnings"])
    page = case_html(case, 0)
    assert 'id="warnings-0"' in page and "unlike the scans the model was trained on" in page
    scan = review_scan(default_bundle, SAMPLES / "glioma.jpg", methods=["gradcam"])
    assert scan["warnings"] == [] and 'id="warnings-0"' not in case_html(scan, 0)


def test_explain_cli_prints_warnings_for_a_chart(tmp_path, capsys):
    from xai_bt.cli import main

    chart = _chart_png(tmp_path / "chart.png")
    assert main(["explain", str(chart), "--methods", "gradcam", "--out", str(tmp_path / "out")]) == 0
    assert "warning: unlike the training scans" in capsys.readouterr().out
    sidecars = list((tmp_path / "out").glob("chart*.json"))
    assert sidecars and json.loads(sidecars[0].read_text())["warnings"]
