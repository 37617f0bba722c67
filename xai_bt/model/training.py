"""Train a classifier on real data and save it as a model bundle with its card.

One function, `train`, behind `python -m xai_bt train`. Data are decoded once through the model's
preprocessing, split without leakage (near-duplicates and patients on one side), fed through tf.data
(or numpy under the JAX backend, where TensorFlow may be absent), augmented inside the training graph,
and fitted under a `tf.distribute` strategy. Every epoch is checkpointed, so `--resume` continues a run
that was killed.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xai_bt.data.sample import CLASS_NAMES, PLANES, Sample
from xai_bt.data.twins import TWIN_THRESHOLD, TWIN_TRANSFORMS
from xai_bt.model.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

TASKS = ("tumor", "view", "cascade")


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved in the bundle so the run can be repeated."""

    arch: str
    data: str
    out: str
    task: str = "tumor"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    fine_tune_lr: float | None = None
    freeze_epochs: int = 0
    weights: str | None = None
    schedule: str = "plateau"         # "plateau" (ReduceLROnPlateau) or "cosine"
    patience: int = 6
    weight_decay: float = 1e-4
    dropout: float | None = None
    augment: bool = True
    val_fraction: float = 0.15
    split_csv: str | None = None
    dedup_threshold: float = TWIN_THRESHOLD
    seed: int = 0
    limit: int | None = None          # at most this many training images (smoke tests)
    view_model: str | None = None     # a view bundle: makes a two-stage tumor model
    init_from: str | None = None      # a bundle whose layers (matched by name and shape) initialise this one
    strategy: str = "default"
    time_limit: float | None = None   # minutes; training stops after the epoch that passes it
    budget: float | None = None       # minutes of fitting; stops mid-epoch (same-budget comparisons)
    focus_masks: str | None = None    # a masked dataset (BRISC 2025): focus-guided training (xai_bt.model.focus)
    focus_weight: float = 1.0         # weight of the outside-the-mask CAM share in the loss
    refit: bool = False               # a final refit: the validation rows join training, the last epoch is kept
    val_apart_from_test: bool = False  # validation carved only from twin groups with no twin among the test scans
    label_smoothing: float = 0.0      # cross-entropy against (1 - e) one-hot + e / classes (Szegedy et al. 2016)
    ema: float | None = None          # momentum of an exponential moving average of the weights, which is kept
    mixup: float = 0.0                # MixUp's Beta alpha (0: off); soft labels (xai_bt.model.mixing)
    cutmix: float = 0.0               # CutMix's Beta alpha (0: off); with both, each batch gets one of the two
    preprocessing: dict[str, Any] = field(default_factory=dict)

    @property
    def soft_labels(self) -> bool:
        """MixUp or CutMix on: training labels are soft one-hot rows (categorical loss and accuracy)."""
        return bool(self.mixup or self.cutmix)


# --- data --------------------------------------------------------------------------------------------

def task_samples(data: str, task: str) -> tuple[list[Sample], list[str]]:
    """Samples usable for `task` and its class names (tumor classes, or planes for the view task)."""
    from xai_bt.data.datasets import load_dataset

    samples = load_dataset(data)
    if task == "view":
        samples = [s for s in samples if s.plane]
        if not samples:
            raise ValueError(f"{data}: no plane labels found; the view task needs BRISC-style plane labels")
        return samples, list(PLANES)
    samples = [s for s in samples if s.label]
    present = [c for c in CLASS_NAMES if any(s.label == c for s in samples)]
    return samples, present


def assign_splits(samples: Sequence[Sample], cfg: TrainConfig) -> list[str]:
    """train / val / test per sample: from a split CSV, from the dataset's own split (validation carved
    out of Training by near-duplicate group), or a fresh leakage-free split. A refit (``cfg.refit``)
    trains on the validation rows too, for the epochs a run with them held out chose."""
    split = _assign_splits(samples, cfg)
    return ["train" if cfg.refit and part == "val" else part for part in split]


