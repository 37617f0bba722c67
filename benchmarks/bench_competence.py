"""Competence warnings measured: how often real scans get one (false alarms), how often images unlike the
training scans get one (detection), and what the model does per modality of the benchmark's scans.

    python benchmarks/bench_competence.py [--model models/default] [--brisc 1000] [--seed 1] [--scores] [--write]

Real scans: all 1,311 official test scans of the 4-class benchmark, a stratified random subset of BRISC 2025
(other files of the same kind of contrast-T1 slices) and, for the model-independent image checks, the
5,708 Training scans their thresholds come from. Out-of-distribution images are made here, without internet,
and written to files that go through `predict_files`, the path `python -m xai_bt predict` takes: skimage
photos (colour and grey, whole and random crops), rendered text and matplotlib charts, noise, drawn shapes,
blank images, and corruptions of real test scans (inverted, turned 90 degrees, heavy and mild JPEG and blur).
`--seed` picks the crops, texts, charts and scans (the thresholds were chosen looking at seed 0; report
another). The modality part labels CT-like slices with a skull-rim statistic (`ct_like`), checked by eye, and
reads by-eye labels of a random sample of no-tumor test scans from `competence_modality.csv`. `--scores`
adds the comparison of scores (energy, max logit, max probability, the feature distance with and without its
projection), which needs the features of every training scan (minutes). `--write` writes
`benchmarks/competence.md`.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

DATA = ROOT.parent / "shared" / "data"
BENCHMARK = DATA / "brain-tumor-mri"
BRISC = DATA / "brisc2025"
LABELS = Path(__file__).with_name("competence_modality.csv")
OUT = Path(__file__).with_name("competence.md")
CLASSES = ("glioma", "meningioma", "no_tumor", "pituitary")


# --------------------------------------------------------------------------------------------- OOD images
def _figure_rgb(fig) -> np.ndarray:
    """A matplotlib figure rendered to RGB pixels, as a screenshot or an exported PNG would hold it."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def _crops(img: np.ndarray, rng, n: int) -> list[np.ndarray]:
    """`n` random crops of half to all of each side."""
    h, w = img.shape[:2]
    out = []
    for _ in range(n):
        f = rng.uniform(0.5, 1.0)
        ch, cw = int(h * f), int(w * f)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out.append(np.ascontiguousarray(img[y:y + ch, x:x + cw]))
    return out


def _uint8(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype == bool or (img.dtype != np.uint8 and img.max() <= 1):
        return (img.astype(np.float64) * 255).astype(np.uint8)
    return img.astype(np.uint8)


def photos(rng, colour: bool) -> list[tuple[str, np.ndarray]]:
    """skimage's sample photos, whole and in 3 random crops; `colour=False`: grey photos and grey versions."""
    import cv2
    import skimage.data as sd

    names = (["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
              "colorwheel", "logo"] if colour else
             ["camera", "moon", "coins", "brick", "grass", "gravel", "cell", "clock", "horse",
              "astronaut", "chelsea", "coffee", "rocket", "retina"])
    out = []
    for name in names:
        img = _uint8(getattr(sd, name)())
        if img.ndim == 3 and not colour:
            img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY)
        out += [(name, img)] + [(f"{name} crop {i}", c) for i, c in enumerate(_crops(img, rng, 3))]
    return out


WORDS = ("the quick brown fox jumps over the lazy dog lorem ipsum dolor sit amet consectetur patient report "
         "findings impression MRI brain scan axial contrast no acute abnormality").split()


def text_images(rng) -> list[tuple[str, np.ndarray]]:
    """skimage's page and text, and rendered text: black on white, white on black, grey on grey."""
    import skimage.data as sd
    from matplotlib.figure import Figure

    out = [("page", sd.page()), ("text", sd.text())]
    colours = [("white", "black"), ("black", "white"), ("0.8", "0.2")]
    for i in range(14):
        bg, fg = colours[i % 3]
        fig = Figure(figsize=(float(rng.uniform(2.5, 4)), float(rng.uniform(2.5, 4))), dpi=100, facecolor=bg)
        for k in range(int(rng.integers(6, 14))):
            fig.text(0.04, 0.94 - k * 0.07, " ".join(rng.choice(WORDS, int(rng.integers(3, 7)))), color=fg,
                     fontsize=int(rng.integers(7, 13)), family=["serif", "sans-serif", "monospace"][i % 3])
        out.append((f"rendered text {i} ({fg} on {bg})", _figure_rgb(fig)))
    return out


