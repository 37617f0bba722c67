"""Gradient attributions (saliency, SmoothGrad, Integrated Gradients) and the pieces every method shares.

Every method explains the class *score*: the `logits` layer (pre-softmax) when the model has one, else
its output. A model may take extra inputs after the image (the two-stage model's 128-d view vector);
gradient methods attribute those too. The compiled functions are built once per model and cached, so
repeated calls (one per batch, one per randomisation step on the same model) do not retrace.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


@dataclass
class Attribution:
    """One method's result for a batch: `maps` (N, S, S) over the image, `inputs` one (N, ...) array per
    extra model input (the view vector), `info` per-image arrays (N,) and the settings used."""

    maps: np.ndarray
    inputs: list[np.ndarray] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


# --- shared pieces ------------------------------------------------------------------------------------

def cached(model, key: Any, build: Callable[[], Any]) -> Any:
    """`build()` once per (model, key); dropped with the model."""
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        per_model[key] = build()
    return per_model[key]


def score_output(model):
    """The tensor a method explains: the `logits` layer's output, or the model's output without one."""
    names = {layer.name for layer in model.layers}
    return model.get_layer("logits").output if "logits" in names else model.outputs[0]


def input_signature(model) -> list:
    import tensorflow as tf

    return [tf.TensorSpec((None, *inp.shape[1:]), tf.float32) for inp in model.inputs]


def call(sub, inputs: list):
    """Call a functional model with a list of inputs (one tensor for single-input models)."""
    return sub(inputs if len(inputs) > 1 else inputs[0], training=False)


def scores(model) -> Callable[[list[np.ndarray]], np.ndarray]:
    """Compiled forward pass: list of input batches -> class scores (N, n_classes)."""
    def build():
        import keras
        import tensorflow as tf

        sub = keras.Model(model.inputs, score_output(model))
        fn = tf.function(lambda inputs: call(sub, inputs), input_signature=[input_signature(model)])
        return lambda inputs: fn([np.asarray(a, np.float32) for a in inputs]).numpy()
    return cached(model, "scores", build)


def input_gradients(model) -> Callable[[list[np.ndarray], np.ndarray], tuple[np.ndarray, list[np.ndarray]]]:
    """Compiled: (input batches, targets (N,)) -> (target scores (N,), gradient w.r.t. every input)."""
    def build():
        import keras
        import tensorflow as tf

        sub = keras.Model(model.inputs, score_output(model))

        @tf.function(input_signature=[input_signature(model), tf.TensorSpec((None,), tf.int32)])
        def grads(inputs, targets):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(inputs)
                score = tf.gather(call(sub, inputs), targets, batch_dims=1)
            return score, tape.gradient(score, inputs)

        def run(inputs, targets):
            s, g = grads([np.asarray(a, np.float32) for a in inputs], np.asarray(targets, np.int32))
            return s.numpy(), [t.numpy() for t in g]
        return run
    return cached(model, "input_gradients", build)


def batch_pairs(n: int, m: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image index, sample index) for n images x m samples each, image-major, batch_size at a time."""
    flat = np.arange(n * m)
    for start in range(0, n * m, batch_size):
        f = flat[start:start + batch_size]
        yield f // m, f % m


def accumulate(total: np.ndarray, idx: np.ndarray, values: np.ndarray) -> None:
    """total[idx] += values for sorted idx with repeats (np.add.at, but fast)."""
    unique, first = np.unique(idx, return_index=True)
    total[unique] += np.add.reduceat(values, first, axis=0)


