"""Paper figures and tables for model bundles: what `python -m xai_bt figures` writes.

Per model (folder ``OUT/<model>/``), on the official test split and on its leakage-free subset (both as
defined by :func:`xai_bt.evaluation.evaluate.evaluate_bundle`):

- ``roc_<part>``: one-vs-rest ROC per class with pointwise 95% bootstrap bands and the macro average, the
  top-left corner magnified in a panel of its own, class n and AUC [95% CI] in the legend below;
- ``pr_<part>``: precision-recall per class and the macro average (as ROC), each class's chance level (its
  prevalence), the top-right corner magnified, class n and average precision [95% bootstrap CI] in the
  legend;
- ``confusion_counts_<part>``, ``confusion_normalised_<part>``: rows with their n, shares that never round
  an error to 0% ("<1%"), tumors called "no tumor" (missed tumors) outlined and counted;
- ``reliability_<part>``: overall reliability diagram, raw (T = 1) beside temperature-scaled, each bin's
  accuracy with its Wilson 95% interval, bins of fewer than 10 scans faded, scans per bin on top;
  ``reliability_classes_<part>_{raw,calibrated}``: overall and one-vs-rest per class (with its n);
- ``training_curves`` from the bundle's history.csv (``training_curves_<stage>`` for a cascade);
- tables (CSV full precision, Markdown, LaTeX): ``summary``, ``metrics_<part>`` (per class and averages),
  ``auc_ci`` (per-class AUC with 95% CIs, both parts), ``ap_ci`` (per-class average precision with n and
  95% CIs, both parts), ``calibration`` (ECE/MCE/classwise ECE/Brier/NLL
  before and after temperature scaling, on the validation split where it was fitted and on the test parts),
  ``calibration_change`` (ECE/NLL/Brier raw and scaled with bootstrap CIs, and the paired CI of the change);
- ``results.json`` (every number of the tables and legends above; the curves and bins the figures draw are
  not stored) and ``predictions.csv`` (per scan: probabilities raw and scaled, and the raw logits at full
  precision, so everything can be recomputed without the model).

Across models (``OUT/``): ``architecture_comparison`` (accuracy with Wilson 95% CIs, official vs
leakage-free) and the ``comparison`` table.

The networks run once per model: the bundle records the raw logits of the one evaluation pass, and the
raw and temperature-scaled probabilities are both computed from them (exactly as
`Bundle.predict_prepared` would). Every number is then computed once per model and part
(:func:`part_numbers`: reports, CIs, calibration; :func:`part_curves`: ROC curves and bands, PR curves,
reliability bins) and the same dicts feed the figures (:func:`part_figures`, drawing only), the tables,
the README and results.json. Nothing is overwritten unless asked; the check happens before any model
runs. Progress goes to the ``xai_bt.evaluation`` logger; :func:`summary_text` formats the numbers for a
terminal.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from xai_bt.data.twins import TWIN_THRESHOLD, describe_twins

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger("xai_bt.evaluation")

PARTS = {"official": "official test split", "leakage_free": "leakage-free subset"}
SETTINGS = ("raw", "calibrated")
FORMATS = ("png", "pdf", "svg", "eps", "jpg", "tif")
COMPARISON_STEMS = ("architecture_comparison",)
COMPARISON_TABLE = "comparison"
ROC_BAND_GRID = 1001  #: points of the FPR grid of the ROC bands (step 0.001)


class FiguresError(ValueError):
    """A problem with the request (formats, names); the message says what to change."""


@dataclass
class ModelEvaluation:
    """One model's test predictions, raw and temperature-scaled, with the parts they split into."""

    name: str
    bundle: Any
    results: dict[str, Any]           # evaluate_bundle output (temperature-scaled)
    y: np.ndarray
    logits: dict[str, np.ndarray]
    probs: dict[str, np.ndarray]      # "raw", "calibrated"
    masks: dict[str, np.ndarray]      # "official", "leakage_free"
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return list(self.bundle.class_names)

    @property
    def temperature(self) -> float:
        return self.bundle.temperature