def charts(rng) -> list[tuple[str, np.ndarray]]:
    """matplotlib charts of random data: line, bar, scatter, histogram, pie, box, image map; light and dark."""
    import matplotlib.style
    from matplotlib.figure import Figure

    kinds = ("line", "bar", "scatter", "hist", "pie", "box", "imshow", "area")
    out = []
    for i in range(24):
        kind, style = kinds[i % len(kinds)], ("dark_background" if i % 4 == 3 else "default")
        with matplotlib.style.context(style):
            fig = Figure(figsize=(float(rng.uniform(3, 5)), float(rng.uniform(2.2, 3.5))), dpi=100)
            ax = fig.subplots()
            x = np.arange(40)
            if kind == "line":
                for _ in range(int(rng.integers(1, 4))):
                    ax.plot(x, np.cumsum(rng.normal(size=40)))
            elif kind == "bar":
                ax.bar(["a", "b", "c", "d", "e"], rng.uniform(1, 5, 5))
            elif kind == "scatter":
                ax.scatter(rng.normal(size=100), rng.normal(size=100), s=6)
            elif kind == "hist":
                ax.hist(rng.normal(size=400), bins=25)
            elif kind == "pie":
                ax.pie(rng.uniform(1, 3, 5))
            elif kind == "box":
                ax.boxplot([rng.normal(size=50) for _ in range(4)])
            elif kind == "imshow":
                ax.imshow(rng.normal(size=(12, 12)), cmap=["viridis", "gray", "magma"][i % 3])
            else:
                ax.fill_between(x, np.cumsum(rng.uniform(0, 1, 40)), alpha=0.6)
            ax.set_title(f"{kind} of run {i}")
        out.append((f"{kind} chart {i}{' (dark)' if style != 'default' else ''}", _figure_rgb(fig)))
    return out


def noise(rng) -> list[tuple[str, np.ndarray]]:
    """Gaussian, uniform, salt-and-pepper and colour noise; smoothed (cloud-like) noise too."""
    import cv2

    out = []
    for i in range(4):
        out.append((f"gaussian {i}", np.clip(rng.normal(rng.uniform(40, 200), rng.uniform(15, 70), (224, 224)),
                                            0, 255).astype(np.uint8)))
        out.append((f"uniform {i}", rng.integers(0, 256, (int(rng.integers(128, 400)),) * 2, dtype=np.uint8)))
        sp = np.where(rng.random((224, 224)) < rng.uniform(0.05, 0.5), 255, 0).astype(np.uint8)
        out.append((f"salt and pepper {i}", sp))
        out.append((f"colour {i}", rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)))
        smooth = cv2.GaussianBlur(rng.normal(0, 1, (224, 224)), (0, 0), float(rng.uniform(2, 6)))
        out.append((f"smoothed {i}", cv2.normalize(smooth, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)))
    return out


def shapes(rng) -> list[tuple[str, np.ndarray]]:
    """Filled and outlined circles, rectangles and ellipses on black, white or grey; a head-like drawn
    ellipse; skimage's Shepp-Logan phantom (a drawn CT-like head)."""
    import cv2
    import skimage.data as sd

    out = []
    for i in range(18):
        bg = (0, 255, 128)[i % 3]
        img = np.full((224, 224), bg, np.uint8)
        for _ in range(int(rng.integers(1, 6))):
            c = int(rng.integers(40, 240))
            cx, cy = (int(v) for v in rng.integers(40, 184, 2))
            kind, fill = int(rng.integers(0, 3)), (-1 if rng.random() < 0.7 else 3)
            if kind == 0:
                cv2.circle(img, (cx, cy), int(rng.integers(15, 70)), c, fill)
            elif kind == 1:
                cv2.rectangle(img, (cx - 40, cy - 30), (cx + int(rng.integers(10, 50)), cy + 30), c, fill)
            else:
                cv2.ellipse(img, (cx, cy), (int(rng.integers(20, 90)), int(rng.integers(20, 100))),
                            float(rng.integers(0, 180)), 0, 360, c, fill)
        out.append((f"shapes {i} on {('black', 'white', 'grey')[i % 3]}", img))
    head = np.zeros((224, 224), np.uint8)
    cv2.ellipse(head, (112, 112), (80, 95), 0, 0, 360, 110, -1)
    cv2.ellipse(head, (112, 112), (80, 95), 0, 0, 360, 220, 6)
    out.append(("head-like ellipse", head))
    out.append(("Shepp-Logan phantom", _uint8(sd.shepp_logan_phantom())))
    return out


