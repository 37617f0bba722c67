"""The one preprocessing of a model: how a decoded scan becomes the model's input.

It is a small serialisable config stored in every model bundle, so training, evaluation, prediction,
explanation and the notebooks all feed the model the same way. It works in numpy/OpenCV (no TensorFlow),
so it runs unchanged under any Keras backend. Intensity scaling for a backbone (e.g. ImageNet means) is
part of the model graph itself; this module hands the model grayscale pixels in [0, 255].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable

import cv2
import numpy as np

DENOISERS = (None, "median", "gaussian", "nlmeans")
INTENSITY_MODES = ("none", "minmax", "percentile")


@dataclass(frozen=True)
class Preprocessing:
    """Geometry and intensity steps applied to every scan before it reaches the model.

    image_size: side of the square model input; the scan keeps its aspect ratio (zero-padded to a square).
    crop_to_head: crop to the bounding box of the head (largest bright region) before resizing, so scans
        with wide black borders and scans without look alike to the model.
    denoise: None, "median" (3x3), "gaussian" (3x3) or "nlmeans" (OpenCV non-local means).
    intensity: "none", "minmax" (stretch to 0-255) or "percentile" (0.5-99.5th percentile stretch).
    """

    image_size: int = 224
    crop_to_head: bool = True
    denoise: str | None = None
    intensity: str = "none"

    def __post_init__(self) -> None:
        if int(self.image_size) < 32:
            raise ValueError(f"image_size must be at least 32, got {self.image_size}")
        if self.denoise not in DENOISERS:
            raise ValueError(f"denoise must be one of {DENOISERS}, got {self.denoise!r}")
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {self.intensity!r}")

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; this xai_bt knows {sorted(known)}")
        return cls(**d)

    # --- the steps -------------------------------------------------------------------------------
    def head_box(self, gray: np.ndarray) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of the region the model sees: the head's bounding box, or the whole image."""
        h, w = gray.shape
        if not self.crop_to_head:
            return 0, h, 0, w
        return head_bounding_box(gray)

    def prepare(self, gray: np.ndarray) -> np.ndarray:
        """One decoded scan (2-D uint8) -> the model's input pixels, (S, S) uint8."""
        if gray.ndim != 2:
            raise ValueError(f"expected a 2-D grayscale image, got shape {gray.shape}")
        img = _denoise(gray, self.denoise)
        img = _intensity(img, self.intensity)
        return self.apply_geometry(img, self.head_box(gray), interpolation=cv2.INTER_AREA)

    def prepare_mask(self, mask: np.ndarray, gray: np.ndarray) -> np.ndarray:
        """Resample a mask of `gray` exactly as `prepare` resamples the scan: (S, S) bool."""
        if mask.shape != gray.shape:
            mask = cv2.resize(mask.astype(np.uint8), gray.shape[::-1], interpolation=cv2.INTER_NEAREST)
        m = self.apply_geometry(mask.astype(np.uint8) * 255, self.head_box(gray), cv2.INTER_LINEAR)
        return m >= 128

    def apply_geometry(self, arr: np.ndarray, box: tuple[int, int, int, int],
                       interpolation: int = cv2.INTER_AREA) -> np.ndarray:
        """Crop to `box`, zero-pad to a centred square, resize to image_size."""
        y0, y1, x0, x1 = box
        crop = arr[y0:y1, x0:x1]
        h, w = crop.shape[:2]
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        square = np.zeros((side, side) + crop.shape[2:], dtype=crop.dtype)
        square[top:top + h, left:left + w] = crop
        s = int(self.image_size)
        if side == s:
            return square
        return cv2.resize(square, (s, s), interpolation=interpolation)

    def batch(self, grays: Iterable[np.ndarray]) -> np.ndarray:
        """Several decoded scans -> one model batch, (N, S, S, 1) float32 in [0, 255]."""
        return to_model_input(np.stack([self.prepare(g) for g in grays]))


def to_model_input(prepared: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 prepared scans -> (N, S, S, 1) float32, the tensor every xai_bt model takes."""
    return prepared.astype(np.float32)[..., None]


def head_bounding_box(gray: np.ndarray, margin: float = 0.02) -> tuple[int, int, int, int]:
    """Bounding box of the largest bright connected region (the head), with a small margin.

    Otsu's threshold on a blurred copy separates head from background in MRI slices; when that finds
    nothing sensible (blank or odd images), the whole image is returned rather than a bad crop.
    """
    h, w = gray.shape
    blur = cv2.GaussianBlur(gray, (5, 5), 0)
    thr, _ = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    binary = (blur > max(thr * 0.5, 10)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return 0, h, 0, w
    idx = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, bw, bh, area = stats[idx]
    if area < 0.05 * h * w:
        return 0, h, 0, w
    my, mx = int(round(margin * h)), int(round(margin * w))
    return int(max(0, y - my)), int(min(h, y + bh + my)), int(max(0, x - mx)), int(min(w, x + bw + mx))


def _denoise(img: np.ndarray, mode: str | None) -> np.ndarray:
    if mode is None:
        return img
    if mode == "median":
        return cv2.medianBlur(img, 3)
    if mode == "gaussian":
        return cv2.GaussianBlur(img, (3, 3), 0)
    return cv2.fastNlMeansDenoising(img, None, h=7, templateWindowSize=7, searchWindowSize=21)


def _intensity(img: np.ndarray, mode: str) -> np.ndarray:
    if mode == "none":
        return img
    lo, hi = (img.min(), img.max()) if mode == "minmax" else np.percentile(img, (0.5, 99.5))
    if hi <= lo:
        return img
    out = (img.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(out, 0, 255).astype(np.uint8)
