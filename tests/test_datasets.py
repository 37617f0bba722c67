"""xai_bt.data.datasets: every layout on real files (counts from data/README.md) and on small fakes built here."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from xai_bt.data.datasets import (
    FIGSHARE_LABELS,
    detect_layout,
    load_benchmark,
    load_brisc,
    load_class_folders,
    load_dataset,
    load_figshare,
    sample_image,
    sample_mask,
    summarise,
    write_figshare_mat,
)
from xai_bt.data.decode import read_image, rescale_to_uint8
from xai_bt.data.sample import CLASS_NAMES, ImageError, Sample

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BENCH = DATA / "brain-tumor-mri"
BRISC = DATA / "brisc2025"
needs_data = pytest.mark.skipif(not BENCH.is_dir() or not BRISC.is_dir(), reason="shared data not present")

BENCH_COUNTS = {  # data/README.md
    "train": {"glioma": 1321, "meningioma": 1339, "no_tumor": 1591, "pituitary": 1457},
    "test": {"glioma": 300, "meningioma": 306, "no_tumor": 405, "pituitary": 300},
}
BRISC_PLANES = {  # data/README.md: plane x label
    "axial": {"glioma": 394, "meningioma": 423, "no_tumor": 352, "pituitary": 426},
    "coronal": {"glioma": 430, "meningioma": 426, "no_tumor": 310, "pituitary": 510},
    "sagittal": {"glioma": 323, "meningioma": 480, "no_tumor": 405, "pituitary": 521},
}


@pytest.fixture(scope="module")
def benchmark() -> list[Sample]:
    if not BENCH.is_dir():
        pytest.skip("shared data not present")
    return load_benchmark(str(BENCH))


@pytest.fixture(scope="module")
def brisc() -> list[Sample]:
    if not BRISC.is_dir():
        pytest.skip("shared data not present")
    return load_brisc(str(BRISC))


# ------------------------------------------------------------------------------------- real benchmark
def test_real_benchmark_counts_and_no_hidden(benchmark):
    assert summarise(benchmark)["by_split_label"] == BENCH_COUNTS
    assert len(benchmark) == 5708 + 1311
    assert not any(".ipynb_checkpoints" in s.path or "checkpoint" in os.path.basename(s.path)
                   for s in benchmark)
    assert all(s.path.startswith(str(BENCH) + os.sep) and os.path.isfile(s.path) for s in benchmark[::500])
    assert {s.label for s in benchmark} == set(CLASS_NAMES)


def test_real_benchmark_test_split_is_from_testing_folder(benchmark):
    for s in benchmark[::300]:
        assert (s.split == "test") == (f"{os.sep}Testing{os.sep}" in s.path)
        expected = "no_tumor" if f"{os.sep}notumor{os.sep}" in s.path else s.path.split(os.sep)[-2]
        assert s.label == expected


def test_sample_image_and_mask_for_plain_files(benchmark):
    s = benchmark[0]
    img = sample_image(s)
    assert img.dtype == np.uint8 and img.shape == (224, 224)
    assert sample_mask(s) is None


# ----------------------------------------------------------------------------------------- real BRISC
def test_real_brisc_csv(brisc):
    summary = summarise(brisc)
    assert summary["total"] == 5000 and summary["with_mask"] == 3933
    assert summary["by_split"] == {"train": 5000}           # from the brisc2025_train_... file names
    got = {p: {} for p in BRISC_PLANES}
    for s in brisc:
        got[s.plane][s.label] = got[s.plane].get(s.label, 0) + 1
    assert got == BRISC_PLANES
    assert all((s.mask_path is None) == (s.label == "no_tumor") for s in brisc)
    assert brisc[0].extra == {"orig_width": 512, "orig_height": 512}


def test_real_brisc_masks_line_up(brisc):
    for s in [x for x in brisc if x.mask_path][::800]:
        img, mask = sample_image(s), sample_mask(s)
        assert mask.dtype == bool and mask.shape == img.shape and 0 < mask.sum() < mask.size
        # the tumor is contrast-enhanced: on average brighter than the rest of the slice
        assert img[mask].mean() > img[~mask].mean()


def _fake_original_brisc(tmp_path: Path, brisc: list[Sample]) -> Path:
    """Original download layout from two real files per class, one of each moved to a fake test split."""
    root = tmp_path / "BRISC"
    for label in CLASS_NAMES:
        for k, s in enumerate([x for x in brisc if x.label == label][:2]):
            split = "train" if k == 0 else "test"
            stem = Path(s.path).stem.replace("_train_", f"_{split}_")
            dest = root / "classification_task" / split / label / f"{stem}.jpg"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(s.path, dest)
            if s.mask_path:
                for sub, src, ext in (("images", s.path, ".jpg"), ("masks", s.mask_path, ".png")):
                    seg = root / "segmentation_task" / split / sub / f"{stem}{ext}"
                    seg.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(src, seg)
    return root


def test_fake_original_brisc_layout(tmp_path, brisc):
    root = _fake_original_brisc(tmp_path, brisc)
    samples = load_dataset(root)
    assert detect_layout(root) == ("brisc", str(root))
    assert len(samples) == 8
    assert summarise(samples)["by_split_label"] == {sp: {c: 1 for c in CLASS_NAMES} for sp in ("test", "train")}
    planes = {Path(s.path).stem.replace("_test_", "_train_"): s.plane for s in brisc}
    for s in samples:
        stem = Path(s.path).stem
        assert s.split == stem.split("_")[1] == Path(s.path).parts[-3]
        assert s.plane == planes[stem.replace("_test_", "_train_")]
        if s.label == "no_tumor":
            assert s.mask_path is None
        else:
            assert s.mask_path == str(root / "segmentation_task" / s.split / "masks" / f"{stem}.png")
            assert sample_mask(s).shape == sample_image(s).shape


def test_fake_brisc_segmentation_only(tmp_path, brisc):
    root = _fake_original_brisc(tmp_path, brisc)
    shutil.rmtree(root / "classification_task")
    samples = load_brisc(root)
    assert len(samples) == 6 and "no_tumor" not in {s.label for s in samples}
    assert all(s.mask_path and f"{os.sep}images{os.sep}" in s.path for s in samples)


def test_brisc_class_from_file_name_not_folder(tmp_path):
    folder = tmp_path / "classification_task" / "test" / "glioma"
    folder.mkdir(parents=True)
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1))).save(folder / "brisc2025_test_00007_pi_sa_t1.jpg")
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1))).save(folder / "scan.jpg")
    by_name = {Path(s.path).name: s for s in load_brisc(tmp_path)}
    assert (by_name["brisc2025_test_00007_pi_sa_t1.jpg"].label, by_name["brisc2025_test_00007_pi_sa_t1.jpg"].plane) \
        == ("pituitary", "sagittal")
    assert (by_name["scan.jpg"].label, by_name["scan.jpg"].plane, by_name["scan.jpg"].split) == ("glioma", None, "test")


def test_brisc_csv_bad_row_names_file_and_line(tmp_path):
    (tmp_path / "labels.csv").write_text("file,label,plane,mask\na.jpg,glioma,axial,\nb.jpg,glioma,oblique,\n")
    with pytest.raises(ValueError, match=r"labels\.csv, line 3: unknown plane 'oblique'"):
        load_brisc(tmp_path)
    (tmp_path / "labels.csv").write_text("path,class\na.jpg,glioma\n")
    with pytest.raises(ValueError, match="needs columns 'file' and 'label'"):
        load_brisc(tmp_path)


# -------------------------------------------------------------------------------------------- figshare
def _scan(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A non-square int16 scan (so a missed transpose shows) and a rectangular mask."""
    rng = np.random.default_rng(seed)
    image = rng.integers(-50, 3000, size=(h, w)).astype(np.int16)
    mask = np.zeros((h, w), bool)
    mask[5:15, 10:30] = True
    return image, mask


