"""The explanation figure and its sidecar: what is drawn, the numbers written, and never clobbering results."""
import json
import os

import matplotlib
import numpy as np
import pytest
from matplotlib.contour import ContourSet

from xai_bt.attribution.result import Explanation
from xai_bt.attribution.summary import peak, scan_geometry, to_original_fraction, top_region
from xai_bt.data.sample import CLASS_NAMES, PLANES
from xai_bt.io.explanation_files import output_paths, save_explanation
from xai_bt.model.preprocessing import Preprocessing
from xai_bt.plots.explanation import plot_explanation

matplotlib.use("Agg")
S = 64
PEAK = (17, 42)


def _ranked_map(seed: int = 0) -> np.ndarray:
    """Distinct values 1..S*S with the maximum placed at PEAK: the top-k area is exactly k pixels."""
    values = np.random.default_rng(seed).permutation(np.arange(1, S * S + 1)).astype(np.float32).reshape(S, S)
    here = np.unravel_index(np.argmax(values), values.shape)
    values[here], values[PEAK] = values[PEAK], values[here]
    return values


def _blob(row: int, col: int) -> np.ndarray:
    yy, xx = np.mgrid[:S, :S]
    return np.exp(-((yy - row) ** 2 + (xx - col) ** 2) / 50.0).astype(np.float32)


def _expl(target: int = 0, **kw) -> Explanation:
    base = dict(image=(np.random.default_rng(1).random((S, S)) * 255).astype(np.float32),
                maps={"gradcam": _blob(20, 40), "integrated_gradients": _blob(20, 40) - _blob(45, 15)},
                target=target, target_name=CLASS_NAMES[target],
                probabilities=np.array([0.70, 0.20, 0.06, 0.04]), class_names=CLASS_NAMES,
                model_name="tiny_test_model", path="/data/scans/case_007.jpg", layer="conv3")
    return Explanation(**{**base, **kw})


def _texts(fig) -> list[str]:
    """Every piece of text in the figure: titles, suptitle, annotations, tick labels, legend."""
    out = [t.get_text().replace("\n", " ") for t in fig.findobj(matplotlib.text.Text)]   # titles may wrap
    return [t for t in out if t]


def test_figure_panels_and_text():
    fig = plot_explanation(_expl(view_probabilities=np.array([0.1, 0.8, 0.1]), view_names=PLANES))
    texts = _texts(fig)
    for label in ("0.70", "0.20", "0.06", "0.04", "glioma", "meningioma", "no tumor", "pituitary",
                  "Grad-CAM", "Integrated Gradients", "Model input", "top 10% of map (positive values)"):
        assert any(label in t for t in texts), label
    title = fig._suptitle.get_text()
    assert "Predicted: glioma (confidence 0.70)" in title and "tiny_test_model" in title
    assert "view: coronal (0.80)" in title and "case_007.jpg" in title and "Maps explain" not in title
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 3                                   # scan + two overlays
    overlays = {ax.get_title().replace("\n", " "): ax for ax in images if len(ax.images) == 2}
    cams, ig = overlays["Grad-CAM"].images[1], overlays["Integrated Gradients"].images[1]
    assert cams.get_cmap().name == "magma" and cams.norm.vmin == 0
    assert ig.get_cmap().name == "RdBu_r" and np.isclose(ig.norm.vmin, -ig.norm.vmax)
    assert all(any(isinstance(c, ContourSet) for c in ax.collections) for ax in overlays.values())
    assert len(fig.axes) == 2 + 2                             # scan, bars, two overlays
    bars_beside = [ax.child_axes for ax in overlays.values()]    # each overlay's colour bar, beside its map
    assert all(len(c) == 1 and c[0].get_ylabel().startswith("attribution") for c in bars_beside)
    bars = next(ax for ax in fig.axes if ax.get_title() == "Class probability")
    bold = [t.get_text() for t in bars.texts if t.get_fontweight() == "bold"]
    assert bold == ["glioma  0.70"] and bars.get_xlim() == (0, 1)   # the prediction, on a 0-1 axis


