"""The unit every loader yields: one scan with its label and whatever else is known about it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: The four classes of the field's benchmark, in the order every shipped model uses.
CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "no_tumor", "pituitary")
#: MRI planes (views) known to the two-stage model.
PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")

_ALIASES = {
    "notumor": "no_tumor", "no_tumor": "no_tumor", "no tumor": "no_tumor", "no-tumor": "no_tumor",
    "normal": "no_tumor", "healthy": "no_tumor", "no": "no_tumor",
    "glioma": "glioma", "glioma_tumor": "glioma", "gl": "glioma",
    "meningioma": "meningioma", "meningioma_tumor": "meningioma", "me": "meningioma",
    "pituitary": "pituitary", "pituitary_tumor": "pituitary", "pi": "pituitary",
    "pituitary tumor": "pituitary",
}
_PLANE_ALIASES = {"ax": "axial", "axial": "axial", "co": "coronal", "cor": "coronal",
                  "coronal": "coronal", "sa": "sagittal", "sag": "sagittal", "sagittal": "sagittal"}


class ImageError(ValueError):
    """A file that cannot be used as a scan; the message always names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def normalise_label(name: str) -> str:
    """Map the spellings used by the public datasets (`notumor`, `glioma_tumor`, ...) to our class names."""
    key = str(name).strip().lower().replace("-", "_")
    if key in _ALIASES:
        return _ALIASES[key]
    key2 = key.replace("_", " ")
    if key2 in _ALIASES:
        return _ALIASES[key2]
    raise ValueError(f"unknown class name {name!r}; expected one of {', '.join(CLASS_NAMES)}")


def normalise_plane(name: str) -> str:
    """Map plane spellings (`ax`, `Coronal`, ...) to axial / coronal / sagittal."""
    key = str(name).strip().lower()
    if key not in _PLANE_ALIASES:
        raise ValueError(f"unknown plane {name!r}; expected one of {', '.join(PLANES)}")
    return _PLANE_ALIASES[key]


@dataclass
class Sample:
    """One scan. `path` identifies it (a file, or `file.mat` for figshare); `image` is set when the
    pixels do not live in a plain image file (figshare .mat), otherwise the image is read lazily."""

    path: str
    label: str | None = None
    split: str | None = None          # "train" / "test" / ... as given by the dataset's own layout
    plane: str | None = None
    mask_path: str | None = None
    patient_id: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def label_index(self) -> int:
        return CLASS_NAMES.index(self.label)