# --------------------------------------------------------------------------------------------- requests
def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """"png,pdf" -> ("png", "pdf"); unknown formats raise FiguresError."""
    items = text.split(",") if isinstance(text, str) else list(text)
    formats = tuple(dict.fromkeys(f.strip().lower().lstrip(".") for f in items if f.strip()))
    bad = [f for f in formats if f not in FORMATS]
    if not formats or bad:
        raise FiguresError(f"unknown figure format(s) {bad or [text]}; choose from {', '.join(FORMATS)}")
    return formats


def output_names(models: Sequence[str | os.PathLike]) -> list[str]:
    """One output folder name per model (its folder name; repeats get _2, _3, ...)."""
    names: list[str] = []
    for m in models:
        p = Path(m).resolve()
        base = (p.parent if p.is_file() else p).name or "model"
        name, i = base, 2
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names.append(name)
    return names


def check_targets(out: str | os.PathLike, names: Sequence[str], formats: Sequence[str],
                  overwrite: bool) -> None:
    """Raise FileExistsError before any work if a run would replace results and ``overwrite`` is off."""
    if overwrite:
        return
    out = Path(out)
    for name in names:
        d = out / name
        if d.is_dir() and any(d.iterdir()):
            raise FileExistsError(f"{d} already holds figures; pass --overwrite to replace them")
    targets = [out / f"{stem}.{fmt}" for stem in COMPARISON_STEMS for fmt in formats]
    targets += [out / f"{COMPARISON_TABLE}.{ext}" for ext in ("csv", "md", "tex")]
    for t in targets:
        if t.exists():
            raise FileExistsError(f"{t} exists; pass --overwrite to replace it")


# --------------------------------------------------------------------------------------------- evaluation
def _recording(bundle):
    """The same bundle, keeping the raw logits of each network's last forward pass in ``.recorded``."""
    base = type(bundle)

    class Recording(base):  # type: ignore[misc, valid-type]
        def network_logits(self, network, x, batch_size=64, known=None):
            out = super().network_logits(network, x, batch_size, known)
            self.recorded[network] = out
            return out

    rec = Recording(bundle.path, bundle.config, bundle.networks)
    rec.recorded = {}
    return rec


def evaluate_model(model, data: str, name: str | None = None, threshold: float = TWIN_THRESHOLD, batch_size: int = 64,
                   train_data: str | None = None) -> ModelEvaluation:
    """Run :func:`xai_bt.evaluation.evaluate.evaluate_bundle` once (temperature-scaled) and derive the raw
    probabilities from the same forward pass."""
    from xai_bt.evaluation.evaluate import evaluate_bundle
    from xai_bt.evaluation.temperature import probabilities_at, raw_logits
    from xai_bt.model.bundle import Bundle, load_model

    t0 = time.time()
    bundle = model if isinstance(model, Bundle) else load_model(model)
    notes = []
    if "calibration" not in bundle.config and bundle.temperature == 1.0:
        notes.append("no fitted temperature (run `python -m xai_bt calibrate` first): raw and "
                     "temperature-scaled probabilities are the same")
    rec = _recording(bundle)
    results = evaluate_bundle(rec, data, threshold=threshold, batch_size=batch_size, calibrated=True,
                              train_data=train_data)
    rows = results["predictions"]
    names = list(bundle.class_names)
    y = np.array([names.index(r["true"]) for r in rows])
    shown = np.array([[r[f"p_{c}"] for c in names] for r in rows], dtype=np.float64)
    needed = {"single": ["model"], "two_stage": ["model"], "cascade": ["stage1", "stage2"]}[bundle.kind]
    logits = {k: rec.recorded[k] for k in needed if k in rec.recorded}
    if len(logits) != len(needed) or any(len(v) != len(rows) for v in logits.values()) or \
            np.abs(probabilities_at(bundle, logits, bundle.temperature, bundle.class_bias) - shown).max() > 2e-6:
        # the bundle did not give us its logits (or not these): one more forward pass
        from xai_bt.data.cache import prepare_samples
        from xai_bt.data.sample import Sample
        from xai_bt.model.preprocessing import to_model_input

        x, errors = prepare_samples([Sample(path=r["path"]) for r in rows], bundle.preprocessing)
        if errors:
            raise ValueError(f"{errors[0]}: cannot re-read a scan that was just evaluated")
        logits = raw_logits(bundle, to_model_input(x), batch_size)
        notes.append("logits recomputed in a second forward pass")
    probs = {"raw": probabilities_at(bundle, logits, 1.0),
             "calibrated": probabilities_at(bundle, logits, bundle.temperature, bundle.class_bias)}
    if np.abs(probs["calibrated"] - shown).max() > 2e-6:
        raise RuntimeError("temperature-scaled probabilities do not match evaluate_bundle's; please report")
    free = np.array([bool(r["leakage_free"]) for r in rows])
    masks = {"official": np.ones(len(rows), bool)}
    if free.any():
        masks["leakage_free"] = free
    return ModelEvaluation(name or bundle.path.name, bundle, results, y, logits, probs, masks,
                           time.time() - t0, notes)


