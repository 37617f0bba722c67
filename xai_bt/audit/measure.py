"""What the focus audit measures with the bundle's explained network: probabilities, maps and their scores
for a batch of scans, and the two subset checks (faithfulness, cascading randomisation).

The network, its classes and the CAM layer come from :mod:`xai_bt.model.provenance`; the scores from
:mod:`xai_bt.audit.localisation`, :mod:`xai_bt.audit.shortcut`, :mod:`xai_bt.audit.faithfulness` and
:mod:`xai_bt.audit.randomisation`.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from xai_bt.audit.localisation import LOCALISATION_SCORES, localisation_scores
from xai_bt.audit.shortcut import shortcut_scores

__all__ = ["FAITHFULNESS_SCORES", "MAP_SCORES", "ROAD_PERCENTAGES", "SHORTCUT_SCORES", "cam_layer", "cascade_layers",
           "explain_maps", "explained_network", "faithfulness_scores", "model_batch", "network_probabilities",
           "sanity_check", "score_maps"]

SHORTCUT_SCORES = ("outside_head_share", "corner_share")
#: Per-map scores against the mask and the scan, in scores.csv order.
MAP_SCORES = LOCALISATION_SCORES + SHORTCUT_SCORES
#: Per-image faithfulness scores: deletion AUC and ROAD most-relevant-first (lower = more faithful),
#: insertion AUC and ROAD least-relevant-first (higher = more faithful); ROAD as mean probability.
FAITHFULNESS_SCORES = ("deletion_auc", "insertion_auc", "road_morf", "road_lerf")
ROAD_PERCENTAGES = (10, 30, 50, 70, 90)


# ------------------------------------------------------------------------------------------ the network
def explained_network(bundle) -> tuple[Any, tuple[str, ...]]:
    """The network whose maps are audited and its class names: the one deciding the tumor classes the masks
    outline (`provenance.decision_network`: stage 2 of a cascade, as `explain` uses for a tumor call)."""
    from xai_bt.model.provenance import decision_network, network_classes

    name = decision_network(bundle, "tumor")
    return bundle.networks[name], network_classes(bundle, name)


def cam_layer(bundle, layer: str | None) -> str:
    """The CAM layer of the audited network (`provenance.cam_layer`)."""
    from xai_bt.model import provenance

    return provenance.cam_layer(bundle, explained_network(bundle)[0], layer)


def model_batch(x: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 pixels -> (N, S, S, 1) float32, the model's input."""
    return x[..., None].astype(np.float32)


