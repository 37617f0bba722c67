import cv2
import numpy as np
import pytest

from xai_bt.model.preprocessing import Preprocessing, head_bounding_box


def _head(h=200, w=300):
    """A bright ellipse (the head) off-centre on black, with a bright 'tumor' square inside."""
    img = np.zeros((h, w), np.uint8)
    cv2.ellipse(img, (180, 100), (80, 60), 0, 0, 360, 120, -1)
    img[90:110, 200:220] = 250
    mask = np.zeros_like(img, bool)
    mask[90:110, 200:220] = True
    return img, mask


def test_roundtrip_and_validation():
    pre = Preprocessing(image_size=96, crop_to_head=False, denoise="median", intensity="percentile")
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        Preprocessing.from_dict({**pre.to_dict(), "gamma": 2})
    with pytest.raises(ValueError):
        Preprocessing(denoise="wavelet")


def test_head_box_finds_the_head():
    img, _ = _head()
    y0, y1, x0, x1 = head_bounding_box(img)
    assert 33 <= y0 <= 40 and 160 <= y1 <= 168 and 90 <= x0 <= 100 and 260 <= x1 <= 270


@pytest.mark.parametrize("crop", [True, False])
def test_mask_follows_the_image(crop):
    img, mask = _head()
    pre = Preprocessing(image_size=64, crop_to_head=crop)
    x, m = pre.prepare(img), pre.prepare_mask(mask, img)
    assert x.shape == m.shape == (64, 64) and x.dtype == np.uint8 and m.dtype == bool
    assert m.sum() > 0 and x[m].mean() > 200 and x[~m].mean() < 130


def test_batch_is_model_input():
    img, _ = _head()
    b = Preprocessing(image_size=48).batch([img, img])
    assert b.shape == (2, 48, 48, 1) and b.dtype == np.float32 and b.max() <= 255


def test_blank_image_is_not_cropped_to_nothing():
    img = np.zeros((50, 80), np.uint8)
    assert head_bounding_box(img) == (0, 50, 0, 80)
