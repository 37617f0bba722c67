"""The focus audit end to end on a tiny BRISC copy with a tiny random-init bundle, its sinks and aggregation."""
import csv
import json
import logging
import shutil

import numpy as np
import pytest
from conftest import DATA

from xai_bt import cli
from xai_bt.audit.measure import MAP_SCORES, cascade_layers, score_maps
from xai_bt.audit.summary import read_columns, summarise_scores
from xai_bt.data.sample import CLASS_NAMES

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

    from xai_bt.audit.selection import mask_sources
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


# ------------------------------------------------------------------------------------- config and sinks
def test_config_overrides_and_checks():
    from xai_bt.attribution import registry
    from xai_bt.audit.runner import AuditConfig

    default = AuditConfig()
    assert default.methods == registry.AUDIT_DEFAULT and default.target == "true" and default.batch_size == 32
    cfg = AuditConfig.of(AuditConfig(limit=5), methods="gradcam, saliency,gradcam", seed=3)
    assert (cfg.methods, cfg.limit, cfg.seed) == (("gradcam", "saliency"), 5, 3)
    with pytest.raises(TypeError, match="limt"):
        AuditConfig.of(limt=5)
    for bad in ({"target": "tumor"}, {"methods": ["nope"]}, {"batch_size": 0}, {"top_k": 2.0}, {"sanity": -1}):
        with pytest.raises(ValueError):
            AuditConfig(**bad)


def _rows(n=7, methods=("gradcam", "saliency"), seed=0):
    """Score rows as the audit loop makes them (full precision, NaN where undefined)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        base = {"path": f"images/{i}.jpg", "label": ("glioma", "pituitary")[i % 2], "plane": ("axial", "")[i % 3 == 0],
                "mask_source": "dataset", "mask_fraction": rng.uniform(0, 0.1), "max_similarity_train": rng.uniform(),
                "max_similarity_val": np.nan, "target": "glioma", "prediction": "glioma",
                "confidence": rng.uniform(0.5, 1), "correct": bool(i % 3)}
        for m in methods:
            scores = {k: rng.uniform() for k in MAP_SCORES}
            scores["pointing_game"] = np.nan if i == 4 else float(rng.integers(0, 2))
            rows.append({**base, "method": m, **scores, "deletion_auc": np.nan, "insertion_auc": np.nan,
                         "road_morf": np.nan, "road_lerf": np.nan})
    return rows


def test_memory_and_csv_sinks_give_the_same_columns_and_summary(tmp_path):
    from xai_bt.audit.sinks import SCORE_FIELDS, CsvSink, MemorySink

    rows, methods = _rows(), ("gradcam", "saliency")
    paths = sorted({r["path"] for r in rows}, key=lambda p: int(p.split("/")[1].split(".")[0]))
    order = {p: j for j, p in enumerate(paths)}
    sinks = {"memory": MemorySink(), "csv": CsvSink(tmp_path)}
    for sink in sinks.values():
        assert sink.start(paths, range(len(paths)), methods) == set()
        sink.append(rows[6:], [{"path": "images/x.jpg", "reason": "empty mask", "error": "empty mask"}])
        sink.append(rows[:6], [])           # written out of order: columns follow the audit order anyway
        sink.fill({("images/2.jpg", "saliency"): {"deletion_auc": 0.123456}})
        sink.close()
    with open(tmp_path / "scores.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == SCORE_FIELDS
        written = {(r["path"], r["method"]): r for r in reader}
    assert written[("images/2.jpg", "saliency")]["deletion_auc"] == "0.1235"
    assert written[("images/4.jpg", "gradcam")]["pointing_game"] == "" and written[("images/1.jpg", "gradcam")]["correct"] == "True"
    mem, disk = (read_columns(s.rows(), order, methods) for s in sinks.values())
    assert mem.positions == disk.positions == list(range(len(paths)))
    assert mem.label == disk.label and mem.plane == disk.plane and list(mem.correct) == list(disk.correct)
    np.testing.assert_allclose(mem.mask_fraction, disk.mask_fraction, atol=5e-5)
    for m in methods:
        a, b = summarise_scores(mem.scores[m], {"by_class": mem.label}), summarise_scores(disk.scores[m], {"by_class": disk.label})
        for group in ("all", "by_class"):
            flat_a, flat_b = (a[group] if group == "all" else a[group]["glioma"]), (b[group] if group == "all" else b[group]["glioma"])
            for name, entry in flat_a.items():
                assert (entry["n"], entry["n_valid"]) == (flat_b[name]["n"], flat_b[name]["n_valid"])
                for k in ("mean", "low", "high"):
                    assert entry[k] == pytest.approx(flat_b[name][k], abs=1e-4), (m, group, name, k)
    assert sinks["memory"].skipped() == sinks["csv"].skipped()


def test_csv_sink_resume_keeps_finished_scans_and_merges_shards(tmp_path):
    from xai_bt.audit.sinks import CsvSink

    rows, methods = _rows(n=4), ("gradcam", "saliency")
    paths = [f"images/{i}.jpg" for i in range(4)]
    for k in (1, 2):                                        # shard k owns scans k-1, k+1
        sink = CsvSink(tmp_path, shard=(k, 2))
        sink.start(paths, range(k - 1, 4, 2), methods)
        mine = [r for r in rows if int(r["path"].split("/")[1][0]) % 2 == k - 1]
        sink.append(mine[:3], [])                           # killed after the first scan and a half
        sink.close()
    final = CsvSink(tmp_path, resume=True)
    assert final.start(paths, range(4), methods) == {"images/0.jpg", "images/1.jpg"}
    final.append([r for r in rows if r["path"] in ("images/2.jpg", "images/3.jpg")], [])
    final.close()
    cols = read_columns(final.rows(), {p: j for j, p in enumerate(paths)}, methods)
    assert cols.positions == [0, 1, 2, 3] and sum(1 for _ in final.rows()) == 8


def test_an_empty_mask_is_skipped_with_its_reason(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from xai_bt.audit.selection import EMPTY_MASK, MaskSource, scan_loader
    from xai_bt.data.sample import Sample
    from xai_bt.io.stream import one_line
    from xai_bt.model.preprocessing import Preprocessing

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(tmp_path / "scan.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "empty.png")
    full = np.zeros((40, 40), np.uint8)
    full[10:30, 10:30] = 255
    Image.fromarray(full).save(tmp_path / "full.png")
    bundle = SimpleNamespace(preprocessing=Preprocessing(image_size=SIZE))
    samples = [Sample(path=str(tmp_path / "scan.png"), label="glioma")] * 2
    load = scan_loader(bundle, samples, [MaskSource("file", str(tmp_path / "empty.png")),
                                         MaskSource("file", str(tmp_path / "full.png"))])
    with pytest.raises(ValueError) as err:
        load(0)
    assert one_line(err.value) == EMPTY_MASK
    x, mask = load(1)
    assert x.shape == mask.shape == (SIZE, SIZE) and x.dtype == np.uint8 and mask.any()


def test_killed_then_resumed_stream_equals_the_in_memory_audit(bundle_path, brisc, tmp_path, monkeypatch, caplog):
    from xai_bt.audit import runner

    cfg = runner.AuditConfig(methods=("gradcam", "saliency"), train_data=str(bundle_path.parent / "train_data"),
                             faithfulness=2, gallery_size=1, batch_size=2, progress=False)
    caplog.set_level(logging.INFO, logger="xai_bt.audit")
    memory = runner.run_audit(bundle_path, str(brisc), cfg, seed=0)
    assert "scans to audit" in caplog.text
    assert len(memory.rows) == 2 * memory.summary["n_images"] and "streamed" not in memory.summary

    out, calls = tmp_path / "streamed", []
    real = runner._Audit._score_batch

    def killed(self, items):
        calls.append(len(items))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, items)

    monkeypatch.setattr(runner._Audit, "_score_batch", killed)
    with pytest.raises(KeyboardInterrupt):
        runner.stream_audit(bundle_path, str(brisc), out, cfg)
    assert len(_scores(out / "scores.csv")) == 2 * 2 and not (out / "summary.json").exists()
    monkeypatch.setattr(runner._Audit, "_score_batch", real)
    summary = runner.stream_audit(bundle_path, str(brisc), out, cfg, resume=True)
    assert "resume: 2 of 5 scans already done, 3 to go" in caplog.text

    streamed = _scores(out / "scores.csv")
    assert streamed == {(r["path"], r["method"]): {k: str(v) for k, v in r.items()} for r in memory.rows}
    a, b = memory.summary, summary
    assert b["streamed"] and (b["n_images"], b["accuracy"], b["selection"]) == (a["n_images"], a["accuracy"],
                                                                               a["selection"])
    assert b["settings"] == a["settings"] and b["mask_sources"] == a["mask_sources"]
    for method in cfg.methods:
        for group in ("all", "by_class", "by_prediction"):
            pa, pb = a["scores"][method][group], b["scores"][method][group]
            entries = [(pa, pb)] if group == "all" else [(pa[k], pb[k]) for k in pa]
            for ea, eb in entries:
                for name, entry in ea.items():
                    for k in ("mean", "low", "high"):
                        assert (entry[k] is None and eb[name][k] is None) or abs(entry[k] - eb[name][k]) < 1e-3
        assert b["faithfulness"][method] == a["faithfulness"][method]   # same scans, pixels and batches
    assert (out / "report.html").is_file() and not [p for p in out.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------ the report page
def _entry(mean, half=0.05, n=40):
    """A summarise() entry: mean with a symmetric CI."""
    return {"mean": mean, "low": max(0.0, mean - half), "high": min(1.0, mean + half), "n": n, "n_valid": n}


def _synthetic_summary():
    """A summary.json as the audit writes it: IG localises best, Grad-CAM++ fails randomisation and is
    identical to Layer-CAM, pituitary is every method's weakest class."""
    from xai_bt.audit.measure import FAITHFULNESS_SCORES

    methods = ["gradcam", "gradcam++", "layercam", "integrated_gradients"]
    pg = {"gradcam": 0.27, "gradcam++": 0.25, "layercam": 0.25, "integrated_gradients": 0.53}
    classes = {"glioma": 1.0, "meningioma": 1.4, "pituitary": 0.5}

    def block(p, scale=1.0):
        return {name: _entry(p * scale if name == "pointing_game" else 0.2 * p * scale) for name in MAP_SCORES}

    scores = {m: {"all": block(pg[m]), "by_class": {c: block(pg[m], f) for c, f in classes.items()},
                  "by_plane": {"axial": block(pg[m])}, "by_prediction": {"correct": block(pg[m])}} for m in methods}
    def curve(m):
        mid = 0.2 + pg[m]                                           # Grad-CAM++ and Layer-CAM: the same curve
        return {"fraction": [0, 0.5, 1], "deletion": [0.9, mid, 0.3], "insertion": [0.3, 1 - mid, 0.9]}

    faith = {m: {"summary": {k: _entry(0.4 + 0.1 * (m == "integrated_gradients")) for k in FAITHFULNESS_SCORES},
                 "curves": curve(m)} for m in methods}
    steps = {m: [{"layer": layer, "spearman": rho, "ssim": 0.3} for layer, rho in
                 zip(("logits", "top_conv", "stem_conv"), {"gradcam": (0.3, 0.1, 0.05), "integrated_gradients": (0.2, 0.0, -0.02)}
                     .get(m, (0.99, 0.8, 0.6)))] for m in methods}
    chance = {"mask_fraction": _entry(0.02, 0.002)}
    return {
        "model": "models/x", "model_name": "x", "temperature": 1.5, "data": "data/brisc", "classes": list(CLASS_NAMES),
        "input_size": 160, "cam_layer": "top_activation", "target": "true", "methods": methods, "n_images": 40,
        "selection": {"scans": 100, "with_mask": 90, "unseen_only": True, "train_rows": 500, "unseen": 40,
                      "seen": 50, "unseen_with_val_twin": 40, "skipped": {}, "audited": 40},
        "unseen_definition": "Unseen = no twin among the training scans; all have a twin in validation.",
        "accuracy": 0.95, "mask_sources": {"dataset": 40},
        "settings": {"tolerance_px": 4.8, "top_k": 0.05, "bootstrap_resamples": 1000, "ci": 0.95,
                     "faithfulness_images": 40, "road_percentages": [10, 50, 90], "sanity_images": 6, "limit": None,
                     "seed": 0},
        "chance": {"all": chance, "by_class": {c: chance for c in classes}, "by_plane": {"axial": chance},
                   "by_prediction": {"correct": chance}},
        "scores": scores, "faithfulness": faith,
        "sanity": {"layers": ["logits", "top_conv", "stem_conv"], "n_images": 6,
                   "methods": {m: {"fails": m in ("gradcam++", "layercam"), "steps": steps[m]} for m in methods}},
        "timings": {"load_and_select_s": 1.0, "total_s": 2.0}, "wall_time_s": 2.0,
    }


def _text(fragment):
    """An HTML fragment as plain words."""
    import html
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def test_conclusions_name_the_best_localiser_and_the_failing_methods():
    from xai_bt.audit.report import conclusions

    s = _synthetic_summary()
    said = [_text(c) for c in conclusions(s)]
    best = next(c for c in said if "localises best" in c)
    assert best.startswith("Integrated Gradients localises best") and "0.530 (95% CI 0.480–0.580, n = 40)" in best
    assert "2.0% for a randomly placed peak" in best
    assert said[0].startswith(("Shown first: ", "No method passed"))     # the recommendation leads
    failing = next(c for c in said[1:] if "randomisation check" in c)
    assert "Grad-CAM++ and Layer-CAM fail the randomisation check" in failing
    assert "Passing: Grad-CAM 0.05, Integrated Gradients -0.02" in failing
    assert any("Grad-CAM++ and Layer-CAM give the same maps" in c for c in said)
    assert any(c.startswith("By class, pituitary is the weak spot") for c in said)
    assert any("40 scans unseen in training" in c and "validation" in c for c in said)
    assert not any("_" in c for c in said)                         # display names, never code names

    # numbers, not words, decide: another winner and nobody failing change the sentences
    s["scores"]["gradcam"]["all"]["pointing_game"] = _entry(0.9)
    for m in s["methods"]:
        s["sanity"]["methods"][m]["fails"] = False
    said = [_text(c) for c in conclusions(s)]
    assert any(c.startswith("Grad-CAM localises best") for c in said)
    assert any(c.startswith("Every method passes the randomisation check") for c in said)


def test_report_page_uses_display_names_and_says_its_conclusions_first():
    import re

    from xai_bt.audit.report import render_report

    page = render_report(_synthetic_summary(), {})
    visible = _text(re.sub(r"<(style|code)>.*?</\1>", "", page, flags=re.S))
    assert visible.index("What this audit says") < visible.index("Which scans") < visible.index("Localisation")
    assert "Integrated Gradients" in visible and "integrated_gradients" not in visible
    assert not {"gradcam", "layercam", "pointing_game", "energy_pointing_game", "by_class"} & set(visible.split())
    assert "pointing game" in visible and "top-5% IoU" in visible


def test_forest_plots_fit_their_values_and_identical_curves_are_named():
    from xai_bt.audit.localisation import LOCALISATION_SCORES
    from xai_bt.plots.audit import faithfulness_figure, localisation_figure, sanity_figure
    from xai_bt.plots.style import clipped_texts

    s = _synthetic_summary()
    fig = localisation_figure(s, LOCALISATION_SCORES)
    energy = next(ax for ax in fig.axes if ax.get_title().startswith("energy"))
    low, high = energy.get_xlim()
    assert 0 <= low <= 0.02 and 0.11 <= high < 0.3                # values 0.05-0.106 and chance 0.02: not 0-1
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][-1] == "Integrated Gradients"
    for make in (faithfulness_figure, sanity_figure):
        fig = make(s)
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert any(t.startswith("Layer-CAM") and "identical to Grad-CAM++ within 0.0001" in t for t in labels)
        assert not any(ax.get_legend() for ax in fig.axes)         # the legend sits beside the axes, not on them
        lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith(("Grad-CAM++", "Layer-CAM"))]
        assert len({(ln.get_linestyle(), ln.get_marker()) for ln in lines}) == 2
        assert clipped_texts(fig) == []


def test_gallery_has_best_typical_and_worst_rows():
    from xai_bt.audit.summary import gallery_picks
    from xai_bt.plots.audit import gallery_figure

    energy = np.array([0.30, 0.05, np.nan, 0.12, 0.20, 0.01, 0.15, 0.08, 0.10, 0.25, 0.02])
    picks = gallery_picks(energy, 2)
    kinds = [k for k, _ in picks]
    assert kinds == ["best"] * 2 + ["typical"] * 2 + ["worst"] * 2
    by = {k: [energy[i] for kk, i in picks if kk == k] for k in ("best", "typical", "worst")}
    assert by["best"] == [0.30, 0.25] and by["worst"] == [0.01, 0.02]
    median = np.nanmedian(energy)                                   # 0.11, of the 10 valid values
    assert all(abs(v - median) <= 0.04 for v in by["typical"]) and len(set(i for _, i in picks)) == 6
    assert gallery_picks(energy[:4], 2) == [("best", 0), ("best", 3), ("worst", 1)]   # 3 scans: none twice

    rng = np.random.default_rng(0)
    items = [dict(kind=k, image=rng.random((SIZE, SIZE)) * 255, map=rng.random((SIZE, SIZE)),
                  mask=np.pad(np.ones((8, 8), bool), 28), label="no_tumor" if k == "typical" else "glioma",
                  plane="axial", energy_pointing_game=0.1, pointing_game=1.0, prediction="glioma", confidence=0.9)
             for k, _ in picks]
    fig = gallery_figure("integrated_gradients", items)
    rows = [sub._suptitle.get_text() for sub in fig.subfigs]
    assert [r.split(":")[0] for r in rows] == ["Best", "Typical", "Worst"]
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert len(titles) == 6 and sum(t.startswith("no tumor") for t in titles) == 2


def test_plain_audit_audits_the_candidates_stores_the_recommendation_and_lists_it_first(bundle_path, brisc, tmp_path,
                                                                                         capsys):
    from xai_bt.model.bundle import read_config
    from xai_bt.model.provenance import audit_candidates, recommended_explanation

    own = tmp_path / "model"
    shutil.copytree(bundle_path, own)
    common = ["audit", str(own), "--data", str(brisc), "--train-data", str(bundle_path.parent / "train_data"),
              "--gallery", "1", "--batch-size", "4"]
    assert cli.main([*common, "--out", str(tmp_path / "a1")]) == 0
    first = json.loads((tmp_path / "a1" / "summary.json").read_text())
    from xai_bt.model.bundle import load_model

    assert first["methods"] == list(audit_candidates(load_model(own)))
    assert "--methods" in first["command"]                       # what was audited is spelled out
    rec = recommended_explanation(read_config(own))
    assert rec is not None and rec["method"] in first["methods"]
    assert f"recommended explanation: {rec['method']}" in capsys.readouterr().out
    assert cli.main([*common, "--out", str(tmp_path / "a2")]) == 0
    second = json.loads((tmp_path / "a2" / "summary.json").read_text())
    assert second["methods"][0] == rec["method"] and sorted(second["methods"]) == sorted(first["methods"])
    before = (own / "bundle.json").read_text()
    assert cli.main([*common, "--methods", "saliency", "--no-store", "--out", str(tmp_path / "a3")]) == 0
    assert (own / "bundle.json").read_text() == before
