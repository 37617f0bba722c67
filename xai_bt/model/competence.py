"""Is this input like the scans the model learnt from? Competence checks, and the warnings they give.

A classifier answers for any image: a chart or a cat photo gets "no tumor (0.97)". These checks say when an
answer is outside what the model was shown, so that answer carries a warning instead of passing silently.

Two kinds of check:

- Image checks (`IMAGE_CHECKS`) on the decoded image before the model: colour, a bright or missing dark
  background, no head-sized region, noise, heavy blur, heavy JPEG blocks, flat drawn areas, an almost blank
  image. Their thresholds do not depend on the model: each sits beyond the most extreme of the 5,708
  Training scans of the 4-class benchmark, except the dark-background check, which 6 of them (0.1%) fail
  (`IMAGE_THRESHOLDS`; `benchmarks/bench_competence.py` measures them), so every bundle gets them, fitted or not.
- A feature check: the squared Mahalanobis distance of the decision network's features (the input of its
  `logits` layer, un-augmented pass) to the nearest class mean of the model's own training scans, with one
  covariance shared by the classes (Lee et al. 2018). Its reference (class means, whitening matrix) and its
  threshold are fitted per bundle (`fit_competence`, `python -m xai_bt competence MODEL --data ROOT`) and
  stored in bundle.json under "competence"; the threshold comes from the model's mirror-aware validation
  scans. Bundles without that record get the image checks only and say nothing about their features.

Energy and max-logit scores were measured too and separate real scans from these inputs poorly for the
shipped models (they call most of them "no tumor" with high confidence); see benchmarks/competence.md.

    warnings(bundle, "photo.jpg")          -> ["unlike the training scans: the image is in colour ..."]
    image_warnings(image_statistics(gray, rgb))
    feature_warnings(bundle, features)     -> one list per scan
"""
from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

__all__ = ["RECORD_KEY", "STAT_KEYS", "IMAGE_THRESHOLDS", "IMAGE_CHECKS", "ImageCheck", "CompetenceExists", "decode_colour",
           "image_statistics", "image_warnings", "scan_warnings", "decode_scan", "feature_network", "features", "network_outputs", "pooled_layer",
           "feature_scores", "feature_warnings", "has_feature_check", "warnings", "fit_competence",
           "training_samples", "format_record"]

#: bundle.json key of the fitted record
RECORD_KEY = "competence"
RECORD_VERSION = 1
#: side of the square the global image statistics are computed on (any input size reads alike)
WORK_SIZE = 128
#: the numbers `image_statistics` returns, in this order (a fixed-length vector for streamed pipelines)
STAT_KEYS: tuple[str, ...] = ("std", "colour_fraction", "colour_mean", "border_level", "border_relative",
                              "dark_border", "dark_image", "head_fraction", "head_solidity", "flat", "noise",
                              "blur", "jpeg_blocks")
#: what every warning starts with, so a reader knows what kind of note it is
PREFIX = "unlike the training scans: "

#: Model-independent thresholds of the image checks, chosen on the 5,708 Training scans of the benchmark (beyond
#: the most extreme one, with a margin; the dark-background pair lets 6 of them through) and on constructed
#: images made with another seed than benchmarks/competence.md reports; the Testing scans and BRISC 2025 only
#: check them.
IMAGE_THRESHOLDS: dict[str, float] = {
    "colour_fraction": 0.10,     # pixels with chroma (max - min channel) > 40; Training max 0.037
    "colour_mean": 10.0,         # mean chroma; Training max 3.95 (grey JPEGs with a coloured watermark: ~5)
    "border_relative": 0.75,     # border band median / image 99th percentile; Training max 0.55
    "border_level": 128.0,       # ... and that median as a grey level
    "dark_border": 0.36,         # fraction of the outer ring darker than 0.2 x the 99th percentile ...
    "dark_image": 0.30,          # ... and of the image darker than 0.15 x; Training: 6 of 5,708 below both
    "head_fraction": 0.07,       # largest bright region / image; Training min 0.115
    "head_solidity": 0.12,       # largest bright region / its bounding box; Training min 0.168
    "noise": 0.70,               # std of (image - Gaussian blur, sigma 1) / std of image; Training max 0.57
    "blur": 0.065,               # mean |Laplacian| / std, on the head crop; Training min 0.080
    "jpeg_blocks": 1.60,         # step across 8-pixel block edges / step elsewhere; Training max 1.49
    "flat": 0.40,                # bright-region pixels in exactly flat 3x3 patches; Training max 0.17
    "blank": 10.0,               # grey-level std; Training min 20
}


