"""Loaders for the public brain-tumor MRI datasets, each returning `list[Sample]`.

Layouts: the 4-class benchmark (`Training/`, `Testing/`), BRISC 2025 (our `labels.csv` copy or the original
`classification_task/` + `segmentation_task/` download), the figshare .mat files of Cheng et al., and plain
`<class>/` folders. Image files are read lazily (`sample_image`); paths are the given root joined with the
relative path, as strings. Figshare pixels live in .mat files, so those Samples carry `image` and `mask`.
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from xai_bt.data.decode import is_hidden, iter_image_files, read_image, read_mask, rescale_to_uint8, resize_mask
from xai_bt.data.sample import CLASS_NAMES, ImageError, Sample, normalise_label, normalise_plane

#: Layout names accepted by `load_dataset`.
LAYOUTS: tuple[str, ...] = ("benchmark", "brisc", "figshare", "class_folders")
#: figshare `cjdata.label` codes.
FIGSHARE_LABELS: dict[int, str] = {1: "meningioma", 2: "glioma", 3: "pituitary"}
#: Split folder names (lower-case) and the split they stand for.
SPLIT_FOLDERS: dict[str, str] = {"training": "train", "train": "train", "testing": "test", "test": "test",
                                 "validation": "val", "valid": "val", "val": "val"}
_BRISC_NAME = re.compile(
    r"^brisc2025_(?P<split>[a-z]+)_(?P<index>\d+)_(?P<label>gl|me|no|pi)_(?P<plane>ax|co|sa)(?:_\w+)?$",
    re.IGNORECASE)
_MAT_HEADER_TEXT = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: xai_bt.write_figshare_mat HDF5 schema 1.00 ."


# ----------------------------------------------------------------------------------------------- loaders
def load_class_folders(root: str | os.PathLike, split: str | None = None) -> list[Sample]:
    """`ROOT/<class>/*` (any depth below the class folder); every non-hidden subfolder must be a class."""
    samples = []
    for folder in _subfolders(root):
        label = _folder_label(folder)
        samples += [Sample(path=p, label=label, split=split) for p in iter_image_files([folder])]
    return samples


def load_benchmark(root: str | os.PathLike) -> list[Sample]:
    """The 4-class benchmark: `ROOT/{Training,Testing}/<class>/*` -> split "train" / "test".

    Split folders are matched case-insensitively (also `train`, `test`, `val`); hidden files and folders,
    such as the stray `.ipynb_checkpoints/` of many copies, are skipped.
    """
    samples = []
    for folder in _subfolders(root):
        split = SPLIT_FOLDERS.get(os.path.basename(folder).lower())
        if split is not None:
            samples += load_class_folders(folder, split=split)
    return samples


def load_brisc(root: str | os.PathLike) -> list[Sample]:
    """BRISC 2025, either as `labels.csv` (file,label,plane,mask,...) or in the original download layout.

    The split comes from a `split` column or folder if there is one, else from the file name
    (`brisc2025_train_...` -> "train"); class and plane come from the csv or, in the original layout,
    from the file name. Masks are attached as `mask_path` when present.
    """
    csv_path = os.path.join(root, "labels.csv")
    if os.path.isfile(csv_path):
        return _brisc_from_csv(os.fspath(root), csv_path)
    return _brisc_original(os.fspath(root))


def load_figshare(root_or_files: str | os.PathLike | Iterable[str | os.PathLike],
                  lazy: bool = False) -> list[Sample]:
    """The figshare dataset of Cheng et al.: MATLAB v7.3 `.mat` files (a folder, one file, or a list).

    Each Sample gets label, patient_id and, unless `lazy`, `image` (uint8, min-max rescaled from int16 like
    imageio) and `mask` (bool). The full set is ~1.6 GB in memory; with `lazy=True` pixels are read from the
    .mat on demand by `sample_image` / `sample_mask`. `cvind.mat` (the fold indices) is skipped in folders.
    """
    return [_read_figshare(path, with_pixels=not lazy) for path in _mat_files(root_or_files)]


def load_dataset(root: str | os.PathLike, layout: str = "auto") -> list[Sample]:
    """Load any supported dataset; `layout` is "auto" (detect) or one of LAYOUTS.

    Raises ValueError naming the root when it does not exist, no layout matches, or nothing was found.
    """
    if layout == "auto":
        layout, root = detect_layout(root)
    elif layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected 'auto' or one of {', '.join(LAYOUTS)}")
    loader = {"benchmark": load_benchmark, "brisc": load_brisc, "figshare": load_figshare,
              "class_folders": load_class_folders}[layout]
    samples = loader(root)
    if not samples:
        raise ValueError(f"{root}: no images found for layout {layout!r}")
    return samples


def detect_layout(root: str | os.PathLike) -> tuple[str, str]:
    """Return (layout, root) for a dataset folder; a lone wrapper folder (as unzipping leaves) is entered."""
    root = os.fspath(root)
    if os.path.isfile(root) and root.lower().endswith(".mat"):
        return "figshare", root
    if not os.path.isdir(root):
        raise ValueError(f"{root}: no such folder")
    names = {os.path.basename(f).lower() for f in _subfolders(root)}
    if os.path.isfile(os.path.join(root, "labels.csv")) or names & {"classification_task", "segmentation_task"}:
        return "brisc", root
    if names & SPLIT_FOLDERS.keys():
        return "benchmark", root
    if any(_is_class_name(n) for n in names):
        return "class_folders", root
    if _mat_files(root):
        return "figshare", root
    subfolders = _subfolders(root)
    if len(subfolders) == 1 and not iter_image_files([root], recursive=False):
        return detect_layout(subfolders[0])
    raise ValueError(
        f"{root}: no known dataset layout (expected Training/ + Testing/ class folders, BRISC labels.csv or "
        f"classification_task/, figshare *.mat files, or folders named after the classes {', '.join(CLASS_NAMES)})")


# --------------------------------------------------------------------------------------- pixels of a Sample
def sample_image(sample: Sample) -> np.ndarray:
    """The sample's image as 2-D uint8 gray: `sample.image` if set, else decoded from its file."""
    if sample.image is not None:
        return sample.image
    if sample.path.lower().endswith(".mat"):
        return _read_figshare(sample.path, with_pixels=True).image
    return read_image(sample.path)


