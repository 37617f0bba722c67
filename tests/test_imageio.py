"""xai_bt.data.decode: every supported encoding decodes to the right gray pixels; every bad file fails clearly."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xai_bt.data.decode import (
    SUPPORTED_SUFFIXES,
    iter_image_files,
    read_image,
    read_mask,
    rescale_to_uint8,
    resize_mask,
)
from xai_bt.data.sample import ImageError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BENCH = DATA / "brain-tumor-mri"
BRISC = DATA / "brisc2025"
needs_data = pytest.mark.skipif(not BENCH.is_dir() or not BRISC.is_dir(), reason="shared data not present")


def _gradient(h: int = 48, w: int = 64, lo: int = 0, hi: int = 255, dtype=np.uint8) -> np.ndarray:
    """Horizontal ramp from lo to hi: distinct values per column, so min-max results are predictable."""
    return np.tile(np.linspace(lo, hi, w), (h, 1)).round().astype(dtype)


def _real_jpeg(mode: str) -> Path:
    """A benchmark JPEG stored in the given PIL mode ("RGB" or "L")."""
    for path in sorted((BENCH / "Training" / "glioma").iterdir()):
        if Image.open(path).mode == mode:
            return path
    pytest.skip(f"no {mode} JPEG in the benchmark")


def _write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **extra) -> Path:
    """Minimal MR DICOM (16-bit unsigned, explicit VR little endian) with a 128-byte preamble + DICM."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# ----------------------------------------------------------------------------------------- good variants
@needs_data
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_real_benchmark_jpeg_matches_pil_gray(mode):
    path = _real_jpeg(mode)
    img = read_image(path)
    assert img.dtype == np.uint8 and img.shape == (224, 224)
    np.testing.assert_array_equal(img, np.asarray(Image.open(path).convert("L")))


@needs_data
def test_bytes_source_equals_path_source():
    path = _real_jpeg("L")
    np.testing.assert_array_equal(read_image(path.read_bytes(), name=path.name), read_image(str(path)))


def test_rgba_is_composited_over_black(tmp_path):
    rgba = np.full((48, 64, 4), 255, np.uint8)
    rgba[:, 32:, 3] = 0        # fully transparent white -> black
    rgba[:16, :32, 3] = 128    # half transparent white -> mid gray
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.shape == (48, 64)
    assert (img[:, 32:] == 0).all() and (img[16:, :32] == 255).all()
    assert abs(int(img[0, 0]) - 128) <= 1


def test_la_is_composited_over_black(tmp_path):
    la = np.stack([_gradient(), np.zeros((48, 64), np.uint8)], axis=-1)
    la[:, :10, 1] = 255
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    img = read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(img[:, :10], la[:, :10, 0])
    assert (img[:, 10:] == 0).all()


def test_palette_image_uses_palette_luma(tmp_path):
    idx = np.zeros((40, 40), np.uint8)
    idx[:, 20:] = 1
    img = Image.fromarray(idx, "P")
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))   # index 1 = pure red
    img.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert (out[:, :20] == 0).all()
    assert (out[:, 20:] == 76).all()   # ITU-R 601 luma of red: 0.299 * 255


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_is_min_max_rescaled(tmp_path, suffix):
    ramp = _gradient(lo=1000, hi=41000, dtype=np.uint16)
    Image.fromarray(ramp).save(tmp_path / f"r{suffix}")
    assert Image.open(tmp_path / f"r{suffix}").mode.startswith("I;16")   # really stored as 16 bit
    img = read_image(tmp_path / f"r{suffix}")
    assert img.dtype == np.uint8 and img.shape == ramp.shape
    assert img.min() == 0 and img.max() == 255
    assert np.abs(img[0].astype(int) - np.linspace(0, 255, 64)).max() <= 1   # plain min-max, no clipping
    np.testing.assert_array_equal(img, rescale_to_uint8(ramp))


def test_float_tiff_with_nan(tmp_path):
    ramp = _gradient(lo=-5, hi=5, dtype=np.float32) * 0.37
    ramp[0, 0] = np.nan
    Image.fromarray(ramp, "F").save(tmp_path / "f.tif")
    img = read_image(tmp_path / "f.tif")
    assert img[0, -1] == 255 and img[1, 0] == 0 and img[0, 0] == 0


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    stored = np.zeros((40, 64), np.uint8)
    stored[:16, :16] = 255                       # bright block at stored top-left
    exif = Image.Exif()
    exif[274] = 6                                # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "e.jpg", exif=exif, quality=95)
    img = read_image(tmp_path / "e.jpg")
    assert img.shape == (64, 40)
    assert img[:16, -16:].mean() > 200 and img[:16, :16].mean() < 50   # now at top-right


