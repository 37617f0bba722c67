"""Shared fixtures: the real data beside the repo, and small real datasets copied from it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BENCHMARK = DATA / "brain-tumor-mri"
SAMPLES = Path(__file__).resolve().parents[1] / "xai_bt" / "samples"
FOLDERS = {"glioma": "glioma", "meningioma": "meningioma", "no_tumor": "notumor", "pituitary": "pituitary"}


def copy_benchmark_subset(dest: Path, n_train: int, n_test: int) -> Path:
    """A benchmark-layout dataset with the first n scans per class of each real split."""
    if not BENCHMARK.is_dir():
        pytest.skip(f"real data not found at {BENCHMARK}")
    for split, n in (("Training", n_train), ("Testing", n_test)):
        for folder in FOLDERS.values():
            src = sorted((BENCHMARK / split / folder).glob("*.jpg"))[:n]
            (dest / split / folder).mkdir(parents=True, exist_ok=True)
            for f in src:
                shutil.copy(f, dest / split / folder / f.name)
    return dest


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory) -> Path:
    """12 training and 3 test scans per class, real images, benchmark layout."""
    return copy_benchmark_subset(tmp_path_factory.mktemp("data") / "brain-tumor-mri", 12, 3)


@pytest.fixture(scope="session")
def tiny_pair(tiny_benchmark, tmp_path_factory):
    """Make (a, b): a tiny xai_cnn bundle trained one epoch on `tiny_benchmark`, and a copy whose float
    weights carry Gaussian noise of standard deviation `sd` (a stand-in for a fine-tune or another seed).
    The trained bundle is shared: copy it before changing it."""
    import numpy as np

    from xai_bt.model.bundle import load_model
    from xai_bt.model.training import TrainConfig, train

    root = tmp_path_factory.mktemp("tiny_pair")
    a = train(TrainConfig(arch="xai_cnn", data=str(tiny_benchmark), out=str(root / "a"), epochs=1, batch_size=8,
                          patience=2, preprocessing={"image_size": 48}))

    def make(sd: float) -> tuple[Path, Path]:
        b = root / f"b_{sd}"
        if not b.exists():
            shutil.copytree(a, b)
            net = load_model(b).model
            rng = np.random.default_rng(0)
            net.set_weights([w + rng.normal(0, sd, w.shape).astype(w.dtype) if np.issubdtype(w.dtype, np.floating)
                             else w for w in net.get_weights()])
            net.save(b / "model.keras")
        return a, b
    return make


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep caches of the tests out of the user's ~/.cache unless CI set one."""
    os.environ.setdefault("XAI_BT_CACHE", str(tmp_path_factory.mktemp("cache")))