def sample_mask(sample: Sample, shape: tuple[int, int] | None = None) -> np.ndarray | None:
    """The tumor mask as bool, the same size as the image (or `shape`), or None when the sample has none."""
    if sample.mask is not None:
        mask = np.asarray(sample.mask, dtype=bool)
    elif sample.mask_path:
        mask = read_mask(sample.mask_path)
    elif sample.path.lower().endswith(".mat"):
        mask = _read_figshare(sample.path, with_pixels=True).mask
    else:
        return None
    if mask is None:
        return None
    return resize_mask(mask, tuple(shape) if shape is not None else sample_image(sample).shape)


def summarise(samples: Iterable[Sample]) -> dict:
    """Counts for a loaded dataset: total, by split / label / plane / split x label, masks and patients.

    Missing values are counted under "unknown"; labels follow CLASS_NAMES order.
    """
    samples = list(samples)

    def key(value: str | None) -> str:
        return "unknown" if value is None else value

    by_split_label: dict[str, Counter] = {}
    for s in samples:
        by_split_label.setdefault(key(s.split), Counter())[key(s.label)] += 1
    return {
        "total": len(samples),
        "by_split": _ordered(Counter(key(s.split) for s in samples)),
        "by_label": _ordered(Counter(key(s.label) for s in samples)),
        "by_plane": _ordered(Counter(key(s.plane) for s in samples)),
        "by_split_label": {sp: _ordered(c) for sp, c in sorted(by_split_label.items())},
        "with_mask": sum(s.mask_path is not None or s.mask is not None for s in samples),
        "patients": len({s.patient_id for s in samples if s.patient_id is not None}),
    }


