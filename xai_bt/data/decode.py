"""Decode one scan file into a 2-D uint8 grayscale array, or fail with an `ImageError` a user can act on.

Handles JPEG / PNG / TIFF / BMP in any PIL mode (8/16-bit, float, RGB(A), palette, EXIF-rotated) and DICOM.
No TensorFlow here: this module must import fast and work under any Keras backend.

Intensity rule for data that is not 8-bit (16-bit PNG/TIFF, float TIFF, figshare int16, DICOM without a
window): plain min-max over the finite pixels to 0..255 (`rescale_to_uint8`). Not percentile clipping: in
contrast-enhanced T1 the tumor is often the brightest structure, and clipping the top 0.5 % would saturate it.
8-bit images are returned as stored (after the conversion to gray), so they match the benchmark JPEGs.
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xai_bt.data.sample import ImageError

#: Suffixes (lower-case) that `iter_image_files` picks up in folders.
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"})
_DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
_DICOM_MAGIC_OFFSET = 128
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "P"})
_LUMA = np.array([0.299, 0.587, 0.114])   # ITU-R 601-2, the weights PIL's convert("L") uses


def rescale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Min-max rescale any numeric array to uint8 0..255; NaN/inf become 0, a constant array becomes all 0."""
    a = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = a[finite].min(), a[finite].max()
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    scaled = (np.where(finite, a, lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def read_image(source: str | os.PathLike | bytes, name: str | None = None, *,
               min_size: int = 32, allow_constant: bool = False) -> np.ndarray:
    """Decode a scan (path or raw bytes) to a 2-D uint8 gray array (H, W).

    `name` is how the source is called in errors (default: the path, or "<bytes>"); its suffix also hints
    DICOM. Raises ImageError for anything unusable, including images under `min_size` pixels on a side and,
    unless `allow_constant`, images whose pixels are all equal (blank exports carry no information).
    """
    label = name if name is not None else ("<bytes>" if isinstance(source, bytes) else str(source))
    data = source if isinstance(source, bytes) else read_bytes(source, label)
    if not data:
        raise ImageError(label, "empty file (0 bytes)")
    if _has_dicom_magic(data) or Path(label).suffix.lower() in _DICOM_SUFFIXES:
        gray = _decode_dicom(data, label)
    else:
        gray = _decode_pil(data, label)
    return _check_usable(gray, label, min_size, allow_constant)


def read_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a segmentation mask (1-bit or 8/16-bit image) as bool (H, W), tumor = nonzero.

    With `shape` (H, W) the mask is resampled with nearest neighbour so it lines up with its image.
    """
    label = str(path)
    img = _open_pil(read_bytes(path, label), label)
    if img.mode == "1" or img.mode in _HIGH_DEPTH_MODES:
        mask = np.asarray(img) != 0
    else:
        mask = np.asarray(img.convert("L")) != 0
    mask = np.array(mask, dtype=bool)
    return mask if shape is None else resize_mask(mask, shape)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to `shape` (H, W); returned unchanged if already that size."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == tuple(shape):
        return mask
    rows, cols = (((np.arange(new) + 0.5) * old / new).astype(int) for new, old in zip(shape, mask.shape))
    return mask[np.ix_(rows, cols)]


def iter_image_files(paths: str | os.PathLike | Iterable[str | os.PathLike],
                     recursive: bool = True) -> list[str]:
    """List the image files named by `paths` (files and/or folders), sorted and without duplicates.

    In folders: hidden files and folders (".name", "__MACOSX") are skipped, and so are files whose suffix is
    not in SUPPORTED_SUFFIXES, except suffix-less or numeric-suffix files (DICOM series such as "IM0001" or
    "1.2.840.113619") that carry the DICOM magic. Files named explicitly are always kept, so a bad one is
    reported by `read_image` instead of silently dropped. Paths that do not exist are left out: callers that
    take user input should report them (the CLI does).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: set[str] = set()
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            found.update(_walk_images(p, recursive))
        elif os.path.isfile(p):
            found.add(p)
    return sorted(found)


def is_hidden(name: str) -> bool:
    """True for names that file browsers hide or that archive tools leave behind (".x", "__MACOSX")."""
    return name.startswith(".") or name == "__MACOSX"


def _walk_images(folder: str, recursive: bool) -> Iterable[str]:
    """Yield the image files under `folder`, pruning hidden folders."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_hidden(d)] if recursive else []
        for fname in filenames:
            full = os.path.join(dirpath, fname)
            if not is_hidden(fname) and _looks_like_image(full):
                yield full


def _looks_like_image(path: str) -> bool:
    """Suffix check, falling back to the DICOM magic for suffix-less and UID-named files."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in SUPPORTED_SUFFIXES:
        return True
    if suffix and not suffix[1:].isdigit():
        return False
    try:
        with open(path, "rb") as fh:
            return _has_dicom_magic(fh.read(_DICOM_MAGIC_OFFSET + 4))
    except OSError:
        return False


def _has_dicom_magic(head: bytes) -> bool:
    """DICOM Part 10 files have a 128-byte preamble followed by b'DICM'."""
    return head[_DICOM_MAGIC_OFFSET:_DICOM_MAGIC_OFFSET + 4] == b"DICM"


def read_bytes(path: str | os.PathLike, label: str | None = None) -> bytes:
    """Read a whole file, turning OS errors into ImageError (called `label`, default the path) with a
    plain-words problem."""
    path, label = Path(path), label if label is not None else str(path)
    if path.is_dir():
        raise ImageError(label, "is a folder, not an image file")
    if not path.exists():
        raise ImageError(label, "file not found")
    try:
        data = path.read_bytes()
    except PermissionError:
        raise ImageError(label, "cannot read file (permission denied)") from None
    except OSError as exc:
        raise ImageError(label, f"cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise ImageError(label, "empty file (0 bytes)")
    return data


def _open_pil(data: bytes, label: str) -> Image.Image:
    """Open and fully decode with PIL (so truncated files fail here), with EXIF orientation applied."""
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(label, "not an image (unrecognised format)") from None
    except Exception as exc:  # PIL raises many types for broken headers
        raise ImageError(label, f"corrupt image ({_short(exc)})") from None
    try:
        img.load()
    except Image.DecompressionBombError:
        raise ImageError(label, "image too large (over PIL's decompression-bomb limit)") from None
    except Exception as exc:
        raise ImageError(label, f"truncated or corrupt image ({_short(exc)})") from None
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not make the pixels unusable
        return img


def _decode_pil(data: bytes, label: str) -> np.ndarray:
    """PIL image of any mode -> 2-D uint8 gray."""
    img = _open_pil(data, label)
    if img.mode in _HIGH_DEPTH_MODES:
        return rescale_to_uint8(np.asarray(img))
    if img.mode in _ALPHA_MODES:
        img = _over_black(img)
    try:
        return np.array(img.convert("L"), dtype=np.uint8)
    except Exception as exc:
        raise ImageError(label, f"unsupported image mode {img.mode} ({_short(exc)})") from None


def _over_black(img: Image.Image) -> Image.Image:
    """Composite an image with transparency over black, so transparent pixels read as background."""
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)


def _decode_dicom(data: bytes, label: str) -> np.ndarray:
    """DICOM -> 2-D uint8: middle frame, rescale slope/intercept, window if given else min-max,
    MONOCHROME1 inverted so that bright always means high signal."""
    import pydicom  # lazy: only DICOM users pay for the import

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise ImageError(label, f"not a readable DICOM file ({_short(exc)})") from None
    if "PixelData" not in ds:
        raise ImageError(label, "DICOM file has no pixel data")
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise ImageError(label, f"cannot decode DICOM pixel data ({_short(exc)})") from None
    pixels = _dicom_single_frame(pixels, ds)
    values = pixels * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    gray = _dicom_window(values, ds)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        gray = 255 - gray
    return gray


def _dicom_single_frame(pixels: np.ndarray, ds) -> np.ndarray:
    """Pick the middle frame of a multi-frame DICOM and turn colour samples into luma."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[frames // 2]
    if pixels.ndim == 3:
        pixels = pixels[..., :3] @ _LUMA
    return pixels.astype(np.float64)


def _dicom_window(values: np.ndarray, ds) -> np.ndarray:
    """Apply the first WindowCenter/WindowWidth pair if present and sane, else min-max."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return rescale_to_uint8(values)
    center, width = (float(np.atleast_1d(np.asarray(v, dtype=np.float64))[0]) for v in (center, width))
    if not width > 0:
        return rescale_to_uint8(values)
    lo = center - width / 2
    return np.rint(np.clip((values - lo) / width, 0.0, 1.0) * 255).astype(np.uint8)


def _check_usable(gray: np.ndarray, label: str, min_size: int, allow_constant: bool) -> np.ndarray:
    """Reject images too small to classify and, unless allowed, blank ones."""
    if gray.ndim != 2:
        raise ImageError(label, f"unexpected image shape {gray.shape}")
    h, w = gray.shape
    if h < min_size or w < min_size:
        raise ImageError(label, f"image too small ({w}x{h} pixels; need at least {min_size}x{min_size})")
    if not allow_constant and gray.min() == gray.max():
        raise ImageError(label, "image has no contrast (all pixels equal)")
    return np.ascontiguousarray(gray, dtype=np.uint8)


def _short(exc: BaseException, limit: int = 100) -> str:
    """One-line, length-capped description of a library exception for an error message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