# --------------------------------------------------------------------------------------------- numbers
def part_numbers(ev: ModelEvaluation, part: str, n_boot: int = 1000, n_bins: int = 15) -> dict[str, Any]:
    """Every number of one test part, JSON-safe (results.json ``parts``; the tables, README and figure
    legends read the same dict): reports raw and scaled, accuracy CI, AUC and AP CIs (the same resamples),
    calibration and its change."""
    from xai_bt.evaluation.calibration import calibration_report
    from xai_bt.evaluation.metrics import (
        accuracy_ci,
        auc_with_ci,
        average_precision_with_ci,
        classification_report_dict,
    )

    m = ev.masks[part]
    y = ev.y[m]
    out: dict[str, Any] = {"description": PARTS[part], "n": int(m.sum())}
    for setting in SETTINGS:
        p = ev.probs[setting][m]
        out[setting] = {
            "report": classification_report_dict(y, p, ev.class_names),
            "accuracy_ci": accuracy_ci(y, p),
            "auc_ci": auc_with_ci(y, p, ev.class_names, n_boot=n_boot),
            "ap_ci": average_precision_with_ci(y, p, ev.class_names, n_boot=n_boot),
            "calibration": calibration_report(y, p, n_bins),
        }
    out["calibration_change"] = calibration_change(y, ev.probs["raw"][m], ev.probs["calibrated"][m], n_boot, n_bins)
    return out


def calibration_change(y: np.ndarray, p_raw: np.ndarray, p_scaled: np.ndarray, n_boot: int = 1000,
                       n_bins: int = 15) -> dict[str, Any]:
    """ECE, NLL and Brier raw and scaled with 95% bootstrap CIs, and the paired CI of the change
    (scaled - raw; negative = temperature scaling helped), all from one pass over the same resamples."""
    from functools import partial

    from xai_bt.evaluation.calibration import brier_score, ece, nll
    from xai_bt.evaluation.metrics import bootstrap_paired

    out = {}
    for name, fn in (("ece", partial(ece, n_bins=n_bins)), ("nll", nll), ("brier", brier_score)):
        cis = bootstrap_paired(fn, y, p_raw, p_scaled, n_boot=n_boot)
        out[name] = {"raw": cis["a"], "scaled": cis["b"], "change": cis["change"]}
    return out


def part_curves(ev: ModelEvaluation, part: str, n_boot: int = 1000, n_bins: int = 15) -> dict[str, Any]:
    """What the figures of one test part draw beyond :func:`part_numbers`: ROC curves and their pointwise
    bootstrap bands (same seed and resamples as the AUC CIs) and PR curves of the temperature-scaled
    probabilities, and the reliability bins (overall, then per class) of both probability sets."""
    from xai_bt.evaluation.metrics import pr_curves, reliability_panels, roc_bands, roc_curves

    m = ev.masks[part]
    y, p = ev.y[m], ev.probs["calibrated"][m]
    # bands on a 0.001 FPR grid: the magnified ROC corner spans a few hundredths
    return {"roc": roc_curves(y, p, ev.class_names),
            "roc_bands": roc_bands(y, p, ev.class_names, n_boot=n_boot, n_grid=ROC_BAND_GRID),
            "pr": pr_curves(y, p, ev.class_names),
            "reliability": {s: reliability_panels(y, ev.probs[s][m], n_bins) for s in SETTINGS}}


