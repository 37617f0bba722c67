"""Layers by path, through nested models: listing, naming, and the activation pass of a nested layer.

Transfer-learning code nests its backbone as one layer of the outer model (`x = base(x)`), so the
backbone's conv layers are not in the outer graph and `keras.Model(outer.inputs, inner.output)` fails
("Graph disconnected" in Keras 2, "Output ... is not connected to `inputs`" in Keras 3; tf-keras-vis
issues 63 and 71, tensorflow#44462, keras#16355). Here a layer
is named by its path, `backbone/block_16_project`, and its pass is built from pieces that are each
connected: the outer graph up to the nested model's input, the nested model up to the layer and its own
output, and the outer graph from the nested model's output to the score.
"""
from __future__ import annotations

import re
from typing import Any, Callable

SEPARATOR = "/"
#: name prefix of the input-adapter layers an imported model is wrapped in: not CAM candidates
ADAPTER = "xai_bt_input_"
#: name prefix of an ensemble network (xai_bt.model.ensemble), and of each member's own layers: m0_, m1_, ...
ENSEMBLE_NAME = "ensemble_of_"
ENSEMBLE_MEMBER = re.compile(r"^m\d+_")


def is_nested_model(layer: Any) -> bool:
    """True for a layer that is itself a functional or Sequential model (its layers have paths)."""
    import keras

    return isinstance(layer, keras.Model) and hasattr(layer, "layers")


def leaf_layers(model, prefix: str = "") -> list[tuple[str, Any]]:
    """(path, layer) of every layer that is not itself a model, nested models' layers included, input side
    first: what "every layer" means for a network with a nested backbone."""
    out: list[tuple[str, Any]] = []
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        out.extend(leaf_layers(layer, path + SEPARATOR) if is_nested_model(layer) else [(path, layer)])
    return out


def get_layer(model, path: str):
    """The layer at `path` (`backbone/block_16_project`; a plain name is a top-level layer)."""
    layer = model
    for part in path.split(SEPARATOR):
        layer = layer.get_layer(part)
    return layer


def spatial_layer_shapes(model, prefix: str = "") -> list[tuple[str, tuple[int, int, int]]]:
    """(path, (h, w, channels)) of every layer with an (N, H, W, C) output, nested models' layers
    included (the nested model itself is not listed: its output is its last layer's), input side first."""
    import keras

    out: list[tuple[str, tuple[int, int, int]]] = []
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if (isinstance(layer, keras.layers.InputLayer) or layer.name.startswith(ADAPTER) or _is_preprocessing(layer)
                or getattr(layer, "routing_only", False)):
            continue
        if is_nested_model(layer):
            out.extend(spatial_layer_shapes(layer, path + SEPARATOR))
            continue
        try:
            shape = tuple(layer.output.shape)
        except (AttributeError, ValueError):  # a layer called more than once has no single output
            continue
        if len(shape) == 4:
            out.append((path, tuple(int(s) if s is not None else -1 for s in shape[1:])))  # type: ignore[arg-type]
    return out


def _is_preprocessing(layer: Any) -> bool:
    """Input preprocessing and augmentation (Rescaling, Resizing, RandomFlip, ...): spatial, but a CAM there
    only repeats the input, so they are not offered as CAM layers."""
    import keras

    fixed = (keras.layers.Rescaling, keras.layers.Resizing, keras.layers.Normalization, keras.layers.CenterCrop)
    return isinstance(layer, fixed) or type(layer).__name__.startswith("Random")


def resolve(model, name: str, candidates: list[str] | None = None) -> str:
    """A layer's full path from its full path or a unique tail of it (`block_16_project`,
    `backbone/block_16_project`); ValueError naming some candidates otherwise."""
    paths = candidates if candidates is not None else [p for p, _ in spatial_layer_shapes(model)]
    if name in paths:
        return name
    tails = [p for p in paths if p.endswith(SEPARATOR + name)]
    if len(tails) == 1:
        return tails[0]
    if len(tails) > 1:
        raise ValueError(f"layer {name!r} is ambiguous in model {model.name!r}: {', '.join(tails[:4])}; "
                         "give its full path")
    raise ValueError(f"unknown layer {name!r}: not a spatial (N, H, W, C) layer of model {model.name!r}; "
                     f"e.g. {', '.join(paths[-5:])} (`explain --list-layers` lists them all)")


def node_tensors(outer, inner) -> tuple[list, list]:
    """The input and output tensors of `inner` (a layer of `outer`) in `outer`'s graph."""
    nodes = inner._inbound_nodes
    if len(nodes) != 1:
        raise ValueError(f"layer {inner.name!r} is called {len(nodes)} times in {outer.name!r}; "
                         "its activations are not one tensor")
    return list(nodes[0].input_tensors), list(nodes[0].output_tensors)


def activation_pass(model, path: str, score: Any) -> Callable[..., tuple[Any, Any]]:
    """A callable `(inputs, training=False) -> (activations of `path`, `score`)` on `model`'s inputs,
    where `score` is an output tensor of `model`'s graph; differentiable end to end (call it under a
    GradientTape). A top-level layer is one sub-model; a nested one is split at its nested model."""
    import keras

    head, _, rest = path.partition(SEPARATOR)
    layer = model.get_layer(head)
    if not rest:
        sub = keras.Model(model.inputs, [layer.output, score])
        return lambda inputs, training=False: tuple(sub(inputs, training=training))
    if not is_nested_model(layer):
        raise ValueError(f"{head!r} in {model.name!r} is not a nested model, so it has no layer {rest!r}")
    ins, outs = node_tensors(model, layer)
    if len(ins) != 1 or len(outs) != 1 or len(layer.inputs) != 1:
        raise ValueError(f"nested model {head!r} must have one input and one output for layer paths")
    before = _part(model.inputs, ins[0])
    inner = activation_pass(layer, rest, layer.outputs[0])
    after = _part([outs[0], *model.inputs[1:]], score)

    def run(inputs, training=False):
        listed = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        acts, nested_out = inner(before(listed, training), training=training)
        return acts, after([nested_out, *listed[1:]], training)
    return run


def _part(inputs: list, output: Any) -> Callable[[list, bool], Any]:
    """The graph from the first of `inputs` (and, only where it needs them, the others) to `output`,
    as a callable on the list of all of them; the identity when `output` is the first input."""
    import keras

    if output is inputs[0]:
        return lambda values, training: values[0]
    try:
        sub = keras.Model(inputs[0], output)
        return lambda values, training: sub(values[0], training=training)
    except ValueError:  # the part needs the further inputs too (a view vector joining the head)
        sub = keras.Model(inputs, output)
        return lambda values, training: sub(values, training=training)
