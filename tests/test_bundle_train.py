"""Training, saving, loading and predicting end to end on a handful of real scans."""
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import BENCHMARK, SAMPLES

from xai_bt import cli
from xai_bt.model.bundle import BundleError, combine_cascade, load_model
from xai_bt.model.training import TrainConfig, train


def _cfg(data, out, **kw):
    base = dict(arch="xai_cnn", data=str(data), out=str(out), epochs=1, batch_size=8, patience=2,
                preprocessing={"image_size": 48})
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def single(tiny_benchmark, tmp_path_factory):
    return train(_cfg(tiny_benchmark, tmp_path_factory.mktemp("m") / "single"))


def test_bundle_contents_and_card(single):
    cfg = json.loads((single / "bundle.json").read_text())
    assert cfg["class_names"] == ["glioma", "meningioma", "no_tumor", "pituitary"]
    assert cfg["preprocessing"]["image_size"] == 48 and cfg["kind"] == "single"
    assert not (single / "checkpoints").exists()
    assert "python -m xai_bt train --arch xai_cnn" in (single / "MODEL_CARD.md").read_text()
    rows = (single / "split.csv").read_text().splitlines()
    assert rows[1].startswith("Testing/") or rows[1].startswith("Training/")


def test_save_load_predict_identical(single):
    a, b = load_model(single), load_model(single / "model.keras")
    files = sorted(str(p) for p in SAMPLES.glob("*.jpg"))
    pa, pb = a.predict(files), b.predict(files)
    assert np.array_equal(pa.probabilities, pb.probabilities)
    assert pa.probabilities.shape == (4, 4) and np.allclose(pa.probabilities.sum(1), 1)
    # arrays and paths give the same answer: one preprocessing for every input
    from xai_bt.data.decode import read_image
    pc = a.predict([read_image(f) for f in files])
    assert np.allclose(pa.probabilities, pc.probabilities, atol=1e-6)


def test_refuses_to_overwrite_and_resumes(single, tiny_benchmark):
    with pytest.raises(FileExistsError, match="overwrite"):
        train(_cfg(tiny_benchmark, single))
    out = single.parent / "interrupted"
    (out / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="--resume"):
        train(_cfg(tiny_benchmark, out))
    assert (train(_cfg(tiny_benchmark, out), resume=True) / "bundle.json").exists()


def test_evaluate_reports_official_and_leakage_free(single, tiny_benchmark, tmp_path):
    from xai_bt.evaluation.evaluate import evaluate_bundle

    res = evaluate_bundle(single, str(tiny_benchmark), out=str(tmp_path / "ev"))
    assert res["official"]["n"] == 12 and 0 <= res["leakage_free"]["n"] <= 12
    assert {"metrics.json", "metrics.csv", "predictions.csv"} <= {p.name for p in (tmp_path / "ev").iterdir()}
    with pytest.raises(FileExistsError):
        evaluate_bundle(single, str(tiny_benchmark), out=str(tmp_path / "ev"))