def blanks() -> list[tuple[str, np.ndarray]]:
    """Constant images (the decoder refuses them), and nearly constant ones."""
    dot = np.zeros((224, 224), np.uint8)
    dot[100:104, 100:104] = 255
    lines = np.full((224, 224), 200, np.uint8)
    lines[::37, :] = 196
    return [("black", np.zeros((224, 224), np.uint8)), ("white", np.full((224, 224), 255, np.uint8)),
            ("grey", np.full((224, 224), 128, np.uint8)), ("black with a dot", dot), ("grey with faint lines", lines)]


def corruptions(grays: list[tuple[str, np.ndarray]], rng) -> dict[str, list[tuple[str, np.ndarray, int]]]:
    """Real test scans inverted, turned 90 degrees, JPEG-compressed (quality 2-5 heavy, 10-20 mild) and
    blurred (sigma 4-8 heavy, 1.5-2.5 mild); the int is the JPEG quality to save with (0: lossless PNG)."""
    import cv2

    out: dict[str, list[tuple[str, np.ndarray, int]]] = defaultdict(list)
    for name, g in grays:
        out["inverted scan"].append((name, 255 - g, 0))
        out["scan turned 90 degrees"].append((name, np.ascontiguousarray(np.rot90(g, int(rng.choice([1, 3])))), 0))
        out["scan, heavy JPEG (q 2-5)"].append((name, g, int(rng.integers(2, 6))))
        out["scan, heavy blur (sigma 4-8)"].append((name, cv2.GaussianBlur(g, (0, 0), float(rng.uniform(4, 8))), 0))
        out["scan, mild JPEG (q 10-20)"].append((name, g, int(rng.integers(10, 21))))
        out["scan, mild blur (sigma 1.5-2.5)"].append((name, cv2.GaussianBlur(g, (0, 0), float(rng.uniform(1.5, 2.5))), 0))
    return out


#: categories a competence warning should fire on; the others are reported, not targeted
TARGETED = ("photo, colour", "photo, grey", "text", "chart", "noise", "drawn shapes", "blank", "inverted scan",
            "scan, heavy JPEG (q 2-5)", "scan, heavy blur (sigma 4-8)")


def ood_files(folder: Path, seed: int, test_paths: list[str], n_scans: int) -> list[tuple[str, str]]:
    """Write every constructed image to `folder`; (category, file) pairs, in category order."""
    from PIL import Image

    from xai_bt.data.decode import read_image

    rng = np.random.default_rng(seed)
    groups: list[tuple[str, list[tuple[str, np.ndarray, int]]]] = [
        ("photo, colour", [(n, a, 0) for n, a in photos(rng, True)]),
        ("photo, grey", [(n, a, 0) for n, a in photos(rng, False)]),
        ("text", [(n, a, 0) for n, a in text_images(rng)]),
        ("chart", [(n, a, 0) for n, a in charts(rng)]),
        ("noise", [(n, a, 0) for n, a in noise(rng)]),
        ("drawn shapes", [(n, a, 0) for n, a in shapes(rng)]),
        ("blank", [(n, a, 0) for n, a in blanks()]),
    ]
    picked = [test_paths[i] for i in rng.permutation(len(test_paths))[:n_scans]]
    groups += list(corruptions([(Path(p).name, read_image(p)) for p in picked], rng).items())
    out = []
    for category, items in groups:
        for i, (name, img, quality) in enumerate(items):
            stem = f"{len(out):04d}"
            path = folder / (f"{stem}.jpg" if quality else f"{stem}.png")
            Image.fromarray(img).save(path, **({"quality": quality} if quality else {}))
            out.append((category, str(path)))
    return out


# --------------------------------------------------------------------------------------------- running
def check_name(warning: str, bundle) -> str:
    """Which check a warning sentence comes from."""
    from xai_bt.model import competence

    for c in competence.IMAGE_CHECKS:
        if warning == competence.PREFIX + c.message:
            return c.name
    return "features"


def predict(bundle, files: list[str]) -> dict[str, dict]:
    """path -> its `predict_files` row (a result with warnings, or a failure with an error)."""
    from xai_bt.io.predict_files import predict_files

    result = predict_files(bundle, files, batch_size=32)
    return {r["path"]: r for r in result.results + result.failures}


