"""Choose the shipped sample scans (xai_bt/samples/) by a rule, not by eye or by the model's answer.

One official test scan per class with no twin of any kind (xai_bt.data.twins: as it is, mirrored, flipped,
turned) among the scans models/default learnt from (its split.csv train and val rows) nor among the
BRISC 2025 scans the view models learnt from; of those, the one whose nearest-neighbour r is the median
of its class (typical of the unseen scans, neither the most nor the least like training). Prints the
choice; with --copy, copies the four files into xai_bt/samples/. Run from the repository root:

    python audits/twins/pick_samples.py [--copy]
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
from pathlib import Path

from xai_bt.data.datasets import load_dataset
from xai_bt.data.sample import CLASS_NAMES
from xai_bt.data.twins import TWIN_THRESHOLD, best_matches, thumbnails

ROOT = "../shared/data/brain-tumor-mri"
BRISC = "../shared/data/brisc2025"
SAMPLES = Path(__file__).resolve().parents[2] / "xai_bt" / "samples"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copy", action="store_true", help="copy the chosen scans into xai_bt/samples/")
    args = p.parse_args()
    samples = load_dataset(ROOT)
    with open("models/default/split.csv", newline="") as fh:
        table = {r["path"]: r["split"] for r in csv.DictReader(fh)}
    test = [s for s in samples if s.split == "test"]
    learnt = [s for s in samples if table.get(Path(os.path.relpath(s.path, ROOT)).as_posix()) in ("train", "val")]
    r_train = best_matches(thumbnails(test), thumbnails(learnt))[0]
    r_brisc = best_matches(thumbnails(test), thumbnails(load_dataset(BRISC)))[0]
    for name in CLASS_NAMES:
        unseen = sorted((i for i, s in enumerate(test) if s.label == name and r_train[i] < TWIN_THRESHOLD
                         and r_brisc[i] < TWIN_THRESHOLD), key=lambda i: (r_train[i], test[i].path))
        i = unseen[(len(unseen) - 1) // 2]
        print(f"{name}: {os.path.relpath(test[i].path, ROOT)} (nearest training scan r = {r_train[i]:.4f}, "
              f"in BRISC {r_brisc[i]:.4f}; the median of {len(unseen)} unseen {name} test scans)")
        if args.copy:
            shutil.copyfile(test[i].path, SAMPLES / f"{name}.jpg")


if __name__ == "__main__":
    main()
