"""MixUp / CutMix (xai_bt.model.mixing): the pixels and the labels are mixed in the same proportion."""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from xai_bt.model.mixing import cutmix, mix_batches, mixup  # noqa: E402


def _batch(b=6, s=16, k=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (b, s, s, 1)).astype(np.float32)
    labels = np.arange(b) % k
    return tf.constant(x), tf.constant(np.eye(k, dtype=np.float32)[labels]), labels


def test_mixup_blends_pixels_and_labels_with_one_lambda():
    x, y, _ = _batch()
    mx, my = mixup(x, y, 0.4, tf.constant([3, 7], tf.int64))
    mx, my, x, y = (np.asarray(a) for a in (mx, my, x, y))
    # lam from the labels of the first row (its partner, the last row, has another class)
    lam = float(my[0] @ y[0])
    assert 0.0 <= lam <= 1.0
    assert np.allclose(mx, lam * x + (1 - lam) * x[::-1], atol=1e-3)
    assert np.allclose(my.sum(axis=1), 1.0)


def test_cutmix_labels_match_the_share_of_pasted_pixels():
    x, y, _ = _batch()
    partner = np.asarray(x)[::-1]
    for s in range(5):
        mx, my = (np.asarray(a) for a in cutmix(x, y, 1.0, tf.constant([s, 11], tf.int64)))
        from_partner = np.isclose(mx, partner) & ~np.isclose(mx, np.asarray(x))
        share = from_partner[0].mean()
        # the label weight of the partner's class equals the pasted area (one box, same for every scan)
        assert my[0] @ np.asarray(y)[::-1][0] == pytest.approx(share, abs=1e-6)
        assert np.allclose(my.sum(axis=1), 1.0)
        rows, cols = np.nonzero(from_partner[0, :, :, 0])
        if rows.size:  # the pasted region is one rectangle
            assert from_partner[0, rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_mix_batches_gives_soft_labels_new_each_epoch_and_repeats_for_a_seed():
    x = np.random.default_rng(1).uniform(0, 255, (12, 8, 8, 1)).astype(np.float32)
    labels = np.arange(12) % 4
    ds = tf.data.Dataset.from_tensor_slices((x, labels)).batch(4)

    def labels_of(pipeline):
        return np.concatenate([np.asarray(y) for _, y in pipeline])

    mixed = mix_batches(ds, 4, 0.4, 1.0, seed=5)
    first, second = labels_of(mixed), labels_of(mixed)   # two epochs of one pipeline
    assert first.shape == (12, 4) and np.allclose(first.sum(axis=1), 1.0)
    assert not np.allclose(first, second)                 # each epoch draws anew
    assert np.allclose(first, labels_of(mix_batches(ds, 4, 0.4, 1.0, seed=5)))  # a rerun repeats them
    with pytest.raises(ValueError, match="needs a MixUp or a CutMix alpha"):
        mix_batches(ds, 4)
    with pytest.raises(ValueError, match=">= 0"):
        mix_batches(ds, 4, -1.0)
