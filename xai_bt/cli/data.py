"""`python -m xai_bt data`: dataset summary, near-duplicate (leakage) audit and leakage-free split CSVs.

    python -m xai_bt data summary ROOT
    python -m xai_bt data audit ROOT [ROOT ...] [--threshold R] [--examples 10] [--json report.json]
                                [--write-split split.csv --fractions 0.7 0.15 0.15 --seed 0] [--overwrite]

With several ROOTs the images are audited together and each split is named `<folder>:<split>`, so the
report also shows how many images two datasets share (e.g. BRISC 2025 against the benchmark).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from xai_bt.cli._common import add_threshold, fail
from xai_bt.data.twins import TRANSFORM_WORDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register `data summary` and `data audit`."""
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = sub.add_parser("summary", help="counts per split, class and plane",
                       description="Counts per split, class and plane of a dataset folder.")
    p.add_argument("root", metavar="ROOT", help="dataset folder (benchmark, BRISC, figshare, class folders)")
    p = sub.add_parser("audit", help="near-duplicate (leakage) audit; optionally write a leakage-free split",
                       description="Find near-duplicate images (Pearson r between 32x32 thumbnails) within and "
                                   "across splits, and optionally write a group-aware, class-stratified split.")
    p.add_argument("roots", nargs="+", metavar="ROOT", help="dataset folder(s), audited together")
    add_threshold(p, "the audit and the written split")
    p.add_argument("--examples", type=int, default=10, help="example pairs and conflicts to show")
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    p.add_argument("--plot", metavar="STEM", help="write the nearest-neighbour r histogram as STEM.png and STEM.pdf")
    p.add_argument("--write-split", metavar="CSV", help="write a leakage-free split (path,label,split,group,...)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.7, 0.15, 0.15], metavar="F",
                   help="train val test (or train test) fractions of the new split")
    p.add_argument("--seed", type=int, default=0, help="seed of the new split")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --write-split file or --plot")
    p.add_argument("--workers", type=int, default=2, help="threads decoding images")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the thumbnail cache")


def main(args: argparse.Namespace) -> int:
    """Run the chosen action; 2 with a one-line message for a bad ROOT or an existing split file."""
    if args.data_command == "summary":
        return _summary(args)
    return _audit(args)


def _load(root: str, prefix: str | None = None) -> list:
    """Samples of one dataset folder; with `prefix`, splits become `prefix:split`. ValueError if unusable."""
    from xai_bt.data.datasets import load_dataset

    if not os.path.exists(root):
        raise ValueError(f"{root}: no such file or folder")
    samples = load_dataset(root)
    if prefix is None:
        return samples
    return [dataclasses.replace(s, split=f"{prefix}:{s.split or 'all'}") for s in samples]


