"""MODEL_CARD.md beside every bundle, rendered from what bundle.json records (never typed by hand)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xai_bt.data.twins import TWIN_THRESHOLD, describe_twins

_PART_NAMES = {"official": "all test scans", "leakage_free": "leakage-free test scans (no twin learnt from)"}


def _validation_note(tr: dict[str, Any], tc: dict[str, Any], calibrated: bool) -> str:
    """How validation was carved out, and whether that split can be trusted under today's twin definition."""
    recorded = tr.get("twin_transforms")
    if tc.get("split_csv"):
        how = f"the split of `{tc['split_csv']}`"
    elif recorded:
        how = f"validation carved out by twin group ({describe_twins(tc.get('dedup_threshold', TWIN_THRESHOLD), recorded)})"
        if tc.get("val_apart_from_test"):
            how += ", only from groups with no twin among the test scans (those stay in training)"
    else:
        how = f"validation carved out by near-duplicate group at r >= {tc.get('dedup_threshold')}"
    if tc.get("refit"):
        return how + ("; a refit: its validation rows were trained on too, for the epochs chosen with them "
                      "held out, and the last epoch kept")
    if not recorded:
        how += (", scans compared as they are only (mirrored twins were not caught then"
                + ("; see the temperature line)" if calibrated else ")"))
    return how


def _calibration_note(config: dict[str, Any]) -> str:
    """Where the temperature was fitted: how many validation scans, how many left out as twins."""
    cal = config.get("calibration")
    if not cal:
        return ""
    if cal.get("held_out"):
        return (f" (fitted on {cal['n_val']} held-out scans under `{cal['held_out']}`; "
                f"{cal.get('n_val_twins_left_out', 0)} more were left out because they have a twin, as they are "
                "or mirrored, among the scans of split.csv: training and test)")
    note = f" (fitted on {cal['n_val']} validation scans"
    if cal.get("n_val_twins_left_out"):
        note += (f"; {cal['n_val_twins_left_out']} more were left out because they have a twin, as they are "
                 "or mirrored, among the training scans")
    elif "n_val_twins_left_out" not in cal:
        note += "; validation twins of training scans were not left out then"
    return note + ")"