def network_probabilities(bundle, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Calibrated probabilities (N, K) of the explained network for a model batch (N, S, S, 1)."""
    pred = bundle.predict_prepared(x, batch_size=batch_size)
    return pred.stage_probabilities["stage2"] if bundle.kind == "cascade" else pred.probabilities


# --------------------------------------------------------------------------------------- maps and scores
def explain_maps(bundle, x: np.ndarray, targets: np.ndarray, methods: Sequence[str], layer: str | None,
                 batch_size: int = 32) -> dict[str, np.ndarray]:
    """Maps (N, S, S) per method for one batch of model pixels (N, S, S), explaining `targets`."""
    from xai_bt.attribution.explain import explain_batch

    net, _ = explained_network(bundle)
    xb = model_batch(x)
    extra = [bundle.view_features(xb, batch_size)] if len(net.inputs) > 1 else None
    return explain_batch(net, xb, targets, list(methods), layer=layer, extra_inputs=extra, batch_size=batch_size)


def score_maps(maps: np.ndarray, masks: np.ndarray, images: np.ndarray, tolerance_px: float,
               k: float = 0.05) -> dict[str, np.ndarray]:
    """Localisation and shortcut scores of maps (N, S, S) against masks and the model's pixels."""
    return {**localisation_scores(maps, masks, tolerance_px=tolerance_px, k=k),
            **shortcut_scores(maps, images)}


# ------------------------------------------------------------------------------------ optional checks
def faithfulness_scores(bundle, x: np.ndarray, targets: np.ndarray, maps: dict[str, np.ndarray],
                        steps: int = 20, batch_size: int = 64) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Deletion / insertion AUC and ROAD (MoRF and LeRF, mean probability over ROAD_PERCENTAGES) per
    method and image; also the mean curves for the report."""
    from xai_bt.audit.faithfulness import deletion_insertion, road

    xb = model_batch(x)

    def predict(batch: np.ndarray) -> np.ndarray:
        return network_probabilities(bundle, batch, batch_size)

    scores, curves = {}, {}
    for method, m in maps.items():
        di = deletion_insertion(predict, xb, m, targets, steps=steps, batch_size=batch_size)
        morf = road(predict, xb, m, targets, ROAD_PERCENTAGES, order="morf", batch_size=batch_size)
        lerf = road(predict, xb, m, targets, ROAD_PERCENTAGES, order="lerf", batch_size=batch_size)
        scores[method] = {"deletion_auc": di["deletion_auc"], "insertion_auc": di["insertion_auc"],
                          "road_morf": morf["probability"].mean(axis=1),
                          "road_lerf": lerf["probability"].mean(axis=1)}
        curves[method] = {"fraction": di["curves"]["fraction"].tolist(),
                          "deletion": di["curves"]["deletion"].mean(axis=0).tolist(),
                          "insertion": di["curves"]["insertion"].mean(axis=0).tolist(),
                          "road_percentages": list(ROAD_PERCENTAGES),
                          "road_morf_accuracy": morf["accuracy"].tolist(),
                          "road_lerf_accuracy": lerf["accuracy"].tolist()}
    return scores, curves


def cascade_layers(keras_model) -> list[str]:
    """Randomisation steps, top-down: one per run of weighted layers sharing a block prefix
    (`block7a_...`/`block7b_...` -> block7, `stage3_...`, `conv5_...`; else the name's first word, as
    `logits`, `top`, `stem`). Each step is the run's lowest layer, so the step randomises the whole block
    (in an ensemble, in all its members at once)."""
    from xai_bt.audit.randomisation import weighted_layers
    from xai_bt.model.layers import ENSEMBLE_MEMBER, ENSEMBLE_NAME

    ensemble = keras_model.name.startswith(ENSEMBLE_NAME)

    def key(path: str) -> str:  # the block of the layer's own name, within its nested model
        parent, _, name = path.rpartition("/")
        if ensemble:  # one step randomises that block in every member (m0_block7a_..., m1_block7a_...)
            name = ENSEMBLE_MEMBER.sub("", name)
        match = re.match(r"[A-Za-z]+_?\d+", name)
        return parent + "/" + (match.group(0).lower() if match else name.split("_")[0].lower())

    steps: list[str] = []
    last_key = None
    for name in weighted_layers(keras_model):
        if key(name) == last_key:
            steps[-1] = name
        else:
            steps.append(name)
            last_key = key(name)
    return steps


def sanity_check(bundle, x: np.ndarray, targets: np.ndarray, methods: Sequence[str], layer: str | None,
                 batch_size: int = 32) -> dict[str, Any]:
    """The cascading randomisation test per method on a few scans: Spearman / SSIM after each step and
    whether the method fails (maps after full randomisation still correlate > 0.5)."""
    from xai_bt.attribution.explain import explain_batch
    from xai_bt.audit.randomisation import flag_insensitive, randomisation_test

    net, _ = explained_network(bundle)
    steps = cascade_layers(net)
    out: dict[str, Any] = {"layers": steps, "n_images": int(len(x)), "methods": {}}
    for method in methods:
        def explain_fn(model, xb: np.ndarray, t: np.ndarray, method: str = method) -> np.ndarray:
            return explain_batch(model, xb, t, [method], layer=layer, batch_size=batch_size)[method]

        res = randomisation_test(net, explain_fn, model_batch(x), targets, layers=steps)
        out["methods"][method] = {"fails": flag_insensitive(res),
                                  "steps": [{k: r[k] for k in ("layer", "spearman", "ssim")} for r in res]}
    return out
