"""Ensembles as one network: the mean of several classifiers' logits, in one flat Keras graph.

Averaging the logits of independently trained networks (Lakshminarayanan et al. 2017, "deep ensembles")
is the most reliable way to buy accuracy and calibration with compute. Built as one network, an ensemble
is an ordinary "single" bundle: predict, calibrate, evaluate, competence and every explanation method work
unchanged. At each CAM layer the members' activations are joined into one layer of that name (their
channels side by side), which the members read their own channels back from; the gradient of the mean logit
then reaches that layer as the members' gradients, so Grad-CAM / Layer-CAM there is the members' maps summed,
the explanation of the ensemble itself rather than of one member. The head is one dense layer over the
members' pooled features whose weights are theirs stacked and divided by their number: exactly the mean
logit. The network is for inference only, so each batch normalisation that alone follows a linear
convolution is folded into that convolution's kernel and bias (same outputs up to float rounding, about a
third less time on a CPU). Choose members and compare ensembles on validation (`calibrate`), never on a
test set.
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


def _folded(conv, bn, name: str):
    """A copy of `conv` (Conv2D or DepthwiseConv2D, linear, channels last) named `name`, with the inference-time
    `bn` that follows it folded into its kernel and bias: bn(conv(x)) == folded(x)."""
    def arr(v):
        return np.asarray(keras.ops.convert_to_numpy(v), np.float64)

    config = conv.get_config()
    config.update(name=name, use_bias=True)
    layer = type(conv).from_config(config)
    kernel = arr(conv.kernel)
    depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)   # kernel (h, w, in, multiplier): out = in x multiplier
    channels = kernel.shape[2] * kernel.shape[3] if depthwise else kernel.shape[3]
    bias = arr(conv.bias) if conv.use_bias else np.zeros(channels)
    gamma = arr(bn.gamma) if bn.scale else np.ones(channels)
    beta = arr(bn.beta) if bn.center else np.zeros(channels)
    scale = gamma / np.sqrt(arr(bn.moving_variance) + bn.epsilon)
    kernel = kernel * (scale.reshape(kernel.shape[2:]) if depthwise else scale)
    return layer, [kernel.astype(np.float32), ((bias - arr(bn.moving_mean)) * scale + beta).astype(np.float32)]


def _foldable(model, keep: set[str]) -> list[tuple[Any, Any]]:
    """(convolution node, the batch-normalisation node that alone reads its output) for each pair `_folded`
    can merge (neither layer named in `keep`, whose outputs must stay in the graph)."""
    readers: dict[int, list] = {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            for parent in node.parent_nodes:
                readers.setdefault(id(parent), []).append(node)
    pairs = []
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            conv, after = node.operation, readers.get(id(node), [])
            if (type(conv) in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D) and len(after) == 1
                    and type(after[0].operation) is keras.layers.BatchNormalization
                    and conv.get_config().get("activation") == "linear" and conv.data_format == "channels_last"
                    and after[0].operation.axis in (-1, 3) and not {conv.name, after[0].operation.name} & keep):
                pairs.append((node, after[0]))
    return pairs


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
    sent back (the member's channels of the joined layer). Batch normalisations are folded (`_foldable`)."""
    needed = _ancestors(model, stop)
    pairs = _foldable(model, {*taps, stop})
    fold, convs = {id(bn): conv for conv, bn in pairs}, {id(conv): bn for conv, bn in pairs}
    tensors = {id(model.inputs[0]): x}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            op = node.operation
            if node.is_input or op is None or id(node) not in needed:
                continue
            if id(node) in fold:  # folded into the convolution before it: pass its output on
                tensors[id(node.outputs[0])] = tensors[id(fold[id(node)].outputs[0])]
                continue
            args, kwargs = node.arguments.fill_in(tensors)
            if id(node) in convs:
                layer, weights = _folded(op, convs[id(node)].operation, prefix + op.name)
            else:
                layer, weights = _copy(op, prefix + op.name), op.get_weights()
            out = layer(*args, **kwargs)
            layer.set_weights(weights)
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


def _batchnorms(model) -> int:
    return sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


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
                            "folded_batchnorm": sum(map(_batchnorms, [b.model for b in bundles])) - _batchnorms(network),
                            "members": [_ingredient(b.path, c, 1 / len(bundles)) for b, c in zip(bundles, configs)]})
    write_config(target, config)
    from xai_bt.model.card import write_model_card

    write_model_card(target)
    return target
