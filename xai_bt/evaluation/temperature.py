"""Temperature scaling fitted on a bundle's own validation split and stored in its bundle.json.

`calibrate_bundle` finds the validation scans of the model (rows with split "val" in the bundle's
`split.csv`, paths relative to the training data root), runs the networks once to get raw logits, fits one
temperature T by minimising the validation negative log-likelihood (Guo et al. 2017), and records T with
the before/after numbers in bundle.json, where `Bundle.predict_prepared(calibrated=True)` and every xai_bt
command pick it up. The test split is never touched.

Kinds:
- "single", "two_stage": softmax(logits / T) of the tumor classifier (the view network of a two-stage model
  is left as it is; it only feeds features).
- "cascade": one T shared by both stages, fitted on the NLL of the combined four-class probabilities,
  exactly as `Bundle.predict_prepared` applies it (both stages' logits divided by the same T).

Temperature scaling divides every logit by one positive number, so the predicted class of a single or
two-stage model, hence its accuracy, does not change. In a cascade the combination can, rarely, change.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from xai_bt.evaluation.calibration import T_BOUNDS

RECORD_KEYS = ("accuracy", "mean_confidence", "overconfidence", "ece", "mce", "classwise_ece", "brier", "nll")


class CalibrationExists(FileExistsError):
    """The bundle already has a fitted temperature and `overwrite` was not given."""


# --------------------------------------------------------------------------------------------- logits
def raw_logits(bundle, x: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """The logits temperature scaling divides, per network: {"model"} or, for a cascade, {"stage1", "stage2"}."""
    def run(network: str, inputs) -> np.ndarray:
        return bundle.network_logits(network, inputs, batch_size)

    if bundle.kind == "single":
        return {"model": run("model", x)}
    if bundle.kind == "two_stage":
        return {"model": run("model", [x, bundle.view_features(x, batch_size)])}
    return {"stage1": run("stage1", x), "stage2": run("stage2", x)}


def probabilities_at(bundle, logits: dict[str, np.ndarray], temperature: float,
                     bias: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities at temperature T (plus class biases ``bias``, single and two-stage models) from
    :func:`raw_logits`, as `Bundle.predict_prepared` gives them."""
    from scipy.special import softmax

    from xai_bt.model.bundle import combine_cascade

    if temperature <= 0:
        raise ValueError("temperature must be positive")
    if bundle.kind != "cascade":
        return softmax(logits["model"] / temperature + (0.0 if bias is None else bias), axis=1)
    if bias is not None:
        raise ValueError("class biases are fitted for single and two-stage models, not cascades")
    return combine_cascade(softmax(logits["stage1"] / temperature, axis=1),
                           softmax(logits["stage2"] / temperature, axis=1),
                           bundle.config["stage1_classes"], bundle.config["stage2_classes"], bundle.class_names)


def fit_bundle_temperature(bundle, logits: dict[str, np.ndarray], y: np.ndarray) -> float:
    """The NLL-optimal temperature of this bundle's logits for labels ``y``."""
    from xai_bt.evaluation.calibration import fit_temperature, nll, search_temperature

    if bundle.kind != "cascade":
        return fit_temperature(logits["model"], y, bounds=T_BOUNDS)
    return search_temperature(lambda t: nll(y, probabilities_at(bundle, logits, t)), T_BOUNDS)


# --------------------------------------------------------------------------------------------- data
def declared_validation(bundle, data: str | os.PathLike, train_data: str | None,
                        twin_free: bool = True) -> tuple[list, list[str], int]:
    """An imported model's validation scans: every scan under ``data``, which its user declares held out
    (never trained on, not the test set), less the twins of the scans under ``train_data`` when given."""
    from xai_bt.data.datasets import load_dataset
    from xai_bt.model.provenance import declared_training_rows

    found = list(load_dataset(str(data)))
    if not found:
        raise ValueError(f"{data}: no scans to fit a temperature on")
    if not (twin_free and train_data):
        return found, [], 0
    found, n_twins = _drop_twins(found, declared_training_rows(train_data),
                                 f"{data}: every scan has a twin among the training scans under {train_data}")
    return found, [], n_twins


