"""Training under tf.distribute, and models built under JAX loading under TensorFlow."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(code: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tiny_benchmark, tmp_path):
    out = tmp_path / "mirrored"
    r = _run(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from xai_bt import cli
        raise SystemExit(cli.main(["train", "--arch", "plane_cnn", "--data", "{tiny_benchmark}", "--out", "{out}",
                                   "--strategy", "mirrored", "--epochs", "4", "--batch-size", "8",
                                   "--image-size", "64", "--lr", "3e-3", "--no-augment", "--no-evaluate"]))
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "bundle.json").read_text())["training"]["replicas"] == 2
    import csv
    with open(out / "history.csv") as fh:
        losses = [float(row["loss"]) for row in csv.DictReader(fh)]
    assert losses[-1] < losses[0], losses
    from conftest import SAMPLES

    from xai_bt import load_model
    p = load_model(out).predict(str(SAMPLES / "glioma.jpg")).probabilities
    assert p.shape == (1, 4) and np.isclose(p.sum(), 1)


@pytest.mark.slow
def test_model_built_under_jax_loads_under_tensorflow(tmp_path):
    pytest.importorskip("jax")
    r = _run(f"""
        import numpy as np
        from xai_bt.model import architectures
        from xai_bt.model.bundle import save_bundle
        from xai_bt.model.preprocessing import Preprocessing
        from xai_bt.data.sample import CLASS_NAMES, PLANES
        view = architectures.view_classifier("plane_cnn", 32).model
        tumor = architectures.build("efficientnet_lite0", 32, 4, extra_input=True)
        save_bundle("{tmp_path / 'jax_bundle'}", "two_stage", {{"view": view, "model": tumor.model}}, CLASS_NAMES,
                    Preprocessing(image_size=32), tumor.last_conv_layer, view_names=list(PLANES))
        x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 1)).astype("float32")
        v = np.asarray(view(x))
        f = np.random.default_rng(1).normal(size=(3, 128)).astype("float32")
        np.savez("{tmp_path / 'ref.npz'}", x=x, f=f, v=v, t=np.asarray(tumor.model([x, f])))
    """, env={"KERAS_BACKEND": "jax"})
    assert r.returncode == 0, r.stderr[-3000:]
    from xai_bt import load_model
    bundle = load_model(tmp_path / "jax_bundle")  # safe_mode=True, TensorFlow backend
    ref = np.load(tmp_path / "ref.npz")
    assert np.allclose(bundle.networks["view"].predict(ref["x"], verbose=0), ref["v"], atol=1e-5)
    assert np.allclose(bundle.networks["model"].predict([ref["x"], ref["f"]], verbose=0), ref["t"], atol=1e-5)
