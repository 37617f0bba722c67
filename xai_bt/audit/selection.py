"""Which scans the focus audit explains: where each scan's tumor mask comes from, which scans are unseen in
training, and how one scan and its mask are read through the bundle's preprocessing.

*Unseen* scans: a model cannot be audited fairly on scans it was trained on, and public MRI sets share
near-duplicate scans (BRISC's tumor scans all have a twin in the 4-class benchmark's Training folder). So
by default only scans with no twin (as they are, mirrored, flipped or turned: `xai_bt.data.twins`) and no
shared patient among the bundle's `split.csv` rows marked "train" are audited. Rows marked "val" (early stopping and
checkpoint choice, never a gradient update) do not count as seen: an unseen scan may be a twin of one.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xai_bt.data.sample import Sample
from xai_bt.data.twins import TWIN_THRESHOLD, describe_twins

__all__ = ["EMPTY_MASK", "Candidates", "MaskSource", "Selection", "mask_sources", "relative_path", "scan_loader",
           "select_candidates", "select_unseen", "unseen_definition"]

logger = logging.getLogger("xai_bt.audit")
#: The skip reason of a scan whose mask is empty (at its own or at the model's resolution).
EMPTY_MASK = "empty mask"


# ------------------------------------------------------------------------------------------------ masks
@dataclass
class MaskSource:
    """Where a sample's tumor mask comes from: "dataset" (the loader's mask), "file" or "yolo" (a path)."""

    kind: str
    path: str | None = None

    def load(self, sample: Sample, gray: np.ndarray) -> np.ndarray | None:
        """The mask at the scan's size (bool), or None when there is none."""
        from xai_bt.data.boxes import yolo_mask
        from xai_bt.data.datasets import sample_mask
        from xai_bt.data.decode import read_mask

        if self.kind == "yolo":
            return yolo_mask(self.path, gray.shape)
        if self.kind == "file":
            return read_mask(self.path, gray.shape)
        return sample_mask(sample, gray.shape)


def mask_sources(samples: Sequence[Sample], data: str, masks: str | None = None,
                 boxes: str | None = None) -> list[MaskSource | None]:
    """A MaskSource per sample (None when it has no mask): `masks` (a folder of mask images matched by
    file stem, or a CSV `file,mask` with files relative to `data` and masks to the CSV's folder), then
    `boxes` (a folder of YOLO .txt files matched by stem), then the dataset's own mask."""
    by_stem = _stem_index(masks, "file") if masks and os.path.isdir(masks) else {}
    by_path = _mask_csv(masks, data) if masks and not os.path.isdir(masks) else {}
    yolo = _stem_index(boxes, "yolo") if boxes else {}
    out: list[MaskSource | None] = []
    for s in samples:
        stem = Path(s.path).stem
        found = by_path.get(os.path.normpath(os.path.abspath(s.path))) or by_stem.get(stem) or yolo.get(stem)
        own = s.mask is not None or s.mask_path or s.path.lower().endswith(".mat")
        out.append(found or (MaskSource("dataset") if own else None))
    return out


def _stem_index(folder: str, kind: str) -> dict[str, MaskSource]:
    """file stem -> MaskSource for the mask images ("file") or YOLO .txt files ("yolo") under `folder`."""
    from xai_bt.data.decode import iter_image_files

    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such folder")
    files = ([str(p) for p in sorted(Path(folder).rglob("*.txt"))] if kind == "yolo"
             else iter_image_files([folder]))
    return {Path(f).stem: MaskSource(kind, f) for f in files}