def _summary(args: argparse.Namespace) -> int:
    """Print counts per split x class, per plane, masks and patients."""
    from xai_bt.data.datasets import summarise
    from xai_bt.data.sample import CLASS_NAMES

    try:
        samples = _load(args.root)
    except (ValueError, OSError) as exc:
        return fail(str(exc))
    info = summarise(samples)
    labels = [c for c in CLASS_NAMES if c in info["by_label"]] + \
        [c for c in info["by_label"] if c not in CLASS_NAMES]
    print(f"{args.root}: {info['total']} images")
    print(_table(["split", *labels, "total"],
                 [[sp, *(c.get(lab, 0) for lab in labels), sum(c.values())]
                  for sp, c in info["by_split_label"].items()] +
                 [["total", *(info["by_label"][lab] for lab in labels), info["total"]]]))
    if set(info["by_plane"]) != {"unknown"}:
        print("planes: " + ", ".join(f"{k} {v}" for k, v in info["by_plane"].items()))
    print(f"with mask: {info['with_mask']}; patients: {info['patients'] or 'not recorded'}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    """Audit ROOT(s), print the report, write JSON and optionally a new leakage-free split CSV."""
    from xai_bt.data.splits import audit
    from xai_bt.data.twins import fingerprints

    if args.write_split and Path(args.write_split).exists() and not args.overwrite:
        return fail(f"{args.write_split} already exists; pass --overwrite to replace it")
    if args.plot and not args.overwrite:
        taken = [f"{args.plot}.{ext}" for ext in ("png", "pdf") if Path(f"{args.plot}.{ext}").exists()]
        if taken:
            return fail(f"{taken[0]} already exists; pass --overwrite to replace it")
    fr = args.fractions
    if args.write_split and (len(fr) not in (2, 3) or min(fr) < 0 or abs(sum(fr) - 1) > 1e-6):
        return fail(f"--fractions must be 2 or 3 non-negative numbers summing to 1, got {' '.join(map(str, fr))}")
    if not 0 < args.threshold <= 1:
        return fail(f"--threshold must be in (0, 1], got {args.threshold}")
    names = [Path(r).resolve().name for r in args.roots]
    if len(set(names)) < len(names):
        names = list(args.roots)
    samples = []
    try:
        for root, name in zip(args.roots, names):
            samples += _load(root, name if len(args.roots) > 1 else None)
    except (ValueError, OSError) as exc:
        return fail(str(exc))
    thumbs, digests = fingerprints(samples, workers=args.workers, cache=not args.no_cache, progress=True)
    report = audit(samples, args.threshold, args.examples, thumbs=thumbs, digests=digests)
    report["roots"] = [str(r) for r in args.roots]
    print(format_report(report))
    if args.write_split:
        try:
            report["written_split"] = _write_split(args, samples, thumbs, digests)
        except (ValueError, FileExistsError) as exc:
            return fail(str(exc))
    if args.plot and report["headline"]:
        from xai_bt.plots.evaluation import plot_twin_histogram
        from xai_bt.plots.style import save_figure

        head = report["headline"]
        fig = plot_twin_histogram(head["histogram"], args.threshold,
                                  title=f"The {head['of']:,} {head['split']} scans: closest scan in {head['reference']} "
                                        f"({head['n']:,} with a twin)")
        paths = save_figure(fig, args.plot, overwrite=True)  # checked before the audit ran
        print("histogram written to " + ", ".join(map(str, paths)))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.json}")
    return 0


def _write_split(args: argparse.Namespace, samples: list, thumbs, digests) -> dict[str, Any]:
    """Make, write and re-audit a new split (`splits.write_leakage_free_split`); print what it holds."""
    from xai_bt.data.splits import write_leakage_free_split

    root = args.roots[0] if len(args.roots) == 1 else None     # one dataset: paths relative to its root
    written = write_leakage_free_split(args.write_split, samples, args.fractions, args.threshold, args.seed,
                                       thumbs=thumbs, digests=digests, overwrite=args.overwrite, root=root)
    by_label = written["by_label"]
    print(f"\nwrote {written['path']} (seed {args.seed}): " +
          ", ".join(f"{sp} {sum(c.values())}" for sp, c in by_label.items()) +
          f"; near-duplicate pairs across its splits: {written['pairs_across_splits']}")
    for sp, c in by_label.items():
        total = sum(c.values())
        print(f"  {sp:<6} " + "  ".join(f"{lab} {n / total:.1%}" for lab, n in c.items()))
    return written


def _table(header: list[str], rows: list[list[Any]]) -> str:
    """Left-aligned first column, right-aligned others."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                      for i, (c, w) in enumerate(zip(r, widths))) for r in cells)


def format_histogram(hist: dict[str, Any], width: int = 40) -> list[str]:
    """Text histogram of nearest-neighbour r, one row per bin: counts as it is and mirrored, with bars."""
    edges, keys = hist["edges"], [k for k in ("identity", "mirror_lr") if k in hist]
    top = max((max(hist[k]) for k in keys), default=1) or 1
    rows = [f"  {'r':>13s}  {'as it is':>8s}  {'mirrored':>8s}"]
    for b in range(len(edges) - 1):
        span = f"< {edges[1]:.3f}" if b == 0 else f"{edges[b]:.3f}-{edges[b + 1]:.3f}"
        cells = [hist[k][b] for k in keys]
        bars = "".join(ch * max(int(round(width * c / top)), int(c > 0)) for ch, c in zip("#=", cells))
        rows.append(f"  {span:>13s}  " + "  ".join(f"{c:8d}" for c in cells) + f"  {bars}")
    return rows


def format_report(r: dict[str, Any]) -> str:
    """Human-readable audit report: headline first, then the tables and examples."""
    t = r["threshold"]
    kinds = ", ".join(TRANSFORM_WORDS.get(k, k) for k in r.get("transforms", ["identity"]))
    out = [f"Near-duplicate audit: {r['n_images']} images ("
           + ", ".join(f"{k} {v}" for k, v in sorted(r["splits"].items()))
           + f"); twins = Pearson r >= {t:g} between 32x32 thumbnails, one compared {kinds}"]
    for leak in r["leaks"]:
        out.append(f"LEAKAGE: {leak['n']} of {leak['of']} {leak['split']} images ({leak['n'] / max(leak['of'], 1):.1%})"
                   f" have a twin in {leak['reference']}")
        by_kind, only = leak.get("by_kind", {}), leak.get("only_by_kind", {})
        if by_kind:
            out.append("  twin " + "; ".join(f"{TRANSFORM_WORDS.get(k, k)}: {v}"
                                             + (f" ({only[k]} with no plain twin)" if k in only else "")
                                             for k, v in by_kind.items()))
        out.append("  at other thresholds: " + ", ".join(f"r>={k} {v}" for k, v in leak["by_threshold"].items()))
        if leak.get("histogram"):
            out.append(f"  nearest-neighbour r of each {leak['split']} image in {leak['reference']} "
                       f"(# as it is, = mirrored):")
            out += format_histogram(leak["histogram"])
    out.append("\nWithin splits:")
    out.append(_table(["split", "images", "pairs", "groups", "images in groups"],
                      [[k, v["images"], v["pairs"], v["groups"], v["images_in_groups"]]
                       for k, v in r["within"].items()]))
    if r["across"]:
        out.append("Across splits:")
        out.append(_table(["a", "b", "pairs", "a images with twin in b", "b images with twin in a"],
                          [[x["a"], x["b"], x["pairs"], x["a_images_with_twin_in_b"], x["b_images_with_twin_in_a"]]
                           for x in r["across"]]))
    g, e = r["groups"], r["exact_duplicates"]
    out.append(f"\nNear-duplicate groups: {g['count']} ({g['images']} images, largest {g['largest']}), "
               f"{g['spanning_splits']} span several splits")
    out.append(f"Byte-identical files: {e['groups']} groups ({e['images']} images), {e['spanning_splits']} span "
               f"several splits, {e['label_conflicts']} with conflicting labels, {e['plane_conflicts']} with "
               f"conflicting planes")
    for kind in ("label", "plane"):
        c = r[f"{kind}_conflicts"]
        out.append(f"Near-duplicate groups with conflicting {kind}s: {c['groups']} ({c['images']} images)")
        for group in c["examples"]:
            out.append(f"    {group['size']} images: " + ", ".join(f"{k} {v}" for k, v in group["counts"].items())
                       + "; e.g. " + "  ".join(group["paths"].values()))
    if r["patients"]["ids"]:
        out.append(f"Patients: {r['patients']['ids']}, {r['patients']['spanning_splits']} in several splits")
    if r["unreadable"]:
        out.append(f"Unreadable images (ignored): {len(r['unreadable'])}, e.g. {r['unreadable'][0]}")
    if r["examples"]:
        out.append("\nExample pairs (spread over the range of r):")
        out += [f"  r={x['r']:.4f} {x['splits'][0]}/{x['splits'][1]}  {x['a']}  {x['b']}" for x in r["examples"]]
    return "\n".join(out)

