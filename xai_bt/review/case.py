"""Review content for one scan, shared by `report` (HTML file) and `serve` (web page).

`review_scan` turns a scan (path or uploaded bytes) into a plain dict: calibrated class probabilities, the
MRI view when known, one heatmap tile per method and the scan as PNG bytes, per-method map numbers, the
competence warnings (how the scan is unlike the training scans, `xai_bt.model.competence`) and case notes. `model_summary` condenses a bundle's card and `model_description` puts it in one line (the web
page's model picker); `HEATMAP_NOTES` says what a heatmap does not show.
Rendering lives in `xai_bt.review.html`; nothing here writes files.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xai_bt.data.sample import ImageError
from xai_bt.names import display_name
from xai_bt.plots.style import figure_png

#: Methods used when the caller names none: fast, and the two CAMs the focus audit compares.
#: Below this calibrated confidence a case gets an "uncertain" note.
LOW_CONFIDENCE = 0.6
#: Resolution of the embedded images: a heatmap tile (3.6 in) at TILE_DPI draws its map over 320 px wide.
FIGURE_DPI = 120
TILE_DPI = 150
SCAN_SIDE = 320
#: How architecture names read (a name not listed reads as `display_name` makes it).
ARCH_NAMES: dict[str, str] = {
    "efficientnet_lite0": "EfficientNet-Lite0", "efficientnet_lite1": "EfficientNet-Lite1",
    "efficientnet_lite2": "EfficientNet-Lite2", "efficientnetb0": "EfficientNet-B0", "mobilenetv2": "MobileNetV2",
    "resnet50": "ResNet-50", "vgg16": "VGG16", "xai_cnn": "xai_bt CNN", "baseline_cnn": "baseline CNN",
    "plane_cnn": "plane CNN",
}
_KIND_NAMES = {"two_stage": "two-stage (view, then tumor class)", "cascade": "cascade (tumor or not, then type)"}

#: What a reader must know before looking at any heatmap (plain language, one item a paragraph).
HEATMAP_NOTES: tuple[str, ...] = (
    "A heatmap shows which pixels changed the model's score for the class it explains (here the "
    "predicted class): where the model's evidence came from. It does not show where the tumor is, "
    "and it is not a segmentation or a measurement of the lesion.",
    "A bright region is not necessarily abnormal tissue, and a dark region is not necessarily normal. "
    "Heat on the skull, the background or an image corner means the model may rely on a shortcut.",
    "Methods disagree by construction: Grad-CAM and Layer-CAM are computed on a coarse grid of the "
    "network and enlarged (blurry), gradient methods such as SmoothGrad are sharp but noisy. Agreement "
    "between methods is not proof that the model is right.",
    "Probabilities are calibrated with temperature scaling on a validation split. They describe how "
    "often the model is right on scans like its training data, not the chance that this patient has a "
    "tumor. The model only knows its own classes: any other finding is forced into one of them.",
    "This is a research tool, not a medical device and not a diagnosis. A qualified radiologist must "
    "read the original images.",
)


def review_scan(bundle, source: str | os.PathLike | bytes, name: str | None = None,
                methods: Sequence[str] | None = None, view_bundle=None, top_k: float = 0.1) -> dict[str, Any]:
    """Explain one scan and return its review content; raises ImageError for a file that is not a scan.
    `methods` default to the bundle's audit recommendation and Grad-CAM (`provenance.default_methods`);
    each heatmap tile carries its audit score when the bundle's audit measured that method.

    `source` is a path or the raw bytes of an upload (then `name` is how it is called on the page and in
    errors; it is never used as a path). `view_bundle` is an optional view (plane) classifier.
    """
    from xai_bt.attribution.explain import explain
    from xai_bt.attribution.summary import GEOMETRY_KEY, explanation_summary, scan_geometry
    from xai_bt.audit.recommend import score_line
    from xai_bt.model.competence import decode_scan, scan_warnings
    from xai_bt.model.provenance import default_methods, recommended_explanation
    from xai_bt.plots.explanation import plot_map_tile

    label = name if name is not None else str(source)
    gray, rgb = decode_scan(source, name=label)
    x = bundle.prepare(gray)
    methods = tuple(methods) if methods else default_methods(bundle, "review")
    expl = explain(bundle, x, methods=methods)[0]
    expl.warnings = scan_warnings(gray, rgb) + expl.warnings   # image checks, then features
    rec = recommended_explanation(bundle) or {}
    expl.path = label
    expl.extra[GEOMETRY_KEY] = scan_geometry(gray.shape, bundle.preprocessing.head_box(gray))
    view_source = "two-stage model" if expl.view_probabilities is not None else None
    if view_bundle is not None and view_source is None:
        vp = view_bundle.predict(gray).probabilities[0]
        expl.view_probabilities, expl.view_names = vp, view_bundle.class_names
        view_source = f"view model {view_bundle.name}"
    summary = explanation_summary(expl, top_k)
    return {
        "name": label, "status": "ok", "error": None,
        "prediction": summary["prediction"], "confidence": summary["confidence"],
        "probabilities": summary["probabilities"], "temperature": bundle.temperature,
        "view": summary["view"], "view_probabilities": summary["view_probabilities"], "view_source": view_source,
        "methods": list(expl.maps), "maps": summary["methods"], "layer": expl.layer, "top_k": top_k,
        "original_shape": list(gray.shape), "input_size": int(x.shape[1]),
        "scan_png": scan_png(gray), "model_input_png": scan_png(expl.image.astype(np.uint8)),
        "tiles": [{"method": m, "png": figure_png(plot_map_tile(expl, m, top_k), TILE_DPI),
                   "audit": score_line(rec, m), "recommended": m == rec.get("method")} for m in expl.maps],
        "warnings": list(expl.warnings),
        "notes": case_notes(summary, bundle),
    }


def review_failure(name: str, error: BaseException | str) -> dict[str, Any]:
    """The review entry of a scan that could not be reviewed: its name and a one-line reason."""
    if isinstance(error, ImageError):
        reason = error.problem
    elif isinstance(error, BaseException):
        lines = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {lines[0] if lines else ''}"[:200]
    else:
        reason = str(error)
    return {"name": name, "status": "error", "error": reason}


def case_notes(summary: dict[str, Any], bundle) -> list[str]:
    """Notes about this case: low confidence, close runner-up, what the panels show."""
    probs = sorted(summary["probabilities"].items(), key=lambda kv: -kv[1])
    notes = []
    if summary["confidence"] < LOW_CONFIDENCE:
        notes.append(f"The model is uncertain (top probability {summary['confidence']:.0%} is below "
                     f"{LOW_CONFIDENCE:.0%}); treat the prediction and its heatmaps with extra caution.")
    if len(probs) > 1 and probs[1][1] >= 0.2:
        notes.append(f"Runner-up: {display_name(probs[1][0])} at {probs[1][1]:.0%}.")
    if getattr(bundle, "tta", "none") == "hflip":
        notes.append("The probabilities average the scan and its left-right mirror (test-time augmentation); "
                     "the heatmaps explain the scan as given.")
    pre = bundle.preprocessing
    crop = "cropped to the head and " if getattr(pre, "crop_to_head", False) else ""
    notes.append(f"The panels show the scan as the model saw it: {crop}resized to "
                 f"{pre.image_size}x{pre.image_size} pixels, in grayscale.")
    return notes


def model_summary(bundle) -> dict[str, Any]:
    """Name, architecture, training data and test accuracy (official and leakage-free) from bundle.json."""
    cfg = bundle.config
    training = cfg.get("training") or {}
    tc = training.get("config") or {}
    out: dict[str, Any] = {
        "name": bundle.name, "path": str(bundle.path), "kind": bundle.kind, "task": cfg.get("task", "tumor"),
        "arch": cfg.get("arch"), "classes": list(bundle.class_names), "views": list(bundle.view_names or ()),
        "input_size": bundle.preprocessing.image_size, "temperature": bundle.temperature,
        "tta": getattr(bundle, "tta", cfg.get("tta", "none")),
        "training_data": Path(str(tc["data"])).name if tc.get("data") else None,
        "n_train": training.get("n_train"), "n_val": training.get("n_val"), "n_test": training.get("n_test"),
        "metrics": [], "description": model_description(cfg),
        "ensemble": len((cfg.get("ensemble") or {}).get("members") or ()),
    }
    if cfg.get("imported"):
        rec = cfg["imported"]
        out["imported"] = {"source": rec.get("source_name"), "score": rec.get("score"),
                           "assumed": list(rec.get("assumed") or ()), "pixel_scale": rec.get("pixel_scale")}
    for data, m in (cfg.get("metrics") or {}).items():
        row = {"data": data, "test_set": m.get("test_set")}
        for part in ("official", "leakage_free"):
            r = m.get(part) or {}
            ci = r.get("accuracy_ci") or {}
            row[part] = None if "accuracy" not in r else {"accuracy": r["accuracy"], "n": r.get("n"),
                                                           "low": ci.get("low"), "high": ci.get("high")}
        out["metrics"].append(row)
    return out


def model_description(config: dict[str, Any]) -> str:
    """One line on a bundle from its bundle.json: what it is, its input, its classes and its recorded test
    accuracy, e.g. "EfficientNet-Lite0, 160 px, 4 classes; brain-tumor-mri official test accuracy 97.9%
    (n = 1311), leakage-free 96.5% (n = 315)". Nothing is typed by hand: a number not recorded is not shown."""
    size = (config.get("preprocessing") or {}).get("image_size")
    classes = list(config.get("class_names") or ())
    rec = config.get("imported")
    if rec:
        assumed = (f" (pixel scaling {rec.get('pixel_scale')} assumed)"
                   if "pixel_scale" in (rec.get("assumed") or ()) else "")
        what = f"your model {rec.get('source_name')}, imported{assumed}; {size} px, {len(classes)} classes"
    else:
        arch = config.get("arch")
        arch_name = ARCH_NAMES.get(str(arch), display_name(arch)) if arch else "architecture not recorded"
        members = (config.get("ensemble") or {}).get("members")
        if members:
            arch_name = f"ensemble of {len(members)} {arch_name} networks (mean of their logits)"
        kind = _KIND_NAMES.get(str(config.get("kind")), "")
        if config.get("task") == "view":
            what = f"view classifier ({', '.join(display_name(c) for c in classes)}): {arch_name}, {size} px"
        else:
            what = f"{arch_name}{' ' + kind if kind else ''}, {size} px, {len(classes)} classes"
    scores = [_accuracy_line(data, m) for data, m in (config.get("metrics") or {}).items()]
    scores = [s for s in scores if s]
    return f"{what}; {'; '.join(scores) if scores else 'no test accuracy recorded'}"


def _accuracy_line(data: str, metrics: dict[str, Any]) -> str:
    """"<data> official test accuracy 97.9% (n = 1311), leakage-free 96.5% (n = 315)" from one metrics entry."""
    split = "official test" if "official" in str(metrics.get("test_set", "")) else "held-out test"
    parts = []
    for part, label in (("official", f"{data} {split} accuracy"), ("leakage_free", display_name("leakage_free"))):
        r = metrics.get(part) or {}
        if r.get("accuracy") is not None:
            parts.append(f"{label} {r['accuracy']:.1%}" + (f" (n = {r['n']})" if r.get("n") is not None else ""))
    return ", ".join(parts)


def scan_png(gray: np.ndarray, side: int = SCAN_SIDE) -> bytes:
    """The decoded scan as a PNG no larger than `side` pixels on its long edge."""
    from PIL import Image

    img = Image.fromarray(np.asarray(gray, np.uint8))
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