def _mask_csv(path: str, data: str) -> dict[str, MaskSource]:
    """absolute image path -> MaskSource from a CSV with columns `file` and `mask`."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such mask folder or CSV file")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"file", "mask"} <= rows[0].keys():
        raise ValueError(f"{path}: a mask CSV needs columns 'file' and 'mask'")
    base = os.path.dirname(os.path.abspath(path))
    return {os.path.normpath(os.path.join(os.path.abspath(data), r["file"])):
            MaskSource("file", os.path.join(base, r["mask"])) for r in rows if r.get("mask")}


class _EmptyMask(ValueError):
    """The scan has no tumor pixels (at the model's resolution): it is skipped, not scored."""

    problem = EMPTY_MASK  # what `xai_bt.io.stream.one_line` reports for it


def scan_loader(bundle, samples: Sequence[Sample],
                sources: Sequence[MaskSource | None]) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    """Sample position -> (model pixels (S, S) uint8, prepared mask (S, S) bool) through the bundle's
    preprocessing; a missing or empty mask raises (reason EMPTY_MASK), so the scan is skipped."""
    from xai_bt.data.datasets import sample_image

    pre = bundle.preprocessing

    def load(i: int) -> tuple[np.ndarray, np.ndarray]:
        gray = sample_image(samples[i])
        mask = sources[i].load(samples[i], gray) if sources[i] is not None else None
        if mask is None or not mask.any():
            raise _EmptyMask(EMPTY_MASK)
        m = pre.prepare_mask(mask, gray)
        if not m.any():
            raise _EmptyMask(EMPTY_MASK)
        return pre.prepare(gray), m

    return load


# ---------------------------------------------------------------------------------------------- unseen
@dataclass
class Selection:
    """Which scans count as unseen: per-sample max similarity to the train / val rows and the verdict."""

    unseen: np.ndarray
    sim_train: np.ndarray
    sim_val: np.ndarray
    n_train_rows: int
    n_val_rows: int
    train_root: str | None

    def counts(self, threshold: float) -> dict[str, Any]:
        """Counts for summary.json: unseen and seen scans, and the unseen ones with a twin in validation."""
        return {"train_rows": self.n_train_rows, "val_rows": self.n_val_rows, "train_root": self.train_root,
                "unseen": int(self.unseen.sum()), "seen": int((~self.unseen).sum()),
                "unseen_with_val_twin": int(np.sum(self.unseen & (self.sim_val >= threshold)))}


def select_unseen(bundle, samples: Sequence[Sample], train_data: str | None = None,
                  threshold: float = TWIN_THRESHOLD, progress: bool = False) -> Selection:
    """Mark the samples with no twin (xai_bt.data.twins, at r >= threshold) or shared patient among the bundle's
    "train" rows; also measure each sample's closest "val" row. Raises ValueError when the bundle has no
    split.csv or its training data cannot be found (the caller suggests --train-data or --all)."""
    from xai_bt.data.splits import leakage_free, max_similarity
    from xai_bt.data.twins import thumbnails
    from xai_bt.model.provenance import declared_training_rows, split_table, training_root

    table = split_table(bundle)
    if not table and not train_data:
        raise ValueError(f"{bundle.path}: the bundle has no split.csv, so which scans it was trained on is unknown")
    root = training_root(bundle, train_data)
    if root is None or not os.path.isdir(root):
        raise ValueError(f"the bundle's training data folder ({root or 'not recorded'}) is not here")
    if table:
        rows = {part: [Sample(path=os.path.join(root, rel)) for rel, p in table.items() if p == part]
                for part in ("train", "val")}
    else:  # an imported model: every scan its user says it learnt from counts as training
        rows = {"train": declared_training_rows(root), "val": []}
    missing = [s.path for s in rows["train"] if not os.path.isfile(s.path)]
    if missing:
        raise ValueError(f"{len(missing)} of the bundle's {len(rows['train'])} training scans are not under "
                         f"{root}, e.g. {missing[0]}")
    thumbs = thumbnails(samples, progress=progress)
    ref = {part: thumbnails(r, progress=progress) for part, r in rows.items()}
    sims = {part: (max_similarity(samples, r, thumbs=thumbs, reference_thumbs=ref[part]) if r
                   else np.full(len(samples), np.nan)) for part, r in rows.items()}
    unseen = np.array(leakage_free(samples, rows["train"], threshold, similarity=sims["train"]))
    return Selection(unseen, sims["train"], sims["val"], len(rows["train"]), len(rows["val"]), root)


def unseen_definition(sel: Selection, threshold: float) -> str:
    """One paragraph saying exactly what "unseen" means for this audit."""
    twin_val = int(np.sum(sel.unseen & (sel.sim_val >= threshold)))
    return (f"Unseen = no twin ({describe_twins(threshold)}) and no shared patient among "
            f"the {sel.n_train_rows} scans of the bundle's split.csv marked 'train' (resolved under "
            f"{sel.train_root}), i.e. never used for a gradient update. These scans are not in training but "
            f"may be in validation: the {sel.n_val_rows} 'val' scans steered early stopping and the choice "
            f"of checkpoint, and {twin_val} of the {int(sel.unseen.sum())} unseen scans have a twin "
            f"among them. Unseen is therefore weaker than 'held-out test'.")


# ------------------------------------------------------------------------------------------ candidates
@dataclass
class Candidates:
    """The scans to audit, in audit order: `positions` index `samples`; `sims` (n, 2) are each one's closest
    train / val similarity; `selection` and `unseen_text` go into summary.json."""

    samples: list[Sample]
    sources: list[MaskSource | None]
    positions: list[int]
    sims: np.ndarray
    selection: dict[str, Any]
    unseen_text: str
    data: str

    def __len__(self) -> int:
        return len(self.positions)

    def sample(self, j: int) -> Sample:
        """The j-th candidate's sample."""
        return self.samples[self.positions[j]]

    def paths(self) -> list[str]:
        """Each candidate's path relative to the data folder (the key of its rows in scores.csv)."""
        return [relative_path(self.samples[i].path, self.data) for i in self.positions]


def select_candidates(bundle, data: str, names: Sequence[str], *, masks: str | None = None,
                      boxes: str | None = None, unseen_only: bool = True, train_data: str | None = None,
                      limit: int | None = None, threshold: float = TWIN_THRESHOLD, seed: int = 0,
                      progress: bool = True) -> Candidates:
    """The scans of `data` to audit: with a mask, of the explained network's classes `names`, unseen in training
    (unless not `unseen_only`), at most `limit` (a seeded random subset). Raises ValueError when none is left."""
    from xai_bt.data.datasets import load_dataset

    samples = load_dataset(data)
    sources = mask_sources(samples, data, masks, boxes)
    positions = [i for i, src in enumerate(sources) if src is not None and samples[i].label in names]
    selection: dict[str, Any] = {"scans": len(samples), "with_mask": len(positions), "unseen_only": unseen_only,
                                 "dedup_threshold": threshold}
    sims = np.full((len(positions), 2), np.nan)
    unseen_text = "all scans with a mask (no check against the training data)"
    if unseen_only and positions:
        sel = select_unseen(bundle, [samples[i] for i in positions], train_data, threshold, progress)
        selection.update(sel.counts(threshold))
        unseen_text = unseen_definition(sel, threshold)
        sims = np.column_stack([sel.sim_train, sel.sim_val])[sel.unseen]
        positions = [i for i, u in zip(positions, sel.unseen) if u]
    if limit is not None and len(positions) > limit:
        pick = np.sort(np.random.default_rng(seed).choice(len(positions), limit, replace=False))
        positions, sims = [positions[i] for i in pick], sims[pick]
    logger.info(f"{len(positions)} scans to audit ({selection['with_mask']} with a mask"
                + (f", {selection['unseen']} of them unseen in training" if "unseen" in selection else "") + ")")
    if not positions:
        raise ValueError(f"{data}: no scans left to audit (with a mask, of the classes {list(names)}"
                         + (", unseen in training" if unseen_only else "") + ")")
    return Candidates(samples, sources, positions, sims, selection, unseen_text, str(data))


def relative_path(path: str, root: str) -> str:
    """`path` relative to `root` in POSIX form (as it is when outside `root`)."""
    rel = os.path.relpath(path, root)
    return Path(path).as_posix() if rel.startswith("..") else Path(rel).as_posix()