def render_model_card(config: dict[str, Any]) -> str:
    """Markdown card: what the model is, its data, split, preprocessing, training command and metrics."""
    tr = config.get("training", {})
    tc = tr.get("config", {})
    lines = [f"# Model card: {config.get('name')}", "",
             f"- **Kind**: {config['kind']} ({config.get('task', 'tumor')} classifier), architecture "
             f"`{config.get('arch')}`" + (f" x {len(config['ensemble']['members'])} (an ensemble: see below)"
                                          if config.get("ensemble") else ""),
             f"- **Classes**: {', '.join(config['class_names'])}"]
    if config.get("view_names"):
        lines.append(f"- **Views** (first stage): {', '.join(config['view_names'])}; view model "
                     f"`{config.get('view_model')}`")
    lines += [f"- **Preprocessing** (applied by every xai_bt path): `{json.dumps(config['preprocessing'])}`; "
              "input is grayscale in [0, 255], backbone scaling is inside the network",
              f"- **Last conv layer** (default CAM layer): `{config['last_conv_layer']}`",
              f"- **Temperature** (calibration): {config.get('temperature', 1.0):.4g}{_calibration_note(config)}",
              *(["- **Class biases** (added to the logits after the temperature; fitted on the same scans, "
                 "class-balanced NLL; they can change the predicted class): "
                 + ", ".join(f"{c} {v:+.3f}" for c, v in zip(config["class_names"], config["class_bias"]))]
                if config.get("class_bias") else []),
              f"- **Test-time augmentation**: {config.get('tta', 'none')}"
              + (" (logits averaged over the scan and its left-right mirror; heatmaps explain the "
                 "un-flipped pass)" if config.get("tta") == "hflip" else "")]
    if config.get("imported"):
        lines += _imported_lines(config["imported"], config)
    if config.get("soup"):
        lines.append(_soup_line(config["soup"]))
    if config.get("ensemble"):
        lines.append(_ensemble_line(config["ensemble"]))
    if tr:
        hw = tr.get("hardware", {})
        lines += ["", "## Training", "",
                  f"- **Data**: `{tc.get('data')}`; {tr.get('n_train')} training, {tr.get('n_val')} validation, "
                  f"{tr.get('n_test')} test scans (split in `split.csv`; {_validation_note(tr, tc, bool(config.get('calibration')))})",
                  f"- **Command**: `{training_command(tc)}`",
                  *_focus_lines(tr.get("focus")),
                  *[f"- **Note**: {n}" for n in tr.get("notes", [])],
                  f"- **Time**: {tr.get('seconds', 0) / 60:.1f} min on "
                  f"{'CPU only' if hw.get('accelerator', 'none') == 'none' else hw['accelerator']}, "
                  f"{hw.get('cpu_count')} CPU cores ({hw.get('processor')}), Keras "
                  f"{hw.get('keras')} / {hw.get('backend')} backend, {tr.get('replicas', 1)} replica(s) "
                  f"under the `{tc.get('strategy', 'default')}` strategy",
                  f"- **Skipped files**: {len(tr.get('skipped_files', []))}"]
    for data, m in (config.get("metrics") or {}).items():
        lines += ["", f"## Metrics on `{data}` ({m.get('test_set')})", ""]
        if m.get("twin_transforms"):
            lines += [f"Leakage-free: the test scans with no twin ({describe_twins(m.get('dedup_threshold'), m['twin_transforms'])}) "
                      f"among the {m.get('reference_scans')} scans the model learnt from (train and validation).", ""]
        lines += ["| test set | n | n per class | accuracy (95% CI) | macro-F1 | macro-AUC |",
                  "|---|---|---|---|---|---|"]
        for part in ("official", "leakage_free"):
            r = m.get(part)
            if r:
                ci = r["accuracy_ci"]
                auc = "n/a" if r.get("macro_auc") is None else f"{r['macro_auc']:.4f}"
                per = " / ".join(f"{c} {pc['support']}" for c, pc in r["per_class"].items())
                lines.append(f"| {_PART_NAMES[part]} | {r['n']} | {per} | {r['accuracy']:.4f} "
                             f"({ci['low']:.4f}-{ci['high']:.4f}) | {r['macro_f1']:.4f} | {auc} |")
        grouped = [(part, m[part]["twin_groups"]) for part in ("official", "leakage_free")
                   if m.get(part) and m[part].get("twin_groups", {}).get("n_groups", m[part]["n"]) < m[part]["n"]]
        if grouped:
            lines += ["", "Test scans can be twins of one another too, so they are not all independent trials: "
                      + "; ".join(f"{_PART_NAMES[part]} ({g['n']}): {g['n_groups']} twin groups, accuracy "
                                  f"{g['group_weighted_accuracy']:.4f} counting each group once, 95% CI resampling "
                                  f"whole groups {g['low']:.4f}-{g['high']:.4f}" for part, g in grouped) + "."]
        for part in ("official", "leakage_free"):
            r = m.get(part)
            if not r:
                continue
            lines += ["", f"Per class, {_PART_NAMES[part]}:", "",
                      "| class | precision | recall | specificity | F1 | AUC | n |", "|---|---|---|---|---|---|---|"]
            for c, pc in r["per_class"].items():
                auc = "n/a" if pc.get("auc") is None else f"{pc['auc']:.4f}"
                cells = " | ".join("n/a" if pc[k] is None else f"{pc[k]:.4f}"
                                   for k in ("precision", "recall", "specificity", "f1"))
                lines.append(f"| {c} | {cells} | {auc} | {pc['support']} |")
        lines += ["", f"Reproduce: `python -m xai_bt evaluate {config.get('name')} --data {data}` "
                      "(from the bundle's parent folder, with the dataset at that path)."]
    return "\n".join(lines) + "\n"


def _soup_line(soup: dict[str, Any]) -> str:
    """Which bundles' weights were averaged, with what weights and how each was trained (xai_bt.model.soup)."""
    return "- **Model soup**: " + _soup_text(soup, "; the training record below is the first ingredient's")


def _soup_text(soup: dict[str, Any], note: str = "") -> str:
    """A soup's ingredients, weights and training commands; `note` goes after the reference."""
    ingredients = soup.get("ingredients", [])
    parts = ", ".join(f"`{i['name']}` x {i['weight']:.3g}" for i in ingredients)
    line = f"weights averaged from {parts} ({soup.get('reference')}){note}"
    made = [f"`{i['name']}`: `{i['command']}`" + (f" ({i['seconds'] / 60:.1f} min)" if i.get("seconds") else "")
            for i in ingredients if i.get("command")]
    if made:
        line += "; the ingredients were trained by " + "; ".join(made)
    return line


def _ensemble_line(ens: dict[str, Any]) -> str:
    """Which bundles' logits the network averages and how each was made (xai_bt.model.ensemble)."""
    members = ens.get("members", [])
    names = ", ".join("`" + m["name"] + "`" for m in members)
    joined = ", ".join("`" + n + "`" for n in ens.get("joined_layers", []))
    line = (f"- **Ensemble**: one network computing the mean of the logits of {names} ({ens.get('reference')}); "
            f"its CAM layers ({joined}) join the members' channels, so "
            "heatmaps explain the ensemble; the training record below is the first member's"
            + (f"; {ens['folded_batchnorm']} batch normalisations are folded into the convolutions before them "
               "(inference only)" if ens.get("folded_batchnorm") else ""))
    made = []
    for m in members:
        how = f"`{m['name']}`: "
        if m.get("soup"):
            how += _soup_text(m["soup"])
        elif m.get("command"):
            how += f"`{m['command']}`" + (f" ({m['seconds'] / 60:.1f} min)" if m.get("seconds") else "")
        else:
            continue
        made.append(how)
    if made:
        line += "; the members: " + "; ".join(made)
    return line