@pytest.fixture()
def figshare_dir(tmp_path) -> tuple[Path, dict[str, tuple]]:
    folder = tmp_path / "brainTumorDataPublic_1-766"
    folder.mkdir()
    truth = {}
    for i, code in enumerate([1, 2, 3], start=1):
        image, mask = _scan(40, 56, i)
        write_figshare_mat(folder / f"{i}.mat", image, code, f"10036{i}", mask)
        truth[str(folder / f"{i}.mat")] = (image, mask, FIGSHARE_LABELS[code], f"10036{i}")
    (tmp_path / "cvind.mat").write_bytes(b"MATLAB 5.0 MAT-file")   # fold indices: not a scan
    (folder / ".hidden.mat").write_bytes(b"junk")
    return tmp_path, truth


def test_figshare_writer_mimics_matlab_layout(tmp_path):
    image, mask = _scan(40, 56, 0)
    write_figshare_mat(tmp_path / "1.mat", image, 2, "MR-042", mask)
    assert (tmp_path / "1.mat").read_bytes()[:10] == b"MATLAB 7.3"
    with h5py.File(tmp_path / "1.mat", "r") as f:
        cj = f["cjdata"]
        assert cj["image"].shape == (56, 40) and cj["image"].dtype == np.int16
        assert cj["PID"].dtype == np.uint16 and cj["tumorMask"].shape == (56, 40)
        assert float(np.asarray(cj["label"]).ravel()[0]) == 2.0