def _assign_splits(samples: Sequence[Sample], cfg: TrainConfig) -> list[str]:
    from xai_bt.data import splits

    if cfg.split_csv:
        table = read_split_table(cfg.split_csv, cfg.data)
        missing = [s.path for s in samples if os.path.normpath(s.path) not in table]
        if missing:
            raise ValueError(f"{cfg.split_csv}: {len(missing)} samples have no split, e.g. {missing[0]}")
        return [table[os.path.normpath(s.path)] for s in samples]
    if any(s.split == "test" for s in samples) and any(s.split == "train" for s in samples):
        # the dataset's own split: test as published, validation carved out of train
        train_idx = [i for i, s in enumerate(samples) if s.split == "train"]
        train_part = [samples[i] for i in train_idx]
        if cfg.val_apart_from_test:
            test_part = [s for s in samples if s.split == "test"]
            twin_of_test = [not f for f in splits.leakage_free(train_part, test_part, cfg.dedup_threshold)]
            sub = splits.split_training_apart_from(train_part, twin_of_test, val_fraction=cfg.val_fraction,
                                                   threshold=cfg.dedup_threshold, seed=cfg.seed)
        else:
            sub = splits.split_training(train_part, val_fraction=cfg.val_fraction,
                                        threshold=cfg.dedup_threshold, seed=cfg.seed)
        out = ["test" if s.split == "test" else "unused" for s in samples]
        for i, part in zip(train_idx, sub):
            out[i] = part
        return out
    return splits.make_split(samples, fractions=(1 - 2 * cfg.val_fraction, cfg.val_fraction, cfg.val_fraction),
                             threshold=cfg.dedup_threshold, seed=cfg.seed)


def read_split_table(path: str, root: str) -> dict[str, str]:
    """normalised sample path -> split, from `data audit --write-split` output or a bundle's split.csv
    (whose paths are relative to the data root), so a new model can reuse another model's exact split."""
    import csv

    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"path", "split"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: not a split CSV, it needs 'path' and 'split' columns")
        rows = list(reader)
    return {os.path.normpath(r["path"] if os.path.isabs(r["path"]) or os.path.exists(r["path"])
                             else os.path.join(root, r["path"])): r["split"] for r in rows}


def labels_of(samples: Sequence[Sample], task: str, class_names: Sequence[str]) -> np.ndarray:
    key = (lambda s: s.plane) if task == "view" else (lambda s: s.label)
    return np.array([list(class_names).index(key(s)) for s in samples], np.int32)


# --- model pieces ------------------------------------------------------------------------------------

def augmentation(seed: int):
    """Training-time augmentation as Keras layers (backend-neutral): flips, small rotations, zoom,
    brightness and contrast. Inactive at inference, and never part of the saved model."""
    import keras
    from keras import layers

    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomRotation(0.03, fill_mode="constant", seed=seed + 1),
        layers.RandomZoom((-0.1, 0.1), fill_mode="constant", seed=seed + 2),
        layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 3),
        layers.RandomContrast(0.1, value_range=(0, 255), seed=seed + 4),
    ], name="augmentation")


def training_model(model, augment: bool, seed: int):
    """Wrap the (flat) model with augmentation for fitting; the wrapped model is what gets saved."""
    import keras

    if not augment:
        return model
    aug = augmentation(seed)
    inputs = [keras.Input(t.shape[1:], name=t.name) for t in model.inputs]
    first = aug(inputs[0])
    out = model([first, *inputs[1:]] if len(inputs) > 1 else first)
    return keras.Model(inputs, out, name=f"train_{model.name}")


def get_strategy(name: str):
    """The tf.distribute strategy for `name`; under a non-TensorFlow backend only 'default' exists."""
    import keras

    if keras.backend.backend() != "tensorflow":
        if name != "default":
            raise ValueError(f"--strategy {name} needs the TensorFlow backend (KERAS_BACKEND=tensorflow)")
        return None
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; one of default, mirrored, multiworker")


