"""MixUp and CutMix for the training input pipeline: each batch is blended with itself reversed, and the
one-hot labels are blended in the same proportion (Zhang et al. 2018; Yun et al. 2019), as timm does.

Used through ``train --mixup ALPHA`` / ``--cutmix ALPHA``; both need the TensorFlow backend (tf.data).
"""
from __future__ import annotations

from typing import Any


def _beta(alpha: float, seed) -> Any:
    """One draw of Beta(alpha, alpha) from a stateless seed pair, as the ratio of two Gamma draws."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, 2)
    a = tf.random.stateless_gamma([], seeds[0], alpha=alpha)
    b = tf.random.stateless_gamma([], seeds[1], alpha=alpha)
    return a / tf.maximum(a + b, 1e-12)


def mixup(x, y, alpha: float, seed):
    """Blend the batch ``x`` (B, H, W, C) float and its one-hot labels ``y`` (B, K) with the batch reversed:
    lam * x + (1 - lam) * x[::-1], lam ~ Beta(alpha, alpha), one lam per batch."""
    lam = _beta(alpha, seed)
    return lam * x + (1 - lam) * x[::-1], lam * y + (1 - lam) * y[::-1]


def cutmix(x, y, alpha: float, seed):
    """Paste a box of the reversed batch into every scan of ``x`` (B, H, W, C); the box's area is about
    1 - lam of the scan (lam ~ Beta(alpha, alpha), clipped at the border), and the labels are mixed by the
    area actually pasted."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, 3)
    lam = _beta(alpha, seeds[0])
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    side = tf.sqrt(1.0 - lam)
    centre = tf.random.stateless_uniform([2], seeds[1]) * tf.stack([hf, wf])
    half = tf.stack([hf, wf]) * side / 2
    lo = tf.cast(tf.clip_by_value(tf.round(centre - half), 0, tf.stack([hf, wf])), tf.int32)
    hi = tf.cast(tf.clip_by_value(tf.round(centre + half), 0, tf.stack([hf, wf])), tf.int32)
    rows = tf.range(h)
    cols = tf.range(w)
    inside_r = (rows >= lo[0]) & (rows < hi[0])
    inside_c = (cols >= lo[1]) & (cols < hi[1])
    box = tf.cast(inside_r[:, None] & inside_c[None, :], x.dtype)[None, :, :, None]
    pasted = tf.reduce_mean(box)  # the share of each scan that now comes from its partner
    mixed = x * (1 - box) + x[::-1] * box
    kept = tf.cast(1 - pasted, y.dtype)
    return mixed, kept * y + (1 - kept) * y[::-1]


def one_hot_labels(label, n_classes: int, dtype="float32"):
    """Sparse labels of a batch, (B,) or (B, 1), as (B, n_classes) one-hot rows."""
    import tensorflow as tf

    return tf.one_hot(tf.cast(tf.reshape(label, [-1]), tf.int32), n_classes, dtype=dtype)


def check_alphas(mixup_alpha: float, cutmix_alpha: float) -> None:
    """Raise ValueError unless both Beta alphas are >= 0 (0: that mixing is off)."""
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"MixUp and CutMix take a Beta alpha >= 0, got {mixup_alpha} and {cutmix_alpha}")


def mix_batches(ds, n_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, seed: int = 0):
    """Map a batched ``(x float, sparse label)`` tf.data pipeline to mixed ``(x, soft one-hot label)``
    batches. With both alphas set, each batch gets MixUp or CutMix with equal chance; the draws are new
    each epoch but repeat from run to run for one seed."""
    import tensorflow as tf

    check_alphas(mixup_alpha, cutmix_alpha)
    if not (mixup_alpha or cutmix_alpha):
        raise ValueError("mix_batches needs a MixUp or a CutMix alpha above 0")
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def mix(pair, seed_pair):
        x, label = pair
        y = one_hot_labels(label, n_classes, x.dtype)
        s = tf.random.experimental.stateless_split(tf.cast(seed_pair, tf.int64), 2)
        if mixup_alpha and cutmix_alpha:
            use_cut = tf.random.stateless_uniform([], s[0]) < 0.5
            return tf.cond(use_cut, lambda: cutmix(x, y, cutmix_alpha, s[1]), lambda: mixup(x, y, mixup_alpha, s[1]))
        if cutmix_alpha:
            return cutmix(x, y, cutmix_alpha, s[1])
        return mixup(x, y, mixup_alpha, s[1])

    return tf.data.Dataset.zip((ds, seeds)).map(mix, num_parallel_calls=tf.data.AUTOTUNE)