def warned(row: dict) -> bool:
    """A scan is flagged when it got a warning, or the decoder refused it (a blank image)."""
    return "error" in row or bool(row.get("warnings"))


def real_sets(brisc_n: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    """(path, class) of the official test scans and of a stratified random BRISC subset."""
    from xai_bt.data.datasets import load_dataset

    test = [(s.path, s.label) for s in load_dataset(BENCHMARK) if s.split == "test"]
    brisc = [(s.path, s.label) for s in load_dataset(BRISC)] if BRISC.is_dir() else []
    rng = np.random.default_rng(seed)
    by_class = defaultdict(list)
    for p, label in brisc:
        by_class[label].append((p, label))
    per = brisc_n // max(1, len(by_class))
    subset = [item for c in sorted(by_class) for item in
              [by_class[c][i] for i in sorted(rng.permutation(len(by_class[c]))[:per])]]
    return {"official test": test, "BRISC 2025": subset}


def image_check_counts(paths: list[str]) -> tuple[int, Counter]:
    """Scans (of `paths`) an image check fires on, and per check; model-independent, so no network runs."""
    from xai_bt.data.decode import read_image
    from xai_bt.model import competence

    fired: Counter = Counter()
    n_any = 0
    for p in paths:
        data = Path(p).read_bytes()
        stats = competence.image_statistics(read_image(data, name=p), competence.decode_colour(data))
        names = [c.name for c in competence.IMAGE_CHECKS if c.fires(stats)]
        fired.update(names)
        n_any += bool(names)
    return n_any, fired


# --------------------------------------------------------------------------------------------- modality
def ct_like(gray: np.ndarray) -> float:
    """Skull-rim score: share of the head's outer rim at the head's bright end, less 3 x that share inside.
    High for CT (bone, the brightest tissue, rings the head); low for MRI (the skull is dark there)."""
    import cv2

    g = cv2.resize(gray, (128, 128), interpolation=cv2.INTER_AREA)
    blur = cv2.GaussianBlur(g, (5, 5), 0)
    thr, _ = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, labels, stats, _ = cv2.connectedComponentsWithStats((blur > max(thr * 0.5, 10)).astype(np.uint8))
    if n <= 1:
        return 0.0
    mask = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 1, -1)
    depth = cv2.distanceTransform(filled, cv2.DIST_L2, 5)
    depth = depth / max(float(depth.max()), 1.0)
    top = 0.8 * np.percentile(g[filled > 0], 99)
    rim, inner = g[(depth > 0) & (depth < 0.12)], g[depth > 0.3]
    if not rim.size or not inner.size:
        return 0.0
    return float((rim >= top).mean() - 3 * (inner >= top).mean())


CT_THRESHOLD = 0.4


def modality_rows(bundle, rows: dict[str, dict], test: list[tuple[str, str]]) -> tuple[list[list], dict]:
    """Per class of the official test scans: CT-like (skull-rim score) count, what the model predicts on
    them, how many are warned; and the by-eye labelled no-tumor sample, per label."""
    from xai_bt.data.decode import read_image

    ct = {p: ct_like(read_image(p)) >= CT_THRESHOLD for p, _ in test}
    table = []
    for c in CLASSES:
        items = [p for p, label in test if label == c]
        cts = [p for p in items if ct[p]]
        preds = Counter(rows[p].get("prediction", "error") for p in cts)
        table.append([c, len(items), len(cts), ", ".join(f"{k} {v}" for k, v in preds.most_common()) or "-",
                      sum(warned(rows[p]) for p in cts)])
    labelled: dict[tuple[str, str], list[str]] = defaultdict(list)
    if LABELS.is_file():
        with open(LABELS, newline="") as f:
            for r in csv.DictReader(f):
                labelled[(r["class"], r["modality"])].append(str(BENCHMARK / r["path"]))
    return table, {"ct": ct, "labelled": labelled}


