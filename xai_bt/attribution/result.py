"""The result of explaining one scan: heatmaps per method plus the prediction they explain."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Explanation:
    """One scan's explanation. `maps[method]` is an (S, S) float32 heatmap at model-input resolution,
    aligned with `image` (the prepared pixels the model saw). CAM-family maps are >= 0; signed methods
    (Integrated Gradients, SHAP) keep their sign so positive = evidence for `target_name`. `warnings`: short
    sentences saying how the scan is unlike the model's training scans (`xai_bt.model.competence`); empty
    when it is like them."""

    image: np.ndarray                              # (S, S) float32 in [0, 255]
    maps: dict[str, np.ndarray]
    target: int
    target_name: str
    probabilities: np.ndarray                      # (n_classes,) after temperature scaling
    class_names: tuple[str, ...]
    model_name: str = ""
    path: str | None = None
    layer: str | None = None                       # conv layer used by the CAM family
    view_probabilities: np.ndarray | None = None
    view_names: tuple[str, ...] | None = None
    view_attribution: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (128,) for two-stage
    mask: np.ndarray | None = None                 # (S, S) bool ground truth, when known
    extra: dict[str, Any] = field(default_factory=dict)
    network: str | None = None                     # the bundle network the maps come from ("stage1" of a cascade...)
    score: str = "logits"                          # which class score the maps explain (provenance.explained_score)
    warnings: list[str] = field(default_factory=list)  # the scan is unlike the training scans (model.competence)
    audit: dict[str, str] = field(default_factory=dict)  # method -> its focus-audit score (audit.recommend.score_line)

    @property
    def predicted(self) -> str:
        return self.class_names[int(np.argmax(self.probabilities))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probabilities))