def make_input(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int,
               extra: np.ndarray | None = None, masks: np.ndarray | None = None, *, n_classes: int = 0,
               mixup: float = 0.0, cutmix: float = 0.0, one_hot: bool = False):
    """tf.data pipeline (uint8 pixels cast to float on the fly) or, without TensorFlow, numpy arrays.
    `masks` (N, S, S) uint8: focus-guided training's tumor masks, batched as ((scan, mask), label).
    `mixup` / `cutmix` (alphas, with `n_classes`): MixUp / CutMix batches with soft one-hot labels
    (:mod:`xai_bt.model.mixing`); `one_hot`: one-hot labels unmixed (the validation data of such a run)."""
    import keras

    if masks is not None:
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices(((x, masks), y))
        if shuffle:
            ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size).map(lambda f, label: ((tf.cast(f[0], tf.float32)[..., None],
                                                         tf.cast(f[1], tf.float32)[..., None]), label),
                                      num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE), None
    if keras.backend.backend() != "tensorflow":
        xs = x.astype(np.float32)[..., None]
        return ([xs, extra] if extra is not None else xs), y
    import tensorflow as tf

    feats = (x, extra) if extra is not None else x
    ds = tf.data.Dataset.from_tensor_slices((feats, y))
    if shuffle:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)

    def cast(f, label):
        if extra is not None:
            return (tf.cast(f[0], tf.float32)[..., None], f[1]), label
        return tf.cast(f, tf.float32)[..., None], label

    ds = ds.batch(batch_size).map(cast, num_parallel_calls=tf.data.AUTOTUNE)
    from xai_bt.model.mixing import mix_batches, one_hot_labels

    if mixup or cutmix:
        if extra is not None:
            raise ValueError("MixUp / CutMix train single-input networks only (not a two-stage model)")
        ds = mix_batches(ds, n_classes, mixup, cutmix, seed)
    elif one_hot:
        ds = ds.map(lambda f, label: (f, one_hot_labels(label, n_classes)))
    return ds.prefetch(tf.data.AUTOTUNE), None


# --- the run -------------------------------------------------------------------------------------------

def _time_limit_callback(deadline: float, mid_epoch: bool = False):
    """Stop after the epoch that passes `deadline` (a job's wall-clock limit), keeping what was learnt;
    with `mid_epoch`, at the first batch past it (a fixed training budget), then validate as usual."""
    import keras

    class TimeLimit(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if mid_epoch and time.time() > deadline and not self.model.stop_training:
                logger.info(f"training budget reached at batch {batch + 1}; stopping")
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if time.time() > deadline:
                logger.info(f"time limit reached after epoch {epoch + 1}; stopping")
                self.model.stop_training = True

    return TimeLimit()


def classification_loss(label_smoothing: float, n_classes: int, dense: bool = False):
    """Sparse cross-entropy on the network's probabilities; with ``label_smoothing`` e, against
    (1 - e) one-hot + e / classes. ``dense``: labels come one-hot or soft (MixUp / CutMix)."""
    import keras

    if dense:
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    if not label_smoothing:
        return "sparse_categorical_crossentropy"
    ce = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)

    def smoothed_sparse_crossentropy(y_true, y_pred):
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        return ce(keras.ops.one_hot(labels, n_classes), y_pred)

    return smoothed_sparse_crossentropy