def test_bmp_and_mode_1(tmp_path):
    Image.fromarray(_gradient()).save(tmp_path / "g.bmp")
    np.testing.assert_array_equal(read_image(tmp_path / "g.bmp"), _gradient())
    Image.fromarray(_gradient() > 127).save(tmp_path / "b.png")
    assert set(np.unique(read_image(tmp_path / "b.png"))) == {0, 255}


def test_min_size_and_allow_constant_are_parameters(tmp_path):
    Image.fromarray(_gradient(8, 8)).save(tmp_path / "tiny.png")
    assert read_image(tmp_path / "tiny.png", min_size=8).shape == (8, 8)
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(tmp_path / "flat.png")
    assert (read_image(tmp_path / "flat.png", allow_constant=True) == 7).all()


# ------------------------------------------------------------------------------------------------- DICOM
@pytest.mark.parametrize("name", ["scan.dcm", "IM0001"])
def test_dicom_monochrome2_16bit_with_and_without_suffix(tmp_path, name):
    ramp = _gradient(lo=100, hi=3000, dtype=np.uint16)
    path = _write_dicom(tmp_path / name, ramp)
    img = read_image(path)
    np.testing.assert_array_equal(img, rescale_to_uint8(ramp))
    np.testing.assert_array_equal(read_image(path.read_bytes()), img)   # detected by content, not name


