"""The one registry of explanation methods: each method's name, label, kind, function and options.

Three kinds, three calling conventions (the shared CAM pass computes activations and gradients once):

- ``cam_weighting``: ``function(acts, grads) -> (N, h, w)``, a pure weighting of the layer's activations;
- ``scored_cam``: ``function(model, inputs, targets, acts, batch_size, **options) -> (N, h, w)``, from
  extra passes (forward passes on masked images, or CAM passes on other layers);
- ``input_attribution``: ``function(model, inputs, targets, *, batch_size, **options) -> Attribution``.

Adding a method is one function and one ``register`` call; `attribute`, the figures, the report, the web
page, the audit and the command line all read their method names, labels and defaults from here.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from xai_bt.attribution import cams, gradients, occlusion, shapley

__all__ = ["KINDS", "MethodSpec", "register", "unregister", "spec", "names", "label", "check_methods", "METHODS", "OPTIONS",
           "LAYER_SEP", "split_layer", "is_method",
           "EXPLAIN_DEFAULT", "REVIEW_DEFAULT", "AUDIT_DEFAULT"]

KINDS = ("cam_weighting", "scored_cam", "input_attribution")
CAM_KINDS = ("cam_weighting", "scored_cam")


@dataclass(frozen=True)
class MethodSpec:
    """One explanation method. `options`: its keyword options and their defaults. `signed`: its maps can be
    negative (evidence against the class). `slow`: many forward passes per scan (seconds on a CPU)."""

    name: str
    label: str
    kind: str
    function: Callable[..., Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    signed: bool = False
    slow: bool = False
    reference: str = ""

    @property
    def is_cam(self) -> bool:
        """Uses the CAM layer (and the shared CAM pass)."""
        return self.kind in CAM_KINDS


_REGISTRY: dict[str, MethodSpec] = {}


def _keyword_options(fn: Callable[..., Any]) -> dict[str, Any]:
    """A function's keyword-only parameters and defaults, less the batch size every method takes."""
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name != "batch_size"}


def register(name: str, label: str, kind: str, function: Callable[..., Any], *,
             options: Mapping[str, Any] | None = None, signed: bool = False, slow: bool = False,
             reference: str = "") -> MethodSpec:
    """Add a method. `options` default to the function's keyword-only parameters (input attributions)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if name in _REGISTRY:
        raise ValueError(f"method {name!r} is already registered")
    if options is None:
        options = _keyword_options(function) if kind == "input_attribution" else {}
    method = MethodSpec(name, label, kind, function, MappingProxyType(dict(options)), signed, slow, reference)
    _REGISTRY[name] = method
    return method


def unregister(name: str) -> MethodSpec:
    """Remove a method added with `register` (e.g. a plug-in or a test's own method); returns its spec."""
    return _REGISTRY.pop(spec(name).name)


#: joins a CAM method and its own layer: "layercam@block6a_expand_activation"
LAYER_SEP = "@"


def split_layer(name: str) -> tuple[str, str | None]:
    """("layercam", "block6a_expand_activation") for "layercam@block6a_expand_activation"; (name, None)."""
    base, sep, layer = name.partition(LAYER_SEP)
    return (base, layer or None) if sep else (name, None)


def spec(name: str) -> MethodSpec:
    """The registered method `name` (a CAM method may carry its own layer, "name@layer"); a ValueError
    naming the choices otherwise."""
    base, layer = split_layer(name)
    try:
        found = _REGISTRY[base]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(_REGISTRY)}") from None
    if layer is not None and not found.is_cam:
        raise ValueError(f"{name!r}: only CAM methods take a layer ({base} works on the input)")
    return found


def is_method(name: str) -> bool:
    """`name` is a registered method, or a CAM method with its own layer."""
    try:
        spec(name)
    except ValueError:
        return False
    return True


def names(kind: str | Sequence[str] | None = None, slow: bool | None = None) -> tuple[str, ...]:
    """Registered method names in registration order, optionally of one kind (or kinds) or speed."""
    kinds = (kind,) if isinstance(kind, str) else kind
    return tuple(m.name for m in _REGISTRY.values()
                 if (kinds is None or m.kind in kinds) and (slow is None or m.slow == slow))


