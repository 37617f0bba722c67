"""The flat public API stays callable however its submodules were imported."""
import importlib
import pkgutil
import types

import numpy as np
from conftest import SAMPLES

import xai_bt


def test_flat_api_names_resolve():
    for name in xai_bt.__all__:
        assert getattr(xai_bt, name) is not None


def test_api_functions_stay_callable_after_every_submodule_import():
    """No module sits where an API function is: importing every submodule leaves the flat API callable."""
    for info in pkgutil.walk_packages(xai_bt.__path__, "xai_bt."):
        if info.name != "xai_bt.__main__":
            importlib.import_module(info.name)
    for name in ("explain", "train", "evaluate", "predict", "load_model", "load_dataset", "build_model"):
        assert callable(getattr(xai_bt, name)), name
    assert not any(isinstance(getattr(xai_bt, n), types.ModuleType) for n in xai_bt.__all__)


def test_explain_called_twice_through_the_package():
    model = xai_bt.load_model(xai_bt.default_model_path())
    scan = str(SAMPLES / "glioma.jpg")
    first = xai_bt.explain(model, [scan], methods=["gradcam"])
    second = xai_bt.explain(model, [scan], methods=["gradcam"])
    a, b = first[0].maps["gradcam"], second[0].maps["gradcam"]
    assert a.shape == (160, 160) and np.allclose(a, b)
