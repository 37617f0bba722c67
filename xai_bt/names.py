"""How names read on figures, pages and the terminal: one function for class, method and metric names.

Code names (``no_tumor``, ``integrated_gradients``, ``pointing_game``) stay in files and sidecars; people
read ``no tumor``, ``Integrated Gradients``, ``pointing game``. Method labels come from the registry, so a
plug-in method registered with a label is shown by it too.
"""
from __future__ import annotations

from collections.abc import Iterable

__all__ = ["display_name", "display_names"]

#: names whose reading is not the code name with spaces
_SPECIAL: dict[str, str] = {
    "no_tumor": "no tumor",
    "notumor": "no tumor",
    "auc": "AUC",
    "roc_auc": "ROC AUC",
    "ece": "ECE",
    "ap": "AP",
    "road": "ROAD",
    "leakage_free": "leakage-free",
    "pointing_game": "pointing game",
    "energy_pointing_game": "energy (mass inside the tumor)",
    "topk_iou": "top-k IoU",
    "deletion_auc": "deletion AUC",
    "insertion_auc": "insertion AUC",
    "road_morf": "ROAD most-relevant-first",
    "road_lerf": "ROAD least-relevant-first",
    "outside_head_share": "share outside the head",
    "corner_share": "share in the corners",
    "mask_fraction": "mask area fraction",
}


def display_name(name: object) -> str:
    """A class, method or metric name as people read it: ``no_tumor`` -> "no tumor", ``gradcam`` ->
    "Grad-CAM" (the registry's label), ``pointing_game`` -> "pointing game"; anything else with "_" as spaces."""
    key = str(name)
    from xai_bt.attribution import registry  # light: no Keras at import

    if registry.is_method(key):
        return registry.label(key)
    return _SPECIAL.get(key, key.replace("_", " "))


def display_names(names: Iterable[object]) -> list[str]:
    """`display_name` of each name in an iterable."""
    return [display_name(n) for n in names]
