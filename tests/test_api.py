"""The flat public API stays callable however its submodules were imported."""
import importlib

import numpy as np

import xai_bt

from conftest import SAMPLES


def test_flat_api_names_resolve():
    for name in xai_bt.__all__:
        assert getattr(xai_bt, name) is not None


def test_explain_train_evaluate_stay_callable_after_submodule_import():
    """Importing xai_bt.explain binds the package attribute to the module; calls must still work."""
    for name in ("explain", "train", "evaluate"):
        importlib.import_module(f"xai_bt.{name}")
        assert callable(getattr(xai_bt, name)), name


def test_explain_called_twice_through_the_package():
    model = xai_bt.load_model(xai_bt.default_model_path())
    scan = str(SAMPLES / "glioma.jpg")
    first = xai_bt.explain(model, [scan], methods=["gradcam"])
    second = xai_bt.explain(model, [scan], methods=["gradcam"])
    a, b = first[0].maps["gradcam"], second[0].maps["gradcam"]
    assert a.shape == (160, 160) and np.allclose(a, b)
