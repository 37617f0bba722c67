"""Localisation scores, shortcut shares and YOLO box masks: known answers, and agreement with Quantus."""
from __future__ import annotations

import json

import numpy as np
import pytest

from xai_bt.audit import localisation as focus
from xai_bt.audit import shortcut
from xai_bt.data import boxes

S = 40


def square_mask(y: int = 10, x: int = 12, size: int = 10, shape: tuple[int, int] = (S, S)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y:y + size, x:x + size] = True
    return m


def random_cases(n: int = 16, side: int = 24, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Signed Gaussian maps (no ties) and random rectangular masks."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(n, side, side))
    masks = np.zeros((n, side, side), dtype=bool)
    for i in range(n):
        y, x = rng.integers(0, side - 8, 2)
        h, w = rng.integers(2, 9, 2)
        masks[i, y:y + h, x:x + w] = True
    return maps, masks


# ------------------------------------------------------------------------------------- known answers
def test_heatmap_equal_to_mask_scores_one_everywhere():
    m = square_mask()
    h = m.astype(float)
    assert focus.pointing_game(h, m) == 1.0
    assert focus.energy_pointing_game(h, m) == 1.0
    assert focus.relevance_rank_accuracy(h, m) == 1.0
    assert focus.topk_iou(h, m, k=m.mean()) == pytest.approx(1.0)
    scores = focus.localisation_scores(h[None], m[None], k=m.mean())
    assert all(v[0] == pytest.approx(1.0) for v in scores.values())


def test_uniform_heatmap_scores_chance_and_has_no_peak():
    m = square_mask()
    h = np.full((S, S), 0.3)
    assert focus.energy_pointing_game(h, m) == pytest.approx(m.mean())
    assert focus.relevance_rank_accuracy(h, m) == pytest.approx(m.mean())  # ties averaged: chance level
    assert np.isnan(focus.pointing_game(h, m))  # a constant map points nowhere


def test_peak_outside_mask_misses_unless_within_tolerance():
    m = square_mask(y=10, x=10, size=10)            # rows/cols 10..19
    h = np.zeros((S, S))
    h[15, 25] = 1.0                                 # 6 px right of the mask's edge column 19
    assert focus.pointing_game(h, m) == 0.0
    assert focus.pointing_game(h, m, tolerance_px=5) == 0.0
    assert focus.pointing_game(h, m, tolerance_px=6) == 1.0
    h[12, 12] = 1.0                                 # a tied maximum inside: any max counts
    assert focus.pointing_game(h, m) == 1.0


def test_negative_attribution_is_ignored_by_energy_score():
    m = square_mask()
    h = np.where(m, 1.0, -5.0)
    h[0, 0] = 1.0                                   # one positive pixel outside
    assert focus.energy_pointing_game(h, m) == pytest.approx(m.sum() / (m.sum() + 1))
    assert np.isnan(focus.energy_pointing_game(-np.abs(h), m))  # no positive evidence at all


def test_rank_accuracy_averages_ties_at_the_cut():
    h = np.array([[3.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    m = np.array([[True, True, False], [False, False, False]])
    # Top-2 = the 3 (inside) plus one of two tied 1s (one inside, one outside): expected 1.5 / 2.
    assert focus.relevance_rank_accuracy(h, m) == pytest.approx(0.75)


def test_empty_mask_is_nan_and_batches_match_single_images():
    maps, masks = random_cases(n=5)
    masks[2] = False
    scores = focus.localisation_scores(maps, masks, tolerance_px=2, k=0.1)
    for name, values in scores.items():
        assert values.shape == (5,) and np.isnan(values[2]), name
    for i in (0, 1, 3, 4):
        assert scores["pointing_game"][i] == focus.pointing_game(maps[i], masks[i], tolerance_px=2)
        assert scores["topk_iou"][i] == pytest.approx(focus.topk_iou(maps[i], masks[i], k=0.1))


def test_bad_inputs_raise():
    m = square_mask()
    with pytest.raises(ValueError, match="shape"):
        focus.energy_pointing_game(np.zeros((S, S + 1)), m)
    with pytest.raises(ValueError, match="fraction"):
        focus.topk_iou(np.zeros((S, S)), m, k=5)
    with pytest.raises(ValueError, match="NaN"):
        focus.pointing_game(np.full((S, S), np.nan), m)


def test_summarise_by_group_with_bootstrap_ci():
    rng = np.random.default_rng(0)
    values = np.r_[rng.uniform(0.6, 1.0, 40), rng.uniform(0.0, 0.4, 40), [np.nan]]
    groups = ["glioma"] * 40 + ["pituitary"] * 41
    out = focus.summarise({"energy_pointing_game": values}, groups=groups, n_boot=300)
    json.dumps(out)
    assert set(out) == {"all", "glioma", "pituitary"}
    g, p = out["glioma"]["energy_pointing_game"], out["pituitary"]["energy_pointing_game"]
    assert g["low"] <= g["mean"] <= g["high"] and p["high"] < g["low"]
    assert (p["n"], p["n_valid"]) == (41, 40)
    assert out["all"]["energy_pointing_game"]["mean"] == pytest.approx(np.nanmean(values))


# ----------------------------------------------------------------------------------------- Quantus
@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


def _quantus_kwargs(maps: np.ndarray, masks: np.ndarray) -> dict:
    n, side, _ = maps.shape
    return dict(model=None, x_batch=np.zeros((n, side, side, 1), np.float32), y_batch=np.zeros(n, int),
                a_batch=maps[:, None], s_batch=masks[:, None].astype(float), channel_first=False)


def test_agrees_with_quantus_where_definitions_agree(quantus):
    maps, masks = random_cases()
    kw = _quantus_kwargs(maps, masks)
    np.testing.assert_allclose(quantus.PointingGame(disable_warnings=True)(**kw), focus.pointing_game(maps, masks))
    np.testing.assert_allclose(quantus.RelevanceRankAccuracy(disable_warnings=True)(**kw),
                               focus.relevance_rank_accuracy(maps, masks))
    # Positive-only mass: AttributionLocalisation with clipping (its +1e-9 is the only difference).
    al = quantus.AttributionLocalisation(positive_attributions=True, abs=False, disable_warnings=True)(**kw)
    np.testing.assert_allclose(al, focus.energy_pointing_game(maps, masks), atol=1e-6)
    # On non-negative maps RelevanceMassAccuracy is the same ratio.
    rma = quantus.RelevanceMassAccuracy(disable_warnings=True)(**_quantus_kwargs(np.abs(maps), masks))
    np.testing.assert_allclose(rma, focus.energy_pointing_game(np.abs(maps), masks))
    # TopKIntersection is a precision over k pixels; convert it to our IoU.
    k = 0.05
    n_top = round(k * maps[0].size)
    prec = np.asarray(quantus.TopKIntersection(k=n_top, disable_warnings=True)(**kw))
    area = masks.reshape(len(masks), -1).sum(axis=1)
    np.testing.assert_allclose(prec * n_top / (n_top + area - prec * n_top), focus.topk_iou(maps, masks, k=k))


def test_documented_differences_from_quantus(quantus):
    maps, masks = random_cases()
    # Signed maps: Quantus' mass accuracy counts negative attribution and leaves [0, 1]; ours does not.
    rma = np.asarray(quantus.RelevanceMassAccuracy(disable_warnings=True)(**_quantus_kwargs(maps, masks)))
    ours = focus.energy_pointing_game(maps, masks)
    assert np.any((rma < 0) | (rma > 1)) and np.all((ours >= 0) & (ours <= 1))
    # A constant map (e.g. an all-zero Grad-CAM) beside a normal one: Quantus calls it a hit, ours NaN.
    pair = np.stack([np.zeros_like(maps[0]), maps[1]])
    pg = quantus.PointingGame(normalise=False, disable_warnings=True)(**_quantus_kwargs(pair, masks[:2]))
    assert pg[0] == 1 and np.isnan(focus.pointing_game(pair, masks[:2])[0])
    # Ties at the rank cut (a ReLU-clipped CAM is mostly exact zeros): Quantus takes whichever tied pixels
    # np.argsort puts first, an order numpy leaves undefined (it differs between CPUs' SIMD sorts), so only
    # its range is asserted; ours averages over the tied pixels, so the score ignores where the mask is.
    h = np.zeros((2, 24, 24))
    h[:, 10:12, 10:12] = 1.0                        # hot spot outside both masks
    m = np.zeros((2, 24, 24), dtype=bool)
    m[0, :8, :12] = True                            # same-size masks, top-left and bottom-left
    m[1, 16:, :12] = True
    theirs = np.asarray(quantus.RelevanceRankAccuracy(disable_warnings=True)(**_quantus_kwargs(h, m)))
    ours = focus.relevance_rank_accuracy(h, m)
    assert np.all((theirs >= 0) & (theirs <= 92 / 96 + 1e-9))  # any 92 of the tied zeros may be taken
    expected = (96 - 4) * 96 / (24 * 24 - 4) / 96  # 92 of the 572 tied zeros, 96 of which are in the mask
    np.testing.assert_allclose(ours, [expected, expected])


# ---------------------------------------------------------------------------------------- shortcut
def head_phantom(side: int = 64) -> np.ndarray:
    """A bright disc (head) with a dark hole (ventricle) and a small bright marker in a corner."""
    yy, xx = np.mgrid[:side, :side]
    img = np.where((yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (0.35 * side) ** 2, 150.0, 0.0)
    img[28:36, 28:36] = 0.0
    img[1:4, 1:6] = 255.0
    return img


def test_head_mask_fills_holes_and_drops_markers():
    img = head_phantom()
    m = shortcut.head_mask(img)
    assert m[32, 32] and m[20, 32]                  # hole filled, tissue kept
    assert not m[2, 2] and not m[0, 63]             # marker and background excluded
    assert shortcut.head_mask(np.zeros((32, 32))).all()  # nothing found: the whole image


def test_outside_head_and_corner_shares():
    img = head_phantom()
    inside, marker = np.zeros_like(img), np.zeros_like(img)
    inside[30:34, 30:34] = 1.0
    marker[2, 3] = 1.0
    assert shortcut.outside_head_share(inside, img) == 0.0
    assert shortcut.outside_head_share(marker, img) == 1.0
    assert shortcut.corner_share(marker) == 1.0
    uniform = np.ones((50, 50))
    assert shortcut.corner_share(uniform, frac=0.1) == pytest.approx(4 * 0.1 ** 2)
    assert np.isnan(shortcut.corner_share(-uniform))


def test_shortcut_scores_summary_and_worst_cases():
    img = head_phantom()
    inside, marker = np.zeros_like(img), np.zeros_like(img)
    inside[30:34, 30:34] = 1.0
    marker[2, 3] = 1.0
    maps = np.stack([inside, marker, inside / inside.sum() + marker, -inside])
    scores = shortcut.shortcut_scores(maps, np.stack([img] * 4)[..., None])
    np.testing.assert_allclose(scores["outside_head_share"], [0.0, 1.0, 0.5, np.nan])
    worst = shortcut.worst_cases(scores, k=2)
    assert [w["index"] for w in worst] == [1, 2] and worst[0]["corner_share"] == 1.0
    summary = focus.summarise(scores, groups=["a", "b", "a", "b"], n_boot=50)
    assert summary["b"]["outside_head_share"]["n_valid"] == 1


# ------------------------------------------------------------------------------------------- boxes
def test_yolo_boxes_union_to_a_mask(tmp_path):
    f = tmp_path / "scan.txt"
    f.write_text("0 0.25 0.25 0.5 0.5\n\n1 0.875 0.875 0.25 0.25\n")
    m = boxes.yolo_mask(f, (8, 8))
    expected = np.zeros((8, 8), dtype=bool)
    expected[0:4, 0:4] = True
    expected[6:8, 6:8] = True
    np.testing.assert_array_equal(m, expected)
    np.testing.assert_array_equal(boxes.yolo_mask(f, (8, 8), classes={1}), expected & (np.arange(8) >= 6)[:, None])
    (tmp_path / "empty.txt").write_text("")
    assert not boxes.yolo_mask(tmp_path / "empty.txt", (8, 8)).any()
    assert boxes.yolo_mask(f, (16, 8)).sum() == 2 * expected.sum()  # normalised: scales with the image


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.2", "expected 5 fields"),
    ("0 0.1 0.1 0.2 0.2 0.3 0.3", "polygon"),
    ("tumor 0.5 0.5 0.2 0.2", "must be numbers"),
    ("0.5 0.5 0.5 0.2 0.2", "integer"),
    ("0 120 80 40 30", "pixel coordinates"),
])
def test_malformed_yolo_lines_name_the_file(tmp_path, line, message):
    f = tmp_path / "bad_labels.txt"
    f.write_text(f"0 0.5 0.5 0.1 0.1\n{line}\n")
    with pytest.raises(ValueError, match=message) as err:
        boxes.read_yolo(f)
    assert "bad_labels.txt, line 2" in str(err.value)