class CompetenceExists(FileExistsError):
    """The bundle already has a fitted competence record and `overwrite` was not given."""


@dataclass(frozen=True)
class ImageCheck:
    """One image-level check: its name, when it fires (statistics -> bool) and the warning it gives."""

    name: str
    fires: Callable[[dict[str, float]], bool]
    message: str
    rule: str


def _t(name: str) -> float:
    return IMAGE_THRESHOLDS[name]


IMAGE_CHECKS: tuple[ImageCheck, ...] = (
    ImageCheck("blank", lambda s: s["std"] < _t("blank"),
               "the image is almost blank", "grey-level std < blank"),
    ImageCheck("colour", lambda s: s["colour_fraction"] > _t("colour_fraction") or s["colour_mean"] > _t("colour_mean"),
               "the image is in colour (a photo or a chart?)", "colour_fraction > colour_fraction or mean chroma > colour_mean"),
    ImageCheck("bright_background", lambda s: s["border_relative"] > _t("border_relative")
               and s["border_level"] > _t("border_level"),
               "the background is bright (a document, a chart or an inverted scan?)",
               "border median > border_relative x 99th percentile and > border_level"),
    ImageCheck("no_dark_background", lambda s: s["dark_border"] < _t("dark_border") and s["dark_image"] < _t("dark_image"),
               "there is no dark background (a photo?)", "dark border fraction < dark_border and dark image "
                                                                "fraction < dark_image"),
    ImageCheck("no_head", lambda s: s["head_fraction"] < _t("head_fraction") or s["head_solidity"] < _t("head_solidity"),
               "it has no head-sized bright region (text, a drawing or a chart?)",
               "largest bright region < head_fraction of the image or < head_solidity of its box"),
    ImageCheck("noise", lambda s: s["noise"] > _t("noise"),
               "the image looks like noise", "high-frequency std / std > noise"),
    ImageCheck("blur", lambda s: s["blur"] < _t("blur"),
               "the image is heavily blurred", "mean |Laplacian| / std < blur"),
    ImageCheck("jpeg_blocks", lambda s: s["jpeg_blocks"] > _t("jpeg_blocks"),
               "it shows heavy JPEG compression blocks", "8-pixel block-edge step ratio > jpeg_blocks"),
    ImageCheck("flat", lambda s: s["flat"] > _t("flat"),
               "it has large perfectly flat areas (a drawing or a graphic?)", "flat 3x3 fraction of the bright region > flat"),
)


