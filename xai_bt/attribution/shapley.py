"""SHAP attributions through the shap library: GradientExplainer (expected gradients) and the Partition
explainer with a blurring image masker.

Both explain the class score (logits) of the target, keep their sign (positive = evidence for the
target) and are summed over the image's channels. shap's DeepExplainer is not offered: it fails on
depthwise convolutions and leaves gradient overrides behind in TensorFlow (see the engineering guide).
"""
from __future__ import annotations

import numpy as np

from xai_bt.attribution.gradients import Attribution, cached, score_output, scores


def _score_model(model):
    import keras

    return cached(model, "score_model", lambda: keras.Model(model.inputs, score_output(model)))


def gradient_shap(model, inputs: list[np.ndarray], targets: np.ndarray, *, batch_size: int = 32,
                  shap_samples: int = 100, background: np.ndarray | list[np.ndarray] | None = None,
                  seed: int = 0) -> Attribution:
    """shap.GradientExplainer: gradients at `shap_samples` random points between each input and a
    background sample, times the difference. `background`: a batch per model input (or one array for
    a single-input model); default one black image (and zero extra inputs), i.e. a stochastic
    Integrated Gradients from black. Extra inputs get their own attributions."""
    import shap

    multi = len(inputs) > 1
    chunk = -(-shap_samples // -(-shap_samples // batch_size))  # equal chunks: one trace per class

    def build(bg: list[np.ndarray]):
        return shap.GradientExplainer(_score_model(model), bg if multi else bg[0], batch_size=chunk)

    if background is None:
        zeros = [np.zeros((1, *a.shape[1:]), np.float32) for a in inputs]
        explainer = cached(model, ("shap_gradient", chunk), lambda: build(zeros))
    else:
        background = list(background) if isinstance(background, (list, tuple)) else [background]
        if len(background) != len(inputs):
            raise ValueError(f"background needs one batch per model input ({len(inputs)}), got {len(background)}")
        explainer = build([np.asarray(b, np.float32) for b in background])
    phis, _ = explainer.shap_values(inputs if multi else inputs[0], nsamples=shap_samples,
                                    ranked_outputs=np.asarray(targets)[:, None], output_rank_order="custom",
                                    rseed=seed)
    phis = [p[..., 0].astype(np.float32) for p in (phis if multi else [phis])]
    return Attribution(phis[0].sum(axis=-1), phis[1:], {"shap_samples": shap_samples})


def partition_shap(model, inputs: list[np.ndarray], targets: np.ndarray, *, batch_size: int = 32,
                   max_evals: int = 300, mask: str = "blur(16,16)") -> Attribution:
    """shap's Partition explainer (Owen values over a hierarchy of image regions) with
    shap.maskers.Image(`mask`): hidden regions are blurred, not blacked out. `max_evals` model calls per
    image bound its cost and its resolution. Extra inputs are held fixed at each image's own values."""
    import shap

    score_fn = scores(model)
    extra: list[np.ndarray] = []

    def f(z: np.ndarray) -> np.ndarray:
        return score_fn([z] + [np.repeat(a, len(z), axis=0) for a in extra])

    explainer = shap.explainers.Partition(f, shap.maskers.Image(mask, inputs[0].shape[1:]))
    maps = np.zeros(inputs[0].shape[:3], np.float32)
    for i, t in enumerate(targets):
        extra[:] = [a[i:i + 1] for a in inputs[1:]]
        values = explainer(inputs[0][i:i + 1], max_evals=max_evals, batch_size=batch_size,
                           outputs=[int(t)], silent=True).values
        maps[i] = values[0, ..., 0].sum(axis=-1)
    return Attribution(maps, info={"max_evals": max_evals, "mask": mask})
