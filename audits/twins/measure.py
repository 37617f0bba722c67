"""Which transforms make near-duplicate twins in the benchmark and in BRISC, and where to put the threshold.

For every query scan (the benchmark's Testing split; BRISC against the benchmark's Training split; BRISC
within itself) this measures the best Pearson r against the reference scans under each transform of the
reference thumbnail:

- the eight flips and rotations of the square (identity, left-right mirror, up-down flip, 90/180/270-degree
  rotations, both transposes);
- shifts of up to 3 thumbnail pixels (about 21 px of a 224 px scan), plain and mirrored;
- zooms (the central 90% / 80% of one scan against the whole other), plain and mirrored;
- rank (Spearman) correlation, which no monotone intensity change alters.

It then counts the queries that a transform finds at r >= t but identity + mirror does not: those are the
twins a plain-or-mirrored check would miss. Writes summary.json, the nearest-neighbour histogram
(nn_r_hist.png / .pdf) and prints a table. Run from the repository root:

    python audits/twins/measure.py --benchmark ../shared/data/brain-tumor-mri --brisc ../shared/data/brisc2025
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from xai_bt.data.datasets import load_dataset, sample_image
from xai_bt.data.twins import TWIN_THRESHOLD, TWIN_TRANSFORMS, thumbnails

HERE = Path(__file__).resolve().parent
SIZE = 32
THRESHOLDS = (0.95, 0.97, 0.98, 0.99)
DIHEDRAL = {
    "identity": lambda t: t, "mirror_lr": lambda t: t[:, :, ::-1], "flip_ud": lambda t: t[:, ::-1, :],
    "rot90": lambda t: np.rot90(t, 1, (1, 2)), "rot180": lambda t: np.rot90(t, 2, (1, 2)),
    "rot270": lambda t: np.rot90(t, 3, (1, 2)), "transpose": lambda t: t.transpose(0, 2, 1),
    "anti_transpose": lambda t: np.rot90(t, 2, (1, 2)).transpose(0, 2, 1),
}


def unit(x: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm (dot = Pearson r)."""
    x = x.reshape(len(x), -1).astype(np.float32)
    x = x - x.mean(axis=1, keepdims=True)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > 1e-6, x / np.maximum(n, 1e-6), 0)


def square(t: np.ndarray) -> np.ndarray:
    return t.reshape(len(t), SIZE, SIZE)


def best_pair(a: np.ndarray, b: np.ndarray, within: bool) -> np.ndarray:
    """Best r of rows of a against rows of b (a and b transformed alike; within: a == b, skip i == i)."""
    out = np.full(len(a), -np.inf, np.float32)
    for s in range(0, len(a), 2048):
        sims = a[s:s + 2048] @ b.T
        if within:
            k = np.arange(min(2048, len(a) - s))
            sims[k, s + k] = -np.inf
        out[s:s + 2048] = sims.max(axis=1)
    return out


def shifted(a: np.ndarray, b: np.ndarray, within: bool, max_shift: int = 3) -> np.ndarray:
    """Best r over shifts: the central window of a against every shifted window of b."""
    a, b = square(a), square(b)
    m = max_shift
    core = unit(a[:, m:SIZE - m, m:SIZE - m])
    out = np.full(len(a), -np.inf, np.float32)
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            if dx == dy == 0:
                continue
            win = unit(b[:, m + dy:SIZE - m + dy, m + dx:SIZE - m + dx])
            out = np.maximum(out, best_pair(core, win, within))
    return out


def crop_thumbs(samples, frac: float) -> np.ndarray:
    """32x32 thumbnails of the central `frac` of each scan (a zoomed view), as xai_bt.data.twins makes them."""
    rows = []
    for s in samples:
        img = np.asarray(sample_image(s), np.float32)
        img = img.mean(axis=2) if img.ndim == 3 else img
        h, w = img.shape
        ch, cw = int(round(h * frac)), int(round(w * frac))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        crop = img[y0:y0 + ch, x0:x0 + cw]
        rows.append(np.array(Image.fromarray(crop).resize((SIZE, SIZE), Image.BILINEAR), np.float32))
    return unit(np.stack(rows))


def ranks(t: np.ndarray) -> np.ndarray:
    """Thumbnails replaced by their pixel ranks: Pearson of ranks = Spearman, blind to monotone intensity maps."""
    from scipy.stats import rankdata

    return unit(rankdata(t, axis=1).astype(np.float32))  # ties (the black background) share their mean rank


