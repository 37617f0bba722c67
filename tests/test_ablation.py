"""View-vector ablation on a tiny two-stage bundle whose tumor head is wired to depend on the view vector."""
import numpy as np
import pytest
from conftest import SAMPLES

from xai_bt.data.sample import CLASS_NAMES, PLANES
from xai_bt.evaluation.view_ablation import derangement, replacement_vectors, summarise, view_ablation
from xai_bt.plots.view_ablation import plot_view_ablation

SIZE = 64


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    """Random-init plane_cnn view network + xai_cnn tumor network whose head reads only the view vector."""
    import keras

    from xai_bt.model import architectures
    from xai_bt.model.bundle import load_model, save_bundle
    from xai_bt.model.preprocessing import Preprocessing

    keras.utils.set_random_seed(0)
    view = architectures.view_classifier("plane_cnn", SIZE).model
    feats = view.get_layer("view_features")
    kernel, bias = feats.get_weights()
    feats.set_weights([kernel, np.ones_like(bias)])          # view vectors clearly nonzero
    arch = architectures.build("xai_cnn", SIZE, 4, extra_input=True)
    dense = arch.model.get_layer("head_dense")
    kernel, bias = dense.get_weights()
    kernel[:-128] = 0.0                                      # image features ignored: only the view vector counts
    kernel[-128:] = np.random.default_rng(0).normal(0, 0.5, kernel[-128:].shape)
    dense.set_weights([kernel, np.zeros_like(bias)])
    path = save_bundle(tmp_path_factory.mktemp("ab") / "two", "two_stage", {"view": view, "model": arch.model},
                       CLASS_NAMES, Preprocessing(image_size=SIZE), arch.last_conv_layer, view_names=list(PLANES))
    return load_model(path)


@pytest.fixture(scope="module")
def batch(two_stage):
    """The four sample scans and their mirror images: 8 prepared inputs."""
    x = two_stage.prepare([str(p) for p in sorted(SAMPLES.glob("*.jpg"))])
    return np.concatenate([x, x[:, :, ::-1]])


def test_conditions_shapes_and_intact(two_stage, batch):
    y = list(CLASS_NAMES) * 2
    planes = ["axial", "coronal", "axial", "sagittal"] * 2
    res = view_ablation(two_stage, batch, y_true=y, planes=planes)
    assert res["conditions"] == ["intact", "zeroed", "dataset_mean", "mean_axial", "mean_coronal",
                                 "mean_sagittal", "shuffled"]
    assert all(p.shape == (8, 4) for p in res["probabilities"].values())
    assert np.allclose(res["probabilities"]["intact"], two_stage.predict_prepared(batch).probabilities, atol=1e-6)
    assert len(res["rows"]) == 8 * 7 and res["plane_source"] == "labelled"
    intact_all = next(r for r in res["by_class"] if r["group"] == "all" and r["condition"] == "intact")
    assert intact_all["n"] == 8 and intact_all["accuracy_change"] == 0 and intact_all["agreement"] == 1
    assert {r["group"] for r in res["by_plane"]} == {"all", "axial", "coronal", "sagittal"}
    own = [r for r in res["rows"] if r["own_plane"]]
    assert len(own) == 8 and all(r["condition"] == f"mean_{r['plane']}" for r in own)


def test_zeroing_changes_a_view_dependent_model(two_stage, batch):
    res = view_ablation(two_stage, batch)
    intact, zeroed = res["probabilities"]["intact"], res["probabilities"]["zeroed"]
    assert np.allclose(zeroed, 0.25, atol=1e-5)              # head sees only zeros: uniform output
    assert np.abs(intact - zeroed).max() > 0.05
    zero_all = next(r for r in res["by_class"] if r["group"] == "all" and r["condition"] == "zeroed")
    assert zero_all["confidence_change"] < 0 and zero_all["accuracy"] is None
    assert res["plane_source"] == "predicted" and res["class_source"] == "predicted"
    assert zero_all["agreement_change"] == pytest.approx(zero_all["agreement"] - 1.0)
    fig = plot_view_ablation(res)
    assert len(fig.axes) == 3 and "ablation" in fig._suptitle.get_text()
    assert fig.axes[2].get_ylabel() == "change in agreement vs intact"  # labelled colour bar


def test_plot_draws_exactly_the_summaries():
    """Numbers in, Figure out: each cell shows the summary's accuracy and confidence change, coloured by its
    accuracy change; nothing is recomputed from predictions (there are none in this result)."""
    rows = [{"index": i, "condition": c, "changed": c == "zeroed" and i == 0, "correct": not (c == "zeroed" and i == 0),
             "confidence": 0.9 - 0.2 * (c == "zeroed"), "true_class": ["glioma", "pituitary"][i % 2],
             "plane": ["axial", "coronal"][i // 2]}
            for c in ("intact", "zeroed") for i in range(4)]
    result = {"conditions": ["intact", "zeroed"], "by_class": summarise(rows, "true_class"),
              "by_plane": summarise(rows, "plane"), "class_source": "labelled", "plane_source": "labelled"}
    fig = plot_view_ablation(result)
    left = fig.axes[0]
    assert [t.get_text() for t in left.texts] == ["1.00\n(+0.00)", "1.00\n(+0.00)", "1.00\n(+0.00)",
                                                  "0.75\n(-0.20)", "0.50\n(-0.20)", "1.00\n(-0.20)"]
    assert [t.get_text() for t in left.get_xticklabels()] == ["all", "glioma", "pituitary"]
    np.testing.assert_allclose(left.images[0].get_array(), [[0, 0, 0], [-0.25, -0.5, 0]])
    assert fig.axes[2].get_ylabel() == "change in accuracy vs intact"


def test_replacement_vectors_are_what_they_claim():
    v = np.arange(12, dtype=float).reshape(4, 3)
    out = replacement_vectors(v, np.array([0, 0, 1, 1]), ("axial", "coronal", "sagittal"), seed=3)
    assert set(out) == {"zeroed", "dataset_mean", "mean_axial", "mean_coronal", "shuffled"}
    assert np.allclose(out["mean_axial"], v[:2].mean(0)) and np.allclose(out["dataset_mean"], v.mean(0))
    d = derangement(4, seed=3)
    assert sorted(d) == [0, 1, 2, 3] and not np.any(d == np.arange(4))
    assert np.array_equal(out["shuffled"], v[d])


def test_rejects_single_model_and_unknown_labels(two_stage, batch):
    class Single:
        kind, name = "single", "m"

    with pytest.raises(ValueError, match="two-stage"):
        view_ablation(Single(), batch)
    with pytest.raises(ValueError, match="unknown plane"):
        view_ablation(two_stage, batch, planes=["up"] * 8)
