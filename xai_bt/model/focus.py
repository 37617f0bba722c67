"""Focus-guided training: expert tumor masks matched to the training scans, and a penalty on the share of
the true class's activation map that lies outside them ("right for the right reasons").

Masks come from a masked dataset (BRISC 2025) through the mirror-aware twin index (`xai_bt.data.twins`):
a training scan gets the mask of its closest masked twin, mirrored or flipped as the twin is. Masked scans
with no twin among the training scans are the evaluation scans of the focus audit, so neither their masks
nor those of their own twins ever supervise: the two groups never share a twin.

The penalty needs no second-order gradients: with a global-average-pooling + dense head, the class
activation map of class k is sum_c W[c, k] A[h, w, c] on the last feature map A (Zhou et al. 2016;
Grad-CAM equals it there), so the share of its positive mass outside the mask is differentiable directly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from xai_bt.data.sample import Sample
from xai_bt.data.twins import TWIN_THRESHOLD

logger = logging.getLogger(__name__)

__all__ = ["FocusMasks", "match_masks", "focus_trainer", "check_focus_head"]


@dataclass
class FocusMasks:
    """Masks for training scans: `masks` (N, S, S) uint8 (0/1, all zero when a scan has none), and what was
    matched, for the model card (`report`)."""

    masks: np.ndarray
    report: dict[str, Any]

    @property
    def has_mask(self) -> np.ndarray:
        return self.masks.reshape(len(self.masks), -1).any(axis=1)


def match_masks(train: Sequence[Sample], masked_root: str, pre, threshold: float = TWIN_THRESHOLD,
                progress: bool = False) -> FocusMasks:
    """Give each training scan the mask of its closest masked twin under `masked_root` (r >= threshold, as it
    is, mirrored, flipped or turned), transformed like the twin and resampled by `pre` like the scan.
    Masked scans with no twin among `train` are held out for evaluation, and masked scans that are twins of
    those are never used, so supervision and evaluation share no twin."""
    from xai_bt.audit.selection import mask_sources
    from xai_bt.data.datasets import load_dataset, sample_image
    from xai_bt.data.decode import read_mask
    from xai_bt.data.twins import best_matches, best_matches_by_transform, thumbnails

    found = load_dataset(masked_root)
    sources = mask_sources(found, masked_root)
    masked = [s for s, src in zip(found, sources) if src is not None and s.mask_path]
    if not masked:
        raise ValueError(f"{masked_root}: no scans with a tumor mask found (BRISC 2025 layout expected)")
    t_train = thumbnails(train, progress=progress)
    t_masked = thumbnails(masked, progress=progress)
    r_train, _ = best_matches(t_masked, t_train)
    held_out = ~(r_train >= threshold)                         # the focus audit's scans: never supervise
    r_held, _ = best_matches(t_masked, t_masked[held_out]) if held_out.any() else (np.full(len(masked), -1.0), None)
    pool = np.flatnonzero(~held_out & ~(r_held >= threshold))  # twins of held-out scans are left out too
    per = best_matches_by_transform(t_train, t_masked[pool])
    best = np.full(len(train), -np.inf)
    which = np.full(len(train), -1)
    how = np.array([""] * len(train), dtype=object)
    for name, (r, idx) in per.items():
        better = np.nan_to_num(r, nan=-np.inf) > best
        best[better], which[better], how[better] = r[better], idx[better], name
    size = pre.image_size
    masks = np.zeros((len(train), size, size), np.uint8)
    for i in np.flatnonzero(best >= threshold):
        src = masked[pool[which[i]]]
        gray = sample_image(train[i])
        mask = _transformed(read_mask(src.mask_path, gray.shape), how[i])
        masks[i] = pre.prepare_mask(mask, gray)
    n = int((best >= threshold).sum())
    report = {"masked_root": str(masked_root), "masked_scans": len(masked), "held_out_for_evaluation":
              int(held_out.sum()), "left_out_as_twins_of_held_out": int((~held_out).sum() - len(pool)),
              "supervising_pool": int(len(pool)), "training_scans_with_mask": n, "training_scans": len(train),
              "threshold": threshold, "by_transform": {t: int(((how == t) & (best >= threshold)).sum())
                                                       for t in per}}
    logger.info(f"focus masks: {n} of {len(train)} training scans matched ({report})")
    return FocusMasks(masks, report)


def _transformed(mask: np.ndarray, transform: str) -> np.ndarray:
    """A mask mirrored, flipped or turned as its twin is (each transform is its own inverse)."""
    flips = {"identity": (), "mirror_lr": (1,), "flip_ud": (0,), "rot180": (0, 1)}[transform]
    return np.flip(mask, flips) if flips else mask


def check_focus_head(model, layer: str) -> None:
    """The penalty's closed form needs `layer` -> global average pooling -> (dropout) -> dense `logits`;
    ValueError otherwise."""
    import keras

    head = [ly for ly in model.layers if isinstance(ly, (keras.layers.GlobalAveragePooling2D, keras.layers.Dense))]
    if [type(ly).__name__ for ly in head] != ["GlobalAveragePooling2D", "Dense"] or head[-1].name != "logits":
        raise ValueError(f"focus-guided training needs a global-average-pooling + dense 'logits' head; "
                         f"{model.name} has {[ly.name for ly in head]}")
    if len(model.inputs) > 1:
        raise ValueError("focus-guided training takes single-input models (not the two-stage model)")
    if model.get_layer(layer).output is not head[0].input:
        raise ValueError(f"the focus penalty's class map is taken on the feature map that is pooled, not {layer!r}")


def focus_trainer(model, layer: str, weight: float, augment: bool, seed: int, label_smoothing: float = 0.0):
    """A Keras model that trains `model` (shared weights) on ((scan, mask), label) batches with loss
    cross-entropy (against smoothed labels with `label_smoothing` e, as plain training) + `weight` x the
    share of the true class's CAM on `layer` outside the mask (scans without a mask add no penalty).
    Image and mask are augmented together; validation is the same cross-entropy, without the penalty."""
    import keras
    import tensorflow as tf

    from xai_bt.model.mixing import one_hot_labels
    from xai_bt.model.training import augmentation

    check_focus_head(model, layer)
    aug = augmentation(seed) if augment else None
    spatial = keras.Sequential(aug.layers[:3], name="focus_spatial") if aug else None
    intensity = keras.Sequential(aug.layers[3:], name="focus_intensity") if aug else None
    features = keras.Model(model.inputs, [model.get_layer(layer).output, model.get_layer("logits").output])
    kernel = model.get_layer("logits").kernel
    n_classes = int(kernel.shape[-1])
    smoothed = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)

    def ce(y, logits):
        return smoothed(one_hot_labels(y, n_classes), logits)

    class FocusTrainer(keras.Model):
        def __init__(self):
            super().__init__(name=f"focus_{model.name}")
            self.net = model
            self.loss_tracker = keras.metrics.Mean(name="loss")
            self.penalty_tracker = keras.metrics.Mean(name="outside_share")
            self.acc = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

        @property
        def metrics(self):
            return [self.loss_tracker, self.penalty_tracker, self.acc]

        def call(self, x, training=False):
            return self.net(x, training=training)

        def _focus_losses(self, x, mask, y, training):
            feats, logits = features(x, training=training)
            cam = tf.nn.relu(tf.einsum("nhwc,ck->nhwk", feats, kernel))
            cam = tf.gather(cam, tf.cast(y, tf.int32), axis=3, batch_dims=1)                    # (N, h, w)
            # a feature cell counts as tumor when any of its pixels is (the mask max-pooled to the cells)
            small = tf.cast(tf.image.resize(mask, tf.shape(feats)[1:3], method="area")[..., 0] > 0, tf.float32)
            has = tf.cast(tf.reduce_max(small, axis=(1, 2)) > 0, tf.float32)
            outside = tf.reduce_sum(cam * (1.0 - small), axis=(1, 2)) / (tf.reduce_sum(cam, axis=(1, 2)) + 1e-6)
            penalty = tf.reduce_sum(outside * has) / tf.maximum(tf.reduce_sum(has), 1.0)
            return ce(y, logits), penalty, logits

        def train_step(self, data):
            (x, mask), y, _ = keras.utils.unpack_x_y_sample_weight(data)
            mask = tf.cast(mask, tf.float32)
            if spatial is not None:
                both = spatial(tf.concat([x, mask * 255.0], axis=-1), training=True)
                x, mask = intensity(both[..., :1], training=True), tf.cast(both[..., 1:] >= 127.5, tf.float32)
            with tf.GradientTape() as tape:
                loss_ce, penalty, logits = self._focus_losses(x, mask, y, True)
                loss = loss_ce + weight * penalty + tf.add_n(self.net.losses or [tf.constant(0.0)])
            grads = tape.gradient(loss, self.net.trainable_variables)
            self.optimizer.apply(grads, self.net.trainable_variables)
            self.loss_tracker.update_state(loss)
            self.penalty_tracker.update_state(penalty)
            self.acc.update_state(y, logits)
            return {m.name: m.result() for m in self.metrics}

        def test_step(self, data):
            x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
            logits = features(x, training=False)[1]
            self.loss_tracker.update_state(ce(y, logits))
            self.acc.update_state(y, logits)
            return {"loss": self.loss_tracker.result(), "accuracy": self.acc.result()}

    trainer = FocusTrainer()
    trainer(np.zeros((1, *model.inputs[0].shape[1:]), np.float32))   # built, as Keras' checkpoint callbacks need
    return trainer
