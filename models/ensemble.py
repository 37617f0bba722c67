"""Would an ensemble of shipped models earn its cost? Average the calibrated probabilities of several
bundles on the official test split and report accuracy and macro-F1 (95% Wilson CIs), official and
leakage-free, beside each member's.

    python models/ensemble.py models/default models/two_stage models/cascade --data ../shared/data/brain-tumor-mri

Each member runs `xai_bt.evaluation.evaluate.evaluate_bundle` (its own preprocessing, test-time augmentation and
temperature); the members must share the test split and the leakage-free flags, which they do when they
were trained on one split (`--split models/default/split.csv`).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xai_bt.evaluation.evaluate import evaluate_bundle  # noqa: E402
from xai_bt.evaluation.metrics import accuracy_ci, classification_report_dict  # noqa: E402


def member(path: str, data: str) -> dict:
    """One bundle's test predictions: paths, true labels, probabilities, leakage-free flags, seconds."""
    t = time.perf_counter()
    res = evaluate_bundle(path, data)
    rows = res["predictions"]
    names = [k[2:] for k in rows[0] if k.startswith("p_")]
    return {"paths": [r["path"] for r in rows], "names": names,
            "y": np.array([names.index(r["true"]) for r in rows]),
            "p": np.array([[r[f"p_{c}"] for c in names] for r in rows]),
            "free": np.array([r["leakage_free"] for r in rows]), "seconds": time.perf_counter() - t}


def line(label: str, y: np.ndarray, p: np.ndarray, free: np.ndarray, names: list[str]) -> str:
    cells = []
    for mask in (np.ones(len(y), bool), free):
        ci = accuracy_ci(y[mask], p[mask])
        f1 = classification_report_dict(y[mask], p[mask], names)["averages"]["macro"]["f1"]
        cells.append(f"{100 * ci['estimate']:.2f}% ({100 * ci['low']:.2f}–{100 * ci['high']:.2f}), F1 {f1:.4f}")
    return f"| {label} | {cells[0]} | {cells[1]} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", required=True)
    args = ap.parse_args()
    members = [member(m, args.data) for m in args.models]
    first = members[0]
    for m, name in zip(members[1:], args.models[1:]):
        if m["paths"] != first["paths"] or m["names"] != first["names"] or not np.array_equal(m["free"], first["free"]):
            raise SystemExit(f"{name}: not the same test scans, classes or leakage-free set as {args.models[0]}")
    y, free, names = first["y"], first["free"], first["names"]
    rows = ["| model | official test split | leakage-free part |", "|---|---|---|"]
    rows += [line(f"`{name}` ({m['seconds']:.0f} s)", y, m["p"], free, names) for name, m in zip(args.models, members)]
    mean = np.mean([m["p"] for m in members], axis=0)
    rows.append(line(f"mean of {len(members)} ({sum(m['seconds'] for m in members):.0f} s)", y, mean, free, names))
    print(f"\n{len(y)} official test scans, {int(free.sum())} leakage-free\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
