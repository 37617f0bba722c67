"""Ensembles as one network: the mean of several classifiers' logits, in one flat Keras graph.

Averaging the logits of independently trained networks (Lakshminarayanan et al. 2017, "deep ensembles")
is the most reliable way to buy accuracy and calibration with compute. Built as one network, an ensemble
is an ordinary "single" bundle: predict, calibrate, evaluate, competence and every explanation method work
unchanged. At each CAM layer the members' activations are joined into one layer of that name (their
channels side by side), which the members read their own channels back from; the gradient of the mean logit
then reaches that layer as the members' gradients, so Grad-CAM / Layer-CAM there is the members' maps summed,
the explanation of the ensemble itself rather than of one member. The head is one dense layer over the
members' pooled features whose weights are theirs stacked and divided by their number: exactly the mean
logit. Choose members and compare ensembles on validation (`calibrate`), never on a test set.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Generator, Sequence

import keras
import numpy as np

from xai_bt.model.bundle import BundleError, load_model, write_config
from xai_bt.model.layers import ENSEMBLE_NAME
from xai_bt.model.soup import FITTED_TO_OUTPUTS, _check_compatible, _ingredient, check_target

REFERENCE = "Lakshminarayanan et al. 2017 (deep ensembles): the mean of the members' logits"


@keras.saving.register_keras_serializable(package="xai_bt")
class ChannelSlice(keras.layers.Layer):
    """Channels [start, stop) of the last axis: how an ensemble member reads its own channels back from a
    joined layer. Routing only, so it is not offered as a CAM layer (`xai_bt.model.layers`)."""

    routing_only = True

    def __init__(self, start: int, stop: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, x):
        return x[..., self.start:self.stop]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.stop - self.start)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "start": self.start, "stop": self.stop}


def _copy(layer, name: str):
    """A fresh layer like `layer` (same config, named `name`); its weights are set once it is built."""
    config = layer.get_config()
    config["name"] = name
    return type(layer).from_config(config)


def _ancestors(model, layer_name: str) -> set[int]:
    """ids of the graph nodes `layer_name`'s output depends on, its own node included."""
    start = model.get_layer(layer_name)._inbound_nodes
    if len(start) != 1:
        raise ValueError(f"layer {layer_name!r} of {model.name!r} is called {len(start)} times")
    seen: set[int] = set()
    todo = [start[0]]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        todo.extend(node.parent_nodes)
    return seen


def _replay(model, x, prefix: str, taps: Sequence[str], stop: str) -> Generator[tuple[str, Any], Any, None]:
    """Re-run `model`'s layers up to `stop` on tensor `x`, as fresh copies named `prefix + name` with the
    same weights. At each layer in `taps` (and at `stop`) yield (name, its output) and go on from the tensor
    sent back (the member's channels of the joined layer)."""
    needed = _ancestors(model, stop)
    tensors = {id(model.inputs[0]): x}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            op = node.operation
            if node.is_input or op is None or id(node) not in needed:
                continue
            args, kwargs = node.arguments.fill_in(tensors)
            layer = _copy(op, prefix + op.name)
            out = layer(*args, **kwargs)
            layer.set_weights(op.get_weights())
            if op.name in taps or op.name == stop:
                out = yield op.name, out
                if op.name == stop:
                    return
            tensors[id(node.outputs[0])] = out


def _head(model, last: str) -> tuple[Any, float, Any]:
    """(pooling layer, dropout rate, dense logits layer) of a head `last` -> global average pooling ->
    [dropout] -> dense "logits" -> softmax: the head that an ensemble can merge exactly."""
    after = [layer for layer in model.layers[[la.name for la in model.layers].index(last) + 1:]]
    types = [type(layer).__name__ for layer in after]
    ok = (len(after) in (3, 4) and types[0] == "GlobalAveragePooling2D" and after[-2].name == "logits"
          and isinstance(after[-2], keras.layers.Dense) and (len(after) == 3 or types[1] == "Dropout"))
    if not ok:
        raise ValueError(f"{model.name}: an ensemble needs the head {last} -> global average pooling -> "
                         f"[dropout] -> dense 'logits' -> softmax; found {' -> '.join(types)}")
    rate = float(after[1].rate) if len(after) == 4 else 0.0
    return after[0], rate, after[-2]


