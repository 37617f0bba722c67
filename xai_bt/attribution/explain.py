"""Explain predictions: every attribution method behind one call.

    explain(bundle, ["scan.jpg"], methods=("gradcam", "integrated_gradients"))  -> [Explanation, ...]
    explain_batch(keras_model, x, targets, methods)                               -> {method: (N, S, S)}
    attribute(keras_model, x, targets, methods)                                   -> {method: Attribution}

`explain` works on a model bundle (preprocessing, class names, view features, calibrated probabilities);
`explain_batch` and `attribute` on any flat Keras model whose first input is the image, `attribute`
also returning attributions over extra inputs (the two-stage view vector) and per-image details.
All methods are this package's own TensorFlow code (cams, gradients, perturbation) except the two SHAP
methods, which call the shap library; tf-keras-vis is the reference our tests compare against.
Method options are keyword arguments, each given to the methods that take it (see `OPTIONS`).
"""
from __future__ import annotations

import os
from typing import Any, Sequence, Union

import numpy as np

from xai_bt.attribution import cams, gradients, registry
from xai_bt.attribution.gradients import Attribution
from xai_bt.attribution.registry import METHODS, OPTIONS
from xai_bt.attribution.result import Explanation
from xai_bt.model import provenance

__all__ = ["attribute", "explain_batch", "explain", "METHODS", "OPTIONS"]

Target = Union[None, int, str, Sequence[Union[int, str]]]


def attribute(keras_model, x: np.ndarray, targets: int | Sequence[int] | np.ndarray,
              methods: Sequence[str] | str = ("gradcam",), layer: str | None = None,
              extra_inputs: Sequence[np.ndarray] | None = None, batch_size: int = 32,
              cam_passes: tuple[np.ndarray, np.ndarray] | None = None, **options: Any) -> dict[str, Attribution]:
    """Run `methods` on a batch `x` (N, S, S, C) for class indices `targets` (one, or one per image).

    `layer`: the CAM family's layer (default: the last layer with a spatial output). `extra_inputs`:
    the model's inputs after the image, e.g. [(N, 128) view vectors]. `cam_passes`: the layer's
    activations and the targets' gradients from `cams.layer_pass`, when the caller already ran it.
    Returns method -> Attribution.
    """
    methods = _check_methods(methods)
    x = np.asarray(x, np.float32)
    if x.ndim != 4:
        raise ValueError(f"x must be a batch (N, S, S, C), got shape {x.shape}")
    inputs = [x] + [np.asarray(a, np.float32) for a in (extra_inputs or ())]
    if len(inputs) != len(keras_model.inputs):
        raise ValueError(f"model {keras_model.name!r} takes {len(keras_model.inputs)} inputs; "
                         f"got the image and {len(inputs) - 1} extra input(s)")
    n_classes = gradients.score_output(keras_model).shape[-1]
    t = np.broadcast_to(np.asarray(targets), (len(x),)).astype(np.int32)
    if t.size and (t.min() < 0 or t.max() >= n_classes):
        raise ValueError(f"targets must be class indices in [0, {n_classes}), got {sorted(set(t.tolist()))}")
    _check_options(methods, options)

    out: dict[str, Attribution] = {}
    by_layer: dict[str | None, list[str]] = {}       # CAM methods by their own layer (None: `layer`)
    for m in methods:
        if registry.spec(m).is_cam:
            by_layer.setdefault(registry.split_layer(m)[1], []).append(m)
    for own_layer, names in by_layer.items():
        family = [registry.spec(m) for m in names]
        at = own_layer or layer or provenance.default_layer(keras_model)
        cam_options = {k: v for k, v in options.items() if any(k in s.options for s in family)}
        done = cams.cam_family(keras_model, inputs, t, family, at, batch_size=batch_size,
                               passes=cam_passes if own_layer is None else None, **cam_options)
        out.update({m: done[registry.spec(m).name] for m in names})
    for m in methods:
        s = registry.spec(m)
        if not s.is_cam:
            own = {k: v for k, v in options.items() if k in s.options}
            out[m] = s.function(keras_model, inputs, t, batch_size=batch_size, **own)
    return {m: out[m] for m in methods}


