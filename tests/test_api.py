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


def test_the_command_line_help_needs_no_deep_learning_framework():
    """`python -m xai_bt --help` and every command's --help build without importing Keras or TensorFlow."""
    import subprocess
    import sys

    code = ("import sys; from xai_bt import cli; cli.build_parser(); "
            "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_command_prints_no_tensorflow_start_up_notices():
    """TensorFlow 2.21's C++ core writes absl / oneDNN notices on import whatever TF_CPP_MIN_LOG_LEVEL says;
    a command's terminal output is its own result, and the notices are kept off it."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    run = subprocess.run([sys.executable, "-m", "xai_bt", "predict", str(SAMPLES / "glioma.jpg")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(str(SAMPLES / "glioma.jpg") + ": ")
    assert "InitializeLog" not in run.stderr and "oneDNN" not in run.stderr, run.stderr


def test_architecture_names_match_the_builders():
    from xai_bt.model import ARCHITECTURE_NAMES
    from xai_bt.model.architectures import ARCHITECTURES

    assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES
