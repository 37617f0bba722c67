"""`python -m xai_bt calibrate` and `figures` end to end on a tiny random-init bundle and real scans."""
import csv
import json
import time

import numpy as np
import pytest
from conftest import FOLDERS, copy_benchmark_subset

from xai_bt import cli
from xai_bt.data.sample import CLASS_NAMES

SIZE = 64
N_TRAIN, N_TEST = 8, 5  # per class


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A benchmark-layout dataset (8 training, 5 test scans per class) and an over-confident 64-px
    baseline CNN bundle whose split.csv puts 3 training scans per class in validation."""
    import keras

    from xai_bt.model import architectures
    from xai_bt.model.bundle import save_bundle
    from xai_bt.model.preprocessing import Preprocessing

    root = tmp_path_factory.mktemp("data") / "brain-tumor-mri"
    copy_benchmark_subset(root, N_TRAIN, N_TEST)
    keras.utils.set_random_seed(0)
    arch = architectures.build("baseline_cnn", SIZE, 4)
    logits = arch.model.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * 40.0, bias])  # random and very sure of itself
    path = save_bundle(tmp_path_factory.mktemp("model") / "tiny", "single", {"model": arch.model}, CLASS_NAMES,
                       Preprocessing(image_size=SIZE), arch.last_conv_layer, arch="baseline_cnn",
                       training={"config": {"data": str(root)}})
    with open(path / "split.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "plane", "split"])
        for label, folder in FOLDERS.items():
            for split_dir, n in (("Training", N_TRAIN), ("Testing", N_TEST)):
                for i, f in enumerate(sorted((root / split_dir / folder).iterdir())):
                    part = "test" if split_dir == "Testing" else ("val" if i < 3 else "train")
                    w.writerow([f"{split_dir}/{folder}/{f.name}", label, "", part])
    with open(path / "history.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "accuracy", "loss", "val_accuracy", "val_loss", "phase"])
        for e in range(6):
            w.writerow([e, 0.5 + 0.08 * e, 1.2 - 0.15 * e, 0.45 + 0.07 * e, 1.3 - 0.12 * e,
                        "frozen" if e < 2 else "fine_tune"])
    return path, root


def test_calibrate_then_figures(setup, tmp_path, capsys):
    from xai_bt.evaluation.calibration import nll
    from xai_bt.evaluation.temperature import probabilities_at, raw_logits, validation_samples
    from xai_bt.model.bundle import load_model

    path, root = setup
    t0 = time.time()

    # --- calibrate: fitted on validation, lowers its NLL, stored in bundle.json -------------------
    assert cli.main(["calibrate", str(path), "--data", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "temperature T =" in printed and "before (T=1)" in printed
    config = json.loads((path / "bundle.json").read_text())
    rec = config["calibration"]
    t = config["temperature"]
    assert rec["temperature"] == t and rec["n_val"] == 12 and rec["n_missing"] == 0
    assert t > 1.5, "an over-confident random model needs softening"
    assert rec["after"]["nll"] < rec["before"]["nll"] - 0.5
    assert rec["after"]["accuracy"] == rec["before"]["accuracy"]  # argmax unchanged

    bundle = load_model(path)
    assert bundle.temperature == t
    samples, missing, n_twins = validation_samples(bundle, root)
    assert len(samples) == 12 and not missing and n_twins == 0  # split mirror-aware: no twin of train in val
    assert all("Training" in s.path for s in samples)
    x = bundle.prepare([s.path for s in samples])
    y = np.array([CLASS_NAMES.index(s.label) for s in samples])
    logits = raw_logits(bundle, x)
    np.testing.assert_allclose(probabilities_at(bundle, logits, t), bundle.predict_prepared(x).probabilities,
                               atol=1e-6)
    np.testing.assert_allclose(probabilities_at(bundle, logits, 1.0),
                               bundle.predict_prepared(x, calibrated=False).probabilities, atol=1e-6)
    at = lambda temp: nll(y, probabilities_at(bundle, logits, temp))  # noqa: E731
    assert at(t) == pytest.approx(rec["after"]["nll"]) and at(1.0) == pytest.approx(rec["before"]["nll"])
    assert at(t) <= min(at(t * 1.1), at(t / 1.1))  # a minimum of the validation NLL

    # refuses to refit without --overwrite, refits with it
    assert cli.main(["calibrate", str(path), "--data", str(root)]) == 2
    assert "already calibrated" in capsys.readouterr().err
    assert cli.main(["calibrate", str(path), "--data", str(root), "--overwrite"]) == 0
    capsys.readouterr()
    assert json.loads((path / "bundle.json").read_text())["temperature"] == pytest.approx(t, rel=1e-4)

    # --- figures --------------------------------------------------------------------------------
    out = tmp_path / "figures"
    argv = ["figures", str(path), "--data", str(root), "--out", str(out), "--formats", "png,pdf",
            "--n-boot", "200"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "ECE" in printed and "AUC" in printed
    assert "cut off" not in printed  # every figure fits its journal width
    d = out / "tiny"
    for part in ("official", "leakage_free"):
        for stem in (f"roc_{part}", f"pr_{part}", f"confusion_counts_{part}", f"confusion_normalised_{part}",
                     f"reliability_{part}", f"reliability_classes_{part}_raw",
                     f"reliability_classes_{part}_calibrated"):
            for fmt in ("png", "pdf"):
                assert (d / f"{stem}.{fmt}").stat().st_size > 1000, (stem, fmt)
        for ext in ("csv", "md", "tex"):
            assert (d / f"metrics_{part}.{ext}").is_file()
    for stem in ("training_curves",):
        assert (d / f"{stem}.png").is_file()
    for table in ("summary", "auc_ci", "ap_ci", "calibration", "calibration_change"):
        for ext in ("csv", "md", "tex"):
            assert (d / f"{table}.{ext}").is_file(), table
    for f in ("architecture_comparison.png", "architecture_comparison.pdf", "comparison.csv", "comparison.md",
              "comparison.tex"):
        assert (out / f).is_file(), f
    assert b"/FontFile2" in (d / "roc_official.pdf").read_bytes()  # TrueType embedded

    with open(d / "calibration.csv", newline="") as fh:
        cal = list(csv.DictReader(fh))
    fit_rows = [r for r in cal if r["data"] == "validation (fit)"]
    assert [r["probabilities"] for r in fit_rows] == ["raw", "temperature-scaled"]
    assert float(fit_rows[1]["nll"]) < float(fit_rows[0]["nll"])
    official = {r["probabilities"]: r for r in cal if r["data"] == "official test split"}
    assert float(official["temperature-scaled"]["temperature"]) == pytest.approx(t, rel=1e-4)
    assert float(official["raw"]["n"]) == 4 * N_TEST

    with open(d / "calibration_change.csv", newline="") as fh:
        change = {(r["test_set"], r["metric"]): r for r in csv.DictReader(fh)}
    nll_change = change[("official test split", "nll")]
    assert float(nll_change["change"]) == pytest.approx(
        float(official["temperature-scaled"]["nll"]) - float(official["raw"]["nll"]), abs=1e-9)
    assert float(nll_change["change_ci_low"]) <= float(nll_change["change"]) <= float(nll_change["change_ci_high"])

    results = json.loads((d / "results.json").read_text())
    assert results["parts"]["official"]["n"] == 4 * N_TEST
    assert set(results["parts"]["official"]["calibrated"]["auc_ci"]["per_class"]) == set(CLASS_NAMES)
    with open(d / "predictions.csv", newline="") as fh:
        preds = list(csv.DictReader(fh))
    assert len(preds) == 4 * N_TEST and preds[0]["path"].startswith("Testing/")
    z = np.array([[float(r[f"logit_{c}"]) for c in CLASS_NAMES] for r in preds])
    p_raw = np.array([[float(r[f"p_raw_{c}"]) for c in CLASS_NAMES] for r in preds])
    p_cal = np.array([[float(r[f"p_{c}"]) for c in CLASS_NAMES] for r in preds])
    np.testing.assert_allclose(probabilities_at(bundle, {"model": z}, 1.0), p_raw, atol=1e-5)
    np.testing.assert_allclose(probabilities_at(bundle, {"model": z}, t), p_cal, atol=1e-5)
    # the evaluation's own temperature-scaled outputs agree with a fresh forward pass
    xt = bundle.prepare([str(root / r["path"]) for r in preds])
    np.testing.assert_allclose(bundle.predict_prepared(xt).probabilities, p_cal, atol=1e-5)

    # --- a second run refuses to overwrite, before evaluating anything --------------------------
    before = {f: f.stat().st_mtime_ns for f in d.iterdir()}
    t1 = time.time()
    assert cli.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert time.time() - t1 < 5
    assert {f: f.stat().st_mtime_ns for f in d.iterdir()} == before
    assert time.time() - t0 < 120


def test_bad_requests(setup, tmp_path, capsys):
    path, root = setup
    assert cli.main(["figures", str(path), "--data", str(root), "--out", str(tmp_path / "o"),
                     "--formats", "png,bmpx"]) == 2
    assert "bmpx" in capsys.readouterr().err
    no_split = tmp_path / "copy"
    no_split.mkdir()
    for f in path.iterdir():
        if f.name not in ("split.csv",) and f.is_file():
            (no_split / f.name).write_bytes(f.read_bytes())
    assert cli.main(["calibrate", str(no_split), "--data", str(root), "--overwrite"]) == 2
    assert "split.csv" in capsys.readouterr().err
    assert cli.main(["calibrate", str(path), "--data", str(tmp_path), "--overwrite"]) == 2
    capsys.readouterr()


def test_output_names_are_unique(tmp_path):
    from xai_bt.evaluation.paper import output_names, parse_formats

    a, b = tmp_path / "x" / "default", tmp_path / "y" / "default"
    assert output_names([a, b, tmp_path / "cnn"]) == ["default", "default_2", "cnn"]
    assert parse_formats(" PNG, .pdf,png") == ("png", "pdf")


def test_cascade_shares_one_temperature():
    """For a cascade, the fitted T minimises the NLL of the combined probabilities with both stages scaled."""
    from types import SimpleNamespace

    from xai_bt.evaluation.calibration import nll
    from xai_bt.evaluation.temperature import fit_bundle_temperature, probabilities_at

    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 4, n)  # glioma, meningioma, no_tumor, pituitary
    z1 = rng.normal(size=(n, 2)) * 4
    z1[:, 0] += np.where(y == 2, 12.0, -12.0) * rng.uniform(0.2, 1.0, n)
    types = ["glioma", "meningioma", "pituitary"]
    z2 = rng.normal(size=(n, 3)) * 6
    for i, cls in enumerate(y):
        if cls != 2:
            z2[i, types.index(CLASS_NAMES[cls])] += 5
    fake = SimpleNamespace(kind="cascade", class_names=CLASS_NAMES,
                           config={"stage1_classes": ["no_tumor", "tumor"], "stage2_classes": types})
    logits = {"stage1": z1, "stage2": z2}
    t = fit_bundle_temperature(fake, logits, y)
    at = lambda temp: nll(y, probabilities_at(fake, logits, temp))  # noqa: E731
    assert t > 1 and at(t) < at(1.0)
    assert at(t) <= min(at(t * 1.05), at(t / 1.05))
    np.testing.assert_allclose(probabilities_at(fake, logits, t).sum(1), 1.0)


def test_calibrate_with_hflip_tta(setup, tmp_path, capsys):
    """--tta hflip is stored with the refitted temperature; every prediction then averages the logits of
    the scan and its mirror, and the temperature fit saw those same averaged logits."""
    import shutil

    from xai_bt.model.bundle import load_model

    src, root = setup
    path = tmp_path / "tta"
    shutil.copytree(src, path)
    plain = load_model(path)
    x = plain.prepare(sorted(str(p) for p in (root / "Testing").rglob("*.jpg"))[:6])
    z, zf = plain.network_logits("model", x), plain.network_logits("model", x[:, :, ::-1].copy())
    assert not np.allclose(z, zf), "a random CNN is not mirror-symmetric; the test needs that"

    assert cli.main(["calibrate", str(path), "--data", str(root), "--tta", "hflip", "--overwrite"]) == 0
    assert "test-time augmentation: hflip" in capsys.readouterr().out
    bundle = load_model(path)
    config = json.loads((path / "bundle.json").read_text())
    assert bundle.tta == "hflip" and config["calibration"]["tta"] == "hflip"
    np.testing.assert_allclose(bundle.network_logits("model", x), (z + zf) / 2, rtol=1e-5, atol=1e-5)
    t = bundle.temperature
    e = np.exp((z + zf) / 2 / t - ((z + zf) / 2 / t).max(1, keepdims=True))
    np.testing.assert_allclose(bundle.predict_prepared(x).probabilities, e / e.sum(1, keepdims=True), atol=1e-6)
    assert "Test-time augmentation**: hflip" in (path / "MODEL_CARD.md").read_text()

    config["tta"] = "rot90"
    (path / "bundle.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown test-time augmentation 'rot90'"):
        load_model(path).predict_prepared(x)


# --------------------------------------------------------------------------------------------- the engine, model-free
def _fake_evaluation(tmp_path, n: int = 160, temperature: float = 1.7):
    """A ModelEvaluation without a network: logits of an over-confident 4-class model, two test parts."""
    from types import SimpleNamespace

    from scipy.special import softmax

    from xai_bt.evaluation.paper import ModelEvaluation

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), n // 4)
    z = rng.normal(scale=3.0, size=(n, 4))
    z[np.arange(n), y] += 3.0
    bundle_dir = tmp_path / "fake_model"
    bundle_dir.mkdir()
    (bundle_dir / "history.csv").write_text("epoch,loss,val_loss\n0,1.0,1.1\n1,0.6,0.8\n")
    bundle = SimpleNamespace(path=bundle_dir, config={"arch": "fake"}, kind="single", class_names=CLASS_NAMES,
                             temperature=temperature)
    probs = {"raw": softmax(z, axis=1), "calibrated": softmax(z / temperature, axis=1)}
    free = np.arange(n) % 3 != 0
    rows = [{"path": str(tmp_path / f"scan_{i}.jpg"), "true": CLASS_NAMES[y[i]],
             "pred": CLASS_NAMES[int(probs["calibrated"][i].argmax())], "leakage_free": bool(free[i]),
             "max_similarity_to_training": 0.5} for i in range(n)]
    results = {"data": str(tmp_path), "test_set": "official test split", "dedup_threshold": 0.99,
               "reference_scans": 100, "n_unreadable": 0, "predictions": rows}
    return ModelEvaluation("fake", bundle, results, y, {"model": z}, probs,
                           {"official": np.ones(n, bool), "leakage_free": free}, 0.0)


def test_engine_computes_each_number_once_and_every_output_shows_it(tmp_path, monkeypatch):
    """Bootstraps, curves and bins run once per part (and setting); figures, tables, README, results.json and
    the summary all show those very numbers."""
    from collections import Counter

    from xai_bt.evaluation import metrics, paper

    ev = _fake_evaluation(tmp_path)
    calls = Counter()
    for name in ("auc_with_ci", "average_precision_with_ci", "roc_bands", "roc_curves", "pr_curves",
                 "reliability_panels", "bootstrap_ci", "bootstrap_difference", "bootstrap_paired", "roc_plot_data"):
        def counted(*args, _real=getattr(metrics, name), _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(metrics, name, counted)
    res = paper.model_outputs(ev, tmp_path / "out", formats=("png",), n_boot=40, n_bins=10)
    parts = 2
    assert calls == {"auc_with_ci": 2 * parts, "average_precision_with_ci": 2 * parts, "roc_bands": parts,
                     "roc_curves": parts, "pr_curves": parts, "reliability_panels": 2 * parts,
                     "bootstrap_paired": 3 * parts}
    monkeypatch.undo()

    d = tmp_path / "out"
    numbers = res["numbers"]
    assert json.loads((d / "results.json").read_text())["parts"] == json.loads(json.dumps(numbers))
    official = numbers["official"]["calibrated"]
    with open(d / "summary.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    assert float(summary[0]["macro_auc"]) == official["auc_ci"]["macro"]["estimate"]
    assert float(summary[1]["ece_raw"]) == numbers["leakage_free"]["raw"]["calibration"]["ece"]
    readme = (d / "README.md").read_text()
    macro = official["auc_ci"]["macro"]
    assert f"{macro['estimate']:.4f} [{macro['low']:.4f}, {macro['high']:.4f}]" in readme

    # the figures are drawn from those dicts alone: with every computing function broken they still draw
    def broken(*args, **kwargs):
        raise AssertionError("a figure recomputed a number")
    for name in ("auc_with_ci", "average_precision_with_ci", "roc_bands", "roc_curves", "pr_curves",
                 "reliability_panels", "with_bin_intervals", "wilson_interval", "macro_pr_curve"):
        monkeypatch.setattr(metrics, name, broken)
    from xai_bt.evaluation import calibration
    monkeypatch.setattr(calibration, "reliability_bins", broken)
    figs = paper.part_figures("official", numbers["official"], res["curves"]["official"], CLASS_NAMES, 1.7)
    assert set(figs) == {f"{stem}_official" for stem in ("roc", "pr", "confusion_counts", "confusion_normalised",
                                                          "reliability")} | {"reliability_classes_official_raw",
                                                                             "reliability_classes_official_calibrated"}
    def legend(stem):
        return [t.get_text() for t in figs[stem].legends[0].get_texts()]

    ci = official["auc_ci"]["per_class"]["glioma"]
    assert legend("roc_official")[0] == f"glioma (n = 40)  {ci['estimate']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"
    ap = official["ap_ci"]["per_class"]["no_tumor"]
    assert legend("pr_official")[2] == f"no tumor (n = 40)  {ap['estimate']:.3f} [{ap['low']:.3f}, {ap['high']:.3f}]"
    macro = official["ap_ci"]["macro"]
    assert legend("pr_official")[4] == f"macro average  {macro['estimate']:.3f} [{macro['low']:.3f}, {macro['high']:.3f}]"
    assert macro["estimate"] == pytest.approx(official["report"]["averages"]["macro"]["average_precision"])
    titles = [ax.get_title() for ax in figs["reliability_official"].axes]
    for title, setting in zip(titles, ("raw", "calibrated")):
        assert title.endswith(f"(ECE {numbers['official'][setting]['calibration']['ece']:.4f})")
    # titles are drawn in the project style (9 pt), not matplotlib's default 12 pt
    for stem in ("reliability_official", "reliability_classes_official_raw"):
        assert figs[stem]._suptitle.get_text().startswith("Official test split (n = 160)")
        assert figs[stem]._suptitle.get_fontsize() == 9.0
    for stem in ("confusion_counts_official", "confusion_normalised_official"):
        assert figs[stem].axes[0].get_title() == "Official test split (n = 160)"
        assert figs[stem].axes[0].title.get_fontsize() == 9.0
    grid = figs["reliability_classes_official_calibrated"].axes
    assert grid[3].get_title().startswith("no tumor (n = 40)\nECE ")
    cm = official["report"]["confusion_matrix"]
    assert [t.get_text() for t in figs["confusion_counts_official"].axes[0].texts] == [str(v) for r in cm for v in r]

    text = paper.summary_text({"records": {"fake": res["record"]}, "notes": ["a note"]})
    assert text.splitlines()[0] == "fake (T = 1.7):"
    assert f"accuracy {official['accuracy_ci']['estimate']:.4f}" in text and text.endswith("note: a note")
    assert f"glioma {ci['estimate']:.4f} [{ci['low']:.4f}, {ci['high']:.4f}]" in text
    assert "no tumor " in text and "no_tumor" not in text  # class names as people read them


def test_cascade_training_curves_say_which_stage():
    from types import SimpleNamespace

    from xai_bt.evaluation.paper import _stage_title

    cascade = SimpleNamespace(config={"stage1_classes": ["no_tumor", "tumor"],
                                      "stage2_classes": ["glioma", "meningioma", "pituitary"]})
    assert _stage_title(cascade, "training_curves_stage1") == "Stage 1: no tumor / tumor"
    assert _stage_title(cascade, "training_curves_stage2") == "Stage 2: glioma / meningioma / pituitary"
    assert _stage_title(SimpleNamespace(config={}), "training_curves") is None


def test_calibration_change_is_the_separate_bootstraps(tmp_path):
    """The one-pass paired bootstrap gives the numbers the three separate bootstraps gave before."""
    from functools import partial

    from xai_bt.evaluation.calibration import brier_score, ece, nll
    from xai_bt.evaluation.metrics import bootstrap_ci, bootstrap_difference
    from xai_bt.evaluation.paper import calibration_change

    ev = _fake_evaluation(tmp_path)
    raw, scaled = ev.probs["raw"], ev.probs["calibrated"]
    change = calibration_change(ev.y, raw, scaled, n_boot=50, n_bins=10)
    for name, fn in (("ece", partial(ece, n_bins=10)), ("nll", nll), ("brier", brier_score)):
        assert change[name] == {"raw": bootstrap_ci(fn, ev.y, raw, n_boot=50),
                                "scaled": bootstrap_ci(fn, ev.y, scaled, n_boot=50),
                                "change": bootstrap_difference(fn, ev.y, raw, scaled, n_boot=50)}