def explain_batch(keras_model, x: np.ndarray, targets: int | Sequence[int] | np.ndarray,
                  methods: Sequence[str] | str = ("gradcam",), layer: str | None = None,
                  extra_inputs: Sequence[np.ndarray] | None = None, batch_size: int = 32,
                  **options: Any) -> dict[str, np.ndarray]:
    """`attribute`, keeping only the maps: method -> (N, S, S) float32."""
    return {m: a.maps for m, a in attribute(keras_model, x, targets, methods, layer, extra_inputs,
                                            batch_size, **options).items()}


def explain(model, images, methods: Sequence[str] | str | None = None, target: Target = None,
            layer: str | None = None, network: str = "model", batch_size: int = 32,
            **options: Any) -> list[Explanation]:
    """Explain each scan with each method; one `Explanation` per scan.

    model: a Bundle or a bundle path. images: paths, arrays, or a prepared batch (N, S, S, 1).
    methods: default the bundle's audit-recommended method (`provenance.default_methods`), else Grad-CAM.
    target: None (each scan's predicted class), a class name or index, or one per scan.
    layer: the CAM layer (default: the bundle's last conv layer). network: "model" (the final
    decision: the tumor classifier; for a cascade, stage 1 for scans it calls no tumor and stage 2 for
    the others, see `_explain_cascade`) or a network of the bundle ("stage1", "stage2", "view"). For a
    two-stage model, the view vector is an input too: gradient methods attribute it (`view_attribution`);
    perturbation methods hold it fixed.
    """
    from xai_bt.model.bundle import Bundle, load_model

    bundle = model if isinstance(model, Bundle) else load_model(model)
    methods = _check_methods(methods if methods else provenance.default_methods(bundle, "explain"))
    _check_options(methods, options)
    if bundle.kind == "cascade" and network == "model":
        return _explain_cascade(bundle, images, methods, target, layer, batch_size, options)
    name, net = _network(bundle, network)
    names = provenance.network_classes(bundle, name)
    x, paths, image_notes = _prepare(bundle, images, target)
    audit = _audit_lines(bundle, methods)
    cam_layer = _cam_layer(bundle, net, layer, methods)
    if options.get("background") is not None:
        options["background"] = _background(bundle, net, options["background"], batch_size)

    explanations = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        extra = [bundle.view_features(xb, batch_size)] if len(net.inputs) > 1 else []
        # The CAM pass yields the network's logits too: predict from them instead of a second forward pass
        # (with no target given, it keeps every class's gradient until the prediction picks one).
        fixed = None if target is None else _resolve_targets(target, len(xb), names, start)
        passes, known = None, None
        if cam_layer:
            acts, grads, logits = cams.layer_pass(net, [xb, *extra], cam_layer, fixed, batch_size)
            known = {name: logits}
        pred = bundle.predict_prepared(xb, batch_size=batch_size, view_vectors=extra[0] if extra else None,
                                       known_logits=known)
        probs = _network_probabilities(bundle, pred, name)
        targets = probs.argmax(axis=1) if fixed is None else fixed
        if cam_layer:
            passes = (acts, grads if fixed is not None else grads[np.arange(len(xb)), targets])
        result = attribute(net, xb, targets, methods, cam_layer, extra, batch_size, cam_passes=passes, **options)
        pooled = acts.mean(axis=(1, 2)) if cam_layer and cam_layer == _pooled(bundle, name, net) else None
        notes = _warnings(bundle, xb, extra[0] if extra else None, image_notes[start:start + len(xb)], batch_size,
                          pooled)
        for i in range(len(xb)):
            explanations.append(Explanation(
                image=xb[i, ..., 0].copy(), maps={m: a.maps[i] for m, a in result.items()},
                target=int(targets[i]), target_name=names[targets[i]], probabilities=probs[i],
                class_names=names, model_name=bundle.name, path=paths[start + i],
                layer=cam_layer,
                view_probabilities=None if pred.view_probabilities is None else pred.view_probabilities[i],
                view_names=pred.view_names,
                view_attribution={m: a.inputs[0][i] for m, a in result.items() if a.inputs},
                extra={m: _info_at(a.info, i) for m, a in result.items() if a.info}, network=name,
                score=provenance.explained_score(bundle), warnings=notes[i],
                audit=dict(audit)))
    return explanations