# --------------------------------------------------------------------------------------------- scores
def score_comparison(bundle, real: list[str], ood: list[str], val: list[str], train: list[tuple[str, int]]
                     ) -> tuple[list[list], dict[str, float]]:
    """AUROC (real vs constructed) and detection at the validation scans' 99th percentile of several scores;
    and the shipped feature distance of every real and constructed file that could be read."""
    from scipy.special import logsumexp, softmax
    from sklearn.metrics import roc_auc_score

    from xai_bt.model import competence

    def outputs(paths):
        xs, ok = [], []
        for p in paths:
            try:
                xs.append(bundle.prepare(p))
                ok.append(p)
            except Exception:  # a refused blank image has no score
                pass
        x = np.concatenate(xs)
        net = competence.feature_network(bundle)
        logits = bundle.network_logits(net, x if len(bundle.networks[net].inputs) == 1
                                       else [x, bundle.view_features(x)])
        return logits, competence.features(bundle, x), ok

    (lr, fr, pr), (lo, fo, po), (lv, fv, _) = outputs(real), outputs(ood), outputs(val)
    _, ft, _ = outputs([p for p, _ in train])
    full = competence.fit_reference(ft, np.array([y for _, y in train]))
    t = bundle.temperature

    def full_distance(f):
        return competence._distances(f, full["mean"], full["whiten"], full["centres"])

    scores = {  # higher = more unusual
        "energy, -T logsumexp(logits / T)": lambda lg, f: -t * logsumexp(lg / t, axis=1),
        "max logit (negated)": lambda lg, f: -lg.max(1),
        "max calibrated probability (negated)": lambda lg, f: -softmax(lg / t, axis=1).max(1),
        "feature distance, 256-d projection (shipped)": lambda lg, f: competence.feature_scores(bundle, f),
        "feature distance, all features": lambda lg, f: full_distance(f),
    }
    out = []
    for name, fn in scores.items():
        sr, so, sv = fn(lr, fr), fn(lo, fo), fn(lv, fv)
        thr = np.percentile(sv, 99)
        auc = roc_auc_score(np.r_[np.zeros(len(sr)), np.ones(len(so))], np.r_[sr, so])
        out.append([name, f"{auc:.3f}", f"{100 * np.mean(sr > thr):.1f}%", f"{100 * np.mean(so > thr):.0f}%"])
    shipped = dict(zip(pr + po, np.r_[competence.feature_scores(bundle, fr), competence.feature_scores(bundle, fo)]))
    return out, shipped


def tradeoff(bundle, real: dict, by_cat: dict, rows: dict, distances: dict[str, float]) -> list[list]:
    """Real scans flagged and the lowest detection over the targeted categories if the feature threshold
    were a multiple of the fitted one (image checks as they are)."""
    from xai_bt.model import competence

    thr = bundle.config[competence.RECORD_KEY]["feature_check"]["threshold"]

    def flagged(p: str, m: float) -> bool:
        r = rows[p]
        image = "error" in r or any(check_name(w, bundle) != "features" for w in r["warnings"])
        return image or distances.get(p, 0.0) > m * thr

    out = []
    for m in (0.8, 0.9, 1.0, 1.1, 1.25, 1.5):
        fa = [f"{100 * np.mean([flagged(p, m) for p, _ in items]):.1f}%" for items in real.values()]
        det = {c: np.mean([flagged(f, m) for f in fs]) for c, fs in by_cat.items() if c in TARGETED}
        worst = min(det, key=det.get)
        out.append([f"{m:g} x{' (shipped)' if m == 1.0 else ''}", *fa, f"{100 * det[worst]:.0f}% ({worst})",
                    f"{100 * np.mean([flagged(f, m) for f in by_cat['photo, grey']]):.0f}%"])
    return out


# --------------------------------------------------------------------------------------------- report
def _pct(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / max(n, 1):.1f}%)"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"] + \
        ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]


def real_section(bundle, real: dict, rows: dict, training: bool) -> list[str]:
    """False alarms per class on the real scans; the image checks on the Training scans."""
    from xai_bt.data.datasets import load_dataset

    md = ["## False alarms on real scans", ""]
    table = []
    for name, items in real.items():
        for c in CLASSES:
            ps = [p for p, label in items if label == c]
            if ps:
                checks = Counter(check_name(w, bundle) for p in ps for w in rows[p].get("warnings", []))
                table.append([name, c, _pct(sum(warned(rows[p]) for p in ps), len(ps)),
                              ", ".join(f"{k} {v}" for k, v in checks.most_common()) or "-"])
        table.append([f"**{name}**", "**all**", f"**{_pct(sum(warned(rows[p]) for p, _ in items), len(items))}**", ""])
    md += _table(["scans", "class", "warned", "by check"], table)
    if training:
        train = [s.path for s in load_dataset(BENCHMARK) if s.split == "train"]
        n_any, fired = image_check_counts(train)
        md += ["", f"Image checks alone on the {len(train):,} Training scans their thresholds come from: "
                   f"{_pct(n_any, len(train))} ({', '.join(f'{k} {v}' for k, v in fired.most_common()) or 'none'})."]
    return md