def test_evaluate_leakage_free_part_excludes_exactly_the_twins(single, tiny_benchmark, tmp_path):
    """A test split made of mirrored, flipped, turned and plain copies of training scans plus scans no
    model saw: the leakage-free part is exactly the unseen ones, and every copy is reported as a twin."""
    from PIL import Image

    from xai_bt.evaluation.evaluate import evaluate_bundle

    data = tmp_path / "constructed"          # another dataset: its Testing folder is the test split
    shutil.copytree(tiny_benchmark / "Training", data / "Training")
    training = sorted((data / "Training" / "glioma").glob("*.jpg"))
    copies = {"mirrored": np.fliplr, "flipped": np.flipud, "turned": lambda a: np.rot90(a, 2),
              "plain": lambda a: np.clip(a.astype(np.float32) * 1.1 + 5, 0, 255).astype(np.uint8)}
    (data / "Testing" / "glioma").mkdir(parents=True)
    for (name, f), src in zip(copies.items(), training):
        Image.fromarray(np.ascontiguousarray(f(np.asarray(Image.open(src).convert("L"))))).save(
            data / "Testing" / "glioma" / f"{name}.png")
    unseen = []                                  # real test scans; kept only if no twin of any kind in Training
    from xai_bt.data.sample import Sample
    from xai_bt.data.twins import TWIN_THRESHOLD, best_matches, thumbnails
    candidates = sorted((BENCHMARK / "Testing" / "pituitary").glob("*.jpg"))[:40]
    ref = thumbnails([Sample(path=str(p)) for p in sorted((data / "Training").rglob("*.jpg"))])
    r = best_matches(thumbnails([Sample(path=str(p)) for p in candidates]), ref)[0]
    (data / "Testing" / "pituitary").mkdir(parents=True)
    for p, v in zip(candidates, r):
        if v < 0.9 and len(unseen) < 3:
            shutil.copy(p, data / "Testing" / "pituitary" / p.name)
            unseen.append(p.name)
    assert len(unseen) == 3
    res = evaluate_bundle(single, str(data), train_data=str(tiny_benchmark))
    flags = {Path(row["path"]).stem: row["leakage_free"] for row in res["predictions"]}
    assert flags == {**{k: False for k in copies}, **{Path(u).stem: True for u in unseen}}
    sims = {Path(row["path"]).stem: row["max_similarity_to_training"] for row in res["predictions"]}
    assert all(sims[k] >= TWIN_THRESHOLD for k in copies)
    assert res["official"]["n"] == 7 and res["leakage_free"]["n"] == 3
    groups = res["official"]["twin_groups"]        # test scans that are twins of one another, counted once
    assert groups["n"] == 7 and 1 <= groups["n_groups"] <= 7 and groups["low"] <= groups["estimate"] <= groups["high"]