def _setting_labels(temperature: float) -> dict[str, str]:
    """How the figures name the raw and the temperature-scaled probabilities."""
    return {"raw": "Raw, T = 1", "calibrated": f"Temperature-scaled, T = {temperature:.3g}"}


def part_figures(part: str, numbers: dict[str, Any], curves: dict[str, Any], class_names: Sequence[str],
                 temperature: float) -> dict[str, Figure]:
    """The figures of one test part, file stem -> Figure, drawn from its :func:`part_numbers` and
    :func:`part_curves` only (nothing is computed here, so they show exactly what the tables report)."""
    from xai_bt.plots import evaluation as eval_plots

    names = list(class_names)
    labels = _setting_labels(temperature)
    # every title is drawn inside the plotting function, so in the project style (9 pt)
    where = f"{PARTS[part][0].upper()}{PARTS[part][1:]} (n = {numbers['n']})"
    cal = numbers["calibrated"]
    figs: dict[str, Figure] = {
        f"roc_{part}": eval_plots.plot_roc(curves["roc"], auc_ci=cal["auc_ci"], bands=curves["roc_bands"],
                                           title=where),
        f"pr_{part}": eval_plots.plot_pr(curves["pr"], ap_ci=cal["ap_ci"], title=where),
    }
    cm = np.asarray(cal["report"]["confusion_matrix"])
    for kind, normalise in (("counts", False), ("normalised", True)):
        figs[f"confusion_{kind}_{part}"] = eval_plots.plot_confusion(cm, names, normalise=normalise, title=where)
    panels = curves["reliability"]
    figs[f"reliability_{part}"] = eval_plots.plot_reliability_comparison(
        {labels[s]: panels[s][0] for s in SETTINGS}, class_names=names, title=where)
    for s in SETTINGS:
        figs[f"reliability_classes_{part}_{s}"] = eval_plots.plot_reliability_grid(
            panels[s], names, title=f"{where}; {labels[s]}")
    return figs


def _rel(path: str, root: str) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # another drive on Windows
        return path


def _logit_columns(ev: ModelEvaluation) -> list[tuple[str, np.ndarray]]:
    if ev.bundle.kind != "cascade":
        return [(f"logit_{c}", ev.logits["model"][:, j]) for j, c in enumerate(ev.class_names)]
    cols = []
    for stage in ("stage1", "stage2"):
        for j, c in enumerate(ev.bundle.config[f"{stage}_classes"]):
            cols.append((f"logit_{stage}_{c}", ev.logits[stage][:, j]))
    return cols


# --------------------------------------------------------------------------------------------- writing
class _Writer:
    """Saves figures and tables, remembering every path (and refusing to replace unless overwrite)."""

    def __init__(self, formats: Sequence[str], overwrite: bool):
        self.formats, self.overwrite = tuple(formats), overwrite
        self.paths: list[Path] = []
        self.clipped: list[str] = []

    def figure(self, fig, stem: Path) -> None:
        from xai_bt.plots.style import clipped_texts, save_figure

        self.paths += save_figure(fig, stem, formats=self.formats, overwrite=self.overwrite)
        cut = clipped_texts(fig)
        if cut:
            self.clipped.append(f"{Path(stem).name}: cut off at the figure edge: {', '.join(cut)}")

    def table(self, rows: list[dict[str, Any]], stem: Path, digits: int = 3) -> None:
        from xai_bt.evaluation.tables import write_tables

        self.paths += write_tables(rows, stem, digits=digits, overwrite=self.overwrite)

    def text(self, text: str, path: Path) -> None:
        if path.exists() and not self.overwrite:
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        self.paths.append(path)


def _history_files(bundle) -> list[tuple[str, Path]]:
    d = Path(bundle.path)
    if (d / "history.csv").is_file():
        return [("training_curves", d / "history.csv")]
    return [(f"training_curves_{f.stem.split('_', 1)[1]}", f) for f in sorted(d.glob("history_*.csv"))]


def _stage_title(bundle, stem: str) -> str | None:
    """"Stage 1: no tumor / tumor" for a cascade's training curves (what each stage decides); None otherwise."""
    from xai_bt.names import display_names

    stage = stem.rsplit("_", 1)[-1]
    classes = bundle.config.get(f"{stage}_classes") if stage.startswith("stage") else None
    return f"Stage {stage[5:]}: {' / '.join(display_names(classes))}" if classes else None


