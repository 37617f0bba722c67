"""Honest evaluation: metrics on the official test split and on its leakage-free part.

The leakage-free part is the test scans that have no twin (a near-duplicate as it is, mirrored, flipped
or turned: `xai_bt.data.twins`) and no shared patient among the scans the model was trained and validated on
(its bundle's `split.csv`), so the two numbers side by side show how much of a score is memory. Test scans
can also be twins of one another; each part reports how many twin groups its scans form and a CI that
resamples whole groups, since twins are not independent trials.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xai_bt.data.sample import Sample
from xai_bt.data.twins import TWIN_THRESHOLD, TWIN_TRANSFORMS
from xai_bt.model.provenance import (
    declared_training_rows,
    is_training_dataset,
    relative_path,
    rows_of,
    split_table,
    training_root,
)


def evaluation_samples(bundle, samples: Sequence[Sample], data: str,
                       train_data: str | None = None) -> tuple[list[Sample], list[Sample], str]:
    """(scans to evaluate on, scans the model learnt from, description of the test set).

    The bundle's split.csv holds paths relative to its training data root; `train_data` says where
    that root is now (default: the recorded path if it exists, else `data` when it is the same dataset)."""
    table = split_table(bundle)
    root = training_root(bundle, train_data, data)
    trained = [s for s in rows_of(bundle, root, ("train", "val")) if Path(s.path).is_file()] if root else []
    if not table and train_data:  # an imported model: its user says what it learnt from
        trained = declared_training_rows(train_data)
    if is_training_dataset(bundle, data):
        own = [s for s in samples if table.get(relative_path(s.path, data)) == "test"]
        if own:
            official = all(s.split == "test" for s in own)
            return own, trained, ("official test split" if official
                                  else "held-out test split of the model's own split.csv")
    official = [s for s in samples if s.split == "test"]
    if official:
        return official, trained, "official test split"
    used = {os.path.normpath(s.path) for s in trained}
    unseen = [s for s in samples if os.path.normpath(s.path) not in used]
    return unseen, trained, "all scans of the dataset not used in training"


def labels_for(bundle, samples: Sequence[Sample]) -> np.ndarray:
    """Class index per sample in the bundle's class order (planes for a view classifier)."""
    names = list(bundle.class_names)
    key = (lambda s: s.plane) if bundle.config.get("task") == "view" else (lambda s: s.label)
    return np.array([names.index(key(s)) if key(s) in names else -1 for s in samples])


def predict_samples(bundle, samples: Sequence[Sample], batch_size: int = 64, calibrated: bool = True):
    """Probabilities for dataset samples through the bundle's preprocessing (cached decode)."""
    from xai_bt.data.cache import failed_indices, prepare_samples
    from xai_bt.model.preprocessing import to_model_input

    x, errors = prepare_samples(samples, bundle.preprocessing)
    bad = failed_indices(samples, errors)
    keep = [i for i in range(len(samples)) if i not in bad]
    pred = bundle.predict_prepared(to_model_input(x[keep]), batch_size=batch_size, calibrated=calibrated)
    return keep, pred, errors