def test_dicom_monochrome1_is_inverted(tmp_path):
    ramp = _gradient(lo=0, hi=4000, dtype=np.uint16)
    img = read_image(_write_dicom(tmp_path / "m1.dcm", ramp, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(img, 255 - rescale_to_uint8(ramp))


def test_dicom_rescale_then_window(tmp_path):
    stored = _gradient(lo=0, hi=1000, dtype=np.uint16)          # real value = 2 * stored - 1000
    path = _write_dicom(tmp_path / "w.dcm", stored, RescaleSlope=2, RescaleIntercept=-1000,
                        WindowCenter=0, WindowWidth=1000)        # shows real -500..500
    img = read_image(path)
    real = stored * 2.0 - 1000
    expected = np.clip((real + 500) / 1000, 0, 1) * 255
    assert np.abs(img.astype(float) - expected).max() <= 1
    assert (img[:, real[0] <= -500] == 0).all() and (img[:, real[0] >= 500] == 255).all()


def test_dicom_multiframe_takes_middle_frame(tmp_path):
    frames = np.zeros((3, 40, 40), np.uint16)
    for k in range(3):
        frames[k, :, k * 10:(k + 1) * 10] = 1000   # bright band at a different place per frame
    img = read_image(_write_dicom(tmp_path / "mf.dcm", frames))
    assert (img[:, 10:20] == 255).all() and (img[:, :10] == 0).all()


def test_dicom_without_pixels_fails(tmp_path):
    path = _write_dicom(tmp_path / "np.dcm", _gradient(dtype=np.uint16))
    import pydicom
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ImageError, match="no pixel data"):
        read_image(path)


# --------------------------------------------------------------------------------------------- bad files
def _corrupt_png(tmp_path: Path) -> Path:
    Image.fromarray(_gradient()).save(tmp_path / "corrupt.png")
    data = bytearray((tmp_path / "corrupt.png").read_bytes())
    data[len(data) // 2:len(data) // 2 + 16] = b"\xff" * 16       # scramble the compressed pixel data
    (tmp_path / "corrupt.png").write_bytes(bytes(data))
    return tmp_path / "corrupt.png"


def _truncated_jpeg(tmp_path: Path) -> Path:
    data = _real_jpeg("L").read_bytes() if BENCH.is_dir() else _jpeg_bytes(tmp_path)
    (tmp_path / "half.jpg").write_bytes(data[:len(data) // 2])
    return tmp_path / "half.jpg"


def _jpeg_bytes(tmp_path: Path) -> bytes:
    Image.fromarray(_gradient(224, 224)).save(tmp_path / "full.jpg")
    return (tmp_path / "full.jpg").read_bytes()


BAD_FILES = {
    "random bytes": (lambda d: _write(d / "noise.jpg", os.urandom(5000)), "not an image"),
    "corrupt png": (_corrupt_png, "corrupt"),
    "truncated jpeg": (_truncated_jpeg, "truncated"),
    "empty": (lambda d: _write(d / "empty.png", b""), "empty file"),
    "text as jpg": (lambda d: _write(d / "notes.jpg", b"patient list\n" * 50), "not an image"),
    "directory": (lambda d: _mkdir(d / "folder.jpg"), "folder"),
    "missing": (lambda d: d / "missing.png", "not found"),
    "tiny": (lambda d: _save(d / "tiny.png", _gradient(8, 8)), "too small"),
    "constant": (lambda d: _save(d / "flat.png", np.full((64, 64), 9, np.uint8)), "no contrast"),
    "dcm that is not dicom": (lambda d: _write(d / "fake.dcm", b"hello" * 100), "DICOM"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _save(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_raises_image_error_naming_file(tmp_path, case):
    make, problem = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert path.name in str(info.value)
    assert problem.lower() in info.value.problem.lower()
    assert info.value.path == str(path)


def test_bad_bytes_are_named_by_name():
    with pytest.raises(ImageError, match=r"upload\.jpg: not an image"):
        read_image(b"<html>not a scan</html>" * 20, name="upload.jpg")
    with pytest.raises(ImageError, match="empty file"):
        read_image(b"", name="upload.jpg")


# ------------------------------------------------------------------------------------------------- masks
def test_read_mask_1bit_and_8bit_and_resize(tmp_path):
    mask = np.zeros((40, 60), bool)
    mask[10:20, 30:50] = True
    Image.fromarray(mask).save(tmp_path / "m1.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m8.png")
    for name in ("m1.png", "m8.png"):
        got = read_mask(tmp_path / name)
        assert got.dtype == bool
        np.testing.assert_array_equal(got, mask)
    big = read_mask(tmp_path / "m1.png", shape=(80, 120))
    assert big.shape == (80, 120) and big.sum() == 4 * mask.sum()
    np.testing.assert_array_equal(big[::2, ::2], mask)
    np.testing.assert_array_equal(resize_mask(big, (40, 60)), mask)


@needs_data
def test_read_real_brisc_mask_matches_image():
    mask_path = sorted((BRISC / "masks").iterdir())[0]
    image_path = next((BRISC / "images").glob(f"*/{mask_path.stem}.jpg"))
    mask = read_mask(mask_path)
    assert mask.shape == read_image(image_path).shape and 0 < mask.sum() < mask.size


def test_read_mask_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="missing.png: file not found"):
        read_mask(tmp_path / "missing.png")


# ------------------------------------------------------------------------------------------ file listing
def test_iter_image_files_skips_hidden_and_non_images(tmp_path):
    for rel in ["a.jpg", "b.PNG", "sub/c.tif", "sub/deeper/d.bmp", ".hidden.jpg",
                ".ipynb_checkpoints/a-checkpoint.jpg", "__MACOSX/a.jpg", "notes.txt", "README"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    _write_dicom(tmp_path / "sub" / "IM0001", _gradient(dtype=np.uint16))
    _write_dicom(tmp_path / "1.2.840.10008", _gradient(dtype=np.uint16))
    root = str(tmp_path)
    expected = sorted(os.path.join(root, r) for r in
                      ["a.jpg", "b.PNG", "sub/c.tif", "sub/deeper/d.bmp", "sub/IM0001", "1.2.840.10008"])
    assert iter_image_files([root]) == expected
    assert iter_image_files(root, recursive=False) == sorted(
        os.path.join(root, r) for r in ["a.jpg", "b.PNG", "1.2.840.10008"])
    explicit = os.path.join(root, "notes.txt")                   # named files are kept, to be reported
    assert iter_image_files([explicit, root + "/a.jpg", root + "/a.jpg"]) == sorted([explicit, root + "/a.jpg"])
    assert iter_image_files([tmp_path / "nowhere", root + "/a.jpg"]) == [root + "/a.jpg"]


def test_supported_suffixes_are_lower_case():
    assert {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"} <= set(SUPPORTED_SUFFIXES)
    assert all(s == s.lower() and s.startswith(".") for s in SUPPORTED_SUFFIXES)


def test_rescale_to_uint8_edge_cases():
    assert (rescale_to_uint8(np.full((4, 4), 3.0)) == 0).all()
    assert (rescale_to_uint8(np.full((4, 4), np.nan)) == 0).all()
    np.testing.assert_array_equal(rescale_to_uint8(np.array([-1.0, 0.0, 1.0, np.inf])), [0, 128, 255, 0])


def test_import_does_not_pull_in_tensorflow():
    code = ("import sys, xai_bt.data.decode, xai_bt.data.datasets; "
            "bad = [m for m in ('tensorflow', 'keras', 'pydicom', 'h5py') if m in sys.modules]; "
            "sys.exit(', '.join(bad) or None)")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