def test_target_and_mask_are_shown():
    mask = np.zeros((S, S), bool)
    mask[10:25, 35:50] = True
    fig = plot_explanation(_expl(target=1), top_k=0.05, mask=mask)
    title = fig._suptitle.get_text()
    assert "Maps explain: meningioma (p = 0.20), not the predicted class" in title
    texts = _texts(fig)
    assert "tumor mask" in texts and "top 5% of map (positive values)" in texts
    scan = next(ax for ax in fig.axes if ax.get_title() == "Model input")
    assert any(isinstance(c, ContourSet) for c in scan.collections)
    assert len(title.splitlines()) == 3
    with pytest.raises(ValueError, match="prepare_mask"):
        plot_explanation(_expl(), mask=np.zeros((2 * S, 2 * S), bool))


def test_titles_do_not_overlap():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    expl = _expl(target=1, path="/a/very/long/folder/" + "x" * 120 + ".jpg",
                 view_probabilities=np.array([0.1, 0.8, 0.1]), view_names=PLANES)
    expl.maps.update({f"m{i}": expl.maps["gradcam"] for i in range(5)})
    fig = plot_explanation(expl)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    suptitle = fig._suptitle.get_window_extent(renderer)
    titles = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert len(titles) == 2 + 7
    assert 0 <= suptitle.x0 and suptitle.x1 <= fig.bbox.width     # the shortened file name fits
    assert not any(suptitle.overlaps(t) for t in titles)
    assert not any(a.overlaps(b) for i, a in enumerate(titles) for b in titles[i + 1:])


def test_peak_and_top_region_numbers():
    m = _ranked_map()
    assert peak(m) == PEAK
    assert top_region(m, 0.1).sum() == round(0.1 * S * S)
    relu = np.zeros((S, S), np.float32)
    relu[5:10, 5:15] = 1.0                                    # 50 positive pixels, rest zero
    assert top_region(relu, 0.1).sum() == 50                  # zeros never join the top region
    with pytest.raises(ValueError):
        top_region(m, 0)


def test_original_fraction_inverts_the_preprocessing():
    gray = np.full((120, 80), 40, np.uint8)
    gray[90, 20] = 255
    pre = Preprocessing(image_size=S, crop_to_head=False)
    x = pre.prepare(gray)
    row, col = np.unravel_index(np.argmax(x), x.shape)
    fy, fx = to_original_fraction(row, col, S, scan_geometry(gray.shape, pre.head_box(gray)))
    side_px = 120 / S                                         # one input pixel in original pixels
    assert abs(fy * 120 - 90.5) <= side_px and abs(fx * 80 - 20.5) <= side_px
    assert to_original_fraction(0, 0, S, scan_geometry((S, S), (0, S, 0, S))) == (0.5 / S, 0.5 / S)