def measure(name: str, query, reference, within: bool, crops: bool) -> dict:
    qa, rb = thumbnails(query), (None if within else thumbnails(reference))
    rb_ = qa if within else rb
    per = {}
    for tname, f in DIHEDRAL.items():
        per[tname] = best_pair(qa, unit(f(square(rb_))), within)
    per["shift"] = shifted(qa, rb_, within)
    per["shift_mirror_lr"] = shifted(qa, unit(square(rb_)[:, :, ::-1]), within)
    per["rank_spearman"] = np.maximum(best_pair(ranks(qa), ranks(rb_), within),
                                      best_pair(ranks(qa), ranks(unit(square(rb_)[:, :, ::-1])), within))
    if crops:
        for frac in (0.9, 0.8):
            cq = crop_thumbs(query, frac)
            cr = cq if within else crop_thumbs(reference, frac)
            # zoomed query against the whole reference, and the whole query against the zoomed reference
            # (within one set, row i of both is the same scan: best_pair skips it)
            mirror = unit(square(rb_)[:, :, ::-1])
            z = np.maximum(best_pair(cq, rb_, within), best_pair(qa, cr, within))
            zm = np.maximum(best_pair(cq, mirror, within), best_pair(qa, unit(square(cr)[:, :, ::-1]), within))
            per[f"zoom{int(frac * 100)}"] = z
            per[f"zoom{int(frac * 100)}_mirror_lr"] = zm
    plain_or_mirror = np.maximum(per["identity"], per["mirror_lr"])
    definition = np.max(np.stack([per[t] for t in TWIN_TRANSFORMS]), axis=0)
    out = {"queries": len(qa), "references": len(rb_), "definition": list(TWIN_TRANSFORMS), "by_transform": {}}
    for tname, r in per.items():
        out["by_transform"][tname] = {
            f"{t:g}": {"found": int(np.sum(r >= t)),
                       "missed_by_plain_or_mirror": int(np.sum((r >= t) & (plain_or_mirror < t))),
                       "missed_by_definition": int(np.sum((r >= t) & (definition < t)))}
            for t in THRESHOLDS}
    out["plain_or_mirror"] = {f"{t:g}": int(np.sum(plain_or_mirror >= t)) for t in THRESHOLDS}
    out["definition_found"] = {f"{t:g}": int(np.sum(definition >= t)) for t in THRESHOLDS}
    everything = np.max(np.stack(list(per.values())), axis=0)
    out["any_transform"] = {f"{t:g}": int(np.sum(everything >= t)) for t in THRESHOLDS}
    out["_nn"] = {"identity": per["identity"], "mirror_lr": per["mirror_lr"], "any": definition}
    print(f"\n{name}: {len(qa)} queries against {len(rb_)} references")
    print("  found at r >= t (not found as it is or mirrored / not found by the definition)")
    print(f"  {'transform':18s}" + "".join(f"  r >= {t:<13g}" for t in THRESHOLDS))
    for tname, counts in out["by_transform"].items():
        print(f"  {tname:18s}" + "".join(f"  {c['found']:5d} ({c['missed_by_plain_or_mirror']:3d}/"
                                         f"{c['missed_by_definition']:3d})" for c in counts.values()))
    print(f"  {'plain or mirror':18s}" + "".join(f"  {c:5d}{'':13s}" for c in out["plain_or_mirror"].values()))
    print(f"  {'the definition':18s}" + "".join(f"  {c:5d}{'':13s}" for c in out["definition_found"].values()))
    print(f"  {'any of these':18s}" + "".join(f"  {c:5d}{'':13s}" for c in out["any_transform"].values()))
    return out


def histogram(results: dict, out: Path) -> dict:
    """Nearest-neighbour r (as it is, mirrored, any twin transform) of benchmark test scans against
    Training, in bins of 0.005: the evidence for the threshold. Drawn by the data audit's own plot."""
    from xai_bt.data.splits import histogram as counts
    from xai_bt.plots.evaluation import plot_twin_histogram
    from xai_bt.plots.style import save_figure

    nn = results["benchmark_test_vs_training"]["_nn"]
    edges = [round(0.8 + 0.005 * k, 3) for k in range(41)]
    hist = {"edges": edges, **{k: counts(r, edges) for k, r in nn.items()}}
    fig = plot_twin_histogram(hist, TWIN_THRESHOLD, title="Benchmark Testing scans (n = 1,311): closest Training scan")
    save_figure(fig, out / "nn_r_hist", overwrite=True)
    return hist


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", default="../shared/data/brain-tumor-mri")
    p.add_argument("--brisc", default="../shared/data/brisc2025")
    p.add_argument("--out", default=str(HERE))
    p.add_argument("--no-crops", action="store_true", help="skip the zoom measurement (decodes every scan again)")
    args = p.parse_args()
    bench = load_dataset(args.benchmark)
    brisc = load_dataset(args.brisc)
    train = [s for s in bench if s.split == "train"]
    test = [s for s in bench if s.split == "test"]
    crops = not args.no_crops
    results = {
        "benchmark_test_vs_training": measure("benchmark Testing vs Training", test, train, False, crops),
        "brisc_vs_benchmark_training": measure("BRISC vs benchmark Training", brisc, train, False, crops),
        "brisc_within": measure("BRISC within itself", brisc, brisc, True, crops),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hist = histogram(results, out)
    for r in results.values():
        r.pop("_nn")
    results["nn_histogram_benchmark_test"] = hist
    (out / "summary.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {out / 'summary.json'} and {out / 'nn_r_hist.png'}")


if __name__ == "__main__":
    main()
