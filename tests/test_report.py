"""`python -m xai_bt report`: one self-contained HTML review page, with the shipped default model."""
import base64
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES

from xai_bt import cli
from xai_bt.review.case import HEATMAP_NOTES
from xai_bt.review.html import render_report

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "models" / "default"
VIEW = REPO / "models" / "view"


@pytest.fixture(scope="module")
def bundle():
    from xai_bt.model.bundle import load_model

    return load_model(DEFAULT)


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory):
    """The report of the shipped meningioma sample (Grad-CAM and SmoothGrad) and the command's exit code."""
    out = tmp_path_factory.mktemp("report") / "meningioma.html"
    code = cli.main(["report", str(SAMPLES / "meningioma.jpg"), "--methods", "gradcam,smoothgrad",
                     "--out", str(out)])
    return code, out.read_text(encoding="utf-8")


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def _text(page: str) -> str:
    """The page's visible text, roughly: tags dropped, entities for quotes restored."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)).replace("&#x27;", "'").replace("&quot;", '"')


def test_report_on_a_shipped_sample(sample_report, bundle):
    code, page = sample_report
    assert code == 0
    pred = bundle.predict(str(SAMPLES / "meningioma.jpg"))          # calibrated, like the report
    predicted = pred.labels[0]
    shown = re.search(r'id="prediction-0"[^>]*>([^<]+)<', page).group(1)
    assert shown == predicted.replace("_", " ")    # what the model says (for this unseen scan: pituitary)
    text = _text(page)
    for name, p in zip(pred.class_names, pred.probabilities[0]):
        assert f"{name.replace('_', ' ')} {p:.1%}" in text            # every calibrated probability
    assert f"T = {bundle.temperature:.4g}" in text
    # the scan and the heatmap figure, embedded as real PNGs; Grad-CAM and SmoothGrad in the map table
    images = _images(page)
    assert len(images) >= 2 and all(im.startswith(b"\x89PNG\r\n\x1a\n") for im in images)
    assert max(len(im) for im in images) > 30_000
    assert "Grad-CAM" in text and "SmoothGrad" in text
    # self-contained: no script, no stylesheet or image fetched from anywhere
    assert "<script" not in page.lower()
    assert re.findall(r'(?:src|href)="(?!data:)', page) == []
    # the plain-language note and the model card summary
    assert "does not show where the tumor is" in text and "not a diagnosis" in text
    assert all(note in text for note in HEATMAP_NOTES)
    metrics = bundle.config["metrics"]["brain-tumor-mri"]
    assert f"{metrics['official']['accuracy']:.2%}" in text and f"{metrics['leakage_free']['accuracy']:.2%}" in text
    assert "efficientnet_lite0" in text and "brain-tumor-mri" in text


def test_folder_with_a_corrupt_file(tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(SAMPLES / "pituitary.jpg", folder)
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 4)
    (folder / "blank.png").write_bytes(b"")
    out = tmp_path / "r" / "report.html"
    assert cli.main(["report", str(folder), "--methods", "gradcam", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "1 reviewed, 2 failed" in err and "bad.jpg" in err and "blank.png" in err
    page = out.read_text(encoding="utf-8")
    failures = re.search(r'<section class="box" id="failures">(.*?)</section>', page, re.S).group(1)
    assert "bad.jpg" in failures and "blank.png" in failures
    assert "empty file (0 bytes)" in failures and ("corrupt" in failures or "not an image" in failures)
    assert "pituitary.jpg</h2>" in page and 'id="prediction-0"' in page    # the good scan is still there
    assert "pituitary.jpg" not in failures
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]       # no temporary file left behind


def test_never_overwrites_without_overwrite(tmp_path, capsys):
    out = tmp_path / "report.html"
    out.write_text("earlier report")
    argv = ["report", str(SAMPLES / "glioma.jpg"), "--methods", "gradcam", "--out", str(out)]
    assert cli.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "earlier report"
    # --overwrite replaces it; a view model adds the MRI view to a single-stage model's review
    assert cli.main(argv + ["--overwrite", "--view-model", str(VIEW)]) == 0
    page = out.read_text(encoding="utf-8")
    assert 'id="prediction-0"' in page and "MRI view:" in page and "view model view" in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_usage_errors(tmp_path, capsys):
    out = tmp_path / "report.html"
    assert cli.main(["report", str(tmp_path / "missing.jpg"), "--out", str(out)]) == 2   # nothing to review
    assert "missing.jpg: no such file or folder" in capsys.readouterr().err
    assert cli.main(["report", str(SAMPLES / "glioma.jpg"), "--methods", "magic", "--out", str(out)]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
    assert cli.main(["report", str(SAMPLES / "glioma.jpg"), "--view-model", str(DEFAULT), "--out", str(out)]) == 2
    assert "not a view classifier" in capsys.readouterr().err
    assert not out.exists()


def test_names_from_outside_are_escaped():
    summary = {"name": "m<b>", "kind": "single", "task": "tumor", "arch": None, "classes": ["a"], "views": [],
               "input_size": 32, "temperature": 1.0, "training_data": None, "metrics": []}
    page = render_report([{"name": "<script>alert(1)</script>.jpg", "status": "error",
                           "error": "not an image <img src=x>"}], summary)
    assert "<script>alert" not in page and "<img src=x>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.jpg" in page
    assert "No test metrics recorded" in page and "not recorded in the bundle" in page


def test_review_scan_from_bytes(bundle):
    """The builder `serve` uses: bytes in, the same prediction as from the path."""
    from xai_bt.review.case import review_scan

    data = (SAMPLES / "no_tumor.jpg").read_bytes()
    case = review_scan(bundle, data, name="upload.jpg", methods=["gradcam"])
    pred = bundle.predict(str(SAMPLES / "no_tumor.jpg"))
    assert case["prediction"] == pred.labels[0] and case["name"] == "upload.jpg"
    assert np.isclose(case["confidence"], pred.confidence[0])
    assert case["scan_png"].startswith(b"\x89PNG") and [t["method"] for t in case["tiles"]] == ["gradcam"]
    assert all(t["png"].startswith(b"\x89PNG") for t in case["tiles"])
    assert case["maps"]["gradcam"]["peak_original_fraction"] is not None and case["notes"]


def test_a_missing_path_is_listed_and_the_rest_reviewed(tmp_path, capsys):
    out = tmp_path / "report.html"
    code = cli.main(["report", str(SAMPLES / "glioma.jpg"), str(tmp_path / "missing.jpg"), "--methods", "gradcam",
                     "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "missing.jpg: no such file or folder" in err and "1 reviewed, 1 failed" in err
    assert out.is_file() and "missing.jpg" in out.read_text(encoding="utf-8")


def test_each_heatmap_is_its_own_tile_at_least_320_px(bundle):
    """On the review page every map is a figure of its own, its map drawn at least 320 px wide, with the
    class it explains; nothing else (probabilities, the scan) is repeated inside the tiles."""
    import io

    from PIL import Image

    from xai_bt.attribution.explain import explain
    from xai_bt.plots.explanation import plot_map_tile
    from xai_bt.review.case import TILE_DPI, review_scan
    from xai_bt.review.html import render_report

    expl = explain(bundle, str(SAMPLES / "glioma.jpg"), methods=("gradcam", "smoothgrad"))[0]
    for method in expl.maps:
        fig = plot_map_tile(expl, method)
        fig.set_dpi(TILE_DPI)
        fig.canvas.draw()
        heat = fig.axes[0].get_window_extent()
        assert heat.width >= 320 and heat.height >= 320, (method, heat)
        assert "explains" in fig.axes[0].get_title() and len(fig.axes[0].child_axes) == 1   # its colour bar
    case = review_scan(bundle, str(SAMPLES / "glioma.jpg"), methods=["gradcam", "layercam"])
    widths = [Image.open(io.BytesIO(t["png"])).size[0] for t in case["tiles"]]
    assert len(widths) == 2 and min(widths) >= 480
    page = render_report([case], {"name": "m", "kind": "single", "task": "tumor", "arch": None, "classes": [],
                                  "input_size": 160, "temperature": 1.0, "metrics": []})
    assert page.count('class="tile"') == 2