def _explain_cascade(bundle, images, methods: tuple[str, ...], target: Target, layer: str | None,
                     batch_size: int, options: dict[str, Any]) -> list[Explanation]:
    """A cascade's four-class decision. Scans it calls (or whose target is) no tumor are explained by
    stage 1's "no_tumor" score, the others by stage 2's tumor-type score: the network that made the
    call. Probabilities and class names are the four-class ones; `Explanation.network` says which stage."""
    names = tuple(bundle.class_names)
    stage_classes = {stage: list(provenance.network_classes(bundle, stage)) for stage in ("stage1", "stage2")}
    x, paths, image_notes = _prepare(bundle, images, target)
    audit = _audit_lines(bundle, methods)
    background = options.pop("background", None)
    stage_options = {stage: options if background is None else
                     {**options, "background": _background(bundle, bundle.networks[stage], background, batch_size)}
                     for stage in stage_classes}
    out: list[Explanation] = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        pred = bundle.predict_prepared(xb, batch_size=batch_size)
        targets = pred.probabilities.argmax(axis=1) if target is None else _resolve_targets(target, len(xb), names, start)
        chunk: list[Explanation | None] = [None] * len(xb)
        notes = _warnings(bundle, xb, None, image_notes[start:start + len(xb)], batch_size)
        for stage, classes in stage_classes.items():
            rows = [i for i, t in enumerate(targets) if provenance.decision_network(bundle, names[t]) == stage]
            if not rows:
                continue
            net = bundle.networks[stage]
            stage_targets = [classes.index(names[targets[i]]) for i in rows]
            cam_layer = _cam_layer(bundle, net, layer, methods)
            result = attribute(net, xb[rows], stage_targets, methods, cam_layer, [], batch_size,
                               **stage_options[stage])
            for j, i in enumerate(rows):
                chunk[i] = Explanation(
                    image=xb[i, ..., 0].copy(), maps={m: a.maps[j] for m, a in result.items()},
                    target=int(targets[i]), target_name=names[targets[i]], probabilities=pred.probabilities[i],
                    class_names=names, model_name=bundle.name, path=paths[start + i], layer=cam_layer,
                    extra={m: _info_at(a.info, j) for m, a in result.items() if a.info}, network=stage,
                    score=provenance.explained_score(bundle), warnings=notes[i],
                    audit=dict(audit))
        out.extend(e for e in chunk if e is not None)     # every scan is decided by one of the two stages
    return out


# --- checking and resolving arguments ---------------------------------------------------------------

def _check_methods(methods: Sequence[str] | str) -> tuple[str, ...]:
    return registry.check_methods(methods)


def _check_options(methods: tuple[str, ...], options: dict[str, Any]) -> None:
    used = {k for m in methods for k in registry.spec(m).options}
    unused = sorted(set(options) - used)
    if unused:
        known = {m: sorted(registry.spec(m).options) for m in methods if registry.spec(m).options}
        raise TypeError(f"option(s) {unused} are not used by methods {list(methods)}; their options: {known}")


def _network(bundle, network: str):
    name = provenance.decision_network(bundle, "tumor") if network == "model" else network
    if name not in bundle.networks:
        raise ValueError(f"network {network!r} is not in this {bundle.kind} bundle; "
                         f"choose 'model' or one of {sorted(bundle.networks)}")
    return name, bundle.networks[name]


def _network_probabilities(bundle, pred, name: str) -> np.ndarray:
    if bundle.kind == "cascade":
        return pred.stage_probabilities[name]
    return pred.view_probabilities if name == "view" else pred.probabilities


