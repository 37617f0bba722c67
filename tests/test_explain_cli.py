"""`python -m xai_bt explain` and the library run behind it (`xai_bt.io.explain_files`) end to end on the shipped
sample scans with a tiny random-init bundle."""
import csv
import json
import shutil

import numpy as np
import pytest
from conftest import SAMPLES

from xai_bt import cli
from xai_bt.cli._common import UsageError, parse_formats, resolve_target
from xai_bt.data.sample import CLASS_NAMES
from xai_bt.io.explain_files import explain_files, plan_explain, unique_stems

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


def test_library_run_lists_failures_and_resume_keeps_finished_scans(bundle_path, scans, tmp_path, capsys):
    """explain_files from Python: the corrupt file is a failure in the result (nothing printed), the other scans
    are written; a resumed run redoes nothing, a second plain run skips them."""
    from xai_bt.model.bundle import load_model

    bundle, out = load_model(bundle_path), tmp_path / "out"
    heard = []
    result = explain_files(bundle, [scans], out, methods=["gradcam"], formats=["png"], batch_size=2,
                           on_scan=heard.append)
    assert (result.ok, result.failed, result.skipped, result.done_earlier) == (4, 1, 0, 0)
    assert [f.path for f in result.failures] == [str(scans / "bad.jpg")] and result.failures[0].error
    assert result.index == out / "index.csv" and result.attempted == 5 and result.seconds > 0
    assert sorted((s.path.rsplit("/", 1)[-1], s.status) for s in heard) == [
        ("bad.jpg", "error"), ("glioma.jpg", "ok"), ("meningioma.jpg", "ok"), ("no_tumor.jpg", "ok"),
        ("pituitary.jpg", "ok")]
    ok = next(s for s in heard if s.status == "ok")
    assert 0 < ok.confidence <= 1 and ok.figure.endswith(".png") and ok.prediction in CLASS_NAMES
    assert capsys.readouterr() == ("", "")                         # the library prints nothing
    index = _index(out)
    assert index["bad.jpg"]["status"] == "error" and index["bad.jpg"]["error"] == result.failures[0].error
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert len(stamps) == 4 and len(list(out.glob("*.json"))) == 4

    again = explain_files(bundle, [scans], out, methods=["gradcam"], formats=["png"], resume=True)
    assert (again.ok, again.failed, again.skipped, again.done_earlier, again.failed_earlier) == (0, 0, 0, 5, 1)
    assert [f.path for f in again.failures] == [str(scans / "bad.jpg")] and again.attempted == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamps      # finished scans not redone

    heard.clear()
    plain = explain_files(bundle_path, [scans], out, methods=["gradcam"], formats="png", on_scan=heard.append)
    assert (plain.ok, plain.skipped, plain.failed) == (0, 4, 1)
    skipped = [s for s in heard if s.status == "skipped"]
    assert len(skipped) == 4 and all(s.existing.endswith(".png") and s.prediction for s in skipped)
    assert _index(out)["glioma.jpg"]["prediction"] == index["glioma.jpg"]["prediction"]


@pytest.mark.parametrize("options, error", [
    ({"methods": ["magic"]}, ValueError), ({"formats": ["gif"]}, ValueError), ({"top_k": 0}, ValueError),
    ({"batch_size": 0}, ValueError), ({"workers": 0}, ValueError), ({"resume": True, "overwrite": True}, ValueError),
    ({"shard": "3/2"}, ValueError), ({"target": "astrocytoma"}, ValueError), ({"layer": "nope"}, ValueError),
    ({"mask": "missing.png"}, FileNotFoundError), ({"inputs": ["nope.jpg"]}, FileNotFoundError),
    ({"inputs": []}, ValueError),
])
def test_library_checks_the_request_before_writing(bundle_path, tmp_path, options, error):
    options = {"inputs": [SAMPLES / "glioma.jpg"], **options}
    with pytest.raises(error):
        plan_explain(bundle_path, options.pop("inputs"), tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_library_plan_lists_and_shards(bundle_path, tmp_path):
    plan = plan_explain(bundle_path, [SAMPLES], tmp_path / "out", methods="gradcam,layercam", formats="none",
                        shard="2/3", target="notumor")
    assert [p.rsplit("/", 1)[-1] for p in plan.files] == ["glioma.jpg", "meningioma.jpg", "no_tumor.jpg",
                                                           "pituitary.jpg"]
    assert plan.methods == ["gradcam", "layercam"] and plan.formats == [] and plan.target == "no_tumor"
    assert plan.shard == (2, 3) and plan.index_path.name == "index-2-of-3.csv" and not plan.out.exists()