def _drop_twins(scans: list, train: list, none_left: str) -> tuple[list, int]:
    """`scans` less those with a twin (as it is, mirrored, flipped) among `train`, and how many went;
    ValueError `none_left` when none is left."""
    from xai_bt.data.splits import leakage_free

    free = leakage_free(scans, train)
    kept = [s for s, f in zip(scans, free) if f]
    if not kept:
        raise ValueError(none_left)
    return kept, len(scans) - len(kept)


def validation_samples(bundle, data: str | os.PathLike, twin_free: bool = True) -> tuple[list, list[str], int]:
    """(validation scans found under ``data`` with labels from the dataset loader, relative paths missing,
    number left out as twins of training scans).

    ``data`` is the training data root: split.csv paths are relative to it. With ``twin_free`` (the
    default) a validation scan with a twin (xai_bt.data.twins: as it is, mirrored, flipped) among the bundle's
    training rows is left out: a model trained with flips has in effect seen it, so it would make the
    temperature and the TTA choice too confident. Bundles split since twins are mirror-aware lose none."""
    from xai_bt.data.datasets import load_dataset
    from xai_bt.model.provenance import split_table

    table = split_table(bundle)
    if not table:
        raise ValueError(f"{bundle.path}: no split.csv, so the validation scans are unknown; "
                         "temperature scaling must be fitted on held-out validation data")
    wanted = [rel for rel, part in table.items() if part == "val"]
    if not wanted:
        raise ValueError(f"{bundle.path}/split.csv has no rows with split 'val'")
    root = Path(data)
    by_rel = {Path(os.path.relpath(s.path, root)).as_posix(): s for s in load_dataset(str(root))}
    found = [by_rel[rel] for rel in wanted if rel in by_rel]
    missing = [rel for rel in wanted if rel not in by_rel]
    if not found:
        raise ValueError(f"{data}: none of the {len(wanted)} validation scans of {bundle.path}/split.csv are "
                         f"there (e.g. {wanted[0]}); --data must be the model's training data root")
    if not twin_free:
        return found, missing, 0
    train = [by_rel[rel] for rel, part in table.items() if part == "train" and rel in by_rel]
    found, n_twins = _drop_twins(found, train, f"{bundle.path}: every validation scan has a twin among its training "
                                               "scans; re-split the data (python -m xai_bt data audit ROOT --write-split)")
    return found, missing, n_twins


def held_out_samples(bundle, data: str | os.PathLike, held_out: str | os.PathLike) -> tuple[list, list[str], int]:
    """(labelled scans under ``held_out``, [], number left out) for a bundle with no validation rows, such as a
    refit: a scan is left out when it has a twin (as it is, mirrored, flipped) among any row of the bundle's
    split.csv under ``data``: its training scans, which it has seen, and its test scans, which calibration
    must not see either."""
    from xai_bt.data.datasets import load_dataset
    from xai_bt.model.provenance import rows_of, split_table

    if not split_table(bundle):
        raise ValueError(f"{bundle.path}: no split.csv, so the scans to keep held-out scans apart from are unknown")
    found = [s for s in load_dataset(str(held_out)) if s.label]
    if not found:
        raise ValueError(f"{held_out}: no labelled scans to fit on")
    rows = [r for r in rows_of(bundle, str(data), ("train", "val", "test")) if os.path.exists(r.path)]
    if not rows:
        raise ValueError(f"{data}: none of the scans of {bundle.path}/split.csv are there; --data must be the "
                         "model's training data root")
    found, n_twins = _drop_twins(found, rows, f"{held_out}: every scan has a twin among the scans of "
                                              f"{bundle.path}/split.csv")
    return found, [], n_twins


def fitting_samples(bundle, data: str | os.PathLike, held_out: str | os.PathLike | None = None,
                    train_data: str | None = None, twin_free: bool = True) -> tuple[list, list[str], int, str]:
    """The scans a temperature, its class biases and the TTA choice are fitted on, and where they came from:
    the twin-free scans under ``held_out`` when given; an imported model's declared validation folder; else
    the split.csv rows with split 'val' (less twins of its 'train' rows)."""
    from xai_bt.model.provenance import split_table

    if held_out is not None:
        found, missing, n = held_out_samples(bundle, data, held_out)
        return found, missing, n, (f"every labelled scan under {held_out}, without twins (as they are, mirrored, "
                                   "flipped: xai_bt.data.twins) of any scan of split.csv (train, val, test)")
    if bool(bundle.config.get("imported")) and not split_table(bundle):
        found, missing, n = declared_validation(bundle, data, train_data, twin_free)
        return found, missing, n, (f"every scan under {data}, declared held out" + (
            f", without twins of the scans under {train_data} (as they are, mirrored, flipped: xai_bt.data.twins)"
            if twin_free and train_data else "; twins of its training scans not checked (no --train-data)"))
    found, missing, n = validation_samples(bundle, data, twin_free)
    return found, missing, n, "rows with split 'val' in split.csv" + (
        ", without twins of its 'train' rows (as they are, mirrored, flipped: xai_bt.data.twins)" if twin_free else "")