# --------------------------------------------------------------------------------------------- figshare I/O
def write_figshare_mat(path: str | os.PathLike, image: np.ndarray, label_code: int, pid: str,
                       mask: np.ndarray | None = None) -> None:
    """Write one scan in the figshare MATLAB v7.3 layout (HDF5 `cjdata` struct, arrays transposed as MATLAB
    stores them, int16 image, 512-byte MAT header). For tests and examples: it is not a full MAT writer."""
    import h5py  # lazy: only figshare users pay for the import

    with h5py.File(path, "w", userblock_size=512) as f:
        group = f.create_group("cjdata")
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        _put_matlab(group, "image", np.asarray(image, dtype=np.int16).T, "int16")
        _put_matlab(group, "label", np.array([[float(label_code)]]), "double")
        _put_matlab(group, "PID", np.array([[ord(c) for c in pid]], dtype=np.uint16).T, "char")
        if mask is not None:
            _put_matlab(group, "tumorMask", np.asarray(mask, dtype=np.uint8).T, "logical")
    with open(path, "r+b") as fh:
        fh.write(_MAT_HEADER_TEXT.ljust(116) + bytes(8) + b"\x00\x02IM")


def _put_matlab(group, name: str, data: np.ndarray, matlab_class: str) -> None:
    """Create a dataset tagged with the MATLAB_class attribute MATLAB itself writes."""
    group.create_dataset(name, data=data).attrs["MATLAB_class"] = np.bytes_(matlab_class)


def _read_figshare(path: str, with_pixels: bool) -> Sample:
    """One figshare .mat -> Sample (label, patient_id; image and mask if `with_pixels`)."""
    import h5py

    if not os.path.isfile(path):
        raise ImageError(path, "file not found")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise ImageError(path, "not a MATLAB v7.3 (HDF5) .mat file") from None
    with f:
        if "cjdata" not in f or "image" not in f["cjdata"]:
            raise ImageError(path, "no 'cjdata' struct with an image: not a figshare brain-tumor .mat file")
        data = f["cjdata"]
        code = int(np.asarray(data["label"]).ravel()[0]) if "label" in data else None
        if code not in FIGSHARE_LABELS:
            raise ImageError(path, f"unknown figshare label code {code} (expected 1, 2 or 3)")
        pid = "".join(map(chr, np.asarray(data["PID"]).ravel())).strip("\x00 ") if "PID" in data else None
        sample = Sample(path=path, label=FIGSHARE_LABELS[code], patient_id=pid or None,
                        extra={"label_code": code})
        if with_pixels:
            sample.image = rescale_to_uint8(np.asarray(data["image"]).T)
            sample.mask = np.asarray(data["tumorMask"]).T != 0 if "tumorMask" in data else None
    return sample


def _mat_files(root_or_files: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """The .mat files named or contained (recursively, skipping hidden entries and cvind.mat)."""
    if isinstance(root_or_files, (str, os.PathLike)):
        root_or_files = [root_or_files]
    files = []
    for p in map(os.fspath, root_or_files):
        if not os.path.isdir(p):
            files.append(p)
            continue
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
            files += [os.path.join(dirpath, n) for n in sorted(filenames)
                      if n.lower().endswith(".mat") and not is_hidden(n) and n.lower() != "cvind.mat"]
    return files


# ------------------------------------------------------------------------------------------------- BRISC
def _brisc_from_csv(root: str, csv_path: str) -> list[Sample]:
    """Our BRISC copy: one row per image; paths in the csv are relative to the root."""
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"file", "label"} <= rows[0].keys():
        raise ValueError(f"{csv_path}: needs columns 'file' and 'label', found {', '.join(rows[0])}")
    samples = []
    for line, row in enumerate(rows, start=2):
        try:
            samples.append(_brisc_row(root, row))
        except ValueError as exc:
            raise ValueError(f"{csv_path}, line {line}: {exc}") from None
    return samples


