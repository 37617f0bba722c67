"""`python -m xai_bt import-model my_model.keras --classes a,b,c,d --out models/NAME`: your model as a bundle.

The file is checked and loaded in Keras' safe mode, wrapped so it takes xai_bt's grayscale input (channel
repeat and pixel scaling as built-in layers), its softmax removed for the explained score, and saved with
bundle.json and a model card that says what was given and what was assumed. Every command then takes
`models/NAME` like a bundle xai_bt trained, `calibrate` and `evaluate --update-card` included.
"""
from __future__ import annotations

import argparse

from xai_bt.cli._common import UsageError, add_model_options, fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the Keras model: a .keras file or a legacy .h5")
    p.add_argument("--out", required=True, help="the bundle folder to write, e.g. models/my_vgg16")
    p.add_argument("--overwrite", action="store_true", help="replace a bundle already at --out")
    add_model_options(p)


def main(args: argparse.Namespace) -> int:
    from xai_bt.model.bundle import BundleError
    from xai_bt.model.imported import import_model

    try:
        if args.classes is None:
            raise UsageError("--classes is required: the model's classes in its output order "
                             "(e.g. --classes glioma,meningioma,no_tumor,pituitary)")
        bundle = import_model(args.file, args.classes, pixel_scale=args.pixel_scale, image_size=args.input_size,
                              crop_to_head=args.crop_to_head, out=args.out, overwrite=args.overwrite)
    except (BundleError, UsageError, FileExistsError, ValueError) as e:
        return fail(str(e))
    record = bundle.config["imported"]
    print(f"{args.file} -> {bundle.path}: {len(bundle.class_names)} classes ({', '.join(bundle.class_names)}), "
          f"input {record['input']['size']} px x {record['input']['channels']} channel(s), "
          f"pixel scale {record['pixel_scale']}, CAM layer {bundle.last_conv_layer}")
    print(f"explained score: {record['score']}")
    if record["assumed"]:
        print(f"assumed (not given): {', '.join(record['assumed'])}; see {bundle.path}/MODEL_CARD.md")
    return 0