def _summary(report: dict[str, Any]) -> dict[str, float]:
    return {k: report[k] for k in RECORD_KEYS}


# --------------------------------------------------------------------------------------------- main
def calibrate_bundle(model, data: str | os.PathLike, overwrite: bool = False, batch_size: int = 64,
                     n_bins: int = 15, tta: str | None = None, twin_free: bool = True,
                     train_data: str | None = None, held_out: str | os.PathLike | None = None,
                     class_bias: str = "no") -> dict[str, Any]:
    """Fit T on the bundle's validation rows (those with no twin among its training rows unless
    ``twin_free`` is False), store ``temperature`` and ``calibration`` in bundle.json. An imported model
    has no split.csv: ``data`` is then a folder of held-out validation scans, less the twins of the scans
    under ``train_data`` (what it learnt from) when given. ``held_out``: fit on the scans there instead
    (a refit has no validation rows), less the twins of every scan of its split.csv.

    ``class_bias``: "yes" fits T with per-class logit biases instead (class-balanced NLL:
    `calibration.fit_temperature_and_bias`); "auto" keeps them only when they lower the k-fold (k <= 5)
    cross-validated class-balanced NLL of the same scans; "no" (default) fits T alone and drops old biases.

    ``tta`` ("none" or "hflip") sets the bundle's test-time augmentation first, so T is fitted on the
    logits the bundle will actually produce (the two are stored together).

    Refuses (:class:`CalibrationExists`) when the bundle already has a fitted temperature (a
    ``calibration`` record, or a temperature other than 1) unless ``overwrite``. Returns the record:
    ``{"temperature", "method", "fitted_on", "data", "n_val", "n_val_twins_left_out", "n_missing",
    "n_unreadable", "n_bins",
    "before", "after"}`` where before/after hold accuracy, confidence, ECE, MCE, classwise ECE, Brier and
    NLL on the validation scans at T = 1 and at the fitted T.
    """
    from xai_bt.data.cache import failed_indices, prepare_samples
    from xai_bt.evaluation.calibration import calibration_report
    from xai_bt.evaluation.evaluate import labels_for
    from xai_bt.model.bundle import Bundle, load_model, write_config
    from xai_bt.model.card import write_model_card
    from xai_bt.model.preprocessing import to_model_input

    bundle = model if isinstance(model, Bundle) else load_model(model)
    old = bundle.config.get("calibration")
    if (old is not None or bundle.temperature != 1.0) and not overwrite:
        raise CalibrationExists(f"{bundle.path}: already calibrated (temperature {bundle.temperature:.4g}); "
                                "pass overwrite=True (--overwrite) to refit it")
    if class_bias not in ("no", "yes", "auto"):
        raise ValueError(f"class_bias must be no, yes or auto, got {class_bias!r}")
    if class_bias != "no" and bundle.kind == "cascade":
        raise ValueError(f"{bundle.path}: class biases are fitted for single and two-stage models, not cascades")
    if tta is not None:
        bundle.config["tta"] = tta
        bundle.tta  # validates the mode
    samples, missing, n_twins, fitted_on = fitting_samples(bundle, data, held_out, train_data, twin_free)
    y = labels_for(bundle, samples)
    labelled = [i for i in range(len(samples)) if y[i] >= 0]
    samples, y = [samples[i] for i in labelled], y[labelled]
    x, errors = prepare_samples(samples, bundle.preprocessing)
    bad = failed_indices(samples, errors)
    keep = [i for i in range(len(samples)) if i not in bad]
    y = y[keep]
    source = held_out or data
    if len(keep) < 2:
        raise ValueError(f"{source}: {len(keep)} usable validation scans; too few to fit a temperature")
    if len(np.unique(y)) < 2:
        twins = f" ({n_twins} more left out as twins of the bundle's scans)" if n_twins else ""
        raise ValueError(f"{source}: all {len(keep)} usable validation scans are {bundle.class_names[y[0]]}"
                         f"{twins}; a temperature needs scans of at least two classes")
    logits = raw_logits(bundle, to_model_input(x[keep]), batch_size)
    t = fit_bundle_temperature(bundle, logits, y)     # warns when T sits on a bound of T_BOUNDS
    bias, bias_record = None, None
    if class_bias != "no":
        from xai_bt.evaluation.calibration import cross_validated_bias_gain, fit_temperature_and_bias

        try:
            cv = cross_validated_bias_gain(logits["model"], y)
        except ValueError:     # too few scans of a class: "auto" cannot tell, so keeps T alone
            cv = None
        keep_bias = class_bias == "yes" or (cv is not None and cv["temperature_and_bias"] < cv["temperature"])
        tb, b = fit_temperature_and_bias(logits["model"], y)
        bias_record = {"kept": bool(keep_bias), "asked": class_bias,
                       "values": {c: float(v) for c, v in zip(bundle.class_names, b)},
                       "temperature_with_bias": tb,
                       "cross_validated_balanced_nll": cv,
                       "rule": "kept when asked (yes), or (auto) when it lowers the k-fold (k <= 5) cross-validated "
                               "class-balanced NLL of the fitting scans"}
        if keep_bias:
            t, bias = tb, b
    before = calibration_report(y, probabilities_at(bundle, logits, 1.0), n_bins)
    after = calibration_report(y, probabilities_at(bundle, logits, t, bias), n_bins)
    record = {
        "temperature": t,
        "method": ("bias-corrected temperature scaling (Alexandari et al. 2020): T and per-class logit biases "
                   "minimising the class-balanced validation NLL" if bias is not None else
                   "temperature scaling (Guo et al. 2017): T minimising the validation NLL")
                  + ("; one T shared by both cascade stages" if bundle.kind == "cascade" else ""),
        "fitted_on": fitted_on,
        "tta": bundle.tta,
        "data": str(data),
        "n_val": int(len(y)),
        "n_val_twins_left_out": int(n_twins),
        "n_missing": len(missing),
        "n_unreadable": len(bad),
        "n_bins": n_bins,
        "before": _summary(before),
        "after": _summary(after),
    }
    if held_out is not None:
        record["held_out"] = str(held_out)
    if bias_record is not None:
        record["class_bias"] = bias_record
    if old is not None:
        record["replaced_temperature"] = bundle.temperature
    if bias is not None:
        bundle.config["class_bias"] = [float(v) for v in bias]
    else:
        bundle.config.pop("class_bias", None)
    bundle.config["temperature"] = t
    bundle.config["calibration"] = record
    write_config(bundle.path, bundle.config)
    write_model_card(bundle.path)
    return record