# --------------------------------------------------------------------------------------------- decoding
def decode_colour(source: str | os.PathLike | bytes) -> np.ndarray | None:
    """The image as stored, (H, W, 3) uint8 when it is a colour image (transparency over black, EXIF turned,
    as `xai_bt.data.decode` does before it converts to grey), else None (grey, DICOM, 16-bit, unreadable)."""
    from PIL import Image, ImageOps

    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        opened = Image.open(io.BytesIO(data))
        opened.load()
        img: Image.Image = ImageOps.exif_transpose(opened) or opened
    except Exception:  # not readable here: read_image reports the problem; no colour check
        return None
    if img.mode in ("RGBA", "LA", "PA", "P"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    if img.mode not in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        return None
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


# --------------------------------------------------------------------------------------------- image statistics
def image_statistics(gray: np.ndarray, rgb: np.ndarray | None = None) -> dict[str, float]:
    """The numbers the image checks read, from a decoded scan (2-D uint8) and, for a colour file, its
    colour pixels (H, W, 3). Global statistics on a WORK_SIZE square, so every input size reads alike;
    block edges and flat patches at the stored resolution, where they are."""
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    small = cv2.resize(gray, (WORK_SIZE, WORK_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    out = {"std": float(small.std())}
    out.update(_colour(rgb))
    out.update(_background(small))
    head, box = _head(gray)
    out.update(head)
    out.update(_texture(gray, box))
    out["jpeg_blocks"] = _blockiness(gray)
    return {k: out[k] for k in STAT_KEYS}


def _colour(rgb: np.ndarray | None) -> dict[str, float]:
    """How coloured the stored pixels are: the fraction with chroma (max - min channel) over 40, the mean."""
    if rgb is None or rgb.ndim != 3:
        return {"colour_fraction": 0.0, "colour_mean": 0.0}
    small = cv2.resize(np.ascontiguousarray(rgb[..., :3]), (WORK_SIZE, WORK_SIZE),
                       interpolation=cv2.INTER_AREA).astype(np.int16)
    chroma = small.max(axis=2) - small.min(axis=2)
    return {"colour_fraction": float((chroma > 40).mean()), "colour_mean": float(chroma.mean())}


def _background(small: np.ndarray) -> dict[str, float]:
    """How bright the border is relative to the image's bright end (the median of a band from 1/32 to 1/8 of
    the side in, so a thin frame drawn at the edge does not count), and how much of the outer 1/16 of the
    side and of the whole image is dark."""
    s = small.shape[0]
    top = float(np.percentile(small, 99)) + 1.0
    a, b = s // 32, s // 8
    inner = small[a:s - a, a:s - a]
    level = float(np.median(_ring(inner, b - a)))
    return {"border_level": level, "border_relative": level / top,
            "dark_border": float((_ring(small, s // 16) < 0.2 * top).mean()),
            "dark_image": float((small < 0.15 * top).mean())}


def _ring(a: np.ndarray, width: int) -> np.ndarray:
    """The pixels within `width` of the edge of a square array (corners counted twice: fine for fractions)."""
    return np.concatenate([a[:width].ravel(), a[-width:].ravel(), a[:, :width].ravel(), a[:, -width:].ravel()])


def _head(gray: np.ndarray) -> tuple[dict[str, float], tuple[int, int, int, int]]:
    """The largest bright region, found as `preprocessing.head_bounding_box` finds the head (Otsu on a
    blurred copy): its share of the image, its share of its own bounding box, how flat the bright pixels are;
    and the box `head_bounding_box` returns (whole image when no region covers 5%), from the same pass."""
    h, w = gray.shape
    blur = cv2.GaussianBlur(gray, (5, 5), 0)
    thr, _ = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    binary = blur > max(thr * 0.5, 10)
    n, _, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    if n <= 1:
        return {"head_fraction": 0.0, "head_solidity": 0.0, "flat": 1.0}, (0, h, 0, w)
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, bw, bh, area = (int(v) for v in stats[i])
    kernel = np.ones((3, 3), np.uint8)
    flat = cv2.dilate(gray, kernel) == cv2.erode(gray, kernel)
    out = {"head_fraction": area / (h * w), "head_solidity": area / max(bw * bh, 1), "flat": float(flat[binary].mean())}
    if area < 0.05 * h * w:
        return out, (0, h, 0, w)
    my, mx = int(round(0.02 * h)), int(round(0.02 * w))
    return out, (max(0, y - my), min(h, y + bh + my), max(0, x - mx), min(w, x + bw + mx))


def _texture(gray: np.ndarray, box: tuple[int, int, int, int]) -> dict[str, float]:
    """Fine detail relative to contrast on the head crop at WORK_SIZE (as a model would see it): high for
    noise, low for heavy blur."""
    from xai_bt.model.preprocessing import Preprocessing

    crop = Preprocessing(image_size=WORK_SIZE).apply_geometry(gray, box).astype(np.float32)
    std = float(crop.std()) + 1e-6
    detail = crop - cv2.GaussianBlur(crop, (0, 0), 1.0)
    return {"noise": float(detail.std()) / std, "blur": float(np.abs(cv2.Laplacian(crop, cv2.CV_32F)).mean()) / std}


def _blockiness(gray: np.ndarray) -> float:
    """Mean grey-level step across 8-pixel block edges over the mean step elsewhere, where there is signal:
    about 1 for a scan, clearly above for heavy JPEG compression (flat 8x8 blocks)."""
    ratios = []
    for g in (gray, gray.T):                 # steps along rows, then along columns
        step = np.abs(np.diff(g.astype(np.int16), axis=1))
        signal = np.maximum(g[:, :-1], g[:, 1:]) > 20
        kept = step * signal
        at_sum, at_n = int(kept[:, 7::8].sum()), int(signal[:, 7::8].sum())
        off_sum, off_n = int(kept.sum()) - at_sum, int(signal.sum()) - at_n
        if not at_n or not off_n:
            return 1.0
        ratios.append((at_sum / at_n + 1e-3) / (off_sum / off_n + 1e-3))
    return float(np.mean(ratios))


def image_warnings(stats: dict[str, float]) -> list[str]:
    """The warnings of the image checks that fire on these statistics (`image_statistics`), in check order."""
    return [PREFIX + c.message for c in IMAGE_CHECKS if c.fires(stats)]


def scan_warnings(gray: np.ndarray, rgb: np.ndarray | None = None) -> list[str]:
    """Image-check warnings of one decoded scan (2-D uint8) and, for a colour file, its colour pixels."""
    return image_warnings(image_statistics(gray, rgb))


# --------------------------------------------------------------------------------------------- feature check
def feature_network(bundle) -> str:
    """The network every scan goes through, whose features are checked: the tumor classifier, or a
    cascade's stage 1 (stage 2 only ever saw tumor scans, so every no-tumor scan would look foreign to it)."""
    return "stage1" if bundle.kind == "cascade" else "model"


def _feature_model(bundle, network: str):
    """The network with its features (the input of the `logits` layer) as the output; cached on the bundle."""
    cache = bundle.__dict__.setdefault("_competence_models", {})
    if network not in cache:
        import keras

        net = bundle.networks[network]
        cache[network] = keras.Model(net.inputs, net.get_layer("logits").input)
    return cache[network]


def features(bundle, x: np.ndarray, view_vectors: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
    """The checked network's features of a prepared batch (N, S, S, 1), un-augmented: (N, D) float64.
    A two-stage model's tumor network takes the view vectors too (computed when not given)."""
    from xai_bt.model.bundle import run_network

    network = feature_network(bundle)
    net = bundle.networks[network]
    inputs: Any = x
    if len(net.inputs) > 1:
        inputs = [x, bundle.view_features(x, batch_size) if view_vectors is None else view_vectors]
    return run_network(_feature_model(bundle, network), inputs, batch_size)


def _output_model(bundle, network: str):
    """The network with both its features and its logits as outputs; cached on the bundle."""
    cache = bundle.__dict__.setdefault("_competence_output_models", {})
    if network not in cache:
        import keras

        net = bundle.networks[network]
        layer = net.get_layer("logits")
        cache[network] = keras.Model(net.inputs, [layer.input, layer.output])
    return cache[network]


def network_outputs(bundle, x: np.ndarray, batch_size: int = 64
                    ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """One un-augmented pass of the checked network over a prepared batch: its features, its raw logits as
    {network: logits} for `Bundle.predict_prepared(known_logits=...)` (so predicting does not run that pass
    again) and, for a two-stage model, the view vectors it took (for `view_vectors=`), else None."""
    network = feature_network(bundle)
    net = bundle.networks[network]
    views = bundle.view_features(x, batch_size) if len(net.inputs) > 1 else None
    model = _output_model(bundle, network)
    inputs: Any = x if views is None else [x, views]
    feats, logits = [], []
    for start in range(0, len(x), max(1, batch_size)):
        chunk = inputs[start:start + batch_size] if views is None else [a[start:start + batch_size] for a in inputs]
        f, lg = model.predict_on_batch(chunk)
        feats.append(np.asarray(f, np.float64))
        logits.append(np.asarray(lg, np.float64))
    return np.concatenate(feats), {network: np.concatenate(logits)}, views


def pooled_layer(net) -> str | None:
    """The layer whose spatial mean the network's features are (global average pooling, perhaps then dropout,
    into the logits layer), so a caller holding that layer's activations has the features without another
    pass; None for any other structure."""
    try:
        op = net.get_layer("logits").input._keras_history.operation
        while type(op).__name__ == "Dropout":
            op = op.input._keras_history.operation
        if type(op).__name__ != "GlobalAveragePooling2D" or getattr(op, "keepdims", False) \
                or getattr(op, "data_format", "channels_last") != "channels_last":
            return None
        return op.input._keras_history.operation.name
    except (AttributeError, ValueError, IndexError):
        return None


def has_feature_check(bundle) -> bool:
    """True when the bundle carries a fitted feature reference and threshold."""
    record = bundle.config.get(RECORD_KEY) or {}
    return isinstance(record.get("feature_check"), dict)


def _reference(bundle) -> dict[str, Any]:
    """The decoded feature reference of a bundle (projection, mean, whitening, class centres, threshold),
    decoded once and cached on the bundle."""
    cached = bundle.__dict__.get("_competence_reference")
    if cached is not None:
        return cached
    check = bundle.config[RECORD_KEY]["feature_check"]
    ref = check["reference"]
    dim, n_classes = int(ref["dim"]), len(ref["classes"])
    whiten = np.zeros((dim, dim), np.float64)
    whiten[np.tril_indices(dim)] = _decode(ref["whitening_lower"], dim * (dim + 1) // 2)
    out = {"projection": _projection(check["projection"], int(check["features"])),
           "mean": _decode(ref["mean"], dim), "whiten": whiten,
           "centres": _decode(ref["class_centres"], dim * n_classes).reshape(n_classes, dim),
           "threshold": float(check["threshold"])}
    bundle.__dict__["_competence_reference"] = out
    return out


def _projection(spec: dict[str, Any] | None, n_features: int) -> np.ndarray | None:
    """The fixed random projection of the features (None: the features are used as they are). Made from its
    seed with numpy's legacy RandomState, whose stream numpy keeps fixed, and checked against the stored sum."""
    if not spec:
        return None
    dim = int(spec["dim"])
    proj = np.random.RandomState(int(spec["seed"])).standard_normal((n_features, dim)) / np.sqrt(dim)
    if "checksum" in spec and not np.isclose(float(np.abs(proj[:4]).sum()), float(spec["checksum"]), rtol=1e-9):
        raise ValueError("competence reference: this numpy makes a different projection from the stored seed; "
                         "refit it (python -m xai_bt competence MODEL --data ROOT --overwrite)")
    return proj


def feature_scores(bundle, feats: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each feature row to the nearest training class mean (N,); needs a
    fitted bundle (`has_feature_check`)."""
    ref = _reference(bundle)
    return _distances(_project(np.asarray(feats, np.float64), ref["projection"]), ref["mean"], ref["whiten"],
                      ref["centres"])


def _project(feats: np.ndarray, projection: np.ndarray | None) -> np.ndarray:
    return feats if projection is None else feats @ projection


def _distances(z: np.ndarray, mean: np.ndarray, whiten: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """min over classes of ||(z - mean) L - centre_c||^2: the tied-covariance Mahalanobis distance, with
    L L^T the inverse covariance and the class centres already whitened."""
    w = (z - mean) @ whiten
    return np.min(((w[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)


def feature_warnings(bundle, feats: np.ndarray) -> list[list[str]]:
    """One list per feature row: the feature-check warning where its distance passes the bundle's threshold;
    empty lists for a bundle without a fitted check."""
    if not has_feature_check(bundle) or len(feats) == 0:
        return [[] for _ in range(len(feats))]
    far = feature_scores(bundle, feats) > _reference(bundle)["threshold"]
    return [[PREFIX + _feature_message(bundle)] if f else [] for f in far]


def _feature_message(bundle) -> str:
    check = bundle.config[RECORD_KEY]["feature_check"]
    return (f"the model's features lie far from its training scans (farther than for any of its {check['n_val']} "
            "validation scans)")


def decode_scan(image: str | os.PathLike | bytes | np.ndarray, name: str | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """(grey 2-D uint8, colour pixels or None) of a path, the bytes of an upload, or an array as decoded: what
    the image checks need, the file read once. ImageError for a file that is not a readable scan."""
    from xai_bt.data.decode import read_bytes, read_image
    from xai_bt.model.bundle import _as_gray

    if isinstance(image, np.ndarray):
        rgb = image[..., :3] if image.ndim == 3 and image.shape[2] in (3, 4) else None
        if rgb is not None and rgb.dtype != np.uint8:
            rgb = None
        return _as_gray(image), rgb
    label = name if name is not None else ("<bytes>" if isinstance(image, bytes) else str(image))
    data = image if isinstance(image, bytes) else read_bytes(image, label)
    return read_image(data, name=label), decode_colour(data)


def warnings(bundle, image: str | os.PathLike | bytes | np.ndarray, name: str | None = None,
             feats: np.ndarray | None = None) -> list[str]:
    """Every competence warning for one scan: the image checks on `image` (a path, the bytes of an upload, or
    an array as decoded: (H, W) grey or (H, W, 3) colour) and, for a fitted bundle, the feature check.
    `feats`: the scan's features (`features`) when the caller already has them; else the network runs once.
    ImageError for a file that is not a readable scan."""
    gray, rgb = decode_scan(image, name)
    out = scan_warnings(gray, rgb)
    if has_feature_check(bundle):
        if feats is None:
            feats = features(bundle, bundle.prepare(gray))
        out += feature_warnings(bundle, np.atleast_2d(feats))[0]
    return out


# --------------------------------------------------------------------------------------------- fitting
#: shrinkage of the shared covariance towards its mean variance (keeps rarely used directions stable)
SHRINKAGE = 0.1
#: features wider than this are first projected to it (fixed Gaussian random projection), so the reference
#: (a triangular whitening matrix) fits in bundle.json: 256 dims take 33k numbers
PROJECTED_DIM = 256
PROJECTION_SEED = 0
#: the feature threshold: exp(mean + Z_THRESHOLD x sd) of the validation scans' log distances. 394
#: validation scans cannot pin a 1 % tail; a log-normal tail this far out lands just beyond the farthest
#: of them, and real scans from elsewhere (BRISC 2025) sit a little further out than validation scans do
Z_THRESHOLD = 3.5


def _encode(a: np.ndarray) -> str:
    """float32 little-endian bytes as base64 text, so a matrix fits in bundle.json on one line."""
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _decode(text: str, n: int) -> np.ndarray:
    """The `n` numbers `_encode` wrote, as float64; ValueError when the record holds another count."""
    a = np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float64)
    if a.size != n:
        raise ValueError(f"competence reference: expected {n} numbers, found {a.size}; refit it")
    return a


def fit_reference(feats: np.ndarray, labels: np.ndarray, shrinkage: float = SHRINKAGE) -> dict[str, np.ndarray]:
    """Mean, class centres and whitening matrix of (projected) training features: L lower-triangular with
    L L^T the inverse of the shrunk covariance shared by the classes; centres already whitened."""
    z = np.asarray(feats, np.float64)
    mean = z.mean(axis=0)
    z = z - mean
    classes = np.unique(labels)
    centres = np.stack([z[labels == c].mean(axis=0) for c in classes])
    resid = z - centres[np.searchsorted(classes, labels)]
    cov = resid.T @ resid / len(z)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
    precision = np.linalg.inv(cov)
    lower = np.linalg.cholesky((precision + precision.T) / 2)
    return {"mean": mean, "whiten": lower, "centres": centres @ lower, "classes": classes}


def threshold_from(distances: np.ndarray, z: float = Z_THRESHOLD) -> float:
    """exp(mean + z sd) of the log distances of validation scans: the feature-check threshold."""
    logs = np.log(np.maximum(np.asarray(distances, np.float64), 1e-12))
    return float(np.exp(logs.mean() + z * logs.std()))


def training_samples(bundle, data: str | os.PathLike) -> list:
    """The bundle's training scans (split.csv rows with split 'train') found under `data`."""
    from xai_bt.data.datasets import load_dataset
    from xai_bt.model.provenance import split_table

    table = split_table(bundle)
    root = str(data)
    by_rel = {os.path.relpath(s.path, root).replace(os.sep, "/"): s for s in load_dataset(root)}
    rows = [by_rel[rel] for rel, part in table.items() if part == "train" and rel in by_rel]
    if not rows:
        raise ValueError(f"{data}: none of the training scans of {bundle.path}/split.csv are there; "
                         "--data must be the model's training data root")
    return rows


def _sample_features(bundle, samples: Sequence, batch_size: int) -> tuple[np.ndarray, list[int]]:
    """Features of dataset samples (cached decode), chunk by chunk; and the indices that could be read."""
    from xai_bt.data.cache import failed_indices, prepare_samples
    from xai_bt.model.preprocessing import to_model_input

    x, errors = prepare_samples(samples, bundle.preprocessing)
    bad = failed_indices(samples, errors)
    keep = [i for i in range(len(samples)) if i not in bad]
    chunks = [features(bundle, to_model_input(x[keep[i:i + 512]]), batch_size=batch_size)
              for i in range(0, len(keep), 512)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0)), keep


def _sample_statistics(samples: Sequence) -> list[dict[str, float] | None]:
    """Image statistics of dataset samples read from their files (None where unreadable)."""
    from xai_bt.data.sample import ImageError

    out: list[dict[str, float] | None] = []
    for s in samples:
        try:
            out.append(image_statistics(*decode_scan(s.path)))
        except ImageError:
            out.append(None)
    return out


def fit_competence(model, data: str | os.PathLike, overwrite: bool = False, batch_size: int = 64,
                   held_out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Fit the feature check of a bundle and store the competence record in its bundle.json.

    The reference (class means and shared covariance of the checked network's features) comes from the
    scans with split 'train' in the bundle's split.csv, the threshold from its validation scans (split 'val',
    less those with a twin among the training scans: `temperature.validation_samples`), both found under
    ``data``, the training data root. The image checks' false alarms on the same validation scans are
    recorded too. ``held_out``: take the threshold from the scans there instead (a refit has no validation
    rows), less the twins of every scan of the split.csv (`temperature.held_out_samples`). Refuses
    (:class:`CompetenceExists`) to replace a record unless ``overwrite``.
    """
    from xai_bt.evaluation.evaluate import labels_for
    from xai_bt.evaluation.temperature import held_out_samples, validation_samples
    from xai_bt.model.bundle import Bundle, load_model, write_config

    bundle = model if isinstance(model, Bundle) else load_model(model)
    if bundle.config.get(RECORD_KEY) is not None and not overwrite:
        raise CompetenceExists(f"{bundle.path}: already has competence checks fitted; pass overwrite=True "
                               "(--overwrite) to refit them")
    val, missing, n_twins = (held_out_samples(bundle, data, held_out) if held_out is not None
                             else validation_samples(bundle, data))
    train = training_samples(bundle, data)
    y = labels_for(bundle, train)
    train = [s for s, label in zip(train, y) if label >= 0]
    f_train, keep = _sample_features(bundle, train, batch_size)
    if len(keep) < 10:
        raise ValueError(f"{data}: {len(keep)} usable training scans; too few to fit the feature reference")
    n_features = int(f_train.shape[1])
    spec = _projection_spec(n_features)
    proj = _projection(spec, n_features)
    ref = fit_reference(_project(f_train, proj), labels_for(bundle, [train[i] for i in keep]))
    f_val, val_keep = _sample_features(bundle, val, batch_size)
    d_val = _distances(_project(f_val, proj), ref["mean"], ref["whiten"], ref["centres"])
    threshold = threshold_from(d_val)
    check = {
        "network": feature_network(bundle),
        "features": n_features,
        "score": "squared Mahalanobis distance of the un-augmented features (the input of the network's "
                 "logits layer) to the nearest class mean of the training scans; one covariance shared by the "
                 f"classes, shrunk {SHRINKAGE:g} towards its mean variance (Lee et al. 2018)",
        "projection": spec,
        "threshold": threshold,
        "threshold_rule": f"exp(mean + {Z_THRESHOLD:g} sd) of the "
                          f"{'held-out' if held_out is not None else 'validation'} scans' log distances",
        "n_train": len(keep), "n_val": len(val_keep),
        "validation_distances": {"median": float(np.median(d_val)), "max": float(d_val.max())},
        "reference": {"dim": int(ref["whiten"].shape[0]), "classes": [bundle.class_names[c] for c in ref["classes"]],
                      "encoding": "float32 little-endian, base64",
                      "mean": _encode(ref["mean"]), "class_centres": _encode(ref["centres"]),
                      "whitening_lower": _encode(ref["whiten"][np.tril_indices(len(ref["whiten"]))])},
    }
    stats = _sample_statistics([val[i] for i in val_keep])
    fired = [[c.name for c in IMAGE_CHECKS if s is not None and c.fires(s)] for s in stats]
    far = d_val > threshold
    record: dict[str, Any] = {
        "version": RECORD_VERSION,
        "image_checks": [{"name": c.name, "rule": c.rule, "warning": PREFIX + c.message} for c in IMAGE_CHECKS],
        "image_thresholds": dict(IMAGE_THRESHOLDS),
        "image_thresholds_from": "model-independent (xai_bt.model.competence.IMAGE_THRESHOLDS): beyond the most "
                                 "extreme of the 5,708 Training scans of the brain-tumor-mri benchmark",
        "feature_check": check,
        "fitted_on": "reference: rows with split 'train' in split.csv; threshold: " + (
            f"the labelled scans under {held_out}, without twins of any scan of split.csv (train, val, test)"
            if held_out is not None else
            "rows with split 'val', without twins of its 'train' rows (as they are, mirrored, flipped: "
            "xai_bt.data.twins)"),
        "data": str(data),
        "validation": {
            "n": len(val_keep), "n_twins_left_out": int(n_twins), "n_missing": len(missing),
            "n_unreadable": len(val) - len(val_keep),
            "false_alarms": {"image": {c.name: sum(c.name in f for f in fired) for c in IMAGE_CHECKS},
                             "feature": int(far.sum()),
                             "any": int(sum(bool(f) or bool(d) for f, d in zip(fired, far)))},
        },
    }
    n_warned = int(sum(bool(f) or bool(d) for f, d in zip(fired, far)))
    record["validation"]["false_alarm_rate"] = n_warned / max(1, len(val_keep))
    bundle.config[RECORD_KEY] = record
    bundle.__dict__.pop("_competence_reference", None)
    write_config(bundle.path, bundle.config)
    return record


def _projection_spec(n_features: int) -> dict[str, Any] | None:
    """How wide features are projected (None when already narrow enough), with a checksum of the matrix."""
    if n_features <= PROJECTED_DIM:
        return None
    spec: dict[str, Any] = {"kind": "Gaussian random projection, numpy RandomState(seed).standard_normal"
                                    "((features, dim)) / sqrt(dim)", "seed": PROJECTION_SEED, "dim": PROJECTED_DIM}
    proj = _projection(spec, n_features)
    assert proj is not None
    spec["checksum"] = float(np.abs(proj[:4]).sum())
    return spec


def format_record(record: dict[str, Any]) -> str:
    """Human-readable lines of a competence record: the feature threshold and the validation false alarms."""
    check, val = record["feature_check"], record["validation"]
    fa = val["false_alarms"]
    image = ", ".join(f"{k} {v}" for k, v in fa["image"].items() if v) or "none"
    return "\n".join([
        f"feature check on {check['network']} ({check['features']} features"
        + (f", projected to {check['projection']['dim']}" if check.get("projection") else "") + f"): reference from "
        f"{check['n_train']} training scans; threshold {check['threshold']:.4g} "
        f"(validation median {check['validation_distances']['median']:.4g}, max {check['validation_distances']['max']:.4g})",
        f"validation scans warned: {fa['any']} of {val['n']} ({100 * val['false_alarm_rate']:.1f}%): "
        f"feature check {fa['feature']}; image checks: {image}"
        + (f"  ({val['n_twins_left_out']} validation scans left out as twins of training scans)"
           if val.get("n_twins_left_out") else ""),
    ])