def _brisc_row(root: str, row: dict[str, str]) -> Sample:
    """One labels.csv row -> Sample; orig_width / orig_height go to `extra`."""
    split = row.get("split") or _brisc_name_split(row["file"])
    extra = {k: int(row[k]) for k in ("orig_width", "orig_height") if (row.get(k) or "").isdigit()}
    return Sample(path=os.path.join(root, row["file"]), label=normalise_label(row["label"]), split=split,
                  plane=normalise_plane(row["plane"]) if row.get("plane") else None,
                  mask_path=os.path.join(root, row["mask"]) if row.get("mask") else None, extra=extra)


def _brisc_original(root: str) -> list[Sample]:
    """The download layout: classification_task/<split>/<class>/ images (or, if only the segmentation
    part is there, segmentation_task/<split>/images/), masks from segmentation_task/<split>/masks/."""
    masks = {Path(p).stem: p for p, _ in _brisc_files(root, "segmentation_task", "masks")}
    if os.path.isdir(os.path.join(root, "classification_task")):
        images = _brisc_files(root, "classification_task", None)
    else:
        images = _brisc_files(root, "segmentation_task", "images")
    return [_brisc_file_sample(path, split, masks) for path, split in images]


def _brisc_files(root: str, task: str, sub: str | None) -> list[tuple[str, str]]:
    """(file, split) pairs under `root/task/<split>/[sub]`."""
    pairs = []
    for split_dir in _subfolders(os.path.join(root, task)):
        folder = os.path.join(split_dir, sub) if sub else split_dir
        if os.path.isdir(folder):
            split = os.path.basename(split_dir).lower()
            pairs += [(p, SPLIT_FOLDERS.get(split, split)) for p in iter_image_files([folder])]
    return pairs


def _brisc_file_sample(path: str, split: str, masks: dict[str, str]) -> Sample:
    """Class and plane from a `brisc2025_<split>_<index>_<gl|me|no|pi>_<ax|co|sa>_t1` name, else the
    class from the parent folder."""
    stem = Path(path).stem
    match = _BRISC_NAME.match(stem)
    if match:
        label, plane = normalise_label(match["label"]), normalise_plane(match["plane"])
    else:
        label, plane = _folder_label(os.path.dirname(path)), None
    return Sample(path=path, label=label, split=split, plane=plane, mask_path=masks.get(stem))


def _brisc_name_split(file: str) -> str | None:
    """The split written in a BRISC file name (`brisc2025_train_...` -> "train"), if any."""
    match = _BRISC_NAME.match(Path(file).stem)
    return SPLIT_FOLDERS.get(match["split"].lower(), match["split"].lower()) if match else None


# ------------------------------------------------------------------------------------------------ helpers
def _subfolders(root: str | os.PathLike) -> list[str]:
    """Non-hidden subfolders of `root`, sorted, as root-joined strings ([] if root is not a folder)."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        return []
    return sorted(e.path for e in os.scandir(root) if e.is_dir() and not is_hidden(e.name))


def _is_class_name(name: str) -> bool:
    """Whether a folder name is one of the class spellings `normalise_label` knows."""
    try:
        normalise_label(name)
    except ValueError:
        return False
    return True


def _folder_label(folder: str) -> str:
    """Class of a class folder, with an error naming the folder when it is not a class."""
    try:
        return normalise_label(os.path.basename(os.path.normpath(folder)))
    except ValueError as exc:
        raise ValueError(f"{folder}: folder is not a class folder ({exc})") from None


def _ordered(counts: Counter) -> dict[str, int]:
    """Counter -> dict with class names in CLASS_NAMES order first, then the rest sorted."""
    order = {name: i for i, name in enumerate(CLASS_NAMES)}
    return {k: counts[k] for k in sorted(counts, key=lambda k: (order.get(k, len(order)), k))}
