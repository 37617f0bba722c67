"""`python -m xai_bt explain` end to end on the shipped sample scans with a tiny random-init bundle."""
import csv
import json
import shutil

import numpy as np
import pytest

from xai_bt import cli
from xai_bt.cli._common import UsageError, parse_formats, resolve_target
from xai_bt.cli.explain import unique_stems
from xai_bt.data.sample import CLASS_NAMES

from conftest import SAMPLES

pytest.importorskip("tensorflow")
SIZE = 64


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    """A 64-px xai_cnn with random weights, saved as a single-model bundle."""
    import keras

    from xai_bt.model import architectures
    from xai_bt.model.bundle import save_bundle
    from xai_bt.model.preprocessing import Preprocessing

    keras.utils.set_random_seed(0)
    arch = architectures.build("xai_cnn", SIZE, 4)
    return save_bundle(tmp_path_factory.mktemp("model") / "tiny", "single", {"model": arch.model}, CLASS_NAMES,
                       Preprocessing(image_size=SIZE), arch.last_conv_layer)


@pytest.fixture
def scans(tmp_path):
    """The four sample scans and a corrupt 'bad.jpg' in one folder."""
    folder = tmp_path / "scans"
    shutil.copytree(SAMPLES, folder, ignore=shutil.ignore_patterns("*.md"))
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 3)
    return folder


def _index(out) -> dict[str, dict[str, str]]:
    with (out / "index.csv").open(newline="") as fh:
        return {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(fh)}


def test_folder_with_a_corrupt_file(bundle_path, scans, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["explain", str(scans), "--model", str(bundle_path), "--methods", "gradcam,integrated_gradients",
            "--out", str(out), "--format", "png", "--batch-size", "3"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "bad.jpg" in err and "4 explained, 0 skipped, 1 failed" in err
    index = _index(out)
    assert set(index) == {"bad.jpg", "glioma.jpg", "meningioma.jpg", "no_tumor.jpg", "pituitary.jpg"}
    assert index["bad.jpg"]["status"] == "error" and index["bad.jpg"]["error"]
    for name in ("glioma", "meningioma", "no_tumor", "pituitary"):
        row = index[f"{name}.jpg"]
        assert row["status"] == "ok" and row["prediction"] in CLASS_NAMES and 0 < float(row["confidence"]) <= 1
        side = json.loads((out / f"{name}.json").read_text())
        assert side["prediction"] == row["prediction"] and set(side["methods"]) == {"gradcam", "integrated_gradients"}
        assert side["original_shape"] == [224, 224] and side["methods"]["gradcam"]["peak_original_fraction"]
        assert (out / f"{name}.png").stat().st_size > 10_000 and not (out / f"{name}.pdf").exists()

    # a second run keeps the results: skipped (with the earlier prediction), the bad file fails again
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "0 explained, 4 skipped, 1 failed" in err and "--overwrite" in err
    again = _index(out)
    assert again["glioma.jpg"]["status"] == "skipped" and again["glioma.jpg"]["prediction"] == index["glioma.jpg"]["prediction"]
    assert "overwrite" in again["glioma.jpg"]["note"]

    # with --overwrite and only good scans: everything is redone, exit 0
    good = [str(p) for p in sorted(scans.glob("*.jpg")) if p.name != "bad.jpg"]
    assert cli.main(["explain", *good, "--model", str(bundle_path), "--methods", "gradcam", "--out", str(out),
                     "--format", "png", "--overwrite"]) == 0
    final = _index(out)
    assert final["glioma.jpg"]["status"] == "ok" and final["glioma.jpg"]["note"] == "replaced earlier outputs"
    assert final["bad.jpg"]["status"] == "error"                     # earlier row of a scan not in this run kept


def test_target_mask_and_maps(bundle_path, tmp_path, capsys):
    out, mask = tmp_path / "out", tmp_path / "mask.png"
    m = np.zeros((224, 224), np.uint8)
    m[60:120, 100:160] = 255
    from PIL import Image

    Image.fromarray(m).save(mask)
    code = cli.main(["explain", str(SAMPLES / "pituitary.jpg"), "--model", str(bundle_path), "--out", str(out),
                     "--target", "notumor", "--mask", str(mask), "--save-maps", "--format", "png,pdf",
                     "--methods", "gradcam", "--top-k", "0.05"])
    assert code == 0, capsys.readouterr().err
    side = json.loads((out / "pituitary.json").read_text())
    assert side["target"] == "no_tumor" and side["top_k"] == 0.05
    assert np.load(out / "pituitary_gradcam.npy").shape == (SIZE, SIZE)
    assert (out / "pituitary.pdf").exists() and (out / "pituitary.png").exists()

    other = tmp_path / "other" / "pituitary.jpg"                # same name, another scan: not mixed up
    other.parent.mkdir()
    shutil.copy(SAMPLES / "meningioma.jpg", other)
    assert cli.main(["explain", str(other), "--model", str(bundle_path), "--out", str(out)]) == 0
    with (out / "index.csv").open(newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["path"] == str(other))
    assert row["status"] == "skipped" and row["prediction"] == "" and str(SAMPLES / "pituitary.jpg") in row["note"]


@pytest.mark.parametrize("extra, message", [
    (["--methods", "gradcam,magic"], "unknown method 'magic'"),
    (["--target", "astrocytoma"], "unknown target class 'astrocytoma'"),
    (["--layer", "no_such_layer"], "unknown layer 'no_such_layer'"),
    (["--top-k", "2"], "--top-k"),
    (["--format", "gif"], "unknown figure format 'gif'"),
    (["--mask", "missing.png"], "no such mask file"),
])
def test_usage_errors_exit_2(bundle_path, tmp_path, capsys, extra, message):
    argv = ["explain", str(SAMPLES / "glioma.jpg"), "--model", str(bundle_path), "--out", str(tmp_path), *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "index.csv").exists()


def test_bad_model_and_missing_input_exit_2(tmp_path, capsys):
    assert cli.main(["explain", str(SAMPLES / "glioma.jpg"), "--model", str(tmp_path)]) == 2
    assert "not an xai_bt model bundle" in capsys.readouterr().err
    assert cli.main(["explain", str(tmp_path / "nope.jpg")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_helpers():
    assert unique_stems(["a/scan.jpg", "b/scan.jpg", "c/other.png"]) == ["a_scan", "b_scan", "other"]
    assert resolve_target("notumor", CLASS_NAMES) == "no_tumor" and resolve_target(None, CLASS_NAMES) is None
    assert parse_formats("PNG, .pdf") == ["png", "pdf"]
    with pytest.raises(UsageError):
        resolve_target("no_tumour_at_all", CLASS_NAMES)
