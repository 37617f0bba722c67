"""Archive-scale costs: `explain` throughput batched vs one image at a time, peak memory on a small and a
ten-times larger archive, and training images/s under the default vs the mirrored strategy.

    python benchmarks/bench_archive.py                       # print the Markdown table
    python benchmarks/bench_archive.py --out results.md      # also write it to a file

Every run is `python -m xai_bt ...` in its own subprocess on real scans of ../shared/data/brain-tumor-mri
(a spread over classes: every k-th file of the sorted list, given with --list). Explain runs use the
default model, the CAM family (gradcam, gradcam++, layercam) and `--format none` (JSON sidecars only:
figure rendering is a fixed per-scan cost that would hide the batching). Images/s come from explain's
own "N scans in T s" line (model loading and interpreter start excluded); peak RSS from
resource.getrusage(RUSAGE_CHILDREN).ru_maxrss in a fresh parent per run. Training: baseline_cnn (small,
so the strategy's overhead shows) on a real subset, images/s from the last epoch's time (whole seconds,
validation included) and its steps;
mirrored over 2 logical CPU devices. The load average is recorded: other jobs share the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "brain-tumor-mri"
METHODS = "gradcam,gradcam++,layercam"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
_MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")


def spread(n: int) -> list[str]:
    """n real scans spread evenly over the sorted list of every scan in the benchmark (all classes)."""
    files = sorted(str(p) for p in DATA.rglob("*.jpg"))
    if len(files) < n:
        raise SystemExit(f"{DATA}: only {len(files)} scans, {n} asked")
    step = len(files) / n
    return [files[int(i * step)] for i in range(n)]


def explain(files: list[str], work: Path, batch_size: int) -> dict[str, float]:
    """One explain run in its own process: scans/s (explain's own count) and the peak RSS in MiB."""
    listing = work / f"list-{len(files)}-{batch_size}.txt"
    listing.write_text("\n".join(files) + "\n")
    out = work / f"out-{len(files)}-{batch_size}"
    cmd = [sys.executable, "-c", _MEASURE, sys.executable, "-m", "xai_bt", "explain", "--list", str(listing),
           "--methods", METHODS, "--format", "none", "--out", str(out), "--batch-size", str(batch_size)]
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t
    rate = re.search(r"(\d+) scans in ([\d.]+) s \(([\d.]+) scans/s\)", r.stderr)
    rss = re.search(r"MAXRSS_KB (\d+)", r.stdout)
    if r.returncode not in (0, 1) or not rate or not rss:
        raise SystemExit(f"explain failed ({r.returncode}):\n{r.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return {"n": int(rate.group(1)), "seconds": float(rate.group(2)), "rate": float(rate.group(3)),
            "rss_mib": int(rss.group(1)) / 1024, "wall": wall}


_NETWORK = """
import json, sys, time
import numpy as np
from xai_bt.attribution import cams
from xai_bt.model.bundle import default_model_path, load_model
files = sys.argv[1:]
b = load_model(default_model_path())
x = b.prepare(files).astype(np.float32)
net, logits = b.networks["model"], b.logits_model("model")
run = cams.cam_pass(net, b.last_conv_layer)
t = np.zeros(len(x), np.int32)
def best(f, k=5):
    f(); out = []
    for _ in range(k):
        s = time.perf_counter(); f(); out.append(time.perf_counter() - s)
    return min(out) / len(x)
res = {"forward_32": best(lambda: logits.predict_on_batch(x)),
       "forward_1": best(lambda: [logits.predict_on_batch(x[i:i + 1]) for i in range(len(x))]),
       "pass_32": best(lambda: run([x], t)),
       "pass_1": best(lambda: [run([x[i:i + 1]], t[i:i + 1]) for i in range(len(x))])}
print("NETWORK", json.dumps(res))
"""


def network(files: list[str]) -> dict[str, float]:
    """The default network alone, in memory (no decoding, no files): seconds per image of a forward pass
    and of the CAM pass, at batch 32 and one image at a time (best of 5): the batching gain the
    arithmetic itself offers on this CPU, an upper bound for what batching the whole of explain can give."""
    r = subprocess.run([sys.executable, "-c", _NETWORK, *files], cwd=ROOT, env=ENV, capture_output=True, text=True)
    found = re.search(r"NETWORK (\{.*\})", r.stdout)
    if r.returncode != 0 or not found:
        raise SystemExit(f"network timing failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return json.loads(found.group(1))


def training_subset(dest: Path, per_class: int) -> Path:
    """A benchmark-layout copy: the first `per_class` Training and 4 Testing scans of each class."""
    for split, n in (("Training", per_class), ("Testing", 4)):
        for folder in sorted(p.name for p in (DATA / split).iterdir() if p.is_dir()):
            (dest / split / folder).mkdir(parents=True, exist_ok=True)
            for f in sorted((DATA / split / folder).glob("*.jpg"))[:n]:
                shutil.copy(f, dest / split / folder / f.name)
    return dest


def train(data: Path, work: Path, strategy: str, epochs: int, batch: int, size: int) -> dict[str, float]:
    """One short training run; images/s from the last epoch's ms/step and the global batch."""
    devices = ("import tensorflow as tf; cpu = tf.config.list_physical_devices('CPU')[0]; "
               "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2); "
               if strategy == "mirrored" else "")
    argv = ["train", "--arch", "baseline_cnn", "--data", str(data), "--out", str(work / f"model-{strategy}"),
            "--strategy", strategy, "--epochs", str(epochs), "--batch-size", str(batch), "--image-size", str(size),
            "--no-augment", "--no-evaluate", "--overwrite"]
    code = f"{devices}import sys; from xai_bt import cli; sys.exit(cli.main({argv!r}))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True)
    epochs_seen = re.findall(r"(\d+)/\1 - (\d+)s - \S+/step", r.stdout + r.stderr)
    if r.returncode != 0 or not epochs_seen:
        raise SystemExit(f"training ({strategy}) failed ({r.returncode}):\n{(r.stdout + r.stderr)[-2000:]}")
    n_steps, seconds = epochs_seen[-1]          # Keras prints whole seconds: use the epoch, not ms/step
    per_step = float(seconds) / int(n_steps)
    replicas = 2 if strategy == "mirrored" else 1
    return {"steps": int(n_steps), "s_per_step": per_step, "rate": batch * replicas / per_step,
            "global_batch": batch * replicas}


def load() -> str:
    return os.popen("uptime").read().strip().split("load average:")[-1].strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--throughput", type=int, default=1000, help="scans for the batched throughput run")
    p.add_argument("--single", type=int, default=200, help="scans for the one-at-a-time run")
    p.add_argument("--small", type=int, default=200)
    p.add_argument("--large", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-per-class", type=int, default=128)
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--out", help="also write the Markdown table to this file")
    args = p.parse_args()

    loads, rows = [load()], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        batched = explain(spread(args.throughput), work, args.batch_size)
        loads.append(load())
        single = explain(spread(args.single), work, 1)
        net = network(spread(args.batch_size))
        loads.append(load())
        small = explain(spread(args.small), work, args.batch_size)
        large = explain(spread(args.large), work, args.batch_size)
        loads.append(load())
        data = training_subset(work / "data", args.train_per_class)
        default = train(data, work, "default", args.train_epochs, 32, 128)
        mirrored = train(data, work, "mirrored", args.train_epochs, 32, 128)
        loads.append(load())
    rows += [
        f"| explain, batch {args.batch_size} | {batched['n']:,} scans | {batched['rate']:.2f} images/s "
        f"({batched['seconds']:.0f} s) | peak RSS {batched['rss_mib']:,.0f} MiB |",
        f"| explain, one image at a time (batch 1) | {single['n']:,} scans | {single['rate']:.2f} images/s "
        f"({single['seconds']:.0f} s) | batched / single = **{batched['rate'] / single['rate']:.1f}x** |",
        f"| the network alone, in memory: forward pass | {args.batch_size} scans | "
        f"{1000 * net['forward_32']:.1f} ms/image at batch {args.batch_size}, {1000 * net['forward_1']:.1f} one at a time | "
        f"batching gain of the arithmetic: {net['forward_1'] / net['forward_32']:.2f}x |",
        f"| the network alone, in memory: CAM pass (forward + gradient to the last conv layer) | {args.batch_size} scans | "
        f"{1000 * net['pass_32']:.1f} ms/image at batch {args.batch_size}, {1000 * net['pass_1']:.1f} one at a time | "
        f"{net['pass_1'] / net['pass_32']:.2f}x |",
        f"| explain, batch {args.batch_size}, small archive | {small['n']:,} scans | {small['rate']:.2f} images/s | "
        f"peak RSS {small['rss_mib']:,.0f} MiB |",
        f"| explain, batch {args.batch_size}, large archive | {large['n']:,} scans | {large['rate']:.2f} images/s | "
        f"peak RSS {large['rss_mib']:,.0f} MiB (**{100 * (large['rss_mib'] / small['rss_mib'] - 1):+.1f}%** vs "
        f"{small['n']:,}) |",
        f"| train baseline_cnn 128 px, default strategy | {4 * args.train_per_class:,} scans, "
        f"{default['steps']} steps of {default['global_batch']} | {default['rate']:.1f} images/s | "
        f"{default['s_per_step']:.2f} s/step (last epoch incl. validation) |",
        f"| train baseline_cnn 128 px, mirrored (2 logical CPUs) | {4 * args.train_per_class:,} scans, "
        f"{mirrored['steps']} steps of {mirrored['global_batch']} | {mirrored['rate']:.1f} images/s | "
        f"{mirrored['s_per_step']:.2f} s/step (last epoch incl. validation) |",
    ]
    text = "\n".join(["| run | size | throughput | memory / note |", "|---|---|---:|---|", *rows, "",
                      f"Load average (1, 5, 15 min) at start, after each stage: {' → '.join(loads)}."])
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