@pytest.mark.slow
def test_cascade_and_two_stage(tiny_benchmark, tmp_path, single):
    casc = load_model(train(_cfg(tiny_benchmark, tmp_path / "cascade", task="cascade")))
    assert casc.kind == "cascade" and casc.config["stage2_classes"] == ["glioma", "meningioma", "pituitary"]
    p = casc.predict(str(SAMPLES / "glioma.jpg"))
    assert np.allclose(p.probabilities.sum(1), 1) and set(p.stage_probabilities) == {"stage1", "stage2"}

    brisc = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brisc2025"
    if not brisc.is_dir():
        pytest.skip("BRISC not available")
    view_data = tmp_path / "brisc"
    (view_data / "images").mkdir(parents=True)
    lines = (brisc / "labels.csv").read_text().splitlines()
    keep = [lines[0]] + lines[1::250]
    import shutil
    for row in keep[1:]:
        f = row.split(",")[0]
        (view_data / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(brisc / f, view_data / f)
    (view_data / "labels.csv").write_text("\n".join(r.split(",")[0] + "," + ",".join(r.split(",")[1:3]) + ",,0,0"
                                                    if i else r for i, r in enumerate(keep)) + "\n")
    view = train(_cfg(view_data, tmp_path / "view", task="view", arch="plane_cnn"))
    parts = {line.rsplit(",", 1)[1] for line in (view / "split.csv").read_text().splitlines()[1:]}
    assert parts == {"train", "val", "test"}  # BRISC's train-only copy still gets a held-out test split
    from xai_bt.model import architectures
    from xai_bt.model.training import init_from_bundle
    fresh = architectures.build("xai_cnn", 48, 4, extra_input=True).model
    assert init_from_bundle(fresh, str(single)) >= 10  # every backbone layer, not the new head
    stem = load_model(single).model.get_layer("stem_conv").get_weights()[0]
    assert np.array_equal(fresh.get_layer("stem_conv").get_weights()[0], stem)
    two = load_model(train(_cfg(tiny_benchmark, tmp_path / "two", view_model=str(view), init_from=str(single))))
    pred = two.predict(str(SAMPLES / "pituitary.jpg"))
    assert two.kind == "two_stage" and pred.views[0] in ("axial", "coronal", "sagittal")
    assert two.view_features(two.prepare(str(SAMPLES / "pituitary.jpg"))).shape == (1, 128)


def test_combine_cascade_is_a_distribution():
    p1 = np.array([[0.2, 0.8], [0.9, 0.1]])
    p2 = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    out = combine_cascade(p1, p2, ["no_tumor", "tumor"], ["glioma", "meningioma", "pituitary"],
                          ["glioma", "meningioma", "no_tumor", "pituitary"])
    assert np.allclose(out.sum(1), 1) and np.isclose(out[0, 0], 0.8 * 0.5) and np.isclose(out[1, 2], 0.9)


def test_bad_model_paths(tmp_path, single):
    with pytest.raises(BundleError, match="no such model"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not an xai_bt model bundle"):
        load_model(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bundle.json").write_text((single / "bundle.json").read_text())
    (broken / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="cannot load the network"):
        load_model(broken)
    (broken / "bundle.json").write_text("{oops")
    with pytest.raises(BundleError, match="corrupt"):
        load_model(broken)


def test_predict_cli_goes_on_past_bad_files(single, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    out = tmp_path / "pred.json"
    code = cli.main(["predict", str(SAMPLES / "glioma.jpg"), str(bad), str(SAMPLES / "no_tumor.jpg"),
                     "--model", str(single), "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and "bad.jpg" in captured.err
    res = json.loads(out.read_text())
    assert len(res["results"]) == 2 and res["failures"][0]["path"].endswith("bad.jpg")
    assert cli.main(["predict", str(SAMPLES / "glioma.jpg"), "--model", str(tmp_path)]) == 2
    # a missing path is a bad input like the others: the rest are predicted, it is listed, exit 1
    capsys.readouterr()
    code = cli.main(["predict", str(SAMPLES / "glioma.jpg"), str(tmp_path / "missing.jpg"), "--model", str(single)])
    captured = capsys.readouterr()
    assert code == 1 and "glioma.jpg: " in captured.out and "missing.jpg: no such file or folder" in captured.err
    assert "1 of 2 files failed" in captured.err


def test_split_table_reads_a_bundles_split_csv(tmp_path):
    """`train --split models/X/split.csv` reuses another model's split: its paths are relative to the data root."""
    from xai_bt.model.training import read_split_table

    root = tmp_path / "data"
    (root / "Training" / "glioma").mkdir(parents=True)
    csv_path = tmp_path / "split.csv"
    csv_path.write_text("path,label,plane,split\nTraining/glioma/a.jpg,glioma,,val\nTesting/glioma/b.jpg,glioma,,test\n")
    table = read_split_table(str(csv_path), str(root))
    assert table == {os.path.normpath(root / "Training/glioma/a.jpg"): "val",
                     os.path.normpath(root / "Testing/glioma/b.jpg"): "test"}
    (tmp_path / "bad.csv").write_text("file,part\nx,train\n")
    with pytest.raises(ValueError, match="needs 'path' and 'split' columns"):
        read_split_table(str(tmp_path / "bad.csv"), str(root))


@pytest.mark.slow
def test_budget_stops_mid_epoch(tiny_benchmark, tmp_path, caplog):
    """--budget is a hard training budget: spent after the first batch, the run stops inside epoch 1 of 3,
    still validates and saves a bundle whose card records the budget."""
    import csv

    with caplog.at_level("INFO", logger="xai_bt"):
        out = train(_cfg(tiny_benchmark, tmp_path / "budget", epochs=3, batch_size=2, budget=1e-4))
    assert "training budget reached at batch 1;" in caplog.text
    with open(out / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and "val_loss" in rows[0]
    assert "--budget 0.0001" in (out / "MODEL_CARD.md").read_text()
    assert load_model(out).predict([str(SAMPLES / "glioma.jpg")]).probabilities.shape == (1, 4)


@pytest.mark.slow
def test_refit_trains_on_the_validation_rows_and_keeps_its_last_epoch(tiny_benchmark, tmp_path):
    """--refit: the rows a run with validation held out are trained on too, with no early stopping (so
    the fixed schedule's last epoch is kept); split.csv and the card say so. A plateau schedule, which
    watches the validation loss, is refused."""
    import csv

    with pytest.raises(ValueError, match="fixed schedule"):
        train(_cfg(tiny_benchmark, tmp_path / "plateau", refit=True))
    out = train(_cfg(tiny_benchmark, tmp_path / "refit", epochs=2, refit=True, schedule="cosine"))
    cfg = json.loads((out / "bundle.json").read_text())
    assert cfg["training"]["n_val"] == 0 and cfg["training"]["n_train"] == 48
    with open(out / "split.csv") as fh:
        parts = [r["split"] for r in csv.DictReader(fh)]
    assert parts.count("train") == 48 and "val" not in parts
    with open(out / "history.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2   # both epochs ran: nothing stopped it early
    card = (out / "MODEL_CARD.md").read_text()
    assert "--refit" in card and "a refit:" in card


@pytest.mark.slow
def test_held_out_scans_fit_temperature_and_competence_without_twins_of_the_split(tiny_benchmark, tmp_path,
                                                                                    capsys):
    """A bundle without validation rows is calibrated on a held-out folder; a held-out scan with a
    twin (here: the mirror of one of its training scans, and a copy of a test scan) is left out; a folder
    whose twin-free scans are all of one class gets an error that says so."""
    import cv2

    from xai_bt.model.bundle import read_config

    out = train(_cfg(tiny_benchmark, tmp_path / "refit", refit=True, schedule="cosine"))
    assert cli.main(["calibrate", str(out), "--data", str(tiny_benchmark)]) == 2   # no 'val' rows
    held = tmp_path / "held_out"
    for folder in ("glioma", "meningioma", "notumor", "pituitary"):
        src = sorted((BENCHMARK / "Training" / folder).glob("*.jpg"))[40:44]
        (held / folder).mkdir(parents=True)
        for f in src:
            shutil.copy(f, held / folder / f.name)
    seen = sorted((tiny_benchmark / "Training" / "glioma").glob("*.jpg"))[0]
    cv2.imwrite(str(held / "glioma" / "mirrored_training_scan.png"), cv2.imread(str(seen))[:, ::-1])
    test_scan = sorted((tiny_benchmark / "Testing" / "notumor").glob("*.jpg"))[0]
    shutil.copy(test_scan, held / "notumor" / "copy_of_a_test_scan.jpg")
    one_class = tmp_path / "one_class"
    shutil.copytree(held / "notumor", one_class / "notumor")
    capsys.readouterr()
    assert cli.main(["calibrate", str(out), "--data", str(tiny_benchmark), "--held-out", str(one_class)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"one_class: all \d+ usable validation scans are no_tumor \(\d+ more left out as twins", err)
    assert "a temperature needs scans of at least two classes" in err
    assert cli.main(["calibrate", str(out), "--data", str(tiny_benchmark), "--held-out", str(held)]) == 0
    cal = read_config(out)["calibration"]
    assert cal["held_out"] == str(held) and cal["n_val_twins_left_out"] >= 2
    assert cal["n_val"] + cal["n_val_twins_left_out"] == 18 and "without twins" in cal["fitted_on"]
    assert f"held-out scans under `{held}`" in (out / "MODEL_CARD.md").read_text()
    assert cli.main(["competence", str(out), "--data", str(tiny_benchmark), "--held-out", str(held)]) == 0
    comp = read_config(out)["competence"]
    assert comp["validation"]["n"] == cal["n_val"] and str(held) in comp["fitted_on"]
    # class biases: stored, shown in the card, and applied by every prediction after the temperature
    assert cli.main(["calibrate", str(out), "--data", str(tiny_benchmark), "--held-out", str(held),
                     "--class-bias", "yes", "--overwrite"]) == 0
    config = read_config(out)
    assert len(config["class_bias"]) == 4 and config["class_bias"][-1] == 0.0
    assert config["calibration"]["class_bias"]["kept"] and "bias-corrected" in config["calibration"]["method"]
    assert "**Class biases**" in (out / "MODEL_CARD.md").read_text()
    from scipy.special import softmax

    from xai_bt.evaluation.temperature import probabilities_at, raw_logits
    bundle = load_model(out)
    x = bundle.prepare([str(p) for p in sorted(SAMPLES.glob("*.jpg"))])
    logits = raw_logits(bundle, x)
    expected = softmax(logits["model"] / bundle.temperature + np.asarray(config["class_bias"]), axis=1)
    assert np.allclose(bundle.predict_prepared(x).probabilities, expected, atol=1e-6)
    assert np.allclose(probabilities_at(bundle, logits, bundle.temperature, bundle.class_bias), expected)
    assert cli.main(["calibrate", str(out), "--data", str(tiny_benchmark), "--held-out", str(held),
                     "--overwrite"]) == 0
    assert "class_bias" not in read_config(out)   # a plain refit drops them


def test_label_smoothing_loss_matches_keras_on_one_hot_labels():
    """The sparse smoothed loss equals Keras' CategoricalCrossentropy(label_smoothing) on one-hot labels."""
    import keras

    from xai_bt.model.training import classification_loss

    assert classification_loss(0.0, 4) == "sparse_categorical_crossentropy"
    y = np.array([0, 3, 1])
    p = np.array([[0.7, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.4], [0.05, 0.9, 0.03, 0.02]], np.float32)
    ours = float(classification_loss(0.1, 4)(y, p))
    theirs = float(keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(np.eye(4)[y], p))
    assert ours == pytest.approx(theirs, rel=1e-6)
    plain = float(keras.losses.SparseCategoricalCrossentropy()(y, p))
    assert ours > plain  # smoothing penalises the confident rows


@pytest.mark.slow
def test_ema_and_label_smoothing_train_and_are_recorded(tiny_benchmark, tmp_path):
    out = train(_cfg(tiny_benchmark, tmp_path / "ema", epochs=2, label_smoothing=0.1, ema=0.9, schedule="cosine"))
    card = (out / "MODEL_CARD.md").read_text()
    assert "--label-smoothing 0.1" in card and "--ema 0.9" in card
    assert load_model(out).predict([str(SAMPLES / "glioma.jpg")]).probabilities.shape == (1, 4)


@pytest.mark.slow
def test_mixup_and_cutmix_train_on_soft_labels_and_are_recorded(tiny_benchmark, tmp_path):
    out = train(_cfg(tiny_benchmark, tmp_path / "mix", epochs=1, mixup=0.2, cutmix=1.0, label_smoothing=0.1))
    card = (out / "MODEL_CARD.md").read_text()
    assert "--mixup 0.2" in card and "--cutmix 1.0" in card
    history = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert {"accuracy", "val_accuracy", "val_loss"} <= set(history)
    assert load_model(out).predict([str(SAMPLES / "glioma.jpg")]).probabilities.shape == (1, 4)
    with pytest.raises(ValueError, match="Beta alpha >= 0"):
        train(_cfg(tiny_benchmark, tmp_path / "neg", mixup=-0.5))
    with pytest.raises(ValueError, match="not supported with --focus-masks"):
        train(_cfg(tiny_benchmark, tmp_path / "f", cutmix=1.0, focus_masks=str(tiny_benchmark)))
