"""Focus-guided training: masks reach the right training scans (mirrored as their twin is), evaluation
scans and their twins never supervise, and the penalty is the share of the class map outside the mask."""
import csv

import keras
import numpy as np
import pytest
from conftest import BENCHMARK
from PIL import Image

from xai_bt.data.sample import Sample
from xai_bt.model.focus import check_focus_head, focus_trainer, match_masks
from xai_bt.model.preprocessing import Preprocessing


def _scans(n: int) -> list[str]:
    if not BENCHMARK.is_dir():
        pytest.skip(f"real data not found at {BENCHMARK}")
    return [str(p) for p in sorted((BENCHMARK / "Training" / "glioma").glob("*.jpg"))[:n]]


def _masked_root(tmp_path, scans: list[str], mirrored: set[int]) -> list[np.ndarray]:
    """A BRISC-layout dataset of copies of `scans` (those in `mirrored` mirrored left-right), each with a
    box mask in its left third; returns the masks as stored."""
    (tmp_path / "images" / "glioma").mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    rows, masks = [], []
    for i, path in enumerate(scans):
        img = np.array(Image.open(path).convert("L"))
        mask = np.zeros(img.shape, np.uint8)
        mask[img.shape[0] // 3: img.shape[0] // 2, img.shape[1] // 8: img.shape[1] // 3] = 255
        if i in mirrored:
            img, mask = img[:, ::-1], mask[:, ::-1]
        name = f"brisc2025_train_{i:05d}_gl_ax_t1"
        Image.fromarray(np.ascontiguousarray(img)).save(tmp_path / "images" / "glioma" / f"{name}.jpg", quality=95)
        Image.fromarray(np.ascontiguousarray(mask)).save(tmp_path / "masks" / f"{name}.png")
        rows.append({"file": f"images/glioma/{name}.jpg", "label": "glioma", "plane": "axial",
                     "mask": f"masks/{name}.png"})
        masks.append(mask > 0)
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["file", "label", "plane", "mask"])
        w.writeheader()
        w.writerows(rows)
    return masks


def test_masks_are_matched_through_mirror_aware_twins(tmp_path):
    scans = _scans(6)
    _masked_root(tmp_path, scans[:5], mirrored={1})       # scan 5 has no masked twin; masked 0-4 do
    pre = Preprocessing(image_size=64, crop_to_head=False)
    train = [Sample(path=p, label="glioma") for p in scans[:3] + scans[5:]]   # 3 and 4 are held out
    fm = match_masks(train, str(tmp_path), pre)
    assert fm.has_mask.tolist() == [True, True, True, False]
    assert fm.report["held_out_for_evaluation"] == 2 and fm.report["by_transform"]["mirror_lr"] == 1
    for i in range(3):   # each mask lies in the left third of its own scan, the mirrored one too
        cols = np.flatnonzero(fm.masks[i].any(axis=0))
        assert cols.max() < 64 // 3 + 2, (i, cols)


def test_twins_of_held_out_scans_never_supervise(tmp_path):
    scans = _scans(2)
    _masked_root(tmp_path, [scans[0], scans[0], scans[1]], mirrored={1})   # masked 0 and 1 are twins
    pre = Preprocessing(image_size=64, crop_to_head=False)
    # scans[0] is trained on, but its masked twins: 0 (plain) and 1 (mirrored) are both twins of the
    # training scan, so neither is held out; scans[1]'s masked copy is held out (not trained on)
    fm = match_masks([Sample(path=scans[0], label="glioma")], str(tmp_path), pre)
    assert fm.report["held_out_for_evaluation"] == 1 and fm.has_mask.tolist() == [True]


def _tiny(hidden: bool = False):
    inp = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(4, 3, strides=4, padding="same", activation="relu", name="last_conv")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if hidden:
        x = keras.layers.Dense(8, name="head_dense")(x)
    logits = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inp, keras.layers.Activation("softmax", name="probabilities")(logits))


def test_focus_head_is_checked():
    with pytest.raises(ValueError, match="global-average-pooling"):
        check_focus_head(_tiny(hidden=True), "last_conv")
    model = _tiny()
    with pytest.raises(ValueError, match="feature map that is pooled"):
        check_focus_head(model, model.layers[0].name)       # the input, not the pooled feature map
    check_focus_head(model, "last_conv")