def ensemble_network(models: Sequence[Any], last_conv_layer: str, cam_layers: Sequence[str] = ()):
    """One Keras model whose logits are the mean of `models`' logits (same input, same architecture family).
    `last_conv_layer` and each of `cam_layers` become one joined layer of that name; every other layer is
    the member's own, named `m{i}_<name>`."""
    if len(models) < 2:
        raise ValueError("an ensemble needs at least two networks")
    shape = tuple(models[0].inputs[0].shape[1:])
    for m in models[1:]:
        if tuple(m.inputs[0].shape[1:]) != shape or len(m.inputs) != 1:
            raise ValueError(f"{m.name}: its input differs from {models[0].name}'s; members must share one input")
    taps = [t for t in cam_layers if t != last_conv_layer]
    inp = keras.Input(shape, name=models[0].inputs[0].name)
    gens = [_replay(m, inp, f"m{i}_", taps, last_conv_layer) for i, m in enumerate(models)]  # layers.ENSEMBLE_MEMBER
    values = [next(g) for g in gens]
    while True:
        names = {name for name, _ in values}
        if len(names) != 1:
            raise ValueError(f"the members reach their CAM layers in different orders ({sorted(names)})")
        name = names.pop()
        tensors = [t for _, t in values]
        joined = keras.layers.Concatenate(name=name)(tensors)
        if name == last_conv_layer:
            break
        edges = np.cumsum([0] + [int(t.shape[-1]) for t in tensors])
        values = [g.send(ChannelSlice(int(a), int(b), name=f"m{i}_{name}_channels")(joined))
                  for i, (g, a, b) in enumerate(zip(gens, edges[:-1], edges[1:]))]
    heads = [_head(m, last_conv_layer) for m in models]
    x = keras.layers.GlobalAveragePooling2D(name=heads[0][0].name)(joined)
    if heads[0][1]:
        x = keras.layers.Dropout(heads[0][1], name="head_dropout")(x)
    n_classes = int(heads[0][2].units)
    if any(int(h[2].units) != n_classes for h in heads):
        raise ValueError("the members have different numbers of classes")
    dense = keras.layers.Dense(n_classes, name="logits")
    logits = dense(x)
    kernels, biases = zip(*(h[2].get_weights() for h in heads))
    dense.set_weights([np.concatenate(kernels, axis=0) / len(models), np.mean(biases, axis=0)])
    out = keras.layers.Activation("softmax", name="probabilities", dtype="float32")(logits)
    return keras.Model(inp, out, name=f"{ENSEMBLE_NAME}{len(models)}")


#: bundle.json entries an ensemble drops: what was fitted to one network's outputs, and the first member's soup
DROPPED = (*FITTED_TO_OUTPUTS, "soup")


def ensemble_bundles(members: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                     overwrite: bool = False) -> Path:
    """Write the "single" bundle whose network is the logit-mean ensemble of `members` (single bundles with
    one class list, preprocessing and split.csv). The first member gives the configuration and training
    record; temperature, TTA, competence, metrics and explanation are left to be refitted."""
    from xai_bt.attribution.cams import fusion_layers

    paths = [Path(p) for p in members]
    if len(paths) < 2:
        raise ValueError("an ensemble needs at least two bundles")
    target = check_target(out, paths, "the ensemble", "members", overwrite)
    bundles = [load_model(p) for p in paths]
    for b in bundles:
        if b.kind != "single":
            raise BundleError(f"{b.path}: a {b.kind} bundle; ensembles are built from single-network bundles")
    configs = [b.config for b in bundles]
    _check_compatible(configs, [b.path for b in bundles])
    first = bundles[0]
    cam_layers = fusion_layers(first.model, 3)
    network = ensemble_network([b.model for b in bundles], first.last_conv_layer, cam_layers)
    target.mkdir(parents=True, exist_ok=True)
    network.save(target / "model.keras")
    for extra in ("split.csv", "history.csv"):
        if (first.path / extra).is_file():
            shutil.copyfile(first.path / extra, target / extra)
    config = {k: v for k, v in configs[0].items() if k not in DROPPED}
    config.update(name=target.name, temperature=1.0,
                  ensemble={"method": "mean of the members' logits, one network", "reference": REFERENCE,
                            "joined_layers": list(dict.fromkeys([first.last_conv_layer, *cam_layers])),
                                      "members": [_ingredient(b.path, c, 1 / len(bundles)) for b, c in zip(bundles, configs)]})
    write_config(target, config)
    from xai_bt.model.card import write_model_card

    write_model_card(target)
    return target
