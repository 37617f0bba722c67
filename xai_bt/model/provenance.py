"""Where a bundle came from and what is explained in it: its split table, training data root, the network
that makes each decision, and the CAM layer. Evaluate, calibrate, explain and the audit all ask here, so
they cannot disagree (e.g. which stage of a cascade a heatmap explains)."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from xai_bt.data.sample import Sample

__all__ = ["split_table", "recorded_root", "is_training_dataset", "training_root", "rows_of", "declared_training_rows", "explained_score", "relative_path", "decision_network",
           "network_classes", "cam_layer", "spatial_layers", "default_layer"]


def split_table(bundle) -> dict[str, str]:
    """relative path -> train / val / test / unused, from the bundle's split.csv (empty if none)."""
    f = Path(bundle.path) / "split.csv"
    if not f.is_file():
        return {}
    with open(f, newline="") as fh:
        return {r["path"]: r["split"] for r in csv.DictReader(fh)}


def recorded_root(bundle) -> str:
    """The training data folder as recorded at training time ("" if none)."""
    return bundle.config.get("training", {}).get("config", {}).get("data", "") or ""


def relative_path(path: str, root: str) -> str:
    """`path` relative to `root`, with forward slashes: the form split.csv stores."""
    return Path(os.path.relpath(path, root)).as_posix()


def is_training_dataset(bundle, data: str | None) -> bool:
    """`data` is the dataset the bundle was trained on (the same folder name as the recorded root)."""
    recorded = recorded_root(bundle)
    if not data or not recorded:
        return False
    return Path(data).resolve().name == Path(recorded).name


def training_root(bundle, train_data: str | None = None, data: str | None = None) -> str | None:
    """Where the split.csv paths live now: `train_data`; else the recorded folder if it exists; else `data`
    when it is the same dataset (same folder name) as the recorded one; else None."""
    if train_data:
        return train_data
    recorded = recorded_root(bundle)
    if recorded and os.path.isdir(recorded):
        return recorded
    if is_training_dataset(bundle, data):
        return data
    return None


def rows_of(bundle, root: str, parts: tuple[str, ...] = ("train",)) -> list[Sample]:
    """The bundle's split.csv rows of `parts` as samples under `root` (files that exist or not)."""
    return [Sample(path=os.path.join(root, rel)) for rel, part in split_table(bundle).items() if part in parts]


def declared_training_rows(root: str) -> list[Sample]:
    """The scans a model without split.csv (an imported one) learnt from, as its user declares with
    `--train-data ROOT`: the training split of a dataset with one (Training/ of the benchmark), else every
    scan under ROOT. Twins are then found against all of them, as they are and mirrored."""
    from xai_bt.data.datasets import load_dataset

    samples = load_dataset(root)
    trained = [s for s in samples if s.split == "train"]
    return trained or list(samples)


def explained_score(bundle) -> str:
    """Which class score every method explains: the pre-softmax `logits` layer of an xai_bt network, or for an
    imported model what import found (its softmax removed, or an output that already was logits)."""
    imported = bundle.config.get("imported") or {}
    return imported.get("score") or "pre-softmax logits (the network's `logits` layer)"


def decision_network(bundle, class_name: str | None = None) -> str:
    """The network whose score decides `class_name`: "model", or for a cascade stage 1 for no tumor and
    stage 2 for a tumor type (the class a heatmap explains picks the stage)."""
    if bundle.kind != "cascade":
        return "model"
    return "stage1" if class_name == "no_tumor" else "stage2"


def network_classes(bundle, name: str) -> tuple[str, ...]:
    """Class names of one network of the bundle, in its output order."""
    if bundle.kind == "cascade" and name in ("stage1", "stage2"):
        return tuple(bundle.config[f"{name}_classes"])
    return tuple(bundle.view_names) if name == "view" else tuple(bundle.class_names)


def cam_layer(bundle, net: Any, layer: str | None = None) -> str:
    """The CAM layer of `net` as a full path: `layer` (a path or a unique tail of one, checked), else the
    bundle's last conv layer when `net` has it, else the network's last spatial layer."""
    from xai_bt.model.layers import resolve

    spatial = spatial_layers(net)
    if layer is not None:
        return resolve(net, layer, spatial)
    return bundle.last_conv_layer if bundle.last_conv_layer in spatial else default_layer(net)


def spatial_layers(model) -> list[str]:
    """Paths of the layers with a (N, H, W, C) output, nested models' layers included (`backbone/out_relu`),
    input side first: the candidates for `layer`."""
    from xai_bt.model.layers import spatial_layer_shapes

    return [path for path, _ in spatial_layer_shapes(model)]


def default_layer(model) -> str:
    """The last spatial layer: the CAM layer when none is named."""
    spatial = spatial_layers(model)
    if not spatial:
        raise ValueError(f"model {model.name!r} has no spatial (N, H, W, C) layer for CAM methods (a SavedModel "
                         "shows none: give the .keras or .h5 file for CAMs; gradient and occlusion methods work)")
    return spatial[-1]


def recommended_explanation(bundle) -> dict[str, Any] | None:
    """The explanation an audit recommended for this bundle (or its bundle.json dict), or None."""
    rec = (bundle if isinstance(bundle, dict) else bundle.config).get("explanation")
    return rec if isinstance(rec, dict) and rec.get("method") else None


def default_methods(bundle, purpose: str) -> tuple[str, ...]:
    """What to run when no method is named: for "explain", the audit's recommended method (else
    registry.EXPLAIN_DEFAULT); for "review", it first, then Grad-CAM for comparison (else REVIEW_DEFAULT);
    for "audit", `audit_candidates`, the recommended one first. `bundle` may be its bundle.json dict, except
    for "audit"."""
    from xai_bt.attribution import registry

    rec = recommended_explanation(bundle)
    first = (rec["method"],) if rec and registry.is_method(rec["method"]) else ()
    if purpose == "explain":
        return first or registry.EXPLAIN_DEFAULT
    if purpose == "review":
        return tuple(dict.fromkeys(first + registry.REVIEW_DEFAULT))[:2] if first else registry.REVIEW_DEFAULT
    if purpose == "audit":
        return tuple(dict.fromkeys(first + audit_candidates(bundle)))
    raise ValueError(f"purpose must be explain, review or audit, got {purpose!r}")


def audit_candidates(bundle) -> tuple[str, ...]:
    """The methods a plain audit compares: registry.AUDIT_DEFAULT, plus Layer-CAM and HiResCAM on the last
    layer of each finer resolution (`cams.fusion_layers`: e.g. 10x10 and 20x20), plus their fusion (mean and
    product)."""
    from xai_bt.attribution import registry
    from xai_bt.attribution.cams import fusion_layers

    try:
        finer = fusion_layers(bundle.model, 3)[1:]
    except (ValueError, AttributeError):          # no spatial layers (a SavedModel): gradient methods only
        return registry.AUDIT_DEFAULT
    variants = tuple(f"{m}{registry.LAYER_SEP}{layer}" for layer in finer for m in ("layercam", "hirescam"))
    return registry.AUDIT_DEFAULT + variants + (("layercam_fusion", "layercam_product") if finer else ())