def evaluate_bundle(model, data: str, threshold: float = TWIN_THRESHOLD, batch_size: int = 64, calibrated: bool = True,
                    write: bool = False, out: str | None = None, overwrite: bool = False,
                    train_data: str | None = None) -> dict[str, Any]:
    """Metrics of a bundle on `data`: official test split and leakage-free subset, with 95% CIs.

    With `write`, the results are also stored in the bundle (bundle.json `metrics`, MODEL_CARD.md)."""
    from xai_bt.data.datasets import load_dataset
    from xai_bt.data.splits import leakage_free, max_similarity
    from xai_bt.data.twins import near_duplicate_groups, thumbnails
    from xai_bt.evaluation.metrics import accuracy_ci, classification_report_dict, grouped_accuracy_ci
    from xai_bt.model.bundle import BUNDLE_FILE, Bundle, load_model, write_config
    from xai_bt.model.card import write_model_card

    bundle = model if isinstance(model, Bundle) else load_model(model)
    if write and not (bundle.path / BUNDLE_FILE).is_file():
        raise ValueError(f"{bundle.path}: --update-card stores metrics in a bundle folder; import the model "
                         "first (python -m xai_bt import-model FILE --classes ... --out models/NAME)")
    samples = load_dataset(data)
    test, trained, description = evaluation_samples(bundle, samples, data, train_data)
    y = labels_for(bundle, test)
    labelled = [i for i in range(len(test)) if y[i] >= 0]
    test, y = [test[i] for i in labelled], y[labelled]
    if not test:
        raise ValueError(f"{data}: no labelled test scans for this model's classes {list(bundle.class_names)}")
    keep, pred, errors = predict_samples(bundle, test, batch_size, calibrated)
    test, y = [test[i] for i in keep], y[keep]
    thumbs = thumbnails(test)  # once: for the twins among training scans and the twin groups within the test
    if trained:
        sims = max_similarity(test, trained, thumbs=thumbs)
        free = np.array(leakage_free(test, trained, threshold=threshold, similarity=sims))
    else:  # nothing known it learnt from: no leakage-free part (it would only repeat the official one)
        sims, free = np.full(len(test), np.nan), np.zeros(len(test), bool)
    names = list(bundle.class_names)
    results: dict[str, Any] = {
        "model": str(bundle.path), "data": str(data), "test_set": description, "calibrated": calibrated,
        "temperature": bundle.temperature if calibrated else 1.0, "dedup_threshold": threshold,
        "twin_transforms": list(TWIN_TRANSFORMS),
        "n_unreadable": len(errors), "reference_scans": len(trained),
    }
    if not trained:
        results["leakage_note"] = ("the scans the model learnt from are unknown, so test scans with a twin "
                                   "among them cannot be left out: no leakage-free result (pass --train-data ROOT)")
    for part, mask in (("official", np.ones(len(test), bool)), ("leakage_free", free)):
        if mask.sum() == 0:
            continue
        report = classification_report_dict(y[mask], pred.probabilities[mask], names)
        report["accuracy_ci"] = accuracy_ci(y[mask], pred.probabilities[mask])
        # test scans can be twins of each other too: count each twin group once for an honest interval
        groups = near_duplicate_groups(thumbs[mask], threshold, link_by=[s.patient_id for s, m in zip(test, mask) if m])
        report["twin_groups"] = grouped_accuracy_ci(y[mask], pred.probabilities[mask], groups)
        results[part] = report
    results["predictions"] = [
        {"path": s.path, "true": names[t], "pred": names[int(p.argmax())], "leakage_free": bool(f) if trained else None,
         "max_similarity_to_training": None if np.isnan(r) else round(float(r), 4),
         **{f"p_{c}": round(float(v), 6) for c, v in zip(names, p)}}
        for s, t, p, f, r in zip(test, y, pred.probabilities, free, sims)
    ]
    if out:
        write_results(results, out, overwrite=overwrite)
    if write:
        bundle.config.setdefault("metrics", {})[Path(data).name] = _summary(results)
        write_config(bundle.path, bundle.config)
        write_model_card(bundle.path)
    return results


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    """What the model card keeps of an evaluation (no per-scan rows)."""
    return {k: v for k, v in results.items() if k != "predictions"}


def write_results(results: dict[str, Any], out: str, overwrite: bool = False) -> list[Path]:
    """metrics.json, metrics.csv (one row per part and class) and predictions.csv in `out`."""
    d = Path(out)
    files = [d / "metrics.json", d / "metrics.csv", d / "predictions.csv"]
    existing = [f for f in files if f.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]}: already exists; use --overwrite to replace it")
    d.mkdir(parents=True, exist_ok=True)
    files[0].write_text(json.dumps(_summary(results), indent=2) + "\n")
    with open(files[1], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["test_set", "class", "n", "accuracy", "precision", "recall", "specificity", "f1", "auc"])
        for part in ("official", "leakage_free"):
            r = results.get(part)
            if not r:
                continue
            m = r["averages"]["macro"]
            w.writerow([part, "macro", r["n"], r["accuracy"], m["precision"], m["recall"], m["specificity"],
                        m["f1"], m["auc"]])
            for c, pc in r["per_class"].items():
                w.writerow([part, c, pc["support"], "", pc["precision"], pc["recall"], pc["specificity"],
                            pc["f1"], pc["auc"]])
    rows = results["predictions"]
    with open(files[2], "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return files


def summary_text(results: dict[str, Any]) -> str:
    """The evaluation in a few lines: accuracy with its CI, macro-F1 and -AUC per part, then per class."""
    lines = [f"{results['model']} on {results['data']} ({results['test_set']})"]
    for part in ("official", "leakage_free"):
        r = results.get(part)
        if not r:
            continue
        ci = r["accuracy_ci"]
        lines.append(f"  {part:13s} n={r['n']:5d}  accuracy {r['accuracy']:.4f} "
                     f"(95% CI {ci['low']:.4f}-{ci['high']:.4f})  macro-F1 {r['macro_f1']:.4f}  macro-AUC "
                     f"{r['macro_auc'] if r['macro_auc'] is None else round(r['macro_auc'], 4)}")
        tg = r.get("twin_groups")
        if tg and tg["n_groups"] < r["n"]:
            lines.append(f"  {'':13s} the {r['n']} scans form {tg['n_groups']} groups of twins of one another "
                         f"(mirror-aware): accuracy {tg['group_weighted_accuracy']:.4f} counting each group once; "
                         f"95% CI resampling whole groups {tg['low']:.4f}-{tg['high']:.4f}")
        for c, pc in r["per_class"].items():
            lines.append(f"      {c:12s} " + "  ".join(f"{k} {_num(pc[k])}" for k in ("precision", "recall", "specificity"))
                         + f"  F1 {_num(pc['f1'])}  n={pc['support']}")
    if results.get("leakage_note"):
        lines.append(f"  leakage-free: none; {results['leakage_note']}")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    """Three decimals, or "n/a" for a metric undefined on this part (e.g. no scan of a class)."""
    return "  n/a" if x is None else f"{x:.3f}"