def _prepare(bundle, images, target: Target) -> tuple[np.ndarray, list[str | None], list[list[str]]]:
    """The prepared batch, each scan's path and its image-check warnings (`model.competence`), each file
    decoded once; no warnings for a prepared batch, whose pixels no longer show the scan as stored. A
    per-scan target list must match the scans."""
    from xai_bt.model.bundle import _is_model_batch
    from xai_bt.model.competence import decode_scan, scan_warnings

    if isinstance(images, np.ndarray) and (images.ndim not in (2, 3) or _is_model_batch(images, bundle.preprocessing)):
        x = bundle.prepare(images)
        notes: list[list[str]] = [[] for _ in range(len(x))]
    else:
        items = [images] if isinstance(images, (str, os.PathLike, np.ndarray)) else list(images)
        decoded = [decode_scan(item) for item in items]
        x = bundle.prepare([gray for gray, _ in decoded])
        notes = [scan_warnings(gray, rgb) for gray, rgb in decoded]
    if not (target is None or isinstance(target, (str, int, np.integer))) and len(target) != len(x):
        raise ValueError(f"give one target for all scans or one per scan ({len(x)}), got {len(target)}")
    return x, _paths(images, len(x)), notes


def _audit_lines(bundle, methods) -> dict[str, str]:
    """Each method's focus-audit score from the bundle's stored recommendation (`audit.recommend.score_line`),
    for the methods the audit measured; empty for a bundle without one."""
    from xai_bt.audit.recommend import score_line

    rec = provenance.recommended_explanation(bundle)
    if not rec:
        return {}
    lines = {m: score_line(rec, m) for m in methods}
    return {m: line for m, line in lines.items() if line}


def _warnings(bundle, xb: np.ndarray, view_vectors: np.ndarray | None, image_notes: list[list[str]],
              batch_size: int, feats: np.ndarray | None = None) -> list[list[str]]:
    """Each scan's competence warnings: its image checks, then a fitted bundle's feature check (`feats`: the
    checked network's features when the CAM pass already gave them, else one forward pass)."""
    from xai_bt.model import competence

    notes = [list(n) for n in image_notes]
    if competence.has_feature_check(bundle):
        if feats is None:
            views = view_vectors if competence.feature_network(bundle) == "model" else None
            feats = competence.features(bundle, xb, view_vectors=views, batch_size=batch_size)
        notes = [n + w for n, w in zip(notes, competence.feature_warnings(bundle, feats))]
    return notes


def _pooled(bundle, name: str, net) -> str | None:
    """The layer whose mean activations are the checked features, when `net` is the checked network of a
    fitted bundle (then the CAM pass on that layer yields them); else None."""
    from xai_bt.model import competence

    if not competence.has_feature_check(bundle) or name != competence.feature_network(bundle):
        return None
    return competence.pooled_layer(net)


def _cam_layer(bundle, net, layer: str | None, methods: tuple[str, ...]) -> str | None:
    """The CAM family's layer on `net` when a CAM method is asked for, else None."""
    if not any(registry.spec(m).is_cam for m in methods):
        return None
    return provenance.cam_layer(bundle, net, layer)


def _resolve_targets(target: int | str | Sequence[int | str], n: int, names: tuple[str, ...],
                     start: int) -> np.ndarray:
    """Class indices of a given target for a chunk of `n` scans starting at `start`."""
    if isinstance(target, (str, int, np.integer)):
        items = [target] * n
    else:
        items = list(target)[start:start + n]
    out = []
    for t in items:
        if isinstance(t, str):
            if t not in names:
                raise ValueError(f"unknown class {t!r}; this network's classes: {', '.join(names)}")
            out.append(names.index(t))
        elif not 0 <= int(t) < len(names):
            raise ValueError(f"target {t} out of range for {len(names)} classes ({', '.join(names)})")
        else:
            out.append(int(t))
    return np.array(out)


def _paths(images, n: int) -> list[str | None]:
    if isinstance(images, (str, os.PathLike)):
        return [str(images)]
    if isinstance(images, (list, tuple)):
        return [str(p) if isinstance(p, (str, os.PathLike)) else None for p in images]
    return [None] * n


def _background(bundle, net, background, batch_size: int) -> list[np.ndarray]:
    """shap_gradient's background scans -> prepared batch, plus their view vectors for a two-input net."""
    bg = bundle.prepare(background)
    return [bg, bundle.view_features(bg, batch_size)] if len(net.inputs) > 1 else [bg]


def _info_at(info: dict[str, Any], i: int) -> dict[str, Any]:
    """One image's details: per-image arrays indexed, settings as they are."""
    return {k: (v[i].item() if isinstance(v, np.ndarray) else v) for k, v in info.items()}