def model_outputs(ev: ModelEvaluation, out_dir: str | os.PathLike, formats: Sequence[str] = ("png", "pdf"),
                  overwrite: bool = False, n_boot: int = 1000, n_bins: int = 15) -> dict[str, Any]:
    """Write one model's figures and tables to ``out_dir``; returns its numbers, curves, the results.json
    record and the paths written. Each number is computed once, here, and handed to every output."""
    from xai_bt.plots import evaluation as eval_plots
    from xai_bt.plots.style import ONE_COLUMN, TWO_COLUMN

    out = Path(out_dir)
    w = _Writer(formats, overwrite)
    numbers = {part: part_numbers(ev, part, n_boot, n_bins) for part in ev.masks}
    curves = {part: part_curves(ev, part, n_boot, n_bins) for part in ev.masks}

    for part in numbers:
        for stem, fig in part_figures(part, numbers[part], curves[part], ev.class_names, ev.temperature).items():
            w.figure(fig, out / stem)

    for stem, history in _history_files(ev.bundle):
        try:
            w.figure(eval_plots.plot_training_curves(history, title=_stage_title(ev.bundle, stem)), out / stem)
        except ValueError as e:
            ev.notes.append(f"{history.name}: no training curves ({e})")
    if not _history_files(ev.bundle):
        ev.notes.append("no history.csv in the bundle: no training curves")

    ev.notes += w.clipped
    _tables(ev, numbers, w, out)
    _predictions_csv(ev, w, out / "predictions.csv")
    record = _results_record(ev, numbers, formats)
    w.text(json.dumps(record, indent=2) + "\n", out / "results.json")
    w.text(_readme(ev, numbers, formats, n_boot, n_bins, [ONE_COLUMN, TWO_COLUMN]), out / "README.md")
    return {"numbers": numbers, "curves": curves, "paths": w.paths, "record": record}


def _tables(ev: ModelEvaluation, numbers: dict[str, Any], w: _Writer, out: Path) -> None:
    from xai_bt.evaluation.tables import to_rows

    summary: list[dict[str, Any]] = []
    cal_rows: list[dict[str, Any]] = []
    auc_rows: dict[str, dict[str, Any]] = {}
    ap_rows: dict[str, dict[str, Any]] = {}
    for part, nums in numbers.items():
        rep, cal = nums["calibrated"]["report"], nums["calibrated"]
        summary.append({
            "test_set": PARTS[part], "n": nums["n"], "accuracy": rep["accuracy"],
            "accuracy_ci_low": cal["accuracy_ci"]["low"], "accuracy_ci_high": cal["accuracy_ci"]["high"],
            "macro_f1": rep["macro_f1"], "macro_auc": cal["auc_ci"]["macro"]["estimate"],
            "macro_auc_ci_low": cal["auc_ci"]["macro"]["low"], "macro_auc_ci_high": cal["auc_ci"]["macro"]["high"],
            "ece_raw": nums["raw"]["calibration"]["ece"], "ece_scaled": cal["calibration"]["ece"],
            "nll_raw": nums["raw"]["calibration"]["nll"], "nll_scaled": cal["calibration"]["nll"],
        })
        w.table(to_rows(rep), out / f"metrics_{part}", digits=4)
        for cls, ci in [*cal["auc_ci"]["per_class"].items(), ("macro", cal["auc_ci"]["macro"]),
                        ("micro", cal["auc_ci"]["micro"])]:
            row = auc_rows.setdefault(cls, {"class": cls})
            prefix = "" if part == "official" else "leakage_free_"
            row.update({f"{prefix}auc": ci["estimate"], f"{prefix}ci_low": ci["low"], f"{prefix}ci_high": ci["high"]})
        for cls, ci in [*cal["ap_ci"]["per_class"].items(), ("macro", cal["ap_ci"]["macro"])]:
            row = ap_rows.setdefault(cls, {"class": cls})
            prefix = "" if part == "official" else "leakage_free_"
            n_pos = rep["per_class"][cls]["support"] if cls in rep["per_class"] else nums["n"]
            row.update({f"{prefix}n": n_pos, f"{prefix}ap": ci["estimate"], f"{prefix}ci_low": ci["low"],
                        f"{prefix}ci_high": ci["high"]})
    w.table(summary, out / "summary", digits=4)
    w.table(list(auc_rows.values()), out / "auc_ci", digits=4)
    w.table(list(ap_rows.values()), out / "ap_ci", digits=4)
    record = ev.bundle.config.get("calibration")
    if record:
        for s, key in (("raw", "before"), ("calibrated", "after")):
            cal_rows.append(_cal_row("validation (fit)", s, 1.0 if s == "raw" else ev.temperature,
                                     record["n_val"], record[key]))
    for part, nums in numbers.items():
        for s in SETTINGS:
            cal_rows.append(_cal_row(PARTS[part], s, 1.0 if s == "raw" else ev.temperature, nums["n"],
                                     nums[s]["calibration"]))
    w.table(cal_rows, out / "calibration", digits=4)
    change_rows = []
    for part, nums in numbers.items():
        for metric, cis in nums["calibration_change"].items():
            row = {"test_set": PARTS[part], "metric": metric, "temperature": ev.temperature}
            for key in ("raw", "scaled", "change"):
                row.update({key: cis[key]["estimate"], f"{key}_ci_low": cis[key]["low"],
                            f"{key}_ci_high": cis[key]["high"]})
            change_rows.append(row)
    w.table(change_rows, out / "calibration_change", digits=4)


