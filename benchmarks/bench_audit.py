"""Cost of a focus audit on this machine: N BRISC scans with masks, a set of methods, per stage.

Runs the same code as `python -m xai_bt audit` (selection of scans unseen in training, then the batch loop:
reading and preprocessing (time spent waiting on it), explanation + localisation scores; optional faithfulness /
randomisation checks) and prints the time of each stage as a markdown table. Usage:

    python benchmarks/bench_audit.py --limit 500 --methods gradcam,gradcam++,layercam,saliency
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    from xai_bt.audit.runner import AuditConfig, run_audit

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "default"))
    p.add_argument("--data", default=str(DATA / "brisc2025"))
    p.add_argument("--train-data", default=str(DATA / "brain-tumor-mri"))
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--methods", default="gradcam,gradcam++,layercam,saliency")
    p.add_argument("--faithfulness", type=int, default=0, help="scans for deletion/insertion/ROAD (0 = skip)")
    p.add_argument("--sanity", type=int, default=0, help="scans for the randomisation check (0 = skip)")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()

    load = os.getloadavg()[0]
    t = time.perf_counter()
    config = AuditConfig(methods=tuple(args.methods.split(",")), train_data=args.train_data, limit=args.limit,
                         faithfulness=args.faithfulness, sanity=args.sanity, batch_size=args.batch_size,
                         progress=False)
    result = run_audit(args.model, args.data, config)
    wall = time.perf_counter() - t
    s = result.summary
    n = s["n_images"]
    print("| stage | seconds | ms per scan |\n|---|---:|---:|")
    for stage, sec in s["timings"].items():
        if stage != "total_s":
            print(f"| {stage.removesuffix('_s').replace('_', ' ')} | {sec:.1f} | {1000 * sec / n:.0f} |")
    print(f"| **total** | **{wall:.1f}** | **{1000 * wall / n:.0f}** |")
    print(f"\n{n} scans, methods {args.methods}, faithfulness on {args.faithfulness}, sanity on {args.sanity}; "
          f"{os.cpu_count()} CPU cores, load average {load:.1f} at start -> {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