def test_sidecar_and_maps(tmp_path):
    attribution = np.zeros(128)
    attribution[[3, 70, 99, 5, 120, 64]] = [0.5, -2.0, 1.0, 0.1, -0.7, 0.3]
    expl = _expl(view_probabilities=np.array([0.7, 0.2, 0.1]), view_names=PLANES,
                 maps={"gradcam": _ranked_map(), "integrated_gradients": _blob(20, 40) - _blob(45, 15)},
                 view_attribution={"gradcam": attribution},
                 extra={"geometry": scan_geometry((S, S), (0, S, 0, S))})
    written = save_explanation(expl, tmp_path, formats=("png",), save_maps=True)
    assert [p.name for p in written] == ["case_007.png", "case_007.json", "case_007_gradcam.npy",
                                         "case_007_integrated_gradients.npy"]
    side = json.loads((tmp_path / "case_007.json").read_text())
    assert side["prediction"] == "glioma" and side["confidence"] == pytest.approx(0.7)
    assert side["probabilities"]["pituitary"] == pytest.approx(0.04) and side["target"] == "glioma"
    assert side["view"] == "axial" and side["view_probabilities"]["coronal"] == pytest.approx(0.2)
    cam = side["methods"]["gradcam"]
    assert cam["peak"] == {"row": PEAK[0], "col": PEAK[1]}
    assert cam["peak_original_fraction"] == pytest.approx({"row": 17.5 / S, "col": 42.5 / S})
    assert cam["top_k_area_pixels"] == 410 and cam["top_k_area_fraction"] == pytest.approx(410 / S ** 2)
    assert cam["min"] == 1 and cam["max"] == S * S and not cam["signed"]
    assert [d["dim"] for d in cam["view_attribution_top5"]] == [70, 99, 120, 3, 64]
    ig = side["methods"]["integrated_gradients"]
    assert ig["signed"] and ig["min"] < 0 < ig["max"] and "view_attribution_top5" not in ig
    assert np.array_equal(np.load(tmp_path / "case_007_gradcam.npy"), expl.maps["gradcam"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]    # no temporary leftovers
    assert (tmp_path / "case_007.json").stat().st_mode & 0o044                # not private 0600


def test_refuses_to_overwrite_and_checks_all_targets_first(tmp_path):
    expl = _expl()
    (tmp_path / "case_007.json").write_text("earlier result")
    with pytest.raises(FileExistsError, match="case_007.json"):
        save_explanation(expl, tmp_path, formats=("png", "pdf"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_007.json"]   # nothing written
    paths = save_explanation(expl, tmp_path, formats=("png", "pdf"), overwrite=True)
    assert paths == output_paths("case_007", tmp_path, ("png", "pdf"))
    assert json.loads((tmp_path / "case_007.json").read_text())["model"] == "tiny_test_model"
    assert (tmp_path / "case_007.pdf").read_bytes()[:4] == b"%PDF"
    before = {p.name: os.stat(p).st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(FileExistsError, match="case_007.png"):
        save_explanation(expl, tmp_path, formats=("png", "pdf"))
    assert {p.name: os.stat(p).st_mtime_ns for p in tmp_path.iterdir()} == before


@pytest.mark.slow
def test_a_figure_of_every_method_keeps_all_text_inside():
    """Every registered method on one figure (four panels a row, a labelled colour bar each): no title, label
    or legend may stick out of the two-column width, or the saved file cuts it off."""
    from xai_bt.attribution.registry import METHODS
    from xai_bt.plots.style import clipped_texts

    names = [*METHODS, "layercam@block4a_expand_activation", "hirescam@block6a_expand_activation"]
    maps = {m: (_blob(20, 40) - (_blob(45, 15) if i % 2 else 0)) for i, m in enumerate(names)}
    score = "audit: peak inside the tumor on 66% of 281 unseen scans (95% CI 60%-72%); fails the randomisation check"

    def figure(chosen):
        expl = _expl(maps=chosen)
        expl.audit = {m: score for m in chosen}     # the longest caption under every panel
        return plot_explanation(expl)

    assert clipped_texts(figure(maps)) == []
    for first in names:                    # whichever method lands in the first column, at the left edge
        rest = [m for m in names if m != first]
        order = rest[:2] + [first] + rest[2:]   # panels 0-1 are the scan and probabilities: cell 4 is column 0
        assert clipped_texts(figure({m: maps[m] for m in order})) == [], first


@pytest.mark.parametrize("n", [1, 4])
def test_audit_gallery_uses_the_shared_overlay_and_keeps_its_text_inside(n):
    """The audit gallery draws every map with plots.heatmap.draw_heatmap (mask dashed, peak marked) and its
    title fits however few scans it shows."""
    from xai_bt.plots.audit import gallery_figure
    from xai_bt.plots.style import clipped_texts

    image = (np.random.default_rng(2).random((S, S)) * 255).astype(np.float32)
    items = [dict(kind=kind, image=image, map=_blob(20, 40), mask=_blob(20, 40) > 0.5, label="glioma",
                  plane="axial", energy_pointing_game=0.4, pointing_game=1.0, prediction="glioma", confidence=0.9)
             for kind in ("best", "worst") for _ in range(n)]
    fig = gallery_figure("integrated_gradients", items)
    assert clipped_texts(fig) == []
    assert "Integrated Gradients" in fig._suptitle.get_text()
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 2 * n and all(len(ax.images) == 2 for ax in drawn)   # scan + map, as in the figure


def test_overlays_are_transparent_where_the_map_is_zero():
    """A weak map must not dim the scan: opacity is 0 where the map is 0 and grows with |value|."""
    heat = np.zeros((S, S), np.float32)
    heat[20:30, 20:30] = 1.0
    fig = plot_explanation(_expl(maps={"gradcam": heat}))
    overlay = next(ax for ax in fig.axes if ax.get_title() == "Grad-CAM").images[1]
    alpha = np.asarray(overlay.get_alpha())
    assert alpha[heat == 0].max() == 0 and alpha[heat == 1].min() > 0.5
    texts = _texts(fig)
    assert "peak" in texts                                   # the legend names the peak marker
