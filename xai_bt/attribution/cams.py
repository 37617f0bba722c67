"""The CAM family on one shared pass: Grad-CAM, Grad-CAM++, Layer-CAM, HiResCAM, XGrad-CAM, Score-CAM and
Faster-ScoreCAM, and Layer-CAM fused over layers.

As in pytorch-grad-cam, one compiled pass per (model, layer) returns the layer's activations, the
gradients of the class score (logits) with respect to them, and the scores; each variant then only says
how it weights the activations. Asking for several CAMs therefore costs one forward/backward pass, plus
the masked forward passes of Score-CAM. Every map is ReLU'd at the layer's resolution (as tf-keras-vis
does), upsampled bilinearly to the input size and scaled by its maximum to [0, 1] (a zero map stays zero).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from scipy.special import softmax

from xai_bt.attribution.gradients import (
    Attribution,
    batch_pairs,
    cached,
    call,
    input_signature,
    score_output,
    scores,
    unit_max,
)
from xai_bt.model.layers import activation_pass, resolve, spatial_layer_shapes

if TYPE_CHECKING:
    from xai_bt.attribution.registry import MethodSpec


def cam_pass(model, layer: str, every_class: bool = False) -> Callable[..., tuple[np.ndarray, ...]]:
    """Compiled, cached: (inputs, targets) -> (activations (N,h,w,C), d score / d activations, scores).
    With `every_class`, (inputs) -> the gradients of every class score, (N, K, h, w, C): one forward pass
    and K backward passes that stop at `layer` (cheap when it is the last conv layer), so the scores can
    choose the target after the pass."""
    def build():
        import tensorflow as tf

        sub = activation_pass(model, resolve(model, layer), score_output(model))
        n_classes = int(score_output(model).shape[-1])

        @tf.function(input_signature=[input_signature(model), tf.TensorSpec((None,), tf.int32)])
        def run(inputs, targets):
            with tf.GradientTape() as tape:
                acts, logits = call(sub, inputs)
                score = tf.gather(logits, targets, batch_dims=1)
            return acts, tape.gradient(score, acts), logits

        @tf.function(input_signature=[input_signature(model)])
        def run_all(inputs):
            with tf.GradientTape(persistent=True) as tape:
                acts, logits = call(sub, inputs)
                per_class = [tf.reduce_sum(logits[:, k]) for k in range(n_classes)]
            grads = tf.stack([tape.gradient(s, acts) for s in per_class], axis=1)
            del tape
            return acts, grads, logits

        def numpy_run(inputs, targets=None):
            inputs = [np.asarray(a, np.float32) for a in inputs]
            out = run_all(inputs) if every_class else run(inputs, np.asarray(targets, np.int32))
            return tuple(t.numpy() for t in out)
        return numpy_run
    return cached(model, ("cam_pass", layer, every_class), build)


def layer_pass(model, inputs: list[np.ndarray], layer: str, targets: np.ndarray | None = None,
               batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activations of `layer`, gradients of the targets' scores (of every class when `targets` is None:
    (N, K, h, w, C)) and the scores (N, K), in chunks of `batch_size`. The scores are the network's logits,
    so a caller that needs them (to predict, or to pick the target) can skip a separate forward pass."""
    run = cam_pass(model, layer, every_class=targets is None)
    parts = [run([x[s:s + batch_size] for x in inputs], None if targets is None else targets[s:s + batch_size])
             for s in range(0, len(inputs[0]), batch_size)]
    acts, grads, logits = (np.concatenate(p) for p in zip(*parts))
    return acts, grads, logits


# --- how each variant weights the activations (low resolution, before ReLU) -----------------------

def gradcam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017): channel weight = spatial mean of the gradient."""
    return np.einsum("nhwc,nc->nhw", acts, grads.mean(axis=(1, 2)))


def gradcam_plus_plus(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM++ (Chattopadhyay et al. 2018) with exp(score) for the higher derivatives, as the paper and
    tf-keras-vis: alpha = g^2 / (2 g^2 + sum(A) g^3), normalised over space; weight = sum(alpha relu(g)).
    exp(score) cancels in alpha and only scales the map, so it is left out (no overflow for large logits)."""
    g2, g3 = grads ** 2, grads ** 3
    denom = 2 * g2 + acts.sum(axis=(1, 2), keepdims=True) * g3
    alphas = g2 / np.where(denom != 0, denom, 1.0)     # as tf-keras-vis: a zero denominator counts as 1
    norm = alphas.sum(axis=(1, 2), keepdims=True)
    alphas = alphas / np.where(norm == 0, 1.0, norm)
    weights = (alphas * np.maximum(grads, 0)).sum(axis=(1, 2))
    return np.einsum("nhwc,nc->nhw", acts, weights)