def label(name: str) -> str:
    """How a method is named in figures and pages ("Layer-CAM (block6a_expand_activation)" for a CAM
    method on its own layer); an unregistered name is shown as it is."""
    if not is_method(name):
        return name
    base, layer = split_layer(name)
    return _REGISTRY[base].label + (f" ({layer})" if layer else "")


def check_methods(methods: Sequence[str] | str) -> tuple[str, ...]:
    """Method names, duplicates dropped, order kept; 'all' means every method. ValueError on unknown names."""
    if isinstance(methods, str):
        methods = names() if methods.strip().lower() == "all" else [m.strip() for m in methods.split(",") if m.strip()]
    methods = tuple(dict.fromkeys(methods))
    unknown = [m for m in methods if not is_method(m)]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown or list(methods)}; choose from {', '.join(_REGISTRY)}")
    return methods


# --- the methods ------------------------------------------------------------------------------------------

register("gradcam", "Grad-CAM", "cam_weighting", cams.gradcam, reference="Selvaraju et al. 2017")
register("gradcam++", "Grad-CAM++", "cam_weighting", cams.gradcam_plus_plus, reference="Chattopadhyay et al. 2018")
register("layercam", "Layer-CAM", "cam_weighting", cams.layercam, reference="Jiang et al. 2021")
register("hirescam", "HiResCAM", "cam_weighting", cams.hirescam, reference="Draelos & Carin 2020")
register("xgradcam", "XGrad-CAM", "cam_weighting", cams.xgradcam, reference="Fu et al. 2020")
register("scorecam", "Score-CAM", "scored_cam", cams.scorecam, slow=True, reference="Wang et al. 2020")
register("fasterscorecam", "Faster Score-CAM", "scored_cam", cams.scorecam, options={"max_n": 10},
         reference="Wang et al. 2020 (faster variant of tf-keras-vis)")
register("layercam_fusion", "Layer-CAM (fused layers)", "scored_cam", cams.layercam_fusion,
         options={"layers": None, "fuse": "mean"}, reference="Jiang et al. 2021 (layer fusion)")
# the same layers' geometric mean: the fine map where the coarse ones agree (less mass off the tumor)
register("layercam_product", "Layer-CAM (fused layers, product)", "scored_cam", cams.layercam_fusion,
         options={"layers": None, "fuse": "product"}, reference="Jiang et al. 2021 (layer fusion), product rule")
register("saliency", "Saliency", "input_attribution", gradients.saliency, reference="Simonyan et al. 2014")
register("smoothgrad", "SmoothGrad", "input_attribution", gradients.smoothgrad, reference="Smilkov et al. 2017")
register("integrated_gradients", "Integrated Gradients", "input_attribution", gradients.integrated_gradients,
         signed=True, reference="Sundararajan et al. 2017")
register("occlusion", "Occlusion", "input_attribution", occlusion.occlusion, signed=True, slow=True,
         reference="Zeiler & Fergus 2014")
register("shap_gradient", "SHAP (gradient)", "input_attribution", shapley.gradient_shap, signed=True, slow=True,
         reference="Lundberg & Lee 2017 (shap.GradientExplainer)")
register("shap_partition", "SHAP (partition)", "input_attribution", shapley.partition_shap, signed=True, slow=True,
         reference="Lundberg & Lee 2017 (shap.PartitionExplainer)")

#: every registered method, in registration order (a snapshot taken at import; `names()` is live)
METHODS: tuple[str, ...] = names()
#: method -> its options and their defaults
OPTIONS: dict[str, dict[str, Any]] = {m: dict(_REGISTRY[m].options) for m in METHODS}
#: what `explain` and `python -m xai_bt explain` run when no method is named
EXPLAIN_DEFAULT: tuple[str, ...] = ("gradcam",)
#: what the review report and the web page show when no method is named
REVIEW_DEFAULT: tuple[str, ...] = ("gradcam", "layercam")
#: what the focus audit scores when no method is named
AUDIT_DEFAULT: tuple[str, ...] = ("gradcam", "gradcam++", "layercam", "saliency", "smoothgrad",
                                  "integrated_gradients")