def _fit_phase(model, train_in, val_in, cfg: TrainConfig, lr: float, epochs: tuple[int, int], steps: int,
               ckpt: Path, strategy, deadline: float | None = None, budget_deadline: float | None = None):
    """Compile and fit one phase (frozen backbone, or fine-tuning) with checkpointing for resume."""
    import keras

    def compile_():
        if cfg.schedule == "cosine":
            rate = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, steps * (epochs[1] - epochs[0])))
        else:
            rate = lr
        ema = {"use_ema": True, "ema_momentum": cfg.ema} if cfg.ema else {}
        optimizer = keras.optimizers.AdamW(rate, weight_decay=cfg.weight_decay, **ema)
        if getattr(model, "name", "").startswith("focus_"):   # its train_step has its own loss
            model.compile(optimizer=optimizer)
        else:
            dense = cfg.soft_labels
            model.compile(optimizer=optimizer,
                          loss=classification_loss(cfg.label_smoothing, model.outputs[0].shape[-1], dense),
                          metrics=[keras.metrics.CategoricalAccuracy(name="accuracy") if dense else "accuracy"])

    if strategy is not None:
        with strategy.scope():
            compile_()
    else:
        compile_()
    ckpt.mkdir(parents=True, exist_ok=True)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(ckpt / "backup")),
        # with an EMA, validation, early stopping and the checkpoints see the averaged weights
        *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if cfg.ema else []),
        keras.callbacks.CSVLogger(str(ckpt / "history.csv"), append=True),
    ]
    if val_in is not None:  # a refit has no validation data: it keeps its last epoch
        callbacks += [
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True),
            keras.callbacks.ModelCheckpoint(str(ckpt / "best.weights.h5"), monitor="val_loss",
                                            save_best_only=True, save_weights_only=True),
        ]
    if deadline is not None:
        callbacks.append(_time_limit_callback(deadline))
    if budget_deadline is not None:
        callbacks.append(_time_limit_callback(budget_deadline, mid_epoch=True))
    if cfg.schedule == "plateau" and val_in is not None:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3,
                                                           patience=max(2, cfg.patience // 2), min_lr=1e-6))
    if isinstance(strategy, tf_multiworker_type()):
        _patch_symbolic_build(model, strategy)
    x, y = train_in
    numpy_input = y is not None  # without TensorFlow: arrays that Keras batches and shuffles itself
    model.fit(x, y, validation_data=val_in, epochs=epochs[1], initial_epoch=epochs[0],
              batch_size=cfg.batch_size if numpy_input else None, shuffle=numpy_input, callbacks=callbacks,
              verbose=2)
    best = ckpt / "best.weights.h5"
    if best.exists():  # the epoch with the lowest validation loss, however the phase ended
        model.load_weights(best)


def train(cfg: TrainConfig, overwrite: bool = False, resume: bool = False) -> Path:
    """Train `cfg.arch` on `cfg.data` and write the bundle to `cfg.out`; returns its path."""
    import keras

    from xai_bt.data.cache import failed_indices, prepare_samples
    from xai_bt.model import architectures
    from xai_bt.model.bundle import BUNDLE_FILE, load_model, save_bundle
    from xai_bt.model.card import write_model_card
    from xai_bt.model.mixing import check_alphas

    if cfg.focus_masks and cfg.soft_labels:   # a mixed scan has no one mask to point at
        raise ValueError("--mixup and --cutmix are not supported with --focus-masks")
    if cfg.soft_labels and (cfg.view_model or keras.backend.backend() != "tensorflow"):
        raise ValueError("--mixup / --cutmix mix the tf.data batches of a single-input network: they need the "
                         "TensorFlow backend and no --view-model")
    check_alphas(cfg.mixup, cfg.cutmix)  # before the scans load; mix_batches checks again for other callers
    if cfg.refit and cfg.schedule == "plateau":
        raise ValueError("a refit has no validation loss to watch: use a fixed schedule (--schedule cosine) "
                         "and the number of epochs a run with validation chose")
    strategy = get_strategy(cfg.strategy)  # once, before TensorFlow runs anything: multi-worker needs that
    out, chief = _output_folder(cfg, strategy, resume)
    ckpt = out / "checkpoints"
    if (out / BUNDLE_FILE).exists() and not overwrite and chief:
        raise FileExistsError(f"{out}: a trained model is already there; use --overwrite to replace it")
    if ckpt.exists() and not resume:
        if not overwrite:
            raise FileExistsError(f"{ckpt}: an unfinished run is there; use --resume to continue it "
                                  "or --overwrite to start over")
        shutil.rmtree(ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "config.json").write_text(json.dumps(cfg.__dict__, indent=2))
    keras.utils.set_random_seed(cfg.seed)
    t0 = time.time()

    pre = Preprocessing(**cfg.preprocessing)
    task = "tumor" if cfg.task == "cascade" else cfg.task
    samples, class_names = task_samples(cfg.data, task)
    split = assign_splits(samples, cfg)
    x_all, errors = prepare_samples(samples, pre)
    for e in errors:
        logger.warning(f"skipped: {e}")
    bad = failed_indices(samples, errors)
    idx = {part: [i for i, p in enumerate(split) if p == part and i not in bad] for part in ("train", "val", "test")}
    if cfg.limit:  # a random subset of train and validation, for quick checks
        rng = np.random.default_rng(cfg.seed)
        for part, n in (("train", cfg.limit), ("val", max(8, cfg.limit // 4))):
            chosen = set(rng.choice(idx[part], min(n, len(idx[part])), replace=False).tolist())
            dropped = set(idx[part]) - chosen
            split = ["unused" if i in dropped else p for i, p in enumerate(split)]
            idx[part] = sorted(chosen)
    y_all = labels_of(samples, task, class_names)
    logger.info(f"{cfg.arch} on {cfg.data}: {len(idx['train'])} train / {len(idx['val'])} val / "
                f"{len(idx['test'])} test scans, classes {class_names}, {pre.image_size}px")

    view_bundle = load_model(cfg.view_model) if cfg.view_model else None
    if view_bundle is not None and view_bundle.preprocessing != pre:
        raise ValueError(f"{cfg.view_model}: the view model was trained with preprocessing "
                         f"{view_bundle.preprocessing.to_dict()}, this run uses {pre.to_dict()}; "
                         "a two-stage model needs one preprocessing for both stages")
    stages = _stages(cfg, class_names)
    focus = None
    if cfg.focus_masks:
        from xai_bt.model.focus import match_masks

        if len(stages) > 1 or cfg.view_model or keras.backend.backend() != "tensorflow":
            raise ValueError("--focus-masks trains single-network tumor models on the TensorFlow backend")
        focus = match_masks([samples[i] for i in idx["train"]], cfg.focus_masks, pre, cfg.dedup_threshold)
        masks_all = np.zeros(x_all.shape, np.uint8)
        masks_all[idx["train"]] = focus.masks
    networks, last_conv, histories = {}, None, {}
    fit_start = None  # the training budget counts fitting time only, not data preparation
    for stage, stage_classes, mapping in stages:
        keep = {k: [i for i in v if mapping(y_all[i]) is not None] for k, v in idx.items()}
        y_stage = np.array([-1 if mapping(v) is None else mapping(v) for v in y_all], np.int32)
        extra = None
        if view_bundle is not None:
            extra = view_bundle.view_features(x_all.astype(np.float32)[..., None])
        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        with scope:
            kw = {"dropout": cfg.dropout} if cfg.dropout is not None else {}
            if task == "view":
                built = architectures.view_classifier(cfg.arch, pre.image_size, len(stage_classes), cfg.weights)
            else:
                built = architectures.build(cfg.arch, pre.image_size, len(stage_classes), cfg.weights,
                                            extra_input=extra is not None, **kw)
            if cfg.init_from:
                copied = init_from_bundle(built.model, cfg.init_from)
                logger.info(f"initialised {copied} layers from {cfg.init_from}")
            if focus is not None:
                from xai_bt.model.focus import focus_trainer

                fit_model = focus_trainer(built.model, built.last_conv_layer, cfg.focus_weight, cfg.augment,
                                          cfg.seed, cfg.label_smoothing)
            else:
                fit_model = training_model(built.model, cfg.augment, cfg.seed)
        last_conv = built.last_conv_layer
        stage_ckpt = ckpt / stage
        stage_ckpt.mkdir(exist_ok=True)
        batch = cfg.batch_size * (strategy.num_replicas_in_sync if strategy is not None else 1)

        def data(part: str, shuffle: bool):
            ii = np.array(keep[part])
            mixing = {"mixup": cfg.mixup, "cutmix": cfg.cutmix} if part == "train" else {}
            return make_input(x_all[ii], y_stage[ii], batch, shuffle, cfg.seed,
                              None if extra is None else extra[ii],
                              masks_all[ii] if focus is not None and part == "train" else None,
                              n_classes=len(stage_classes), one_hot=cfg.soft_labels, **mixing)

        train_in = data("train", True)
        val_in = None
        if keep["val"]:
            vx, vy = data("val", False)
            val_in = vx if vy is None else (vx, vy)
        steps = int(np.ceil(len(keep["train"]) / batch))
        phases = []
        if cfg.freeze_epochs and built.backbone_layers:
            phases.append(("frozen", cfg.lr, (0, min(cfg.freeze_epochs, cfg.epochs))))
        start = phases[-1][2][1] if phases else 0
        if start < cfg.epochs:
            phases.append(("fine_tune", cfg.fine_tune_lr or (cfg.lr / 10 if phases else cfg.lr), (start, cfg.epochs)))
        for phase, lr, epochs in phases:
            done = stage_ckpt / f"{phase}.done.weights.h5"
            frozen = phase == "frozen"
            for name in built.backbone_layers:
                layer = built.model.get_layer(name)
                layer.trainable = not frozen
            if done.exists():
                built.model.load_weights(done)
                continue
            logger.info(f"[{stage}] phase {phase}: epochs {epochs[0] + 1}-{epochs[1]}, lr {lr:g}")
            deadline = t0 + 60 * cfg.time_limit if cfg.time_limit else None
            fit_start = fit_start or time.time()
            budget = fit_start + 60 * cfg.budget if cfg.budget else None
            _fit_phase(fit_model, train_in, val_in, cfg, lr, epochs, steps, stage_ckpt / phase, strategy, deadline,
                       budget)
            built.model.save_weights(done)
        for layer in built.model.layers:
            layer.trainable = True
        networks[stage] = built.model
        histories[stage] = _merge_history(stage_ckpt)
    train_seconds = time.time() - t0

    kind = "cascade" if cfg.task == "cascade" else ("two_stage" if view_bundle is not None else "single")
    if kind == "two_stage":
        networks = {"view": view_bundle.networks["view" if view_bundle.kind == "two_stage" else "model"],
                    "model": networks["model"]}
    extra_cfg: dict[str, Any] = {
        "task": task, "arch": cfg.arch,
        "training": {"config": {k: v for k, v in cfg.__dict__.items()}, "seconds": round(train_seconds, 1),
                     "hardware": hardware(), "n_train": len(idx["train"]), "n_val": len(idx["val"]),
                     "n_test": len(idx["test"]), "skipped_files": [str(e) for e in errors],
                     "twin_transforms": list(TWIN_TRANSFORMS),
                     "replicas": strategy.num_replicas_in_sync if strategy is not None else 1},
    }
    if focus is not None:
        extra_cfg["training"]["focus"] = {"layer": last_conv, "weight": cfg.focus_weight,
                                          **focus.report}
    if kind == "two_stage":
        extra_cfg["view_names"] = list(view_bundle.class_names)
        extra_cfg["view_model"] = str(cfg.view_model)
    if kind == "cascade":
        extra_cfg["stage1_classes"] = stages[0][1]
        extra_cfg["stage2_classes"] = stages[1][1]
    bundle_path = save_bundle(out, kind, networks, class_names, pre, last_conv, overwrite=True, **extra_cfg)
    _write_split(out / "split.csv", samples, split, cfg.data)
    write_model_card(out)
    for stage, merged in histories.items():
        if merged is not None:
            shutil.copy(merged, out / ("history.csv" if len(histories) == 1 else f"history_{stage}.csv"))
    shutil.rmtree(ckpt)
    logger.info(f"saved {bundle_path} in {train_seconds / 60:.1f} min")
    return bundle_path


def tf_multiworker_type() -> tuple[type, ...]:
    """MultiWorkerMirroredStrategy's class, or () when TensorFlow is not the backend."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return ()
    import tensorflow as tf

    return (tf.distribute.MultiWorkerMirroredStrategy,)


def _patch_symbolic_build(model, strategy) -> None:
    """Keras 3 (up to 3.15 at least) fails in `fit` under MultiWorkerMirroredStrategy: its symbolic build
    all-reduces the first distributed batch, which collective ops cannot do for a nested batch
    (keras-team/keras#20585). The build needs only shapes, so build from this worker's own first replica."""
    import tensorflow as tf
    from keras import tree

    def build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = build
    _patch_scalar_reduce()


def _patch_scalar_reduce() -> None:
    """The same Keras bug, second half: each step's logs (scalars) are all-reduced with axis=0, which
    fails for 0-d tensors under multi-worker collectives. Reduce scalars with axis=None (a plain mean
    over replicas); everything else goes to Keras' own function. Applied once, only for multi-worker."""
    import tensorflow as tf
    from keras import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "_xai_bt_patch", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return original(values, strategy, reduction)

        def one(v):
            if not (tf.is_tensor(v) or isinstance(v, tf.distribute.DistributedValues)):
                return v
            rank = strategy.experimental_local_results(v)[0].shape.rank if not tf.is_tensor(v) else v.shape.rank
            return strategy.reduce("MEAN", v, axis=0 if rank else None)

        return tree.map_structure(one, values)

    reduce_per_replica._xai_bt_patch = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def _output_folder(cfg: TrainConfig, strategy, resume: bool) -> tuple[Path, bool]:
    """(where this process writes, whether it is the chief). Under MultiWorkerMirroredStrategy every worker
    runs the same training, but only the chief (task 'chief', else worker 0) writes `cfg.out`; the others
    write checkpoints and their copy of the bundle to `.NAME.worker-K` beside it (kept for --resume),
    so workers sharing a file system never write the same file."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type, task_id = (getattr(resolver, "task_type", None), getattr(resolver, "task_id", None))
    jobs = resolver.cluster_spec().jobs if resolver is not None else []
    chief = task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and "chief" not in jobs)
    out = Path(cfg.out)
    if chief:
        return out, True
    private = out.with_name(f".{out.name}.{task_type}-{task_id}")
    if private.exists() and not resume:
        shutil.rmtree(private)
    private.mkdir(parents=True, exist_ok=True)
    return private, False


def init_from_bundle(model, path: str) -> int:
    """Copy weights from a trained bundle's final classifier into `model`, layer by layer where names
    and shapes match (e.g. a two-stage model starting from the plain tumor classifier)."""
    from xai_bt.model.bundle import load_model

    source = {layer.name: layer for layer in load_model(path).model.layers}
    copied = 0
    for layer in model.layers:
        src = source.get(layer.name)
        if src is None or not layer.weights:
            continue
        weights = src.get_weights()
        if [w.shape for w in weights] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(weights)
            copied += 1
    return copied


def _stages(cfg: TrainConfig, class_names: list[str]):
    """(network name, its classes, label mapping) per network to train."""
    if cfg.task != "cascade":
        return [("model", class_names, lambda v: int(v))]
    no = class_names.index("no_tumor")
    types = [c for c in class_names if c != "no_tumor"]
    return [("stage1", ["no_tumor", "tumor"], lambda v: 0 if v == no else 1),
            ("stage2", types, lambda v: None if v == no else types.index(class_names[v]))]


def _merge_history(stage_dir: Path) -> Path | None:
    """Merge the per-phase CSV logs of a stage into one history file (None if nothing was logged)."""
    import csv

    rows = []
    for phase in ("frozen", "fine_tune"):
        f = stage_dir / phase / "history.csv"
        if f.is_file():
            with open(f) as fh:
                rows += [dict(r, phase=phase) for r in csv.DictReader(fh)]
    if not rows:
        return None
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(stage_dir / "history_merged.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, keys)
        w.writeheader()
        w.writerows(rows)
    return stage_dir / "history_merged.csv"


def _write_split(path: Path, samples: Sequence[Sample], split: Sequence[str], root: str) -> None:
    """The split a model was trained on, with paths relative to the data root so it travels."""
    import csv
    import os

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "plane", "split"])
        for s, part in zip(samples, split):
            w.writerow([Path(os.path.relpath(s.path, root)).as_posix(), s.label or "", s.plane or "", part])


def hardware() -> dict[str, Any]:
    """What the run ran on, for the model card."""
    import os

    import keras

    info = {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "keras": keras.__version__,
            "backend": keras.backend.backend(), "accelerator": "none"}
    if keras.backend.backend() == "jax":
        import jax

        devs = jax.devices()
        info["accelerator"] = ", ".join(sorted({getattr(d, "device_kind", d.platform) for d in devs}))
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            info["accelerator"] = f"{len(gpus)} GPU(s)"
    return info
