"""Model soups: one network whose weights are the weighted mean of several fine-tunes of one start.

Averaging the weights of networks fine-tuned from the same initialisation (Wortsman et al. 2022, "Model
soups"; WiSE-FT, Wortsman et al. 2022, "Robust fine-tuning of zero-shot models") often beats each of them at
the cost of one network. In xai_bt the natural pair is a classifier and its focus-guided fine-tune
(`train --init-from B --focus-masks ...`): the mixing weight trades the first's accuracy for the second's
maps that point at the tumor. Choose it on validation (`calibrate` prints the validation numbers), never
on a test set.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xai_bt.model.bundle import BUNDLE_FILE, BundleError, load_model, write_config

#: bundle.json entries fitted to one network's outputs: a soup must refit them (calibrate, competence, audit)
FITTED_TO_OUTPUTS = ("temperature", "class_bias", "calibration", "tta", "competence", "metrics", "explanation")
REFERENCE = "Wortsman et al. 2022 (model soups; WiSE-FT)"


def mix_weights(weight_lists: Sequence[Sequence[np.ndarray]], mix: Sequence[float]) -> list[np.ndarray]:
    """The `mix`-weighted mean of each float array across the lists (integer arrays, e.g. step counters,
    must agree and are kept); a ValueError if the lists do not describe one architecture."""
    first = weight_lists[0]
    for i, other in enumerate(weight_lists[1:], 1):
        if len(other) != len(first) or any(a.shape != b.shape for a, b in zip(first, other)):
            raise ValueError(f"ingredient {i + 1} has another architecture than the first (weight shapes differ)")
    out = []
    for arrays in zip(*weight_lists):
        if np.issubdtype(arrays[0].dtype, np.floating):
            out.append(sum(float(w) * a.astype(np.float64) for w, a in zip(mix, arrays)).astype(arrays[0].dtype))
        elif all(np.array_equal(arrays[0], a) for a in arrays[1:]):
            out.append(arrays[0])
        else:
            raise ValueError("the ingredients' integer weights differ; they cannot be averaged")
    return out


def _check_compatible(configs: list[dict[str, Any]], paths: list[Path]) -> None:
    """Same kind, classes and preprocessing, and one training split: else the soup would not be one model."""
    for key in ("kind", "class_names", "preprocessing", "last_conv_layer"):
        for p, c in zip(paths[1:], configs[1:]):
            if c.get(key) != configs[0].get(key):
                raise BundleError(f"{p}: its {key} differs from {paths[0]}'s; a soup needs one model, fine-tuned")
    splits = [(p / "split.csv").read_bytes() if (p / "split.csv").is_file() else None for p in paths]
    for p, s in zip(paths[1:], splits[1:]):
        if s != splits[0]:
            raise BundleError(f"{p}: its split.csv differs from {paths[0]}'s; the ingredients must share one "
                              "training split (train the fine-tune with --split or --init-from on the first)")


def check_target(out: str | os.PathLike, sources: Sequence[Path], what: str, parts: str, overwrite: bool) -> Path:
    """The folder for a bundle made from `sources`: not one of them, and not an existing bundle unless
    `overwrite`."""
    target = Path(out)
    if target.resolve() in {p.resolve() for p in sources}:
        raise ValueError(f"{target}: {what} cannot replace one of its {parts}")
    if (target / BUNDLE_FILE).exists() and not overwrite:
        raise FileExistsError(f"{target}: a model bundle is already there; pass overwrite=True (--overwrite) to replace it")
    return target


def soup_bundles(ingredients: Sequence[str | os.PathLike], out: str | os.PathLike,
                 weights: Sequence[float] | None = None, *, overwrite: bool = False) -> Path:
    """Write the bundle whose networks are the `weights`-weighted mean (default: equal) of the
    `ingredients`' networks. The first ingredient gives the configuration and the training record; what was
    fitted to its outputs (temperature, TTA, competence, metrics, explanation) is dropped, to be refitted."""
    paths = [Path(p) for p in ingredients]
    if len(paths) < 2:
        raise ValueError("a soup needs at least two bundles")
    mix = np.ones(len(paths)) if weights is None else np.asarray(weights, np.float64)
    if mix.shape != (len(paths),) or np.any(mix < 0) or mix.sum() <= 0:
        raise ValueError(f"give one non-negative weight per bundle ({len(paths)}), not all zero")
    mix = mix / mix.sum()
    target = check_target(out, paths, "the soup", "ingredients", overwrite)
    bundles = [load_model(p) for p in paths]
    paths = [b.path for b in bundles]
    configs = [b.config for b in bundles]
    _check_compatible(configs, paths)
    networks = bundles[0].networks
    for name, net in networks.items():
        net.set_weights(mix_weights([b.networks[name].get_weights() for b in bundles], mix))
    target.mkdir(parents=True, exist_ok=True)
    for name, net in networks.items():
        net.save(target / f"{name}.keras")
    for extra in ("split.csv", "history.csv"):
        if (paths[0] / extra).is_file():
            shutil.copyfile(paths[0] / extra, target / extra)
    config = {k: v for k, v in configs[0].items() if k not in FITTED_TO_OUTPUTS}
    config.update(name=target.name, temperature=1.0,
                  soup={"method": "weight averaging", "reference": REFERENCE,
                        "ingredients": [_ingredient(p, c, w) for p, c, w in zip(paths, configs, mix)]})
    write_config(target, config)
    from xai_bt.model.card import write_model_card

    write_model_card(target)
    return target


def _ingredient(path: Path, config: dict[str, Any], weight: float) -> dict[str, Any]:
    """What the soup records of one ingredient: where it was, its weight, and the command and time that
    trained it, so the card tells how to make the soup again (the first ingredient's record alone does not)."""
    from xai_bt.model.card import training_command

    entry: dict[str, Any] = {"bundle": str(path), "name": config.get("name", path.name), "weight": float(weight)}
    tr = config.get("training") or {}
    if tr.get("config"):
        entry["command"] = training_command(tr["config"])
        entry["seconds"] = tr.get("seconds")
    if config.get("soup"):
        entry["soup"] = config["soup"]
    return entry