def test_load_figshare_folder(figshare_dir):
    root, truth = figshare_dir
    samples = load_figshare(root)
    assert [s.path for s in samples] == sorted(truth)
    for s in samples:
        image, mask, label, pid = truth[s.path]
        assert (s.label, s.patient_id, s.split) == (label, pid, None)
        assert s.image.dtype == np.uint8 and s.image.shape == (40, 56)
        np.testing.assert_array_equal(s.image, rescale_to_uint8(image))
        np.testing.assert_array_equal(s.mask, mask)
        np.testing.assert_array_equal(sample_image(s), s.image)
        np.testing.assert_array_equal(sample_mask(s), mask)
    assert summarise(samples)["patients"] == 3


def test_load_figshare_lazy_and_single_file(figshare_dir):
    root, truth = figshare_dir
    path = sorted(truth)[1]
    (lazy,) = load_figshare(path, lazy=True)
    assert lazy.image is None and lazy.mask is None and lazy.label == "glioma"
    np.testing.assert_array_equal(sample_image(lazy), rescale_to_uint8(truth[path][0]))
    np.testing.assert_array_equal(sample_mask(lazy), truth[path][1])
    assert load_dataset(path)[0].patient_id == truth[path][3]


def test_load_figshare_bad_files(tmp_path):
    with pytest.raises(ImageError, match=r"gone\.mat: file not found"):
        load_figshare([tmp_path / "gone.mat"])
    (tmp_path / "text.mat").write_text("not hdf5")
    with pytest.raises(ImageError, match=r"text\.mat: not a MATLAB v7\.3"):
        load_figshare(tmp_path / "text.mat")
    with h5py.File(tmp_path / "other.mat", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ImageError, match=r"other\.mat: no 'cjdata'"):
        load_figshare([tmp_path / "other.mat"])
    write_figshare_mat(tmp_path / "code9.mat", np.ones((4, 4)), 9, "1")
    with pytest.raises(ImageError, match="label code 9"):
        load_figshare(tmp_path / "code9.mat")


# ------------------------------------------------------------------------------- class folders and auto
def _class_folders(root: Path, names: list[str], per_class: int = 2) -> Path:
    """`root/<name>/` folders each holding real benchmark images, plus hidden entries that must be skipped."""
    if not BENCH.is_dir():
        pytest.skip("shared data not present")
    for name in names:
        (root / name).mkdir(parents=True)
        src_dir = BENCH / "Testing" / ("notumor" if name.lower() in ("notumor", "no_tumor", "normal") else name.lower())
        for src in sorted(f for f in src_dir.iterdir() if f.is_file())[:per_class]:
            shutil.copy(src, root / name / src.name)
        (root / name / ".DS_Store").write_bytes(b"x")
    (root / ".ipynb_checkpoints").mkdir()
    shutil.copy(next((root / names[0]).glob("*.jpg")), root / ".ipynb_checkpoints" / "x-checkpoint.jpg")
    return root