def layercam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Layer-CAM (Jiang et al. 2021): element-wise relu(gradient) x activation, summed over channels."""
    return (np.maximum(grads, 0) * acts).sum(axis=-1)


def hirescam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """HiResCAM (Draelos & Carin 2020): element-wise gradient x activation summed over channels, no
    averaging: provably highlights only locations that raise the score (Grad-CAM's mean can mislead)."""
    return (grads * acts).sum(axis=-1)


def xgradcam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """XGrad-CAM (Fu et al. 2020): channel weight = sum(gradient x activation) / sum(activation)."""
    norm = acts.sum(axis=(1, 2))
    weights = (grads * acts).sum(axis=(1, 2)) / np.where(norm == 0, 1.0, norm)
    return np.einsum("nhwc,nc->nhw", acts, weights)


# --- Score-CAM ----------------------------------------------------------------------------------------

def scorecam(model, inputs: list[np.ndarray], targets: np.ndarray, acts: np.ndarray, batch_size: int,
             max_n: int | None = None) -> np.ndarray:
    """Score-CAM (Wang et al. 2020): each channel, upsampled and min-max scaled, masks the image; its
    weight is the softmax probability of the target on the masked image (as tf-keras-vis). With `max_n`,
    Faster-ScoreCAM: only the max_n channels of largest spatial variance of each image."""
    n, h, w, k = acts.shape
    size = inputs[0].shape[1:3]
    if max_n is None or max_n >= k:
        channels = np.broadcast_to(np.arange(k), (n, k))
    elif max_n < 1:
        raise ValueError(f"max_n must be at least 1, got {max_n}")
    else:
        channels = np.argsort(-acts.var(axis=(1, 2)), axis=1)[:, :max_n]
    score_fn = scores(model)
    weights = np.zeros(channels.shape, np.float32)
    for img, j in batch_pairs(n, channels.shape[1], batch_size):
        masks = upsample(acts[img, :, :, channels[img, j]], size)
        lo = masks.min(axis=(1, 2), keepdims=True)
        span = masks.max(axis=(1, 2), keepdims=True) - lo
        masks = np.where(span > 0, (masks - lo) / np.where(span > 0, span, 1.0), 0.0)[..., None]
        logits = score_fn([inputs[0][img] * masks] + [a[img] for a in inputs[1:]])
        weights[img, j] = softmax(logits, axis=1)[np.arange(len(img)), targets[img]]
    selected = np.take_along_axis(acts, channels[:, None, None, :], axis=3)
    return np.einsum("nhwc,nc->nhw", selected, weights)


# --- Layer-CAM fused over layers ---------------------------------------------------------------------

FUSE_RULES = ("mean", "max", "product")


def fusion_layers(model, n: int = 3) -> tuple[str, ...]:
    """The last spatial layer at each of the `n` coarsest resolutions of `model`, coarse first (for an
    EfficientNet at 160 px: the 5x5, 10x10 and 20x20 stages' outputs)."""
    last_at: dict[tuple[int, int], str] = {}
    for path, shape in spatial_layer_shapes(model):
        last_at[shape[:2]] = path
    return tuple(last_at[res] for res in sorted(last_at, key=lambda r: r[0] * r[1])[:n])


def layercam_fusion(model, inputs: list[np.ndarray], targets: np.ndarray, acts: np.ndarray, batch_size: int,
                    layers: Sequence[str] | None = None, fuse: str = "mean") -> np.ndarray:
    """Layer-CAM on several layers, coarse to fine (Jiang et al. 2021 fuse layers this way): each layer's
    map ReLU'd, upsampled to the finest layer's grid and scaled to [0, 1], then combined by `fuse` ("mean",
    "max" or "product": the fine map gated by the coarse ones). `layers`: default `fusion_layers(model)`.
    One CAM pass per layer; `acts` (the explanation's own layer) is not needed."""
    if fuse not in FUSE_RULES:
        raise ValueError(f"fuse must be one of {FUSE_RULES}, got {fuse!r}")
    layers = tuple(layers) if layers else fusion_layers(model)
    maps = []
    for layer in layers:
        a, g, _ = layer_pass(model, inputs, layer, targets, batch_size)
        maps.append(np.maximum(layercam(a, g), 0))
    size = max((m.shape[1:] for m in maps), key=lambda hw: hw[0] * hw[1])
    scaled = np.stack([unit_max(upsample(m, size) if m.shape[1:] != size else m)[0] for m in maps])
    if fuse == "max":
        return scaled.max(axis=0)
    if fuse == "product":
        return np.prod(scaled, axis=0) ** (1 / len(scaled))
    return scaled.mean(axis=0)


# --- the family -------------------------------------------------------------------------------------------

def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N, *size) by bilinear interpolation (half-pixel centres, as cv2 and tf.image)."""
    import tensorflow as tf

    return tf.image.resize(maps[..., None].astype(np.float32), size, method="bilinear").numpy()[..., 0]


def finish(low: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Low-resolution CAMs -> ReLU, bilinear upsampling to the input size, [0, 1] by each map's maximum."""
    return unit_max(upsample(np.maximum(low, 0), size))[0]


def cam_family(model, inputs: list[np.ndarray], targets: np.ndarray, methods: Sequence[MethodSpec], layer: str,
               *, batch_size: int = 32, passes: tuple[np.ndarray, np.ndarray] | None = None,
               **options: Any) -> dict[str, Attribution]:
    """Every requested CAM (registry specs of kind cam_weighting or scored_cam) from one pass over `layer`:
    method -> Attribution with (N, S, S) maps in [0, 1]. `options`: the scored CAMs' options (Faster
    Score-CAM's `max_n`). `passes`: (activations, target gradients) already computed by `layer_pass`."""
    acts, grads = passes if passes is not None else layer_pass(model, inputs, layer, targets, batch_size)[:2]
    size = inputs[0].shape[1:3]
    out = {}
    for method in methods:
        own = {k: options.get(k, default) for k, default in method.options.items()}
        if method.kind == "scored_cam":
            cam = method.function(model, inputs, targets, acts, batch_size, **own)
        else:
            cam = method.function(acts, grads)
        out[method.name] = Attribution(finish(cam, size), info=own)
    return out