def unit_max(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale each non-negative map by its maximum -> ([0, 1] maps, scales); an all-zero map stays zero."""
    scale = maps.reshape(len(maps), -1).max(axis=1)
    safe = np.where(scale > 0, scale, 1.0).reshape(-1, *([1] * (maps.ndim - 1)))
    return (maps / safe).astype(np.float32), scale


def _expand(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape(-1, *([1] * (ndim - 1)))


# --- methods --------------------------------------------------------------------------------------------

def saliency(model, inputs: list[np.ndarray], targets: np.ndarray, *, batch_size: int = 32) -> Attribution:
    """Vanilla gradient (Simonyan et al. 2014): |d score / d pixel|, max over channels, scaled to [0, 1];
    `info["scale"]` is each map's raw maximum. Extra inputs get the raw |gradient|."""
    grad_fn = input_gradients(model)
    out = [np.zeros(a.shape, np.float32) for a in inputs]
    for start in range(0, len(targets), batch_size):
        sl = slice(start, start + batch_size)
        _, grads = grad_fn([a[sl] for a in inputs], targets[sl])
        for o, g in zip(out, grads):
            o[sl] = np.abs(g)
    maps, scale = unit_max(out[0].max(axis=-1))
    return Attribution(maps, out[1:], {"scale": scale})


def smoothgrad(model, inputs: list[np.ndarray], targets: np.ndarray, *, batch_size: int = 32,
               smooth_samples: int = 25, smooth_noise: float = 0.15, seed: int = 0) -> Attribution:
    """SmoothGrad (Smilkov et al. 2017): the mean |gradient| over `smooth_samples` noisy copies, Gaussian
    noise of sd `smooth_noise` x (max - min) of each input per image (as tf-keras-vis); scaled like saliency."""
    if smooth_samples < 1:
        raise ValueError(f"smooth_samples must be at least 1, got {smooth_samples}")
    grad_fn = input_gradients(model)
    rng = np.random.default_rng(seed)
    sd = [smooth_noise * (a.reshape(len(a), -1).max(1) - a.reshape(len(a), -1).min(1)) for a in inputs]
    total = [np.zeros(a.shape, np.float64) for a in inputs]
    for idx, _ in batch_pairs(len(targets), smooth_samples, batch_size):
        noisy = [a[idx] + rng.standard_normal(a[idx].shape).astype(np.float32) * _expand(s[idx], a.ndim)
                 for a, s in zip(inputs, sd)]
        _, grads = grad_fn(noisy, targets[idx])
        for t, g in zip(total, grads):
            accumulate(t, idx, np.abs(g))
    total = [(t / smooth_samples).astype(np.float32) for t in total]
    maps, scale = unit_max(total[0].max(axis=-1))
    return Attribution(maps, total[1:], {"scale": scale, "smooth_samples": smooth_samples,
                                         "smooth_noise": smooth_noise})


IG_BASELINES = ("black", "blur")
IG_SPACINGS = ("uniform", "quadratic")


def integrated_gradients(model, inputs: list[np.ndarray], targets: np.ndarray, *, batch_size: int = 32,
                         steps: int = 128, baseline: str = "black", spacing: str = "quadratic",
                         blur_sigma: float = 0.1) -> Attribution:
    """Integrated Gradients (Sundararajan et al. 2017): the path integral from a baseline to the scan by the
    trapezoidal rule over `steps` intervals, signed, summed over channels. `baseline`: "black" (zeros) or
    "blur" (the scan Gaussian-blurred, sigma = `blur_sigma` x its side: the same anatomy without detail).
    `spacing`: "uniform" or "quadratic" (points dense near the baseline, where the score's slope spikes).
    The defaults (128 quadratic steps from black) keep the completeness error at a median 1.9% (90th
    percentile 8%) on 24 twin-free validation scans of models/default, where 64 uniform steps gave 10% (39%).
    Extra inputs (the view vector) start from zeros. `info["completeness_error"]` = |sum of attributions -
    (f(x) - f(baseline))| / |f(x) - f(baseline)|: how far the sum is from what it must add up to."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if baseline not in IG_BASELINES or spacing not in IG_SPACINGS:
        raise ValueError(f"baseline must be one of {IG_BASELINES} and spacing one of {IG_SPACINGS}, "
                         f"got {baseline!r}, {spacing!r}")
    grad_fn = input_gradients(model)
    n = len(targets)
    alphas = np.linspace(0.0, 1.0, steps + 1) ** (2 if spacing == "quadratic" else 1)
    weights = np.diff(alphas, prepend=alphas[0]) / 2 + np.diff(alphas, append=alphas[-1]) / 2   # trapezoid
    starts = [ig_baseline(inputs[0], baseline, blur_sigma)] + [np.zeros_like(a) for a in inputs[1:]]
    spans = [a - b for a, b in zip(inputs, starts)]
    total = [np.zeros(a.shape, np.float64) for a in inputs]
    f_end = np.zeros((n, 2))
    for idx, step in batch_pairs(n, steps + 1, batch_size):
        scaled = [(b[idx] + d[idx] * _expand(alphas[step], d.ndim)).astype(np.float32)
                  for b, d in zip(starts, spans)]
        score, grads = grad_fn(scaled, targets[idx])
        for t, g in zip(total, grads):
            accumulate(t, idx, g * _expand(weights[step], g.ndim))
        ends = (step == 0) | (step == steps)
        f_end[idx[ends], (step[ends] == steps).astype(int)] = score[ends]
    attr = [(t * d).astype(np.float32) for t, d in zip(total, spans)]
    delta = f_end[:, 1] - f_end[:, 0]
    summed = sum(a.reshape(n, -1).sum(1, dtype=np.float64) for a in attr)
    error = np.abs(summed - delta) / np.maximum(np.abs(delta), 1e-12)
    return Attribution(attr[0].sum(axis=-1), attr[1:], {"completeness_error": error, "delta": delta,
                                                        "steps": steps, "baseline": baseline,
                                                        "spacing": spacing})


def ig_baseline(images: np.ndarray, baseline: str, blur_sigma: float = 0.1) -> np.ndarray:
    """Integrated Gradients' starting point for a batch (N, S, S, C): zeros, or each image blurred."""
    if baseline == "black":
        return np.zeros_like(images)
    import cv2

    sigma = blur_sigma * images.shape[1]
    return np.stack([cv2.GaussianBlur(np.ascontiguousarray(im, np.float32), (0, 0), sigma).reshape(im.shape)
                     for im in images]).astype(images.dtype)