def ood_section(bundle, by_cat: dict, orows: dict) -> list[str]:
    """Detection per constructed category, which checks fired, and what the model said."""
    md = ["", "## Detection of images unlike the training scans", "",
          "Flagged: warned or refused. Image / feature: flagged by the image checks / by the feature check "
          "alone. Model says: its most common answer and the median confidence (what a user saw before).", ""]
    table = []
    for cat, fs in by_cat.items():
        rs = [orows[f] for f in fs]
        ok = [r for r in rs if "error" not in r]
        img = sum("error" in r or any(check_name(w, bundle) != "features" for w in r["warnings"]) for r in rs)
        feat = sum(any(check_name(w, bundle) == "features" for w in r.get("warnings", [])) for r in rs)
        said = Counter(r["prediction"] for r in ok).most_common(1)
        conf = np.median([r["confidence"] for r in ok]) if ok else float("nan")
        checks = Counter(check_name(w, bundle) for r in rs for w in r.get("warnings", []))
        refused = sum("error" in r for r in rs)
        table.append([cat + ("" if cat in TARGETED else " (not targeted)"), len(fs),
                      f"**{100 * sum(warned(r) for r in rs) / len(rs):.0f}%**", f"{100 * img / len(rs):.0f}%",
                      f"{100 * feat / len(rs):.0f}%", f"{said[0][0]} ({conf:.2f})" if said else "-",
                      ", ".join(f"{k} {v}" for k, v in checks.most_common()) + (f"; refused {refused}" if refused else "")])
    return md + _table(["images", "n", "flagged", "image", "feature", "model says", "checks fired"], table)


def modality_section(bundle, rows: dict, test: list[tuple[str, str]]) -> list[str]:
    """CT-like scans per class and the by-eye labelled sample: what the model says, whether warned."""
    mod, extra = modality_rows(bundle, rows, test)
    labelled = extra["labelled"]
    eye_ct = labelled.get(("no_tumor", "CT"), [])
    others = [p for (c, m), ps in labelled.items() if m != "CT" for p in ps]
    md = ["", "## The modality trap", "",
          f"CT-like: skull-rim score >= {CT_THRESHOLD} (`ct_like`: the head's outer rim at its bright end, as bone is "
          f"in CT). Of the by-eye sample below, {sum(extra['ct'].get(p, False) for p in eye_ct)} of the {len(eye_ct)} "
          f"CT scans are CT-like and {sum(extra['ct'].get(p, False) for p in others)} of the {len(others)} others.", ""]
    md += _table(["class (official test)", "scans", "CT-like", "model says on them", "warned"], mod)
    if labelled:
        lab_rows = predict(bundle, [p for ps in labelled.values() for p in ps])
        table = []
        for (c, m), ps in sorted(labelled.items(), key=lambda kv: (CLASSES.index(kv[0][0]), kv[0][1])):
            preds = Counter(lab_rows[p].get("prediction", "error") for p in ps)
            table.append([c, m, len(ps), ", ".join(f"{k} {v}" for k, v in preds.most_common()),
                          sum(warned(lab_rows[p]) for p in ps)])
        md += ["", "Sequence by eye (a non-radiologist reading 180-px thumbnails; T1 includes contrast-enhanced "
                   f"T1) of random official test scans: 60 no-tumor, 24 per tumor class ({LABELS.name}):", ""]
        md += _table(["class", "modality (by eye)", "scans", "model says", "warned"], table)
    return md


