"""Training cost per architecture on this machine: seconds per step and an estimated epoch time.

Times `--steps` training steps of each architecture on real benchmark scans (batch 32, random init,
augmentation on, as `python -m xai_bt train` runs) after one warm-up step, and scales to one epoch
of the 4,851-scan training part of the default split. Usage:

    python benchmarks/bench_train.py --size 160 --steps 6 [--arch xai_cnn vgg16 ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brain-tumor-mri"
TRAIN_SCANS = 4851  # training part of the default model's split


def main() -> None:
    import keras

    from xai_bt.data.datasets import load_dataset, sample_image
    from xai_bt.model import architectures
    from xai_bt.model.preprocessing import Preprocessing
    from xai_bt.model.training import training_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--arch", nargs="*", default=sorted(architectures.ARCHITECTURES))
    args = p.parse_args()

    samples = [s for s in load_dataset(DATA) if s.split == "train"][:: 40][: args.batch_size]
    x = Preprocessing(image_size=args.size).batch([sample_image(s) for s in samples])
    y = np.array([s.label_index for s in samples])
    load = os.getloadavg()[0]
    print(f"| arch | params | s/step (batch {args.batch_size}) | est. min/epoch ({TRAIN_SCANS} scans) |")
    print("|---|---:|---:|---:|")
    for arch in args.arch:
        built = architectures.build(arch, args.size, 4)
        model = training_model(built.model, augment=True, seed=0)
        model.compile(keras.optimizers.AdamW(1e-4), "sparse_categorical_crossentropy")
        model.train_on_batch(x, y)  # warm-up: graph tracing
        t = time.perf_counter()
        for _ in range(args.steps):
            model.train_on_batch(x, y)
        step = (time.perf_counter() - t) / args.steps
        epoch_min = step * np.ceil(TRAIN_SCANS / args.batch_size) / 60
        print(f"| {arch} | {built.model.count_params():,} | {step:.2f} | {epoch_min:.1f} |", flush=True)
    print(f"\n{args.size} px, {os.cpu_count()} CPU cores, load average {load:.1f} at start "
          f"-> {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
