"""Where a bundle came from and what is explained in it: its split table, training data root, the network
that makes each decision, and the CAM layer. Evaluate, calibrate, explain and the audit all ask here, so
they cannot disagree (e.g. which stage of a cascade a heatmap explains)."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from xai_bt.data.sample import Sample

__all__ = ["split_table", "recorded_root", "is_training_dataset", "training_root", "rows_of", "relative_path", "decision_network",
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
    """The CAM layer of `net`: `layer` (checked), else the bundle's last conv layer when `net` has it, else
    the network's last spatial layer."""
    spatial = spatial_layers(net)
    if layer is not None:
        if layer not in spatial:
            raise ValueError(f"{layer!r} is not a spatial layer of the model; e.g. {', '.join(spatial[-5:])}")
        return layer
    return bundle.last_conv_layer if bundle.last_conv_layer in spatial else default_layer(net)


def spatial_layers(model) -> list[str]:
    """Names of the layers with a (N, H, W, C) output, input side first: the candidates for `layer`."""
    names = {inp.name for inp in model.inputs}
    return [layer.name for layer in model.layers
            if layer.name not in names and len(getattr(layer.output, "shape", ())) == 4]


def default_layer(model) -> str:
    """The last spatial layer: the CAM layer when none is named."""
    spatial = spatial_layers(model)
    if not spatial:
        raise ValueError(f"model {model.name!r} has no spatial (N, H, W, C) layer for CAM methods")
    return spatial[-1]