def _cal_row(data: str, setting: str, t: float, n: int, r: dict[str, Any]) -> dict[str, Any]:
    return {"data": data, "probabilities": "raw" if setting == "raw" else "temperature-scaled",
            "temperature": t, "n": n, "accuracy": r["accuracy"], "mean_confidence": r["mean_confidence"],
            "ece": r["ece"], "mce": r["mce"], "classwise_ece": r.get("classwise_ece"), "brier": r["brier"],
            "nll": r["nll"]}


def _predictions_csv(ev: ModelEvaluation, w: _Writer, path: Path) -> None:
    if path.exists() and not w.overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    data = ev.results["data"]
    logit_cols = _logit_columns(ev)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        fields = ["path", "true", "pred", "leakage_free", "max_similarity_to_training"]
        fields += [f"p_{c}" for c in ev.class_names] + [f"p_raw_{c}" for c in ev.class_names]
        fields += [name for name, _ in logit_cols]
        writer = csv.writer(fh)
        writer.writerow(fields)
        for i, r in enumerate(ev.results["predictions"]):
            writer.writerow([_rel(r["path"], data), r["true"], r["pred"], r["leakage_free"],
                             r["max_similarity_to_training"]]
                            + [f"{v:.6g}" for v in ev.probs["calibrated"][i]]
                            + [f"{v:.6g}" for v in ev.probs["raw"][i]]
                            + [f"{col[i]:.9g}" for _, col in logit_cols])
    w.paths.append(path)


def _results_record(ev: ModelEvaluation, numbers: dict[str, Any], formats: Sequence[str]) -> dict[str, Any]:
    b = ev.bundle
    return {
        "model": str(b.path), "name": ev.name, "arch": b.config.get("arch"), "kind": b.kind,
        "class_names": ev.class_names, "data": ev.results["data"], "test_set": ev.results["test_set"],
        "dedup_threshold": ev.results["dedup_threshold"], "reference_scans": ev.results["reference_scans"],
        "n_unreadable": ev.results["n_unreadable"], "temperature": ev.temperature,
        "calibration_fit": b.config.get("calibration"), "notes": ev.notes,
        "parts": numbers, "formats": list(formats),
    }


