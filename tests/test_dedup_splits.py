"""Near-duplicate detection, leakage-free splits, split CSVs, the audit and `python -m xai_bt data`."""
from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xai_bt.cli import data as data_cmd
from xai_bt.data import twins as dedup
from xai_bt.data.sample import CLASS_NAMES, Sample
from xai_bt.data.splits import (
    audit,
    leakage_free,
    make_split,
    max_similarity,
    read_split_csv,
    split_groups,
    split_training,
    split_training_apart_from,
    write_split_csv,
)
from xai_bt.data.twins import (
    best_matches,
    exact_duplicate_groups,
    fingerprints,
    near_duplicate_groups,
    similar_pairs,
    thumbnail,
    thumbnails,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BENCHMARK = DATA / "brain-tumor-mri"


def scene(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """A smooth random uint8 'head' (blobs inside an ellipse) on a black background, like an MRI slice."""
    coarse = Image.fromarray(rng.normal(size=(8, 8)).astype(np.float32))
    img = np.asarray(coarse.resize((size, size), Image.BICUBIC))
    yy, xx = np.mgrid[:size, :size] / (size - 1) - 0.5
    head = (yy / 0.45) ** 2 + (xx / 0.4) ** 2 < 1
    return np.where(head, (img - img.min()) / np.ptp(img) * 230 + 25, 0).astype(np.uint8)


def variant(img: np.ndarray) -> np.ndarray:
    """The same scan shifted by a pixel and brightened: what re-exports of one slice look like."""
    return np.clip(np.roll(img, 1, axis=1).astype(np.float32) * 1.1 + 8, 0, 255).astype(np.uint8)


def mem(img: np.ndarray, i: int, **kw) -> Sample:
    """An in-memory sample (no file, so no cache)."""
    return Sample(path=f"mem/{i}.png", image=img, **kw)


def rotation(n_angles: int, step: float, dim: int = 64) -> np.ndarray:
    """Unit vectors at angles 0, step, 2*step, ... in one plane: r(i, j) = cos((j - i) * step)."""
    e = np.zeros((2, dim), np.float32)
    e[0, 0] = e[1, 1] = 1
    ang = np.arange(n_angles) * step
    return (np.cos(ang)[:, None] * e[0] + np.sin(ang)[:, None] * e[1]).astype(np.float32)


# --------------------------------------------------------------------------------------------- the math
def test_thumbnail_is_centred_unit_norm_and_flat_image_is_zero():
    t = thumbnail(scene(np.random.default_rng(0)))
    assert t.shape == (1024,) and t.dtype == np.float32
    assert abs(t.mean()) < 1e-5 and abs(np.linalg.norm(t) - 1) < 1e-4
    assert not thumbnail(np.full((40, 50), 7, np.uint8)).any()


def test_shifted_brightened_copy_is_duplicate_unrelated_image_is_not():
    rng = np.random.default_rng(1)
    a, b = scene(rng), scene(rng)
    ta, tcopy, tb = thumbnail(a), thumbnail(variant(a)), thumbnail(b)
    assert ta @ tcopy >= 0.99
    assert ta @ tb < 0.95
    assert [(i, j) for i, j, _ in similar_pairs(np.stack([ta, tb, tcopy]))] == [(0, 2)]


def _brute(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """r of every row of a with every row of b, the best over b's 4x4 images as they are, mirrored, flipped
    up-down and turned 180 degrees (written out independently of dedup.transform_thumbnails)."""
    sq = b.reshape(len(b), 4, 4)
    variants = [sq, sq[:, :, ::-1], sq[:, ::-1, :], sq[:, ::-1, ::-1]]
    return np.max([a @ v.reshape(len(b), 16).T for v in variants], axis=0)


def test_similar_pairs_blockwise_matches_brute_force(monkeypatch):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(23, 16)).astype(np.float32)
    a[5] = a[17] = a[2] * 2          # r = 1 with a[2]
    a[11] = a[3] + 0.05 * rng.normal(size=16)
    a[20] = a[8].reshape(4, 4)[:, ::-1].ravel()   # a mirrored twin of a[8]
    a[21] = a[9].reshape(4, 4)[::-1, ::-1].ravel()  # a[9] turned 180 degrees
    a -= a.mean(axis=1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = np.concatenate([a[[3, 9]], a[[8]].reshape(1, 4, 4)[:, ::-1, :].reshape(1, 16),
                        rng.normal(size=(4, 16)).astype(np.float32)])
    b -= b.mean(axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    full = _brute(a, a)
    want = {(i, j) for i in range(23) for j in range(i + 1, 23) if full[i, j] >= 0.95}
    monkeypatch.setattr(dedup, "BLOCK", 4)      # several blocks, boundaries inside duplicate pairs
    got = similar_pairs(a, threshold=0.95)
    assert {(i, j) for i, j, _ in got} == want and {(2, 5), (2, 17), (5, 17), (3, 11), (8, 20), (9, 21)} <= want
    assert all(abs(r - full[i, j]) < 1e-5 for i, j, r in got)
    plain = {(i, j) for i, j, _ in similar_pairs(a, threshold=0.95, transforms=("identity",))}
    assert (8, 20) not in plain and (9, 21) not in plain and (2, 5) in plain
    cross = {(i, j) for i, j, _ in similar_pairs(a, b, threshold=0.95)}
    assert cross == {(i, j) for i in range(23) for j in range(7) if _brute(a, b)[i, j] >= 0.95}
    assert (8, 2) in cross                      # b[2] is a[8] flipped up-down
    r, idx = best_matches(a)
    np.fill_diagonal(full, -np.inf)
    assert np.allclose(r, full.max(axis=1), atol=1e-5)
    assert np.allclose(full[np.arange(23), idx], r, atol=1e-5)


def test_transforms_are_the_flips_of_the_square_image():
    t = np.arange(6 * 9, dtype=np.float32).reshape(6, 9)
    sq = t.reshape(6, 3, 3)
    assert np.array_equal(dedup.transform_thumbnails(t, "identity"), t)
    assert np.array_equal(dedup.transform_thumbnails(t, "mirror_lr"), sq[:, :, ::-1].reshape(6, 9))
    assert np.array_equal(dedup.transform_thumbnails(t, "flip_ud"), sq[:, ::-1].reshape(6, 9))
    assert np.array_equal(dedup.transform_thumbnails(t, "rot180"), np.rot90(sq, 2, (1, 2)).reshape(6, 9))
    with pytest.raises(ValueError, match="unknown transform"):
        dedup.transform_thumbnails(t, "rot90")
    with pytest.raises(ValueError, match="not square"):
        dedup.transform_thumbnails(np.zeros((2, 10), np.float32), "mirror_lr")


def test_mirrored_flipped_and_turned_copies_of_a_scan_are_twins():
    """A left-right mirrored (or up-down flipped, or turned) and brightened copy of a training scan is
    found, although compared as it is it looks like another scan."""
    rng = np.random.default_rng(11)
    train_imgs = [scene(rng) for _ in range(8)]
    train = [mem(img, i, label="glioma", split="train") for i, img in enumerate(train_imgs)]
    copies = [np.fliplr(variant(train_imgs[0])), np.flipud(train_imgs[1]), np.rot90(train_imgs[2], 2)]
    test = [mem(np.ascontiguousarray(c), 100 + i, label="glioma", split="test") for i, c in enumerate(copies)]
    test.append(mem(scene(rng), 110, label="glioma", split="test"))
    thumbs = thumbnails(train + test)
    plain = best_matches(thumbs[8:], thumbs[:8], transforms=("identity",))[0]
    assert (plain[:3] < 0.95).all()             # a plain comparison misses all three
    assert leakage_free(test, train) == [False, False, False, True]
    assert (max_similarity(test, train)[:3] >= 0.99).all()
    report = audit(train + test)
    head = report["headline"]
    assert head["n"] == 3 and head["by_kind"]["identity"] == 0 and head["by_kind"]["mirror_lr"] == 1
    assert head["only_by_kind"] == {"mirror_lr": 1, "flip_ud": 1, "rot180": 1}
    assert sum(head["histogram"]["mirror_lr"]) == 4 and sum(head["histogram"]["any"]) == 4
    text = data_cmd.format_report(report)
    assert "LEAKAGE: 3 of 4 test images" in text and "mirrored left-right: 1 (1 with no plain twin)" in text
    groups = split_groups(train + test)
    assert groups[0] == groups[8] and groups[1] == groups[9] and groups[2] == groups[10]


def test_unreadable_rows_match_nothing():
    t = rotation(3, 0.01)
    t[1] = np.nan
    assert [(i, j) for i, j, _ in similar_pairs(t, threshold=0.9)] == [(0, 2)]
    r, idx = best_matches(t)
    assert np.isnan(r[1]) and idx[1] == -1 and idx[0] == 2
    r, idx = best_matches(t, t[:0])
    assert np.isneginf(r[[0, 2]]).all() and np.isnan(r[1]) and (idx == -1).all()
    assert leakage_free([mem(scene(np.random.default_rng(0)), 0)], []) == [True]


def test_groups_are_transitive():
    t = rotation(4, 0.1)   # neighbours r = 0.995, two apart r = 0.980
    t[3] = rotation(2, 1.5)[1]   # far from all others
    assert t[0] @ t[2] < 0.99
    groups = near_duplicate_groups(t, threshold=0.99)
    assert groups[0] == groups[1] == groups[2] != groups[3]


def test_link_by_unites_shared_keys_only():
    t = np.random.default_rng(3).normal(size=(5, 16)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)     # all unrelated, under every twin transform too
    groups = near_duplicate_groups(t, link_by=["p1", None, "p1", None, "p2"])
    assert groups[0] == groups[2]
    assert len(set(groups.tolist())) == 4
    with pytest.raises(ValueError):
        near_duplicate_groups(t, link_by=["p1"])


# ----------------------------------------------------------------------------------- files and the cache
def write_png(path: Path, img: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return str(path)


def test_fingerprints_cache_bad_files_and_byte_duplicates(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    a = write_png(tmp_path / "a.png", scene(rng))
    copy = tmp_path / "copy.png"
    copy.write_bytes(Path(a).read_bytes())
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    samples = [Sample(a), Sample(str(copy)), Sample(str(bad)), mem(scene(rng), 0)]
    cache = tmp_path / "cache"
    thumbs, digests = fingerprints(samples, cache_dir=cache)
    assert np.isnan(thumbs[2]).all() and digests[2] is None
    assert not np.isnan(np.delete(thumbs, 2, axis=0)).any()
    assert exact_duplicate_groups(digests) == [[0, 1]]
    assert len(list(cache.rglob("*.bin"))) == 2     # the two readable files; never the broken or in-memory one

    import xai_bt.data.datasets

    def no_decoding(sample):
        raise AssertionError(f"{sample.path} decoded although cached")
    with monkeypatch.context() as m:
        m.setattr(xai_bt.data.datasets, "sample_image", no_decoding)
        again, digests2 = fingerprints(samples[:2], cache_dir=cache)
    assert np.array_equal(again, thumbs[:2]) and digests2 == digests[:2]

    write_png(Path(a), scene(rng))                  # changed file: new key, recomputed
    os.utime(a, ns=(1, 1))
    assert not np.allclose(thumbnails(samples[:1], cache_dir=cache)[0], thumbs[0])
    monkeypatch.setenv("XAI_BT_CACHE", str(tmp_path / "env"))
    assert dedup.default_cache_dir() == tmp_path / "env" / "thumbs"


# ------------------------------------------------------------------------------------- splits and audit
def synthetic_dataset(n_scenes: int = 240, seed: int = 0) -> list[Sample]:
    """Scenes with 1-4 near-identical copies each, four classes, and some patients spanning scenes."""
    rng = np.random.default_rng(seed)
    samples = []
    for k in range(n_scenes):
        img = scene(rng)
        label = CLASS_NAMES[k % 4]
        patient = f"P{k // 10}" if k % 5 == 0 else None
        for c in range(rng.integers(1, 5)):
            copy = variant(img) if c == 1 else (img * (1 - 0.1 * c)).astype(np.uint8)   # c = 0: itself
            samples.append(mem(copy, len(samples), label=label, patient_id=patient))
    return samples


def test_make_split_keeps_groups_and_patients_whole_and_classes_balanced():
    samples = synthetic_dataset()
    thumbs = thumbnails(samples)
    dup_groups = near_duplicate_groups(thumbs)
    assert len(set(dup_groups.tolist())) == 240          # every scene's copies are found, nothing more
    groups = split_groups(samples, thumbs=thumbs)
    assert len(set(groups.tolist())) == 240 - 24           # 24 patients with two scenes each
    splits = make_split(samples, (0.7, 0.15, 0.15), seed=1)
    for key in [dup_groups.tolist(), [s.patient_id for s in samples]]:
        sides: dict = {}
        for k, sp in zip(key, splits):
            if k is not None:
                sides.setdefault(k, set()).add(sp)
        assert all(len(v) == 1 for v in sides.values())
    sizes = Counter(splits)
    assert abs(sizes["train"] / len(samples) - 0.7) < 0.05 and min(sizes["val"], sizes["test"]) > 0.1 * len(samples)
    overall = Counter(s.label for s in samples)
    for part in ("train", "val", "test"):
        c = Counter(s.label for s, sp in zip(samples, splits) if sp == part)
        for label in CLASS_NAMES:
            assert abs(c[label] / sizes[part] - overall[label] / len(samples)) < 0.06
    assert splits == make_split(samples, (0.7, 0.15, 0.15), seed=1)
    assert splits != make_split(samples, (0.7, 0.15, 0.15), seed=2)
    train_val = split_training(samples, val_fraction=0.2)
    assert set(train_val) == {"train", "val"} and abs(train_val.count("val") / len(samples) - 0.2) < 0.05
    with pytest.raises(ValueError):
        make_split(samples, (0.7, 0.2, 0.2))


def test_validation_apart_from_pinned_groups():
    """Groups holding a pinned scan (a twin of a test scan) stay in train, whole; validation still gets
    about its share of all scans, from the other groups only."""
    samples = synthetic_dataset()
    groups = split_groups(samples)
    pinned_groups = set(sorted(set(groups.tolist()))[::3])          # a third of the groups
    first = {}
    for i, g in enumerate(groups.tolist()):
        first.setdefault(g, i)
    keep = [i == first[g] and g in pinned_groups for i, g in enumerate(groups.tolist())]  # one scan per group
    parts = split_training_apart_from(samples, keep, val_fraction=0.15, seed=0)
    assert all(p == "train" for p, g in zip(parts, groups.tolist()) if g in pinned_groups)
    sides: dict = {}
    for g, p in zip(groups.tolist(), parts):
        sides.setdefault(g, set()).add(p)
    assert all(len(v) == 1 for v in sides.values())
    assert abs(parts.count("val") / len(samples) - 0.15) < 0.04
    with pytest.raises(ValueError, match="no validation"):
        split_training_apart_from(samples, [True] * len(samples))


def test_split_csv_roundtrip_and_refuses_overwrite(tmp_path):
    samples = [mem(np.zeros((2, 2), np.uint8), i, label="glioma", plane="axial" if i else None,
                   patient_id="P1" if i == 2 else None) for i in range(3)]
    path = tmp_path / "split.csv"
    write_split_csv(path, samples, ["train", "test", "val"], [0, 1, 1])
    assert read_split_csv(path) == [
        {"path": "mem/0.png", "label": "glioma", "split": "train", "group": 0, "patient_id": None, "plane": None},
        {"path": "mem/1.png", "label": "glioma", "split": "test", "group": 1, "patient_id": None, "plane": "axial"},
        {"path": "mem/2.png", "label": "glioma", "split": "val", "group": 1, "patient_id": "P1", "plane": "axial"}]
    assert path.read_text().splitlines()[0] == "path,label,split,group,patient_id,plane"
    with pytest.raises(FileExistsError, match="split.csv"):
        write_split_csv(path, samples, ["test"] * 3, [0, 1, 2])
    write_split_csv(path, samples, ["test"] * 3, [0, 1, 2], overwrite=True)
    assert {r["split"] for r in read_split_csv(path)} == {"test"}


def test_leakage_free_and_audit_count_planted_leaks():
    rng = np.random.default_rng(4)
    train_imgs = [scene(rng) for _ in range(30)]
    train = [mem(img, i, label="glioma", split="train", plane="axial") for i, img in enumerate(train_imgs)]
    test = [mem(variant(train_imgs[i]), 100 + i, label="glioma", split="test", plane="axial") for i in range(5)]
    test.append(mem(train_imgs[7].copy(), 110, label="pituitary", split="test", plane="coronal"))  # byte twin
    test += [mem(scene(rng), 120 + i, label="glioma", split="test") for i in range(6)]
    test.append(mem(scene(rng), 130, label="glioma", split="test", patient_id="P9"))
    train[0].patient_id = "P9"
    free = leakage_free(test, train)
    assert free == [False] * 6 + [True] * 6 + [False]
    assert (max_similarity(test, train)[:6] >= 0.99).all()

    report = audit(train + test, examples=3)
    head = report["headline"]
    assert (head["split"], head["reference"], head["n"], head["of"]) == ("test", "train", 6, 13)
    assert report["across"][0]["pairs"] == 6 and report["exact_duplicates"]["groups"] == 1
    assert report["exact_duplicates"]["label_conflicts"] == 1
    assert report["label_conflicts"]["groups"] == 1 and report["plane_conflicts"]["groups"] == 1
    assert report["patients"] == {"ids": 1, "spanning_splits": 1}
    assert len(report["examples"]) == 3
    assert "LEAKAGE: 6 of 13 test images" in data_cmd.format_report(report)


# ---------------------------------------------------------------------------------------------- the CLI
def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    data_cmd.add_arguments(parser)
    return data_cmd.main(parser.parse_args(list(argv)))


def test_cli_summary_audit_and_split(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XAI_BT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(5)
    root = tmp_path / "bench"
    for k in range(24):
        img = scene(rng)
        folder = ["glioma", "meningioma", "notumor", "pituitary"][k % 4]
        write_png(root / "Training" / folder / f"tr{k}.png", img)
        write_png(root / "Testing" / folder / f"te{k}.png", variant(img) if k < 6 else scene(rng))
    assert run_cli("summary", str(root)) == 0
    assert "48 images" in capsys.readouterr().out
    split_csv = tmp_path / "out" / "split.csv"
    assert run_cli("audit", str(root), "--json", str(tmp_path / "r.json"), "--write-split", str(split_csv),
                   "--fractions", "0.5", "0.25", "0.25") == 0
    out = capsys.readouterr().out
    assert "LEAKAGE: 6 of 24 test images" in out and "near-duplicate pairs across its splits: 0" in out
    assert '"headline"' in (tmp_path / "r.json").read_text() and len(read_split_csv(split_csv)) == 48
    assert run_cli("audit", str(root), "--write-split", str(split_csv)) == 2
    assert "split.csv already exists" in capsys.readouterr().err
    assert run_cli("audit", str(tmp_path / "missing")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


# ------------------------------------------------------------------------------------- the real benchmark
@pytest.mark.skipif(not BENCHMARK.is_dir(), reason="shared benchmark data not present")
def test_real_benchmark_official_split_leaks():
    from xai_bt.data.datasets import load_dataset

    samples = load_dataset(BENCHMARK)           # thumbnails cached in ~/.cache/xai_bt (or $XAI_BT_CACHE)
    report = audit(samples, threshold=0.99)
    head = report["headline"]
    assert (head["split"], head["reference"], head["of"]) == ("test", "train", 1311)
    # the data README: about 500 test scans with a plain twin, 770 with a mirrored one, ~990 with either
    assert 400 < head["by_kind"]["identity"] < 600 and 650 < head["by_kind"]["mirror_lr"] < 850
    assert max(head["by_kind"].values()) < head["n"] < 1311
    assert head["only_by_kind"]["mirror_lr"] > 400
    assert head["n"] < head["by_threshold"]["0.95"] < 1311
    assert not report["unreadable"]
