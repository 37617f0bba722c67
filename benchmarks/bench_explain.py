"""Time every attribution method on the shipped default model (or, until it exists, a random-init
EfficientNet-Lite0 at 160 px): ms per image at batch 1 and batch 32, the CAM family's cost relative to one
forward+backward pass, tf-keras-vis against our Grad-CAM, and SHAP Partition at its stated max_evals.

    python benchmarks/bench_explain.py                     # print the Markdown report
    python benchmarks/bench_explain.py --write             # also write it into benchmarks/README.md

Timings are medians of `--repeats` calls after one warm-up call (tracing and JIT compilation excluded;
the one-time costs are reported separately). The machine's load average is recorded with them.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
SAMPLES = ROOT / "xai_bt" / "samples"
#: methods whose per-image cost is many model calls: timed on fewer images at "batch 32"
COSTLY = {"scorecam": 2, "smoothgrad": 8, "integrated_gradients": 8, "occlusion": 8, "shap_gradient": 4,
          "shap_partition": 4}


def load(model_path: Path):
    """(keras network, prepared scans (32, S, S, 1), CAM layer, description) from the bundle, or a random-init
    EfficientNet-Lite0 at 160 px fed the sample scans."""
    from xai_bt.data.decode import read_image
    from xai_bt.model.bundle import load_model
    from xai_bt.model.preprocessing import Preprocessing

    files = sorted(SAMPLES.glob("*.jpg"))
    if (model_path / "bundle.json").is_file():
        bundle = load_model(model_path)
        if bundle.kind != "single":
            raise SystemExit(f"{model_path}: a {bundle.kind} bundle; this benchmark times single-network bundles")
        x, net, layer = bundle.prepare([str(f) for f in files]), bundle.model, bundle.last_conv_layer
        shown = model_path.resolve().relative_to(ROOT) if model_path.resolve().is_relative_to(ROOT) else model_path
        what = f"`{shown}` ({bundle.config.get('arch', net.name)}, {bundle.preprocessing.image_size} px, " \
               f"layer `{layer}`)"
    else:
        from xai_bt.model.architectures import build

        arch = build("efficientnet_lite0", 160, 4)
        net, layer = arch.model, arch.last_conv_layer
        x = Preprocessing(image_size=160).batch([read_image(str(f)) for f in files])
        what = f"random-init EfficientNet-Lite0 (160 px, layer `{layer}`; `{model_path}` not there yet)"
    return net, np.resize(x, (32, *x.shape[1:])), layer, what


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call s, median of `repeats` later calls s)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return first, float(np.median(runs))


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--write", action="store_true", help="write the report into benchmarks/README.md")
    args = p.parse_args(argv)

    import tensorflow as tf

    from xai_bt.attribution import cams
    from xai_bt.attribution.explain import METHODS, explain_batch
    from xai_bt.attribution.gradients import scores

    load_start = os.getloadavg()[0]
    net, x, layer, what = load(args.model)
    targets = scores(net)([x]).argmax(1)
    r = args.repeats

    def run(methods, n):
        return lambda: explain_batch(net, x[:n], targets[:n], methods, layer=layer)

    from xai_bt.attribution.registry import LAYER_SEP

    # the audit's candidates on finer layers (provenance.audit_candidates): what the recommendation may cost
    finer = [f"{m}{LAYER_SEP}{lay}" for lay in cams.fusion_layers(net, 3)[1:] for m in ("layercam", "hirescam")]
    rows = {}  # method -> (first call s, s/image at batch 1, s/image at batch n, n)
    for m in (*METHODS, *finer):
        first, one = timed(run(m, 1), r if m not in COSTLY else 1)
        n = COSTLY.get(m, 32)
        _, many = timed(run(m, n), r if m not in COSTLY else 1)
        rows[m] = (first, one, many / n, n)

    # the CAM family against one batched pass
    family = ("gradcam", "gradcam++", "layercam")
    passes = cams.cam_pass(net, layer)
    forward = tf.function(lambda a: net(a, training=False))
    _, t_fwd = timed(lambda: forward(x).numpy(), r)
    _, t_pass = timed(lambda: passes([x], targets), r)
    _, t_family = timed(run(family, 32), r)
    _, t_gradcam = timed(run("gradcam", 32), r)

    # tf-keras-vis Grad-CAM (the reference) against ours
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    ref = Gradcam(net, model_modifier=ReplaceToLinear(), clone=True)
    tkv = {n: timed(lambda n=n: ref(CategoricalScore(list(targets[:n])), x[:n], penultimate_layer=layer,
                                    seek_penultimate_conv_layer=False), r)[1] / n for n in (1, 32)}
    ours = {1: rows["gradcam"][1], 32: rows["gradcam"][2]}
    load_end = os.getloadavg()[0]

    cores = os.cpu_count() or 1
    loaded = max(load_start, load_end) > 0.5 * cores
    lines = [
        "# Benchmarks: explanation methods",
        "",
        "Generated by `python benchmarks/bench_explain.py --write`; rerun it to refresh.",
        "",
        f"Model: {what}. Input: the four sample scans in `xai_bt/samples`, repeated to 32. "
        f"Machine: {platform.processor() or platform.machine()}, {cores} CPU cores, TensorFlow {tf.__version__} (CPU). "
        f"Median of {r} timed calls after a warm-up call (1 call for the costly methods, which take seconds).",
        "",
        ("**Timed under load**: other jobs were running; load average "
         f"{load_start:.1f} at the start and {load_end:.1f} at the end on {cores} cores. Absolute numbers are "
         "pessimistic and noisy (tens of percent between back-to-back calls); read ratios, not decimals." if loaded else
         f"Load average {load_start:.1f} / {load_end:.1f} (start / end) on {cores} cores."),
        "",
        "| method | ms/image, batch 1 | ms/image, batch 32 | first call (s, incl. tracing/JIT) |",
        "|---|---:|---:|---:|",
    ]
    for m, (first, one, many, n) in rows.items():
        note = "" if n == 32 else f" ({n} images)"
        lines.append(f"| {m} | {1000 * one:.1f} | {1000 * many:.1f}{note} | {first:.1f} |")
    lines += [
        "",
        "Defaults: Faster-ScoreCAM `max_n=10`; Score-CAM uses every channel of the layer; SmoothGrad 25 samples; "
        "Integrated Gradients 128 steps (quadratic spacing, black baseline); a CAM method on a finer layer "
        "(`name@layer`) runs its own pass on that layer, `layercam_fusion` one pass per fused layer; "
        "occlusion patch S/8, stride S/16; shap_gradient 100 samples; "
        "**SHAP Partition `max_evals=300`** (blur(16,16) masker). "
        "Methods marked (n images) were timed on n images in one call: their cost is many model calls per "
        "image, already batched, so the batch of images barely changes it. The first SHAP Partition call "
        "in a process also pays shap's numba compilation.",
        "",
        "| CAM family on 32 images | ms/image | relative to one forward+backward pass |",
        "|---|---:|---:|",
        f"| forward pass only | {1000 * t_fwd / 32:.1f} | {t_fwd / t_pass:.2f}x |",
        f"| forward+backward pass (activations and gradients) | {1000 * t_pass / 32:.1f} | 1.00x |",
        f"| Grad-CAM (our path, maps upsampled and scaled) | {1000 * t_gradcam / 32:.1f} | {t_gradcam / t_pass:.2f}x |",
        f"| Grad-CAM + Grad-CAM++ + Layer-CAM from one pass | {1000 * t_family / 32:.1f} | "
        f"{t_family / t_pass:.2f}x (goal <= 1.5x) |",
        "",
        "| Grad-CAM | ms/image, batch 1 | ms/image, batch 32 |",
        "|---|---:|---:|",
        f"| tf-keras-vis 0.8.7 `Gradcam` (reference) | {1000 * tkv[1]:.1f} | {1000 * tkv[32]:.1f} |",
        f"| xai_bt (`explain_batch`, compiled pass) | {1000 * ours[1]:.1f} | {1000 * ours[32]:.1f} |",
        f"| speed-up | {tkv[1] / ours[1]:.1f}x | {tkv[32] / ours[32]:.1f}x |",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.write:   # this report is the README's first section; the other benchmarks' sections stay
        readme = ROOT / "benchmarks" / "README.md"
        text = readme.read_text() if readme.is_file() else ""
        rest = text.find("\n# Benchmarks: ", 1)
        readme.write_text(report.rstrip("\n") + "\n" + (text[rest:] if rest >= 0 else ""))
    return report


if __name__ == "__main__":
    main()