def _readme(ev: ModelEvaluation, numbers: dict[str, Any], formats: Sequence[str], n_boot: int, n_bins: int,
            sizes) -> str:
    from xai_bt.plots.evaluation import FEW_SCANS

    t = ev.temperature
    fit = ev.bundle.config.get("calibration")
    lines = [f"# Evaluation figures: `{ev.name}`", "",
             f"Model `{ev.bundle.path}` ({ev.bundle.kind}, `{ev.bundle.config.get('arch')}`), data "
             f"`{ev.results['data']}` ({ev.results['test_set']}). Leakage-free subset: test scans with no "
             f"twin ({describe_twins(ev.results['dedup_threshold'])}) or shared patient among "
             f"the {ev.results['reference_scans']} training/validation scans.",
             "",
             f"Temperature T = {t:.4g}" + (f", fitted on {fit['n_val']} validation scans ("
                                            + (f"{fit['n_val_twins_left_out']} more left out as twins of "
                                               "training scans; " if fit.get("n_val_twins_left_out") else "")
                                            + "validation NLL "
                                            f"{fit['before']['nll']:.4f} -> {fit['after']['nll']:.4f}, ECE "
                                            f"{fit['before']['ece']:.4f} -> {fit['after']['ece']:.4f})."
                                            if fit else " (not fitted)."),
             f"ROC/PR/confusion figures use the temperature-scaled probabilities (what the bundle outputs). "
             f"CIs: accuracy and reliability-bin accuracy Wilson 95%; AUC and average precision (AP) stratified "
             f"percentile bootstrap, {n_boot} resamples, seed 0 (the same resamples for both). Calibration: "
             f"{n_bins} equal-width confidence bins, bins of fewer than {FEW_SCANS} scans drawn faded. "
             "Macro averages (ROC, PR) are the mean over classes. Figures and Markdown/LaTeX tables name classes "
             "as people read them (no tumor); the CSV files keep the code names (no_tumor). Figure widths: one column "
             f"{sizes[0][0]} in, two columns {sizes[1][0]} in; formats {', '.join(formats)}.", "",
             "| test set | n | accuracy [95% CI] | macro-AUC [95% CI] | ECE raw -> scaled | NLL raw -> scaled |",
             "|---|---:|---|---|---|---|"]
    for part, nums in numbers.items():
        c, r = nums["calibrated"], nums["raw"]
        acc, auc_ = c["accuracy_ci"], c["auc_ci"]["macro"]
        auc_text = "n/a" if auc_["estimate"] is None else \
            f"{auc_['estimate']:.4f} [{auc_['low']:.4f}, {auc_['high']:.4f}]"
        lines.append(f"| {PARTS[part]} | {nums['n']} | {acc['estimate']:.4f} [{acc['low']:.4f}, {acc['high']:.4f}] "
                     f"| {auc_text} | {r['calibration']['ece']:.4f} -> {c['calibration']['ece']:.4f} "
                     f"| {r['calibration']['nll']:.4f} -> {c['calibration']['nll']:.4f} |")
    lines += ["", "Effect of temperature scaling on the test parts (95% bootstrap CIs; the change is a paired "
              "bootstrap, scaled - raw, negative = better):", "",
              "| test set | metric | raw | scaled | change |", "|---|---|---|---|---|"]
    for part, nums in numbers.items():
        for metric, cis in nums["calibration_change"].items():
            cells = [f"{c['estimate']:.4f} [{c['low']:.4f}, {c['high']:.4f}]"
                     for c in (cis["raw"], cis["scaled"], cis["change"])]
            lines.append(f"| {PARTS[part]} | {metric.upper() if metric != 'brier' else 'Brier'} | "
                         + " | ".join(cells) + " |")
    if ev.notes:
        lines += ["", *[f"Note: {n}" for n in ev.notes]]
    lines += ["", "Files: `roc_*`, `pr_*` (full range beside the magnified corner), `confusion_{counts,normalised}_*` "
              "(missed tumors outlined), `reliability_*` (raw beside scaled), "
              "`reliability_classes_*_{raw,calibrated}` (overall and per class), `training_curves*`; tables "
              "`summary`, `metrics_*`, `auc_ci`, `ap_ci`, `calibration`, `calibration_change` (.csv/.md/.tex); "
              "`results.json`; `predictions.csv`."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- across models
def comparison_row(ev: ModelEvaluation, numbers: dict[str, Any]) -> dict[str, Any]:
    """One row of the cross-model table (keys as :func:`xai_bt.plots.evaluation.plot_architecture_comparison` wants)."""
    row: dict[str, Any] = {"name": ev.name, "arch": ev.bundle.config.get("arch"), "kind": ev.bundle.kind,
                           "temperature": ev.temperature}
    for part in PARTS:
        prefix = "" if part == "official" else "leakage_free_"
        nums = numbers.get(part)
        c = nums["calibrated"] if nums else None
        row.update({
            f"{prefix}n": nums["n"] if nums else None,
            f"{prefix}accuracy": c["accuracy_ci"]["estimate"] if c else None,
            f"{prefix}ci_low": c["accuracy_ci"]["low"] if c else None,
            f"{prefix}ci_high": c["accuracy_ci"]["high"] if c else None,
            f"{prefix}macro_f1": c["report"]["macro_f1"] if c else None,
            f"{prefix}macro_auc": c["auc_ci"]["macro"]["estimate"] if c else None,
            f"{prefix}ece_raw": nums["raw"]["calibration"]["ece"] if nums else None,
            f"{prefix}ece_scaled": c["calibration"]["ece"] if c else None,
        })
    return row


def make_figures(models: Sequence[str | os.PathLike], data: str, out: str | os.PathLike,
                 formats: Sequence[str] = ("png", "pdf"), overwrite: bool = False, threshold: float = TWIN_THRESHOLD,
                 batch_size: int = 64, train_data: str | None = None, n_boot: int = 1000,
                 n_bins: int = 15) -> dict[str, Any]:
    """All figures and tables for ``models`` into ``out``; returns {"models": {name: numbers}, "records":
    {name: results.json record}, "comparison": rows, "notes": [cross-model notes], "paths": [...]}.
    Refuses to replace anything unless ``overwrite`` (checked first). Progress is logged (INFO,
    ``xai_bt.evaluation``); :func:`summary_text` formats the returned numbers."""
    from xai_bt.plots import evaluation as eval_plots

    formats = parse_formats(formats)
    if not models:
        raise FiguresError("no models given")
    out = Path(out)
    names = output_names(models)
    check_targets(out, names, formats, overwrite)
    rows, paths, per_model, records = [], [], {}, {}
    for model, name in zip(models, names):
        ev = evaluate_model(model, data, name, threshold=threshold, batch_size=batch_size, train_data=train_data)
        logger.info("%s: evaluated %d test scans in %.0f s (T = %.4g)", name, len(ev.y), ev.seconds, ev.temperature)
        t0 = time.time()
        res = model_outputs(ev, out / name, formats, overwrite, n_boot, n_bins)
        logger.info("%s: %d files in %.0f s -> %s", name, len(res["paths"]), time.time() - t0, out / name)
        rows.append(comparison_row(ev, res["numbers"]))
        paths += res["paths"]
        per_model[name] = res["numbers"]
        records[name] = res["record"]
    w = _Writer(formats, overwrite)
    w.figure(eval_plots.plot_architecture_comparison(rows), out / "architecture_comparison")
    w.table(rows, out / COMPARISON_TABLE, digits=4)
    paths += w.paths
    return {"models": per_model, "records": records, "comparison": rows, "notes": w.clipped, "paths": paths}


def summary_text(made: dict[str, Any]) -> str:
    """What :func:`make_figures` found, in a few lines per model: accuracy, ECE and NLL raw -> scaled and
    per-class AUC [95% CI] per test part, then the notes (for a terminal; the CLI prints it)."""
    from xai_bt.names import display_name

    lines = []
    for name, record in made["records"].items():
        lines.append(f"{name} (T = {record['temperature']:.4g}):")
        for part, nums in record["parts"].items():
            c, r = nums["calibrated"], nums["raw"]
            aucs = ", ".join(f"{display_name(k)} {v['estimate']:.4f} [{v['low']:.4f}, {v['high']:.4f}]"
                             for k, v in c["auc_ci"]["per_class"].items() if v["estimate"] is not None)
            lines.append(f"  {PARTS[part]:25s} n={nums['n']:5d} accuracy {c['accuracy_ci']['estimate']:.4f} "
                         f"ECE {r['calibration']['ece']:.4f} -> {c['calibration']['ece']:.4f}  "
                         f"NLL {r['calibration']['nll']:.4f} -> {c['calibration']['nll']:.4f}")
            lines.append(f"    AUC {aucs}")
        lines += [f"  note: {note}" for note in record["notes"]]
    lines += [f"note: {note}" for note in made.get("notes", [])]
    return "\n".join(lines)