def _focus_lines(focus: dict[str, Any] | None) -> list[str]:
    """What focus-guided training added to the loss and which masks supervised (xai_bt.model.focus)."""
    if not focus:
        return []
    return [f"- **Focus-guided**: the loss adds {focus.get('weight')} x the share of the true class's activation "
            f"map on `{focus.get('layer')}` outside the expert tumor mask; {focus.get('training_scans_with_mask')} "
            f"of {focus.get('training_scans')} training scans got the mask of a masked twin in "
            f"`{focus.get('masked_root')}` (mirror-aware, r >= {focus.get('threshold')}); its "
            f"{focus.get('held_out_for_evaluation')} masked scans with no twin in training never supervise "
            "(they are the focus audit's scans), nor do their twins"]


def _imported_lines(rec: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """What an imported model is, what was given about it and what xai_bt assumed."""
    def how(key: str) -> str:
        return "**assumed**, not given" if key in rec.get("assumed", ()) else "given"
    inp = rec["input"]
    rgb = "each grayscale scan repeated to 3 channels" if inp["channels"] == 3 else "grayscale, 1 channel"
    return ["", "## Imported model", "",
            f"- **Source**: `{rec['source_name']}` ({rec['file_format']} file, Keras model `{rec['source_model']}`, "
            f"sha256 `{rec['sha256'][:16]}...`), wrapped unchanged as one nested layer; loaded in safe mode",
            f"- **Input**: {inp['size']} x {inp['size']} px ({'read from the model' if inp['size_from'] == 'model' else 'given'}), {rgb}",
            f"- **Pixel scaling**: `{rec['pixel_scale']}`: {rec['pixel_scale_means']} ({how('pixel_scale')})",
            f"- **Head cropping**: {'on' if config['preprocessing'].get('crop_to_head') else 'off'} ({how('crop_to_head')})",
            f"- **Classes** (output order, given): {', '.join(rec['given_classes'])}",
            f"- **Explained score**: {rec['score']}",
            "- **Training data**: unknown to xai_bt. Its test numbers leak if the test scans have twins among its "
            "training scans: `evaluate --train-data ROOT` (and `audit --train-data ROOT`) name what it learnt "
            "from, so the leakage-free subset leaves their twins out, mirrored ones included"]


def training_command(tc: dict[str, Any]) -> str:
    """The `python -m xai_bt train ...` line that repeats a run."""
    pre = tc.get("preprocessing", {})
    parts = ["python -m xai_bt train", f"--arch {tc.get('arch')}", f"--data {tc.get('data')}",
             f"--out {tc.get('out')}"]
    opts = [("task", "tumor"), ("epochs", None), ("batch_size", None), ("lr", None), ("fine_tune_lr", None),
            ("freeze_epochs", 0), ("weights", None), ("schedule", "plateau"), ("patience", 6),
            ("dropout", None), ("val_fraction", 0.15), ("split_csv", None), ("seed", 0), ("limit", None),
            ("view_model", None), ("init_from", None), ("strategy", "default"), ("time_limit", None), ("budget", None),
            ("label_smoothing", 0.0), ("ema", None), ("mixup", 0.0), ("cutmix", 0.0)]
    for key, default in opts:
        v = tc.get(key)
        if v is not None and v != default:
            flag = "--split" if key == "split_csv" else "--" + key.replace("_", "-")
            parts.append(f"{flag} {v}")
    if tc.get("focus_masks"):
        parts.append(f"--focus-masks {tc['focus_masks']} --focus-weight {tc.get('focus_weight', 1.0):g}")
    if tc.get("refit"):
        parts.append("--refit")
    if tc.get("val_apart_from_test"):
        parts.append("--val-apart-from-test")
    if not tc.get("augment", True):
        parts.append("--no-augment")
    if pre:
        parts.append(f"--image-size {pre.get('image_size')}")
        if not pre.get("crop_to_head", True):
            parts.append("--crop-to-head no")
        if pre.get("denoise"):
            parts.append(f"--denoise {pre['denoise']}")
        if pre.get("intensity", "none") != "none":
            parts.append(f"--intensity {pre['intensity']}")
    return " ".join(parts)


def write_model_card(bundle_path: str | Path) -> Path:
    from xai_bt.model.bundle import read_config

    config = read_config(bundle_path)
    out = Path(bundle_path) / "MODEL_CARD.md"
    out.write_text(render_model_card(config))
    return out