def scores_section(bundle, real: dict, ood: list, by_cat: dict, rows: dict) -> list[str]:
    """Which score separates best, and the feature threshold's trade-off."""
    from xai_bt.evaluation.evaluate import labels_for
    from xai_bt.evaluation.temperature import validation_samples
    from xai_bt.model.competence import training_samples

    val, _, _ = validation_samples(bundle, BENCHMARK)
    trows = training_samples(bundle, BENCHMARK)
    train_pairs = [(s.path, int(y)) for s, y in zip(trows, labels_for(bundle, trows)) if y >= 0]
    targeted = [f for cat, f in ood if cat in TARGETED]
    cmp, distances = score_comparison(bundle, [p for items in real.values() for p, _ in items], targeted,
                                      [s.path for s in val], train_pairs)
    md = ["", "## Which score separates best", "",
          "Real: the official test and BRISC scans above; constructed: the targeted categories (refused blanks left "
          "out). Threshold: the 99th percentile of the validation scans.", ""]
    md += _table(["score (higher = more unusual)", "AUROC", "real scans above", "constructed above"], cmp)
    md += ["", "The feature threshold's trade-off (image checks as shipped):", ""]
    md += _table(["feature threshold", *[f"{k} flagged" for k in real], "lowest targeted detection", "grey photos"],
                 tradeoff(bundle, real, by_cat, rows, distances))
    return md


def other_bundles(paths: list[str], real: dict, by_cat: dict) -> list[str]:
    """The same real scans and constructed images through other bundles: one summary row each."""
    from xai_bt.model import competence
    from xai_bt.model.bundle import load_model

    table = []
    for path in paths:
        bundle = load_model(path)
        rows = predict(bundle, [p for items in real.values() for p, _ in items] + [f for fs in by_cat.values() for f in fs])
        fa = [_pct(sum(warned(rows[p]) for p, _ in items), len(items)) for items in real.values()]
        det = [f"{c.split(',')[0][:12]} {100 * np.mean([warned(rows[f]) for f in fs]):.0f}%"
               for c, fs in by_cat.items() if c in TARGETED]
        check = "fitted" if competence.has_feature_check(bundle) else "image checks only"
        table.append([f"`{os.path.relpath(path, ROOT)}` ({bundle.kind}, {check})", *fa, ", ".join(det)])
    return ["", "## Other bundles", ""] + _table(["bundle", *[f"{k} warned" for k in real], "flagged per targeted category"],
                                                   table)


def main() -> None:
    from xai_bt.model import competence
    from xai_bt.model.bundle import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "default"))
    p.add_argument("--also", nargs="*", default=[], help="other bundles to summarise on the same images")
    p.add_argument("--brisc", type=int, default=1000, help="BRISC scans (stratified random subset)")
    p.add_argument("--scans", type=int, default=50, help="real test scans per corruption")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-training", action="store_true", help="skip the image checks on the Training scans")
    p.add_argument("--scores", action="store_true", help="also compare scores (features of every training scan)")
    p.add_argument("--write", action="store_true", help=f"write {OUT.name}")
    args = p.parse_args()

    start = time.time()
    bundle = load_model(args.model)
    fitted = competence.has_feature_check(bundle)
    real = real_sets(args.brisc, args.seed)
    also = "".join(f" {os.path.relpath(a, ROOT)}" for a in args.also)
    md = ["# Competence warnings: measured", "",
          f"Generated by `python benchmarks/bench_competence.py --model {os.path.relpath(args.model, ROOT)} "
          f"--brisc {args.brisc} --scans {args.scans} --seed {args.seed}{' --scores' if args.scores else ''}"
          f"{' --also' + also if also else ''} --write`. Model `{bundle.name}` ({bundle.kind}); feature check "
          + (f"fitted (threshold {bundle.config['competence']['feature_check']['threshold']:.4g} on "
             f"{bundle.config['competence']['feature_check']['network']})" if fitted else "not fitted: image checks only")
          + ". A scan counts as flagged when it gets a warning or the decoder refuses it (constant images).", ""]
    rows = predict(bundle, [p for items in real.values() for p, _ in items])
    md += real_section(bundle, real, rows, not args.no_training)
    with tempfile.TemporaryDirectory() as tmp:
        ood = ood_files(Path(tmp), args.seed, [p for p, _ in real["official test"]], args.scans)
        by_cat: dict[str, list[str]] = defaultdict(list)
        for cat, f in ood:
            by_cat[cat].append(f)
        rows.update(predict(bundle, [f for _, f in ood]))
        md += ood_section(bundle, by_cat, rows)
        md += modality_section(bundle, rows, real["official test"])
        if args.scores and fitted:
            md += scores_section(bundle, real, ood, by_cat, rows)
        if args.also:
            md += other_bundles(args.also, real, by_cat)
    md += ["", f"Machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; {time.time() - start:.0f} s."]
    text = "\n".join(md) + "\n"
    print(text)
    if args.write:
        OUT.write_text(text)


if __name__ == "__main__":
    main()
