"""The focus audit end to end on a tiny BRISC copy with a tiny random-init bundle, and its aggregation."""
import csv
import json
import shutil

import numpy as np
import pytest

from xai_bt import cli
from xai_bt.audit.runner import cascade_layers, score_maps, summarise_scores
from xai_bt.data.sample import CLASS_NAMES

from conftest import DATA

pytest.importorskip("tensorflow")
BRISC = DATA / "brisc2025"
SIZE = 64
PER_CLASS = 2  # scans per tumor class


@pytest.fixture(scope="module")
def brisc(tmp_path_factory):
    """A BRISC-layout copy: the first PER_CLASS masked scans of each tumor class, with labels.csv."""
    if not (BRISC / "labels.csv").is_file():
        pytest.skip(f"BRISC data not found at {BRISC}")
    with open(BRISC / "labels.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    picked = [r for label in ("glioma", "meningioma", "pituitary")
              for r in [r for r in rows if r["label"] == label and r["mask"]][:PER_CLASS]]
    root = tmp_path_factory.mktemp("data") / "brisc"
    for r in picked:
        for key in ("file", "mask"):
            (root / r[key]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(BRISC / r[key], root / r[key])
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(picked)
    return root


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory, brisc):
    """A 64-px xai_cnn with random weights whose split.csv says it trained on a copy of the first
    BRISC scan and validated on a copy of the second (under a separate training data folder)."""
    import keras

    from xai_bt.model import architectures
    from xai_bt.model.bundle import save_bundle
    from xai_bt.model.preprocessing import Preprocessing

    keras.utils.set_random_seed(0)
    arch = architectures.build("xai_cnn", SIZE, 4)
    path = save_bundle(tmp_path_factory.mktemp("model") / "tiny", "single", {"model": arch.model}, CLASS_NAMES,
                       Preprocessing(image_size=SIZE), arch.last_conv_layer)
    train_root = path.parent / "train_data"
    scans = sorted((brisc / "images").rglob("*.jpg"))
    with open(path / "split.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        for scan, part in zip(scans[:2], ("train", "val")):
            rel = f"Training/{scan.parent.name}/{scan.name}"
            (train_root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(scan, train_root / rel)
            w.writerow([rel, scan.parent.name, part])
    return path


def test_audit_end_to_end(bundle_path, brisc, tmp_path, capsys):
    out = tmp_path / "audit"
    argv = ["audit", str(bundle_path), "--data", str(brisc), "--train-data", str(bundle_path.parent / "train_data"),
            "--methods", "gradcam,layercam,saliency", "--faithfulness", "2", "--sanity", "2",
            "--gallery", "2", "--batch-size", "4", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr()
    assert "pointing game" in printed.out and "wrote" in printed.out
    summary = json.loads((out / "summary.json").read_text())
    n = 3 * PER_CLASS - 1                                   # the scan copied into training is not unseen
    assert summary["n_images"] == n and summary["selection"]["unseen"] == n
    assert summary["selection"]["unseen_with_val_twin"] == 1 and "validation" in summary["unseen_definition"]
    assert summary["wall_time_s"] > 0 and summary["command"].startswith("python -m xai_bt audit")
    for method in ("gradcam", "layercam", "saliency"):
        block = summary["scores"][method]
        assert set(block) == {"all", "by_class", "by_plane", "by_prediction"}
        for entry in block["all"].values():
            if entry["mean"] is not None:
                assert 0 <= entry["low"] <= entry["mean"] <= entry["high"] <= 1
        assert summary["faithfulness"][method]["summary"]["deletion_auc"]["n"] == 2
        assert len(summary["sanity"]["methods"][method]["steps"]) == len(summary["sanity"]["layers"])
    with open(out / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * n and {r["method"] for r in rows} == {"gradcam", "layercam", "saliency"}
    assert all(0 <= float(r["energy_pointing_game"]) <= 1 for r in rows)
    assert sum(r["deletion_auc"] != "" for r in rows) == 3 * 2
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 3 + 2 and "validation" in report

    # a second run into the same folder is refused, and --all audits every masked scan
    assert cli.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["audit", str(bundle_path), "--data", str(brisc), "--all", "--methods", "gradcam",
                     "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["n_images"] == 3 * PER_CLASS


def test_unseen_needs_the_training_data(bundle_path, brisc, tmp_path, capsys):
    assert cli.main(["audit", str(bundle_path), "--data", str(brisc), "--methods", "gradcam",
                     "--out", str(tmp_path / "a")]) == 2
    assert "--train-data" in capsys.readouterr().err


def test_heatmap_equal_to_mask_scores_one():
    rng = np.random.default_rng(0)
    n, side = 5, SIZE
    area = int(round(0.05 * side * side))               # the top-5% set is exactly the mask
    masks = np.zeros((n, side * side), bool)
    for i in range(n):
        start = rng.integers(0, side * side - area)
        masks[i, start:start + area] = True
    masks = masks.reshape(n, side, side)
    images = np.full((n, side, side), 128, np.uint8)
    scores = score_maps(masks.astype(np.float32), masks, images, tolerance_px=2)
    summary = summarise_scores(scores, {"by_class": ["glioma", "pituitary", "glioma", "glioma", "pituitary"]})
    for name in ("pointing_game", "energy_pointing_game", "relevance_rank_accuracy", "topk_iou"):
        for group in (summary["all"], *summary["by_class"].values()):
            assert group[name]["mean"] == pytest.approx(1.0) and group[name]["low"] == pytest.approx(1.0)
    assert summary["all"]["outside_head_share"]["mean"] == 0.0


def test_cascade_layers_group_blocks():
    import keras

    inp = keras.Input((16, 16, 1))
    x = inp
    for name in ("stem_conv", "block1a_conv", "block1a_project", "block2a_expand", "block2b_conv", "top_conv"):
        x = keras.layers.Conv2D(2, 1, name=name)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="logits")(x))
    assert cascade_layers(model) == ["logits", "top_conv", "block2a_expand", "block1a_conv", "stem_conv"]


def test_mask_sources_folder_csv_and_boxes(tmp_path):
    from PIL import Image

    from xai_bt.audit.runner import mask_sources
    from xai_bt.data.sample import Sample

    gray = np.zeros((40, 50), np.uint8)
    data = tmp_path / "data"
    (data / "glioma").mkdir(parents=True)
    samples = [Sample(path=str(data / "glioma" / f"{name}.jpg"), label="glioma") for name in ("a", "b", "c")]
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.pad(np.full((10, 10), 255, np.uint8), ((0, 30), (0, 40)))).save(tmp_path / "masks" / "a.png")
    (tmp_path / "boxes").mkdir()
    (tmp_path / "boxes" / "b.txt").write_text("0 0.5 0.5 0.2 0.5\n")
    sources = mask_sources(samples, str(data), masks=str(tmp_path / "masks"), boxes=str(tmp_path / "boxes"))
    assert [s and s.kind for s in sources] == ["file", "yolo", None]
    assert sources[0].load(samples[0], gray).sum() == 100
    assert sources[1].load(samples[1], gray).sum() == 10 * 20

    (tmp_path / "masks.csv").write_text("file,mask\nglioma/c.jpg,masks/a.png\n")
    sources = mask_sources(samples, str(data), masks=str(tmp_path / "masks.csv"))
    assert [s and s.kind for s in sources] == [None, None, "file"]
    assert sources[2].path == str(tmp_path / "masks" / "a.png")


def _scores(path):
    with open(path, newline="") as fh:
        return {(r["path"], r["method"]): r for r in csv.DictReader(fh)}


def test_streamed_audit_in_shards_matches_the_in_memory_audit(bundle_path, brisc, tmp_path, capsys):
    common = [str(bundle_path), "--data", str(brisc), "--train-data", str(bundle_path.parent / "train_data"),
              "--methods", "gradcam,saliency", "--faithfulness", "2", "--gallery", "1", "--batch-size", "2"]
    assert cli.main(["audit", *common, "--out", str(tmp_path / "memory")]) == 0
    out = tmp_path / "streamed"
    for k in (1, 2):
        assert cli.main(["audit", *common, "--out", str(out), "--shard", f"{k}/2"]) == 0
        assert not (out / "summary.json").exists()
    with open(out / "scores-2-of-2.csv", "ab") as fh:           # a row cut short by a kill
        fh.write(b"images/x.jpg,glio")
    capsys.readouterr()
    assert cli.main(["audit", *common, "--out", str(out), "--resume"]) == 0
    assert "already done" in capsys.readouterr().err
    mem, streamed = _scores(tmp_path / "memory" / "scores.csv"), _scores(out / "scores.csv")
    assert set(mem) == set(streamed) and len(mem) == 2 * (3 * PER_CLASS - 1)
    for key, row in mem.items():
        for name, value in row.items():
            if name in ("energy_pointing_game", "pointing_game", "deletion_auc", "road_morf", "prediction",
                        "target", "mask_fraction", "correct", "mask_source"):
                assert streamed[key][name] == value, (key, name)
    a = json.loads((tmp_path / "memory" / "summary.json").read_text())
    b = json.loads((out / "summary.json").read_text())
    assert b["n_images"] == a["n_images"] and b["accuracy"] == a["accuracy"] and b["streamed"]
    for method in ("gradcam", "saliency"):
        for name, entry in a["scores"][method]["all"].items():
            if entry["mean"] is not None:
                assert abs(b["scores"][method]["all"][name]["mean"] - entry["mean"]) < 1e-3
        assert b["faithfulness"][method]["summary"]["deletion_auc"]["n"] == 2
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
