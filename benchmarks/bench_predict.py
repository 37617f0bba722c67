"""Inference cost of a model bundle on this machine: ms per scan at a batch size, with and without the
bundle's test-time augmentation, on real test scans already prepared (decoding is not timed). Each setting
is timed over all n scans `--repeats` times; the median pass is the figure, the fastest and slowest show
the machine's noise.

    python benchmarks/bench_predict.py [--model models/default] [--batch-size 32] [--n 320] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

DATA = ROOT.parent / "shared" / "data" / "brain-tumor-mri"


def main() -> None:
    from xai_bt.data.datasets import load_dataset
    from xai_bt.model.bundle import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "default"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n", type=int, default=320, help="test scans to time")
    p.add_argument("--repeats", type=int, default=5, help="timed passes over the n scans per setting")
    args = p.parse_args()

    bundle = load_model(args.model)
    paths = [s.path for s in load_dataset(DATA) if s.split == "test"][: args.n]
    x = bundle.prepare(paths)
    load = os.getloadavg()[0]
    print(f"| test-time augmentation | ms per scan at batch {args.batch_size} (median of {args.repeats}) "
          "| fastest–slowest pass |\n|---|---:|---:|")
    stored = bundle.config.get("tta", "none")
    for tta in dict.fromkeys((stored, "none")):
        bundle.config["tta"] = tta
        bundle.predict_prepared(x[: args.batch_size], batch_size=args.batch_size)  # warm-up: tracing
        passes = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            for i in range(0, len(x), args.batch_size):
                bundle.predict_prepared(x[i:i + args.batch_size], batch_size=args.batch_size)
            passes.append((time.perf_counter() - t) / len(x) * 1000)
        print(f"| {tta}{' (as stored)' if tta == stored else ''} | {statistics.median(passes):.1f} "
              f"| {min(passes):.1f}–{max(passes):.1f} |")
    print(f"\n{bundle.name}, {len(x)} prepared test scans, {os.cpu_count()} CPU cores, load average "
          f"{load:.1f} at start -> {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
