"""Tumor bounding boxes in YOLO text files, turned into masks for the focus audit.

Many brain-tumor detection sets ship one ``.txt`` per image with a line ``class xc yc w h`` per box,
the centre and size normalised to [0, 1] by the image's width and height. A box is a coarse mask: it
flatters localisation scores that reward hitting the region (pointing game) and penalises IoU-style
scores, so report which kind of ground truth a number rests on. To score a model's heatmaps, build the
mask at the original scan's size and resample it with the scan:
``Preprocessing.prepare_mask(yolo_mask(path, gray.shape), gray)``.
"""
from __future__ import annotations

import os
from collections.abc import Collection

import numpy as np

_TOLERANCE = 1e-3  # rounding slack of exporters that write e.g. 1.0004


def read_yolo(path: str | os.PathLike) -> np.ndarray:
    """Boxes of a YOLO label file as an (n, 5) float array ``class, xc, yc, w, h`` (n may be 0).

    Blank lines are skipped. Raises ValueError naming the file and line for anything else that is not
    five numbers with an integer class, a centre in [0, 1] and a size in (0, 1] (pixel coordinates and
    polygon/segmentation lines are the usual culprits).
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{os.fspath(path)}, line {number}: {line.strip()!r}:"
            if len(fields) != 5:
                raise ValueError(f"{where} expected 5 fields 'class xc yc w h', got {len(fields)}"
                                 + (" (a polygon/segmentation line?)" if len(fields) > 5 else ""))
            try:
                values = [float(v) for v in fields]
            except ValueError:
                raise ValueError(f"{where} fields must be numbers") from None
            cls, xc, yc, w, h = values
            if not all(np.isfinite(values)) or cls < 0 or cls != int(cls):
                raise ValueError(f"{where} class must be a non-negative integer and values finite")
            if not (all(-_TOLERANCE <= v <= 1 + _TOLERANCE for v in (xc, yc))
                    and all(0 < v <= 1 + _TOLERANCE for v in (w, h))):
                raise ValueError(f"{where} YOLO boxes are normalised to [0, 1] (centre) and (0, 1] (size); "
                                 "pixel coordinates?")
            rows.append(values)
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def boxes_to_mask(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bool (H, W) mask, the union of normalised ``class xc yc w h`` boxes.

    Box edges are rounded to the nearest pixel boundary and clipped to the image; every box covers at
    least one pixel.
    """
    height, width = shape
    mask = np.zeros((height, width), dtype=bool)
    for _, xc, yc, w, h in np.asarray(boxes, dtype=np.float64).reshape(-1, 5):
        x0 = int(np.clip(round((xc - w / 2) * width), 0, width - 1))
        y0 = int(np.clip(round((yc - h / 2) * height), 0, height - 1))
        x1 = int(np.clip(round((xc + w / 2) * width), x0 + 1, width))
        y1 = int(np.clip(round((yc + h / 2) * height), y0 + 1, height))
        mask[y0:y1, x0:x1] = True
    return mask


def yolo_mask(path: str | os.PathLike, shape: tuple[int, int], classes: Collection[int] | None = None) -> np.ndarray:
    """Bool (H, W) mask of an image of ``shape`` from its YOLO label file: the union of its boxes,
    optionally only those whose class is in ``classes``. A file without boxes gives an empty mask."""
    boxes = read_yolo(path)
    if classes is not None:
        boxes = boxes[np.isin(boxes[:, 0].astype(int), list(classes))]
    return boxes_to_mask(boxes, shape)