def test_load_class_folders(tmp_path):
    root = _class_folders(tmp_path / "mine", ["Glioma", "normal", "pituitary"])
    samples = load_class_folders(root)
    assert summarise(samples)["by_label"] == {"glioma": 2, "no_tumor": 2, "pituitary": 2}
    assert all(s.split is None and s.path.startswith(str(root)) for s in samples)
    assert detect_layout(root) == ("class_folders", str(root))
    (root / "misc").mkdir()
    with pytest.raises(ValueError, match="misc: folder is not a class folder"):
        load_class_folders(root)


@needs_data
def test_load_dataset_detects_real_layouts():
    assert detect_layout(BENCH) == ("benchmark", str(BENCH))
    assert detect_layout(BRISC) == ("brisc", str(BRISC))
    assert len(load_dataset(BRISC, layout="brisc")) == 5000


def test_load_dataset_enters_lone_wrapper_folder(tmp_path, figshare_dir):
    root, truth = figshare_dir
    assert detect_layout(root)[0] == "figshare" and len(load_dataset(root)) == 3
    wrapped = _class_folders(tmp_path / "archive" / "Brain Tumor", ["glioma", "meningioma"])
    (wrapped / "Training").mkdir()   # makes it a split layout one level down
    shutil.move(str(wrapped / "glioma"), str(wrapped / "Training" / "glioma"))
    shutil.move(str(wrapped / "meningioma"), str(wrapped / "Training" / "meningioma"))
    layout, found = detect_layout(tmp_path / "archive")
    assert (layout, found) == ("benchmark", str(wrapped))
    assert summarise(load_dataset(tmp_path / "archive"))["by_split_label"] == {"train": {"glioma": 2, "meningioma": 2}}


def test_load_dataset_errors_name_the_root(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a").mkdir()
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(ValueError, match=r"empty: no known dataset layout"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="nowhere: no such folder"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "Training" / "glioma").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        load_dataset(tmp_path)
    with pytest.raises(ValueError, match="unknown layout"):
        load_dataset(tmp_path, layout="kaggle")


def test_summarise_counts():
    samples = [Sample("a", "glioma", "train", "axial", mask_path="m"), Sample("b", "no_tumor", "train"),
               Sample("c", "glioma", None, patient_id="p1"), Sample("d", "glioma", "test", patient_id="p1")]
    assert summarise(samples) == {
        "total": 4,
        "by_split": {"test": 1, "train": 2, "unknown": 1},
        "by_label": {"glioma": 3, "no_tumor": 1},
        "by_plane": {"axial": 1, "unknown": 3},
        "by_split_label": {"test": {"glioma": 1}, "train": {"glioma": 1, "no_tumor": 1}, "unknown": {"glioma": 1}},
        "with_mask": 1,
        "patients": 1,
    }


def test_sample_mask_resizes_to_image(tmp_path):
    image = np.tile(np.arange(64, dtype=np.uint8), (48, 1))
    Image.fromarray(image).save(tmp_path / "x.png")
    mask = np.zeros((24, 32), bool)
    mask[:12, :16] = True
    Image.fromarray(mask).save(tmp_path / "x_mask.png")
    s = Sample(str(tmp_path / "x.png"), "glioma", mask_path=str(tmp_path / "x_mask.png"))
    got = sample_mask(s)
    assert got.shape == (48, 64) and got[:24, :32].all() and not got[24:].any() and not got[:, 32:].any()
    assert sample_mask(s, shape=(24, 32)).sum() == mask.sum()
    np.testing.assert_array_equal(sample_image(s), read_image(tmp_path / "x.png"))
