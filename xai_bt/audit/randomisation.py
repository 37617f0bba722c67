"""Sanity check: do a method's heatmaps depend on what the model learned? (Adebayo et al. 2018)

Cascading model-parameter randomisation: re-initialise the weights of a *copy* of the model layer by
layer from the output downwards and explain the same images after each step. A method that explains the
model should produce maps that drift away from the original ones (Spearman rank correlation and SSIM
falling towards 0); maps that stay put (an edge detector, Guided Backprop in Adebayo et al.) describe the
image, not the model, and fail the check.

``explain_fn(model, x, targets) -> (N, S, S)`` maps is Quantus' ``explain_func`` convention, so any
method of :mod:`xai_bt.attribution.explain` fits through a lambda. Where we differ from Quantus 0.6.0's ``MPRT``
(TensorFlow path): Quantus clones the model with ``keras.models.clone_model``, which in Keras 3 does
*not* copy the weights, so its first "top layer randomised" step already explains a fully re-initialised
model and the cascade is lost; it then "randomises" by permuting each weight array along its first axis
(a no-op for a 1x1 kernel's height axis, and it keeps each layer's weight distribution). We copy the
weights, then re-draw each layer's weights from that layer's own initialisers (seeded), as Adebayo et al.
describe. Quantus also takes the absolute value of maps by default (``abs=True``); ours compares maps as
given unless ``absolute=True``.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import ConstantInputWarning, spearmanr
from skimage.metrics import structural_similarity

ExplainFn = Callable[[Any, np.ndarray, np.ndarray], np.ndarray]


def weighted_layers(keras_model) -> list[str]:
    """Paths of the layers that hold weights, top (output side) first, inside nested models too
    (`backbone/block_16_project`): the default randomisation steps."""
    from xai_bt.model.layers import leaf_layers

    return [path for path, layer in reversed(leaf_layers(keras_model)) if layer.weights]


def _seed_initialisers(config: Any, rng: np.random.Generator) -> Any:
    """A copy of a layer config whose random initialisers carry fixed seeds, so re-drawn weights repeat."""
    if isinstance(config, dict):
        out = {k: _seed_initialisers(v, rng) for k, v in config.items()}
        if out.get("module") == "keras.initializers" and "seed" in out.get("config", {}):
            out["config"] = {**out["config"], "seed": int(rng.integers(2 ** 31 - 1))}
        return out
    if isinstance(config, list):
        return [_seed_initialisers(v, rng) for v in config]
    return config


def _fresh_clone(keras_model, seed: int):
    """A clone of the architecture with newly initialised weights drawn from each layer's initialisers."""
    import keras

    rng = np.random.default_rng(seed)
    return keras.models.clone_model(
        keras_model,
        clone_function=lambda layer: layer.__class__.from_config(_seed_initialisers(layer.get_config(), rng)))


def map_similarity(original: np.ndarray, perturbed: np.ndarray,
                   absolute: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Spearman rank correlation and SSIM between two batches of maps (N, S, S).

    SSIM compares maps min-max scaled to [0, 1] each (data_range 1), since maps of different models live
    on different scales. A constant map has no ranking: its Spearman is NaN.
    """
    a, b = np.asarray(original, dtype=np.float64), np.asarray(perturbed, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"maps must be two (N, S, S) batches of one shape; got {a.shape} and {b.shape}")
    if absolute:
        a, b = np.abs(a), np.abs(b)
    rho, ssim = np.empty(len(a)), np.empty(len(a))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        for i, (u, v) in enumerate(zip(a, b)):
            rho[i] = spearmanr(u.ravel(), v.ravel()).statistic
            ssim[i] = structural_similarity(_unit(u), _unit(v), data_range=1.0)
    return rho, ssim


def _unit(m: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a constant map becomes zeros."""
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def randomisation_test(keras_model, explain_fn: ExplainFn, x: np.ndarray, targets: Sequence[int] | np.ndarray,
                       layers: Sequence[str] | None = None, seed: int = 0,
                       absolute: bool = False) -> list[dict[str, Any]]:
    """Cascading randomisation: similarity of maps after each step to the trained model's maps.

    ``layers`` are the steps, top-down: at the step for layer L, every weighted layer from the output
    down to L (in ``keras_model.layers`` order) has been re-initialised. The default is every weighted
    layer (one step each); pass block names for a coarser, cheaper cascade on deep models (explain_fn
    runs once per step plus once on the trained model). Layers are paths: a nested backbone's layers
    are steps of their own (`backbone/block_16_project`). The model itself is never modified: a clone
    is randomised.

    Returns one dict per step: ``{"layer", "spearman", "ssim"}`` (means over images, NaN-skipping) plus
    ``"spearman_per_image"`` and ``"ssim_per_image"`` lists.
    """
    from xai_bt.model.layers import get_layer, leaf_layers

    x = np.asarray(x)
    targets = np.asarray(targets)
    order = [path for path, _ in leaf_layers(keras_model)]
    steps = weighted_layers(keras_model) if layers is None else list(layers)
    unknown = [name for name in steps if name not in order]
    if unknown:
        raise ValueError(f"layers not in the model: {unknown}")
    positions = [order.index(name) for name in steps]
    if positions != sorted(positions, reverse=True):
        raise ValueError("layers must be given top-down (output side first)")

    import keras

    working = keras.models.clone_model(keras_model)
    working.set_weights(keras_model.get_weights())
    fresh = _fresh_clone(keras_model, seed)
    reference = np.asarray(explain_fn(keras_model, x, targets))

    results, done = [], len(order)
    for name, pos in zip(steps, positions):
        for layer_name in order[pos:done]:
            if get_layer(working, layer_name).weights:
                get_layer(working, layer_name).set_weights(get_layer(fresh, layer_name).get_weights())
        done = pos
        rho, ssim = map_similarity(reference, np.asarray(explain_fn(working, x, targets)), absolute=absolute)
        results.append({"layer": name, "spearman": _nanmean(rho), "ssim": _nanmean(ssim),
                        "spearman_per_image": rho.tolist(), "ssim_per_image": ssim.tolist()})
    return results


def _nanmean(v: np.ndarray) -> float:
    return float(np.nanmean(v)) if np.any(np.isfinite(v)) else float("nan")


def flag_insensitive(results: Sequence[dict[str, Any]], threshold: float = 0.5, metric: str = "spearman") -> bool:
    """True if a method fails the check: its maps after the last (fullest) randomisation step still
    correlate with the trained model's maps above ``threshold`` (mean ``metric``: "spearman" or "ssim").

    A NaN similarity (e.g. every randomised map constant) is not a failure: such maps did change.
    """
    if not results:
        raise ValueError("no randomisation results")
    return bool(results[-1][metric] > threshold)
