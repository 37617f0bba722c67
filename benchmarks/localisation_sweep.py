"""Where do the CAM variants point, layer by layer? Pointing game and energy inside the tumor mask of
every CAM method on each of a model's coarsest resolutions, and of Layer-CAM fused over 2-4 layers, on the
BRISC 2025 masked scans the model never trained on (no twin, as it is or mirrored, among its training
scans): the evidence behind the audit's candidates (`provenance.audit_candidates`).

    python benchmarks/localisation_sweep.py --model models/default --out benchmarks/localisation_sweep.md

Maps explain the true class; pointing-game tolerance 3% of the input side, as the audit.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("XAI_BT_DATA", ROOT.parent / "shared" / "data"))
CAMS = ("gradcam", "gradcam++", "layercam", "hirescam", "xgradcam")


def unseen_masked_scans(bundle, data: Path, train_data: Path):
    """(model pixels (N, S, S), masks (N, S, S), true class indices) of the unseen masked scans."""
    from xai_bt.audit.selection import scan_loader, select_candidates

    cand = select_candidates(bundle, str(data), bundle.class_names, train_data=str(train_data), progress=False)
    load = scan_loader(bundle, cand.samples, cand.sources)
    xs, ms, ts = [], [], []
    for j in range(len(cand)):
        try:
            x, m = load(cand.positions[j])
        except ValueError:          # an empty mask: skipped, as the audit does
            continue
        xs.append(x)
        ms.append(m)
        ts.append(bundle.class_names.index(cand.sample(j).label))
    return np.stack(xs), np.stack(ms), np.array(ts, np.int32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "default"))
    p.add_argument("--data", default=str(DATA / "brisc2025"))
    p.add_argument("--train-data", default=str(DATA / "brain-tumor-mri"))
    p.add_argument("--resolutions", type=int, default=3, help="how many of the coarsest resolutions (default 3)")
    p.add_argument("--out", help="write the table as Markdown here too")
    args = p.parse_args()

    from xai_bt.attribution.cams import fusion_layers
    from xai_bt.attribution.explain import explain_batch
    from xai_bt.audit.localisation import energy_pointing_game, pointing_game
    from xai_bt.model.bundle import load_model
    from xai_bt.model.layers import spatial_layer_shapes

    bundle = load_model(args.model)
    x, masks, t = unseen_masked_scans(bundle, Path(args.data), Path(args.train_data))
    xb, tol = x[..., None].astype(np.float32), 0.03 * x.shape[1]
    shapes = dict(spatial_layer_shapes(bundle.model))
    rows = []

    def score(name: str, layers: str, maps: np.ndarray, seconds: float) -> None:
        pg, en = float(np.mean(pointing_game(maps, masks, tol))), float(np.mean(energy_pointing_game(maps, masks)))
        rows.append((name, layers, pg, en, seconds))
        print(f"{name:28s} {layers:70s} pointing game {pg:.3f}  energy {en:.3f}  ({seconds:.0f} s)", flush=True)

    for layer in fusion_layers(bundle.model, args.resolutions):
        start = time.perf_counter()
        maps = explain_batch(bundle.model, xb, t, list(CAMS), layer=layer)
        seconds = time.perf_counter() - start
        for method, m in maps.items():
            score(method, f"{layer} {shapes[layer][:2]}", m, seconds)
    for n in range(2, args.resolutions + 1):
        for fuse in ("mean", "product", "max"):
            start = time.perf_counter()
            m = explain_batch(bundle.model, xb, t, ["layercam_fusion"], layers=fusion_layers(bundle.model, n),
                              fuse=fuse)["layercam_fusion"]
            score(f"layercam_fusion ({fuse})", ", ".join(fusion_layers(bundle.model, n)), m,
                  time.perf_counter() - start)
    if args.out:
        lines = [f"# Localisation by layer: {bundle.name}, {len(x)} unseen BRISC masked scans", "",
                 f"`python benchmarks/localisation_sweep.py --model {args.model}`; chance energy "
                 f"{float(masks.mean()):.3f} (mean mask area fraction).", "",
                 "| method | layer(s) | pointing game | energy in mask |", "|---|---|---|---|"]
        lines += [f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} |" for r in rows]
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