def format_record(record: dict[str, Any]) -> str:
    """Human-readable before/after lines of a calibration record."""
    b, a = record["before"], record["after"]
    lines = [f"temperature T = {record['temperature']:.4f}  (fitted on {record['n_val']} validation scans"
             + (f"; {record['n_val_twins_left_out']} more left out as twins of training scans"
                if record.get("n_val_twins_left_out") else "")
             + (f", {record['n_missing']} listed in split.csv not found" if record.get("n_missing") else "")
             + ")",
             f"  {'validation':12s} {'NLL':>8s} {'ECE':>8s} {'MCE':>8s} {'Brier':>8s} {'accuracy':>9s} "
             f"{'confidence':>11s}"]
    for name, r in (("before (T=1)", b), ("after", a)):
        lines.append(f"  {name:12s} {r['nll']:8.4f} {r['ece']:8.4f} {r['mce']:8.4f} {r['brier']:8.4f} "
                     f"{r['accuracy']:9.4f} {r['mean_confidence']:11.4f}")
    cb = record.get("class_bias")
    if cb:
        cv = cb["cross_validated_balanced_nll"]
        lines.append(f"class biases {'kept' if cb['kept'] else 'not kept'}: "
                     + ", ".join(f"{c} {v:+.3f}" for c, v in cb["values"].items())
                     + (f"; {cv['folds']}-fold cross-validated class-balanced NLL {cv['temperature']:.4f} with T "
                        f"alone, {cv['temperature_and_bias']:.4f} with the biases" if cv else
                        "; too few scans per class to cross-validate them"))
    return "\n".join(lines)
