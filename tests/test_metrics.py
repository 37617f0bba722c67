"""Metrics agree with scikit-learn and with hand computation; tables, figure style and plots behave; plots
draw exactly the numbers they are given."""
from __future__ import annotations

import ast
import csv
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy.special import softmax
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from xai_bt.evaluation import metrics, tables
from xai_bt.evaluation.calibration import reliability_bins
from xai_bt.plots import evaluation as eval_plots
from xai_bt.plots import style

NAMES = ["glioma", "meningioma", "no_tumor", "pituitary"]
REPO = Path(__file__).resolve().parents[1]


def make_predictions(n: int, k: int = 4, seed: int = 0, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Labels and informative (but imperfect) probabilities."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += signal
    return y, softmax(z, axis=1)


def from_confusion(cm: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and one-hot 'probabilities' whose argmax reproduces a given confusion matrix."""
    k = len(cm)
    pairs = [(t, pr) for t in range(k) for pr in range(k) for _ in range(cm[t][pr])]
    y = np.array([t for t, _ in pairs])
    return y, np.eye(k)[[pr for _, pr in pairs]]


# --------------------------------------------------------------------------------------------- report
def test_report_agrees_with_sklearn():
    y, p = make_predictions(400)
    pred = p.argmax(1)
    r = metrics.classification_report_dict(y, p, NAMES)
    assert r["accuracy"] == pytest.approx(np.mean(pred == y))
    assert r["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert r["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert r["macro_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert r["micro_auc"] == pytest.approx(roc_auc_score(np.eye(4)[y], p, average="micro"))
    assert r["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    assert np.allclose(np.sum(r["confusion_matrix_normalised"], axis=1), 1)
    for c, name in enumerate(NAMES):
        row = r["per_class"][name]
        assert row["auc"] == pytest.approx(roc_auc_score(y == c, p[:, c]))
        assert row["average_precision"] == pytest.approx(average_precision_score(y == c, p[:, c]))
        assert row["precision"] == pytest.approx(precision_score(y == c, pred == c))
        assert row["recall"] == pytest.approx(recall_score(y == c, pred == c))
        assert row["support"] == int(np.sum(y == c))
    json.dumps(r, allow_nan=False)


def test_specificity_hand_computed_3x3():
    # rows = true class. Class 0: TN = 16 - 5 - 1 - 2 = 8, FP = 2 -> 0.8;
    # class 1: TN = 16 - 3 - 3 - 1 = 9, FP = 1 -> 0.9; class 2: TN = 11, FP = 1 -> 11/12.
    y, p = from_confusion([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
    r = metrics.classification_report_dict(y, p)
    assert [r["per_class"][c]["specificity"] for c in "012"] == pytest.approx([0.8, 0.9, 11 / 12])
    assert r["per_class"]["1"]["recall"] == pytest.approx(0.5)
    assert r["averages"]["micro"]["specificity"] == pytest.approx(28 / 32)


def test_absent_class_gives_none_not_nan():
    y, p = make_predictions(100, k=3)
    y[y == 2] = 0
    r = metrics.classification_report_dict(y, p)
    assert r["per_class"]["2"]["auc"] is None and r["macro_auc"] is None
    json.dumps(r, allow_nan=False)


@pytest.mark.parametrize("bad", [np.ones((5, 3)), np.full((5, 3), 1 / 3)[:, :2]])
def test_rejects_logits_and_wrong_shapes(bad):
    with pytest.raises(ValueError):
        metrics.classification_report_dict(np.zeros(5, int), bad)


# --------------------------------------------------------------------------------------------- curves
def test_curves_match_report():
    y, p = make_predictions(300)
    r = metrics.classification_report_dict(y, p, NAMES)
    roc = metrics.roc_curves(y, p, NAMES)
    pr = metrics.pr_curves(y, p, NAMES)
    for name in NAMES:
        assert roc["per_class"][name]["auc"] == pytest.approx(r["per_class"][name]["auc"])
        assert pr["per_class"][name]["average_precision"] == pytest.approx(r["per_class"][name]["average_precision"])
    assert roc["micro"]["auc"] == pytest.approx(r["micro_auc"])
    assert roc["macro"]["auc"] == pytest.approx(r["macro_auc"], abs=0.01)
    json.dumps(roc, allow_nan=False)
    json.dumps(pr, allow_nan=False)


# --------------------------------------------------------------------------------------------- intervals
def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    def f1_macro(yt: np.ndarray, pp: np.ndarray) -> float:
        return f1_score(yt, pp.argmax(1), average="macro")

    widths = []
    for n in (200, 2000):
        y, p = make_predictions(n, seed=n)
        ci = metrics.bootstrap_ci(f1_macro, y, p, n_boot=100, seed=1)
        assert ci["low"] <= ci["estimate"] <= ci["high"]
        assert ci["n_valid"] == 100
        widths.append(ci["high"] - ci["low"])
    assert widths[1] < 0.6 * widths[0]  # ~1/sqrt(10) in theory


def test_vectorised_auc_ci_equals_generic_bootstrap():
    """auc_with_ci draws the same resamples as bootstrap_ci, so its intervals must match exactly
    (coarse logits make many tied scores, which AUC counts as one half)."""
    y, p = make_predictions(300, signal=1.0)
    p = softmax(np.round(np.log(p)), axis=1)
    fast = metrics.auc_with_ci(y, p, n_boot=40, seed=3)
    for c in (0, 3):
        slow = metrics.bootstrap_ci(lambda yt, pp: roc_auc_score(yt == c, pp[:, c]), y, p, n_boot=40, seed=3)
        for key in ("estimate", "low", "high"):
            assert fast["per_class"][str(c)][key] == pytest.approx(slow[key], abs=1e-12)
    slow = metrics.bootstrap_ci(lambda yt, pp: roc_auc_score(yt, pp, multi_class="ovr"), y, p, n_boot=40, seed=3)
    assert [fast["macro"][k] for k in ("estimate", "low", "high")] == pytest.approx(
        [slow[k] for k in ("estimate", "low", "high")], abs=1e-12)
    slow = metrics.bootstrap_ci(lambda yt, pp: roc_auc_score(np.eye(4)[yt].ravel(), pp.ravel()), y, p,
                                n_boot=40, seed=3, stratified=False)
    fast = metrics.auc_with_ci(y, p, n_boot=40, seed=3, stratified=False)
    assert [fast["micro"][k] for k in ("low", "high")] == pytest.approx([slow[k] for k in ("low", "high")], abs=1e-12)


def test_average_precision_ci_is_the_bootstrap_of_sklearns_ap():
    """average_precision_with_ci draws the resamples auc_with_ci draws: its estimates are scikit-learn's
    average_precision_score and its intervals those of the generic bootstrap of it (ties included)."""
    y, p = make_predictions(300, signal=1.0)
    p = softmax(np.round(np.log(p)), axis=1)  # coarse: many tied scores
    fast = metrics.average_precision_with_ci(y, p, NAMES, n_boot=40, seed=3)
    for c in (0, 2):
        assert fast["per_class"][NAMES[c]]["estimate"] == pytest.approx(average_precision_score(y == c, p[:, c]))
        slow = metrics.bootstrap_ci(lambda yt, pp: average_precision_score(yt == c, pp[:, c]), y, p, n_boot=40,
                                    seed=3)
        assert [fast["per_class"][NAMES[c]][k] for k in ("low", "high")] == pytest.approx(
            [slow[k] for k in ("low", "high")], rel=1e-9)
    slow = metrics.bootstrap_ci(lambda yt, pp: average_precision_score(np.eye(4)[yt], pp, average="macro"), y, p,
                                n_boot=40, seed=3)
    assert [fast["macro"][k] for k in ("estimate", "low", "high")] == pytest.approx(
        [slow[k] for k in ("estimate", "low", "high")], rel=1e-9)
    for ci in [*fast["per_class"].values(), fast["macro"]]:
        assert ci["low"] <= ci["estimate"] <= ci["high"] and ci["n_valid"] == 40
    json.dumps(fast, allow_nan=False)


def test_average_precision_ci_narrows_with_n_and_is_fast():
    widths = []
    for n in (200, 1311):
        y, p = make_predictions(n, seed=n)
        start = time.perf_counter()
        ci = metrics.average_precision_with_ci(y, p, NAMES, n_boot=1000)["macro"]
        widths.append(ci["high"] - ci["low"])
    assert time.perf_counter() - start < 10
    assert widths[1] < 0.7 * widths[0]


def test_macro_pr_curve_is_what_macro_ap_summarises():
    """The macro PR curve is the mean of the per-class step curves: its area is the mean of the per-class
    APs (as the macro AP is), and at every recall it lies between the classes' precisions."""
    y, p = make_predictions(400, signal=1.2)
    pr = metrics.pr_curves(y, p, NAMES)
    macro = pr["macro"]
    assert macro["average_precision"] == pytest.approx(np.mean([c["average_precision"] for c in pr["per_class"].values()]))
    assert metrics.step_area(macro["recall"], macro["precision"]) == pytest.approx(macro["average_precision"])
    for c in pr["per_class"].values():
        assert metrics.step_area(c["recall"], c["precision"]) == pytest.approx(c["average_precision"])
    assert macro["recall"][0] == 1.0 and macro["recall"][-1] == 0.0 and np.all(np.diff(macro["recall"]) < 0)
    grid, mean = metrics.macro_pr_curve([(c["recall"], c["precision"]) for c in pr["per_class"].values()])
    assert list(grid) == macro["recall"]
    # two hand-made steps: precision 1 up to recall 0.5 then 0.5; precision 0.8 everywhere
    grid, mean = metrics.macro_pr_curve([([1.0, 0.5, 0.0], [0.5, 1.0, 1.0]), ([1.0, 0.0], [0.8, 1.0])])
    assert list(grid) == [1.0, 0.5, 0.0] and list(mean) == pytest.approx([0.65, 0.9, 1.0])
    assert metrics.step_area(grid, mean) == pytest.approx((0.75 + 0.8) / 2)
    with pytest.raises(ValueError):
        metrics.macro_pr_curve([])


def test_auc_with_ci_is_fast_on_benchmark_size():
    y, p = make_predictions(1311)
    start = time.perf_counter()
    result = metrics.auc_with_ci(y, p, NAMES, n_boot=1000)
    assert time.perf_counter() - start < 10  # ~1 s on two shared cores
    assert result["macro"]["low"] < result["macro"]["estimate"] < result["macro"]["high"]
    json.dumps(result, allow_nan=False)


def test_paired_bootstrap_difference():
    y, p = make_predictions(300)
    sharper = softmax(3 * np.log(p), axis=1)
    brier = lambda yt, pp: float(np.mean(np.sum((pp - np.eye(4)[yt]) ** 2, axis=1)))  # noqa: E731
    same = metrics.bootstrap_difference(brier, y, p, p, n_boot=50)
    assert same["estimate"] == same["low"] == same["high"] == 0.0
    diff = metrics.bootstrap_difference(brier, y, p, sharper, n_boot=200, seed=2)
    a, b = (metrics.bootstrap_ci(brier, y, q, n_boot=200, seed=2) for q in (p, sharper))
    assert diff["estimate"] == pytest.approx(b["estimate"] - a["estimate"])
    assert diff["low"] <= diff["estimate"] <= diff["high"]
    assert diff["high"] - diff["low"] < (a["high"] - a["low"]) + (b["high"] - b["low"])  # pairing narrows it


def test_roc_bands_cover_the_curve_and_match_sklearn():
    from sklearn.metrics import roc_curve

    y, p = make_predictions(300, signal=1.0)
    bands = metrics.roc_bands(y, p, NAMES, n_boot=200, seed=1)
    grid = np.asarray(bands["fpr"])
    assert grid[0] == 0 and grid[-1] == 1 and set(bands["per_class"]) == set(NAMES)
    for c, name in enumerate(NAMES):
        b = {k: np.asarray(v, dtype=float) for k, v in bands["per_class"][name].items()}
        fpr, tpr, _ = roc_curve(y == c, p[:, c])
        # the step curve on the grid: best TPR with FPR <= grid value
        expected = [tpr[fpr <= g + 1e-12].max() for g in grid]
        np.testing.assert_allclose(b["tpr"], expected)
        assert np.all(b["low"] <= b["high"]) and b["high"][-1] == 1.0
        inside = (b["low"] - 1e-12 <= b["tpr"]) & (b["tpr"] <= b["high"] + 1e-12)
        assert inside.mean() > 0.9
    json.dumps(bands, allow_nan=False)


def test_paired_bootstrap_equals_the_three_separate_calls():
    """bootstrap_paired shares one metric evaluation per resample between the two CIs and the change; the
    numbers must be those of bootstrap_ci (each set) and bootstrap_difference, exactly."""
    y, p = make_predictions(300)
    sharper = softmax(3 * np.log(p), axis=1)
    for fn in (lambda yt, pp: float(np.mean(pp.argmax(1) == yt)),
               lambda yt, pp: float(np.mean(np.sum((pp - np.eye(4)[yt]) ** 2, axis=1)))):
        for stratified in (True, False):
            kw = {"n_boot": 60, "seed": 4, "stratified": stratified}
            both = metrics.bootstrap_paired(fn, y, p, sharper, **kw)
            assert both["a"] == metrics.bootstrap_ci(fn, y, p, **kw)
            assert both["b"] == metrics.bootstrap_ci(fn, y, sharper, **kw)
            assert both["change"] == metrics.bootstrap_difference(fn, y, p, sharper, **kw)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.bootstrap_paired(fn, y, p, np.hstack([p, np.zeros((len(p), 1))]))


def test_roc_bands_fast_on_benchmark_size():
    y, p = make_predictions(1311)
    start = time.perf_counter()
    metrics.roc_bands(y, p, NAMES, n_boot=1000)
    assert time.perf_counter() - start < 15


def test_roc_zoom_panel_only_for_near_perfect_models():
    """The magnified corner is a panel of its own beside the full view (an inset would hide curves), and
    the legend sits below the panels, clear of the curves and the chance diagonal."""
    y, p = make_predictions(400, signal=6.0)
    data = metrics.roc_plot_data(y, p, NAMES, n_boot=50)
    fig = eval_plots.plot_roc(**data)
    full, zoom = fig.axes
    assert not full.child_axes and not full.get_legend() and len(fig.legends) == 1
    assert zoom.get_xlim()[1] <= 0.25 and zoom.get_ylim()[0] >= 0.75
    assert zoom.get_ylim()[1] > 1.0 and zoom.get_xlim()[0] < 0.0  # curves at TPR 1 / FPR 0 clear of the frame
    assert len(eval_plots.plot_roc(**data, zoom=None).axes) == 1
    assert eval_plots.plot_roc(**data, zoom=(0.05, 0.2)).axes[1].get_xlim()[1] == pytest.approx(0.05)
    y, p = make_predictions(400, signal=0.5)
    assert len(eval_plots.plot_roc(**metrics.roc_plot_data(y, p, NAMES, ci=False)).axes) == 1


def test_legend_and_title_boxes_cover_no_axes():
    """The figure legends and titles of the own-figure plots lie outside every axes (no data under them)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for name, fig in _figures().items():
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        boxes = [ax.get_window_extent(renderer) for ax in fig.axes if ax.get_label() != "<colorbar>"]
        for legend in fig.legends:
            box = legend.get_window_extent(renderer)
            assert not any(box.overlaps(b) for b in boxes), name


def test_every_text_is_in_the_project_style():
    """Titles 9 pt, labels 8 pt, ticks, legends and printed numbers 7 pt: nothing outside the style's sizes,
    whoever sets the title (paper.part_figures passes it in, so it is drawn in the style)."""
    y, p = make_predictions(200, signal=4.0)
    figs = {**_figures(), "roc_titled": eval_plots.plot_roc(**metrics.roc_plot_data(y, p, NAMES, n_boot=50),
                                                            title="Official test split (n = 200)")}
    figs["grid_titled"] = eval_plots.plot_reliability_grid(metrics.reliability_panels(y, p), NAMES, title="T")
    for name, fig in figs.items():
        sizes = {round(t.get_fontsize(), 1) for t in fig.findobj(matplotlib.text.Text) if t.get_text()}
        assert sizes <= {7.0, 8.0, 9.0}, (name, sizes)
    assert figs["roc_titled"]._suptitle.get_fontsize() == 9.0


def test_training_curves_from_merged_log_with_phases(tmp_path):
    log = tmp_path / "history.csv"
    log.write_text("epoch,accuracy,loss,val_accuracy,val_loss,phase\n0,0.5,1.0,0.4,1.1,frozen\n"
                   "1,0.6,0.9,0.5,1.0,frozen\n2,0.8,0.5,0.7,0.8,fine_tune\n")
    fig = eval_plots.plot_training_curves(log)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert any(line.get_linestyle() == "--" and list(line.get_xdata()) == [2.5, 2.5] for line in ax.lines)
        assert any("fine tune" in t.get_text() for t in ax.texts)


def test_accuracy_wilson_interval_textbook_value():
    y, p = from_confusion([[8, 2], [0, 0]])  # 8 of 10 correct
    ci = metrics.accuracy_ci(y, p)
    assert ci["method"] == "wilson"
    assert (ci["low"], ci["high"]) == pytest.approx((0.4902, 0.9433), abs=1e-4)



def test_group_bootstrap_counts_each_twin_group_once():
    y, p = from_confusion([[16, 4], [0, 0]])  # 16 of 20 scans correct
    singles = metrics.grouped_accuracy_ci(y, p, np.arange(20))
    assert singles["n_groups"] == 20 and singles["group_weighted_accuracy"] == pytest.approx(0.8)
    assert singles["low"] < 0.8 < singles["high"]
    # the same 20 scans, each present three times as twins: 60 scans, still 20 independent groups
    y3, p3, g3 = np.repeat(y, 3), np.repeat(p, 3, axis=0), np.repeat(np.arange(20), 3)
    tripled = metrics.grouped_accuracy_ci(y3, p3, g3)
    wilson = metrics.accuracy_ci(y3, p3)
    assert tripled["n"] == 60 and tripled["n_groups"] == 20 and tripled["estimate"] == pytest.approx(0.8)
    assert tripled["high"] - tripled["low"] > 1.2 * (wilson["high"] - wilson["low"])  # Wilson takes 60 as independent
    # one wrong scan copied into a group of 4 weighs 4 scans but one group
    y4, p4 = from_confusion([[9, 4], [0, 0]])
    weighted = metrics.grouped_accuracy_ci(y4, p4, np.r_[np.arange(9), [9, 9, 9, 9]])
    assert weighted["estimate"] == pytest.approx(9 / 13) and weighted["group_weighted_accuracy"] == pytest.approx(0.9)
    perfect = metrics.grouped_accuracy_ci(*from_confusion([[5, 0], [0, 5]]), np.arange(10))
    assert perfect["low"] == perfect["high"] == 1.0
    with pytest.raises(ValueError, match="group ids"):
        metrics.grouped_accuracy_ci(y, p, np.arange(3))

# --------------------------------------------------------------------------------------------- tables
def test_tables_written_escaped_and_not_overwritten(tmp_path):
    y, p = make_predictions(200)
    rows = tables.to_rows(metrics.classification_report_dict(y, p, NAMES))
    assert [r["class"] for r in rows] == NAMES + ["macro avg", "weighted avg", "micro avg"]
    paths = tables.write_tables(rows, tmp_path / "sub" / "report")
    assert [x.suffix for x in paths] == [".csv", ".md", ".tex"]
    with paths[0].open() as fh:
        back = list(csv.DictReader(fh))
    assert float(back[0]["auc"]) == pytest.approx(rows[0]["auc"])
    md = paths[1].read_text().splitlines()
    assert md[0].startswith("| class | precision") and len(md) == len(rows) + 2
    tex = paths[2].read_text()
    assert r"average\_precision" in tex and r"\toprule" in tex and "no_tumor" not in tex
    assert "| no tumor |" in paths[1].read_text() and "\nno tumor &" in tex  # class names as people read them
    assert back[2]["class"] == "no_tumor"  # the CSV keeps code names for programs
    with pytest.raises(FileExistsError, match="report.md"):
        paths[0].unlink()
        tables.write_tables(rows, tmp_path / "sub" / "report")
    assert not paths[0].exists()  # nothing written when any target exists
    assert tables.markdown_table([{"a": None, "b": 0.5}], digits=2).splitlines()[2] == "| – | 0.50 |"


# --------------------------------------------------------------------------------------------- style & plots
def test_save_figure_refuses_to_overwrite(tmp_path):
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    written = style.save_figure(fig, tmp_path / "fig", formats=("png", "svg"))
    assert all(x.exists() for x in written)
    with pytest.raises(FileExistsError, match="fig.png"):
        style.save_figure(fig, tmp_path / "fig", formats=("png",))
    assert style.save_figure(fig, tmp_path / "fig", formats=("png",), overwrite=True) == [tmp_path / "fig.png"]


def test_style_constants():
    assert style.ONE_COLUMN[0] == 3.5 and style.TWO_COLUMN[0] == 7.2
    assert set(style.CLASS_COLORS) == set(NAMES) and len(set(style.CLASS_COLORS.values())) == 4
    assert "jet" not in {style.HEATMAP_CMAP, style.MATRIX_CMAP, style.DIVERGING_CMAP}
    with style.style_context():
        assert matplotlib.rcParams["pdf.fonttype"] == 42 and matplotlib.rcParams["svg.fonttype"] == "none"


def _figures() -> dict[str, Figure]:
    y, p = make_predictions(200)
    cm = metrics.classification_report_dict(y, p, NAMES)["confusion_matrix"]
    sharper = softmax(2 * np.log(p), 1)
    history = {"loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.8, 0.9], "accuracy": [0.5, 0.7, 0.8],
               "val_accuracy": [0.4, 0.6, 0.7], "learning_rate": [1e-3, 5e-4, 1e-4]}
    rows = [{"name": "cnn", "accuracy": 0.87, "ci_low": 0.85, "ci_high": 0.89, "leakage_free_accuracy": 0.8,
             "leakage_free_ci_low": 0.77, "leakage_free_ci_high": 0.83},
            {"name": "efficientnet_lite0_two_stage", "accuracy": 0.93, "ci_low": 0.92, "ci_high": 0.94}]
    return {
        "roc": eval_plots.plot_roc(**metrics.roc_plot_data(y, p, NAMES, n_boot=100)),
        "pr": eval_plots.plot_pr(metrics.pr_curves(y, p, NAMES)),
        "confusion": eval_plots.plot_confusion(cm, NAMES),
        "confusion_counts": eval_plots.plot_confusion(cm, NAMES, normalise=False),
        "reliability": eval_plots.plot_reliability(reliability_bins(y, p, class_index=2), class_names=NAMES),
        "reliability_grid": eval_plots.plot_reliability_grid(metrics.reliability_panels(y, p), NAMES),
        "reliability_pair": eval_plots.plot_reliability_comparison(
            {"raw": reliability_bins(y, p), "sharper": reliability_bins(y, sharper)}),
        "training": eval_plots.plot_training_curves(history),
        "comparison": eval_plots.plot_architecture_comparison(rows),
    }


def test_plots_fit_their_column_width():
    for name, fig in _figures().items():
        assert style.clipped_texts(fig) == [], name
    fig = eval_plots.plot_roc(**metrics.roc_plot_data(*make_predictions(100), NAMES, ci=False))
    fig.axes[0].set_title("a title far too long for a single journal column, which save_figure would cut")
    assert style.clipped_texts(fig) and "far too long" in style.clipped_texts(fig)[0]


def test_plots_render_headless_with_embedded_truetype(tmp_path):
    with matplotlib.rc_context({"pdf.fonttype": 3}):  # save_figure must override a Type 3 default
        for name, fig in _figures().items():
            assert isinstance(fig, Figure), name
            (pdf,) = style.save_figure(fig, tmp_path / name, formats=("pdf",))
            data = pdf.read_bytes()
            assert b"/FontFile2" in data and b"/Type3" not in data, name


def test_plots_draw_on_given_axes_and_read_csv_history(tmp_path):
    fig = Figure(figsize=style.TWO_COLUMN)
    left, right = fig.subplots(1, 2)
    y, p = make_predictions(100)
    assert eval_plots.plot_roc(**metrics.roc_plot_data(y, p, NAMES, ci=False), ax=left) is fig
    assert eval_plots.plot_reliability(reliability_bins(y, p), ax=right) is fig
    assert "ECE" in right.get_title()
    log = tmp_path / "log.csv"
    log.write_text("epoch,loss,val_loss\n0,1.0,1.2\n1,0.5,0.9\n")
    fig = eval_plots.plot_training_curves(log)
    assert len(fig.axes) == 1 and list(fig.axes[0].lines[0].get_xdata()) == [1, 2]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}


def test_metric_modules_do_not_import_deep_learning_frameworks():
    """These modules must stay importable without TensorFlow/Keras (evaluation from saved predictions)."""
    for module in ("evaluation/metrics", "evaluation/calibration", "evaluation/tables", "plots/style",
                   "plots/evaluation", "plots/view_ablation"):
        names = _imports(REPO / "xai_bt" / f"{module}.py")
        assert not {n.split(".")[0] for n in names} & {"tensorflow", "keras", "torch", "jax"}, module


def test_plot_modules_only_draw():
    """Numbers in, Figure out: the evaluation plot modules import nothing that computes metrics."""
    for module in ("plots/evaluation", "plots/view_ablation"):
        names = _imports(REPO / "xai_bt" / f"{module}.py")
        assert not {n for n in names if n.startswith(("xai_bt.evaluation", "sklearn", "scipy"))}, module


# --------------------------------------------------------------------------------------------- numbers in, Figure out
def _legend(fig: Figure, axes: int = 0) -> list[str]:
    """Texts of the figure's legend (below the panels) or, failing that, of its axes' legend."""
    legend = fig.legends[0] if fig.legends else fig.axes[axes].get_legend()
    return [t.get_text() for t in legend.get_texts()]


def test_roc_draws_exactly_the_numbers_it_is_given():
    """Made-up curves, CIs and bands (not computable from any predictions) come out as given."""
    curves = {"per_class": {"glioma": {"fpr": [0.0, 0.2, 1.0], "tpr": [0.0, 0.7, 1.0], "auc": 0.75},
                            "pituitary": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.9, 1.0], "auc": 0.7}},
              "macro": {"fpr": [0.0, 0.2, 0.5, 1.0], "tpr": [0.0, 0.6, 0.8, 1.0], "auc": 0.72}}
    ci = {"per_class": {"glioma": {"estimate": 0.751, "low": 0.6, "high": 0.85},
                        "pituitary": {"estimate": 0.702, "low": 0.55, "high": 0.8}},
          "macro": {"estimate": 0.7262, "low": 0.61, "high": 0.79}}
    bands = {"fpr": [0.0, 0.5, 1.0], "per_class": {"glioma": {"tpr": [0, 0.8, 1], "low": [0, 0.6, 1.0],
                                                             "high": [0.1, 0.9, 1.0]}}}
    fig = eval_plots.plot_roc(curves, auc_ci=ci, bands=bands, zoom=None)
    ax = fig.axes[0]
    assert _legend(fig) == ["glioma  0.751 [0.600, 0.850]", "pituitary  0.702 [0.550, 0.800]",
                            "macro average  0.726 [0.610, 0.790]", "chance (AUC 0.5)"]
    assert fig.legends[0].get_title().get_text() == "AUC [95% CI]"
    for line, curve in zip(ax.lines, [*curves["per_class"].values(), curves["macro"]]):
        assert list(line.get_xdata()) == curve["fpr"] and list(line.get_ydata()) == curve["tpr"]
    assert len(ax.collections) == 1  # one band: only glioma has one
    assert style.CLASS_COLORS["glioma"].lower() in matplotlib.colors.to_hex(ax.lines[0].get_color())
    fig = eval_plots.plot_roc(curves)  # no CIs: plain AUCs, macro = mean of the per-class AUCs
    assert _legend(fig) == ["glioma  0.750", "pituitary  0.700", "macro average  0.725", "chance (AUC 0.5)"]
    assert fig.legends[0].get_title().get_text() == "AUC" and not fig.axes[0].collections
    curves["per_class"]["glioma"]["n_positive"] = 17  # the class's n where the curve carries it
    assert _legend(eval_plots.plot_roc(curves))[0] == "glioma (n = 17)  0.750"


def test_roc_from_predictions_equals_computing_then_plotting():
    y, p = make_predictions(300, signal=3.0)
    data = metrics.roc_plot_data(y, p, NAMES, n_boot=60, seed=2)
    assert data["curves"] == metrics.roc_curves(y, p, NAMES)
    assert data["auc_ci"] == metrics.auc_with_ci(y, p, NAMES, n_boot=60, seed=2)
    assert data["bands"] == metrics.roc_bands(y, p, NAMES, n_boot=60, seed=2)
    assert metrics.roc_plot_data(y, p, NAMES, ci=False)["auc_ci"] is None
    assert metrics.roc_plot_data(y, p, NAMES, ci=False)["bands"] is None
    assert metrics.roc_plot_data(y, p, NAMES, n_boot=20, band=False)["bands"] is None
    a = eval_plots.plot_roc(**data)
    b = eval_plots.plot_roc(metrics.roc_curves(y, p, NAMES), metrics.auc_with_ci(y, p, NAMES, n_boot=60, seed=2),
                            metrics.roc_bands(y, p, NAMES, n_boot=60, seed=2))
    assert _legend(a) == _legend(b)
    assert np.array_equal(_pixels(a), _pixels(b))


def _pixels(fig: Figure) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def test_pr_draws_exactly_the_curves_it_is_given():
    """Made-up curves and CIs come out as given: n and AP [CI] per class, the macro average (not micro),
    a chance line at each class's prevalence."""
    curves = {"per_class": {"no_tumor": {"recall": [1.0, 0.5, 0.0], "precision": [0.4, 0.8, 1.0],
                                         "average_precision": 0.66, "prevalence": 0.4, "n_positive": 30}},
              "micro": {"recall": [1.0, 0.0], "precision": [0.5, 1.0], "average_precision": 0.995},
              "macro": {"recall": [1.0, 0.5, 0.0], "precision": [0.45, 0.7, 1.0], "average_precision": 0.61}}
    fig = eval_plots.plot_pr(curves, zoom=None)
    assert _legend(fig) == ["no tumor (n = 30)  0.660", "macro average  0.610", "chance (class prevalence)"]
    ax = fig.axes[0]
    assert list(ax.lines[0].get_ydata()) == [0.4, 0.8, 1.0]
    assert list(ax.lines[1].get_ydata()) == [0.45, 0.7, 1.0]
    assert list(ax.lines[2].get_ydata()) == [0.4, 0.4]  # chance line at the prevalence
    ci = {"per_class": {"no_tumor": {"estimate": 0.66, "low": 0.5, "high": 0.8}},
          "macro": {"estimate": 0.61, "low": 0.4, "high": 0.7}}
    fig = eval_plots.plot_pr(curves, ap_ci=ci, zoom=0.5)
    assert _legend(fig)[:2] == ["no tumor (n = 30)  0.660 [0.500, 0.800]", "macro average  0.610 [0.400, 0.700]"]
    assert fig.legends[0].get_title().get_text() == "AP [95% CI]"
    assert fig.axes[1].get_xlim()[0] == pytest.approx(0.5)  # the magnified corner
    y, p = make_predictions(200)
    assert _legend(eval_plots.plot_pr(metrics.pr_curves(y, p, NAMES)))[0].startswith("glioma (n = ")


def test_confusion_prints_the_given_counts():
    fig = eval_plots.plot_confusion([[7, 1], [2, 30]], ["a", "b"], normalise=False)
    assert [t.get_text() for t in fig.axes[0].texts] == ["7", "1", "2", "30"]
    fig = eval_plots.plot_confusion([[7, 1], [2, 30]], ["a", "b"])
    assert fig.axes[0].texts[0].get_text() == "88%\n(7)"
    assert fig.axes[1].get_ylabel() == "Share of true class"  # labelled colour bar
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a\n(n = 8)", "b\n(n = 32)"]
    assert not fig.legends  # no "no tumor" class: no missed tumors to mark


def test_percent_label_never_rounds_an_error_away():
    assert eval_plots.percent_label(1, 300) == "<1%"
    assert eval_plots.percent_label(299, 300) == ">99%"
    assert eval_plots.percent_label(0, 300) == "0%" and eval_plots.percent_label(300, 300) == "100%"
    assert eval_plots.percent_label(2, 216) == "1%" and eval_plots.percent_label(6, 17) == "35%"
    assert eval_plots.percent_label(0, 0) == "–"


def test_confusion_sets_apart_missed_tumors():
    """Tumors called "no tumor" are outlined, counted in a legend, and every name is as people read it."""
    cm = [[295, 2, 2, 1], [3, 284, 7, 12], [0, 0, 405, 0], [0, 0, 1, 299]]
    fig = eval_plots.plot_confusion(cm, NAMES)
    ax = fig.axes[0]
    outlined = sorted((round(r.get_x() + r.get_width() / 2), round(r.get_y() + r.get_height() / 2))
                      for r in ax.patches)
    assert outlined == [(2, 0), (2, 1), (2, 3)]  # (column no tumor, rows glioma, meningioma, pituitary)
    (legend,) = fig.legends
    assert legend.get_texts()[0].get_text() == "missed tumor (tumor called “no tumor”): 10 of 906 tumors"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["glioma", "meningioma", "no tumor", "pituitary"]
    texts = [t.get_text() for t in ax.texts]
    assert texts[3] == "<1%\n(1)" and texts[14] == "<1%\n(1)" and "0%\n(1)" not in texts


def _fake_bins(class_index: int | None = None) -> dict:
    return {"edges": [0.0, 0.5, 1.0], "confidence": [None, 0.8], "accuracy": [None, 0.6], "count": [0, 12],
            "ece": 0.123456, "class_index": class_index}


def test_reliability_plots_draw_exactly_the_bins_they_are_given():
    fig = eval_plots.plot_reliability(_fake_bins(1), class_names=["a", "no_tumor"])
    ax = fig.axes[0]
    assert ax.get_title() == "no tumor (ECE 0.1235)" and ax.get_xlabel() == "Predicted P(no tumor)"
    heights = [bar.get_height() for bar in ax.containers[0]]
    assert np.isnan(heights[0]) and heights[1] == pytest.approx(0.6)
    assert ax.containers[1][1].get_height() == pytest.approx(0.2)  # the gap to the diagonal
    assert [t.get_text() for t in ax.texts] == ["12", "n"]  # counts of non-empty bins, in a labelled row
    assert not ax.get_legend() and len(fig.legends) == 1  # the legend below the axes, over no bar
    fig = eval_plots.plot_reliability_grid([_fake_bins(), _fake_bins(0), _fake_bins(1)], ["a", "b"])
    assert [a.get_title() for a in fig.axes] == ["Overall (ECE 0.1235)", "a (ECE 0.1235)", "b (ECE 0.1235)"]
    fig = eval_plots.plot_reliability_comparison({"raw": _fake_bins(), "scaled": {**_fake_bins(), "ece": 0.01}})
    assert [a.get_title() for a in fig.axes] == ["raw (ECE 0.1235)", "scaled (ECE 0.0100)"]
    with pytest.raises(ValueError):
        eval_plots.plot_reliability_grid([])


def test_reliability_panels_are_the_bins_overall_then_per_class():
    y, p = make_predictions(300)
    panels = metrics.reliability_panels(y, p, n_bins=7)
    assert panels == [metrics.with_bin_intervals(reliability_bins(y, p, 7, class_index=c)) for c in (None, 0, 1, 2, 3)]
    fig = eval_plots.plot_reliability_grid(panels, NAMES)
    assert len(fig.axes) == 5 and fig.axes[0].get_title() == f"Overall (n = 300)\nECE {panels[0]['ece']:.4f}"
    counts = np.bincount(y, minlength=4)
    assert [a.get_title() for a in fig.axes[1:]] == [
        f"{name.replace('_', ' ')} (n = {counts[c]})\nECE {panels[c + 1]['ece']:.4f}" for c, name in enumerate(NAMES)]


def test_bin_intervals_are_wilson_and_few_scan_bins_are_faded():
    """Each bin's accuracy gets the Wilson 95% interval of its hits among its scans; bins of fewer than
    FEW_SCANS scans are drawn faded; empty bins get no interval."""
    bins = {"edges": [0.0, 0.5, 1.0], "confidence": [0.3, 0.8], "accuracy": [1.0, 0.8], "count": [1, 10],
            "ece": 0.1, "class_index": 1}
    out = metrics.with_bin_intervals(bins)
    assert out["hits"] == [1, 8] and out["n"] == 11 and out["n_positive"] == 9
    low, high = metrics.wilson_interval(8, 10)
    assert (out["accuracy_low"][1], out["accuracy_high"][1]) == (float(low), float(high))
    assert (float(low), float(high)) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook 8 of 10
    assert out["accuracy_low"][0] < 0.3 and out["accuracy_high"][0] == 1.0  # one scan: a wide interval
    empty = metrics.with_bin_intervals({**bins, "accuracy": [None, 0.8], "count": [0, 10]})
    assert empty["accuracy_low"][0] is None and empty["n_positive"] == 8
    ax = eval_plots.plot_reliability(out).axes[0]
    assert [bar.get_alpha() for bar in ax.containers[0]] == [0.35, 1.0]
    (bars,) = [c for c in ax.containers if hasattr(c, "has_yerr") and c.has_yerr]
    segments = bars.lines[2][0].get_segments()
    assert [tuple(np.round(seg[:, 1], 6)) for seg in segments][1] == (round(float(low), 6), round(float(high), 6))
    lo, hi = metrics.wilson_interval(np.array([0, 5, 3]), np.array([0, 5, 10]))
    assert np.isnan(lo[0]) and hi[1] == 1.0 and 0 <= lo[2] < 0.3 < hi[2] <= 1  # arrays, n = 0, all hits


def test_bootstrap_mean_ci_is_the_percentile_bootstrap_of_the_mean_on_the_callers_generator():
    """The audit's summaries continue one generator over groups and scores; the helper must draw exactly
    what the explicit percentile bootstrap draws, so committed audit CIs stay reproducible."""
    values = np.array([0.1, np.nan, 0.4, 0.9, 0.3, 0.7])
    v = values[np.isfinite(values)]
    rng = np.random.default_rng(5)
    boots = v[rng.integers(0, len(v), size=(200, len(v)))].mean(axis=1)
    low, high = np.percentile(boots, [2.5, 97.5])
    got = metrics.bootstrap_mean_ci(values, 200, 0.05, np.random.default_rng(5))
    assert got == {"mean": float(v.mean()), "low": float(low), "high": float(high), "n": 6, "n_valid": 5}
    assert metrics.bootstrap_mean_ci([np.nan], 10)["mean"] is None


def test_architecture_comparison_shows_n_and_every_estimate():
    """Official vs leakage-free per model with Wilson CIs: n in the legend where the models share it, under
    each name where they do not; each estimate printed beside its interval."""
    rows = [{"name": m, "n": 1311, "accuracy": a, "ci_low": a - 0.01, "ci_high": a + 0.01, "leakage_free_n": 315,
             "leakage_free_accuracy": a - 0.02, "leakage_free_ci_low": a - 0.05, "leakage_free_ci_high": a}
            for m, a in (("default", 0.979), ("default192", 0.981), ("two_stage", 0.976), ("cascade", 0.976))]
    fig = eval_plots.plot_architecture_comparison(rows)
    assert _legend(fig) == ["Official test split (n = 1311)", "Leakage-free subset (n = 315)"]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["default", "default192", "two_stage", "cascade"]
    assert sorted(t.get_text() for t in ax.texts) == sorted(
        [f"{r['accuracy']:.3f}" for r in rows] + [f"{r['leakage_free_accuracy']:.3f}" for r in rows])
    assert style.clipped_texts(fig) == []
    rows[1] = {**rows[1], "leakage_free_n": 300}
    labels = [t.get_text() for t in eval_plots.plot_architecture_comparison(rows).axes[0].get_yticklabels()]
    assert labels[1] == "default192\n(n = 1311 / 300)"