def test_penalty_is_the_class_map_share_outside_the_mask():
    keras.utils.set_random_seed(0)
    model = _tiny()
    trainer = focus_trainer(model, "last_conv", weight=1.0, augment=False, seed=0)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1)).astype(np.float32)
    mask = np.zeros((2, 32, 32, 1), np.float32)
    mask[0, :16, :16] = 1                     # scan 0: top-left quarter; scan 1: no mask (no penalty)
    y = np.array([1, 2])
    feats = keras.Model(model.inputs, model.get_layer("last_conv").output)(x).numpy()
    cam = np.maximum(np.einsum("nhwc,ck->nhwk", feats, model.get_layer("logits").kernel.numpy()), 0)[0, :, :, 1]
    inside = np.zeros((8, 8), bool)
    inside[:4, :4] = True
    want = cam[~inside].sum() / (cam.sum() + 1e-6)
    loss_ce, penalty, _ = trainer._focus_losses(x, mask, y, False)
    assert float(penalty) == pytest.approx(want, rel=1e-4) and 0 < want < 1
    trainer.compile(optimizer=keras.optimizers.SGD(0.05))
    before = float(trainer._focus_losses(x, mask, y, False)[1])
    for _ in range(20):
        trainer.train_on_batch((x, mask), y)
    after = float(trainer._focus_losses(x, mask, y, False)[1])
    assert after < before                     # training on the penalty moves the map into the mask


def test_label_smoothing_and_weight_averaging_reach_the_focus_trainer():
    """With label smoothing e the trainer's cross-entropy is against (1 - e) one-hot + e / classes, as in
    plain training; an EMA optimizer averages the network's weights through the trainer's custom step."""
    keras.utils.set_random_seed(0)
    model = _tiny()
    x = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 1)).astype(np.float32)
    mask = np.ones((4, 32, 32, 1), np.float32)
    y = np.array([0, 1, 2, 1])
    smooth = focus_trainer(model, "last_conv", weight=1.0, augment=False, seed=0, label_smoothing=0.2)
    loss_ce = float(smooth._focus_losses(x, mask, y, False)[0])
    want = keras.losses.CategoricalCrossentropy(label_smoothing=0.2)(keras.ops.one_hot(y, 3), model(x))
    assert loss_ce == pytest.approx(float(want), rel=1e-4)
    plain = float(focus_trainer(model, "last_conv", 1.0, False, 0)._focus_losses(x, mask, y, False)[0])
    assert plain == pytest.approx(float(keras.losses.SparseCategoricalCrossentropy()(y, model(x))), rel=1e-4)

    smooth.compile(optimizer=keras.optimizers.SGD(0.05, use_ema=True, ema_momentum=0.5))
    start = model.get_layer("logits").kernel.numpy().copy()
    smooth.fit((x, mask), y, epochs=2, verbose=0, callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch=True)])
    averaged = model.get_layer("logits").kernel.numpy()        # the model holds the averaged weights now
    ema = smooth.optimizer._model_variables_moving_average
    assert not np.allclose(averaged, start) and any(
        v.shape == averaged.shape and np.allclose(averaged, v.numpy()) for v in ema)


def test_card_repeats_a_focus_run():
    """The card's command repeats a focus-guided run and says which masks supervised."""
    from xai_bt.model.card import render_model_card

    tc = {"arch": "efficientnet_lite0", "data": "d", "out": "m", "epochs": 2, "init_from": "models/old",
          "focus_masks": "../shared/data/brisc2025", "focus_weight": 3.0, "preprocessing": {"image_size": 160}}
    focus = {"layer": "top_activation", "weight": 3.0, "masked_root": "../shared/data/brisc2025",
             "held_out_for_evaluation": 281, "training_scans_with_mask": 3353, "training_scans": 4851,
             "threshold": 0.99}
    config = {"name": "m", "kind": "single", "arch": "efficientnet_lite0", "class_names": ["a", "b"],
              "preprocessing": {"image_size": 160}, "last_conv_layer": "top_activation",
              "training": {"config": tc, "focus": focus, "notes": ["initialised from an earlier bundle"]}}
    card = render_model_card(config)
    assert "--init-from models/old --focus-masks ../shared/data/brisc2025 --focus-weight 3 " in card
    assert "3353 of 4851 training scans" in card and "281 masked scans" in card
    assert "- **Note**: initialised from an earlier bundle" in card
