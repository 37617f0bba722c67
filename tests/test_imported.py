"""Bring your own Keras model: nested backbones, softmax outputs, .keras / .h5, import-model, hostile files.

The models are small real Keras networks built here (a MobileNetV2 with weights=None nested as one layer,
a flat CNN); the scans are the shipped samples and a tiny copy of the real benchmark.
"""
import json
import os
import zipfile

import numpy as np
import pytest
from conftest import SAMPLES

from xai_bt import cli

pytest.importorskip("tensorflow")
SIZE = 64
CLASSES = "glioma,meningioma,notumor,pituitary"
SCAN = str(SAMPLES / "meningioma.jpg")


def _nested(seed: int = 0, augment: bool = True):
    """Transfer-learning style: augmentation and a MobileNetV2 backbone each nested as one layer, softmax head."""
    import keras

    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), include_top=False, weights=None, alpha=0.35)
    inputs = x = keras.Input((SIZE, SIZE, 3))
    if augment:
        x = keras.Sequential([keras.layers.RandomFlip("horizontal")], name="augmentation")(x)
    x = keras.layers.GlobalAveragePooling2D()(base(x))
    outputs = keras.layers.Dense(4, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="my_model")
    # untrained, the backbone's features vanish (~1e-10) and every output is 0.25: set its BatchNorm statistics
    # from one batch of real scans, as training would, so the outputs differ from class to class
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(np.repeat(_scans(4), 3, axis=-1) / 255.0, training=True)
    return model, base


def _flat_twin(nested, base):
    """The same network built flat (`input_tensor=`), weights copied layer by layer: the reference."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    flat_base = keras.applications.MobileNetV2(input_tensor=inputs, include_top=False, weights=None, alpha=0.35)
    x = keras.layers.GlobalAveragePooling2D()(flat_base.output)
    outputs = keras.layers.Dense(4, name="logits")(x)  # the softmax left out: the score is the logit
    flat = keras.Model(inputs, outputs)
    for layer in base.layers:
        if layer.weights:
            flat.get_layer(layer.name).set_weights(layer.get_weights())
    flat.get_layer("logits").set_weights(nested.get_layer("predictions").get_weights())
    return flat


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The nested model saved as .keras and .h5, with its in-memory twin for reference."""
    d = tmp_path_factory.mktemp("own")
    model, base = _nested()
    model.save(d / "my_model.keras")
    model.save(d / "my_model.h5")
    return {"dir": d, "keras": d / "my_model.keras", "h5": d / "my_model.h5", "model": model, "base": base}


def _scans(n: int, seed: int = 0) -> np.ndarray:
    """Real scans at the test size, as xai_bt feeds them: (N, S, S, 1) in [0, 255]."""
    from xai_bt.data.decode import read_image
    from xai_bt.model.preprocessing import Preprocessing

    paths = sorted(SAMPLES.glob("*.jpg"))[:n]
    pre = Preprocessing(image_size=SIZE, crop_to_head=False)
    return pre.batch([read_image(p) for p in paths])


# --- nested backbones ----------------------------------------------------------------------------------

def test_nested_layers_are_listed_by_path_and_found_by_tail(files):
    from xai_bt.model.imported import import_model
    from xai_bt.model.layers import resolve, spatial_layer_shapes

    bundle = import_model(files["keras"], CLASSES)
    paths = dict(spatial_layer_shapes(bundle.model))
    backbone = files["base"].name
    assert f"my_model/{backbone}/out_relu" in paths and paths[f"my_model/{backbone}/out_relu"] == (2, 2, 1280)
    assert not any(p.endswith(("scan", "input_layer")) for p in paths)          # no input layer is a candidate,
    assert not any("xai_bt_input_" in p or "augmentation/" in p for p in paths)  # nor adapter or augmentation
    assert bundle.last_conv_layer == f"my_model/{backbone}/out_relu"
    assert resolve(bundle.model, f"{backbone}/block_16_project") == f"my_model/{backbone}/block_16_project"
    assert resolve(bundle.model, "out_relu") == f"my_model/{backbone}/out_relu"
    with pytest.raises(ValueError, match="unknown layer 'no_such_layer': not a spatial"):
        resolve(bundle.model, "no_such_layer")


@pytest.mark.parametrize("fmt", ["keras", pytest.param("h5", marks=pytest.mark.slow)])  # h5 in the slow run
def test_gradcam_through_a_nested_backbone_equals_the_flat_network(files, fmt):
    """The nested pass gives the activations, gradients and scores of the same network built flat."""
    from xai_bt.attribution import cams
    from xai_bt.model.imported import import_model

    bundle = import_model(files[fmt], CLASSES)
    flat = _flat_twin(files["model"], files["base"])
    x, targets = _scans(4), np.array([0, 1, 2, 3])
    acts, grads, logits = cams.cam_pass(bundle.model, bundle.last_conv_layer)([x], targets)
    ref_acts, ref_grads, ref_logits = cams.cam_pass(flat, "out_relu")([np.repeat(x, 3, axis=-1) / 255.0], targets)
    # float32 noise only: x / 255 in numpy here, Rescaling(1 / 255) in the wrapper's graph
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-3, atol=1e-3 * np.abs(ref_logits).max())
    np.testing.assert_allclose(acts, ref_acts, rtol=1e-3, atol=1e-3 * np.abs(ref_acts).max())
    cam, ref = cams.gradcam(acts, grads), cams.gradcam(ref_acts, ref_grads)
    np.testing.assert_allclose(cam, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_a_softmax_output_is_explained_before_the_softmax(files):
    """The score is the logit (ReplaceToLinear), the probabilities are the model's own."""
    from xai_bt.model.imported import import_model

    bundle = import_model(files["keras"], CLASSES)
    assert "softmax" in bundle.config["imported"]["score"] and "'predictions'" in bundle.config["imported"]["score"]
    x = _scans(3)
    own = files["model"].predict(np.repeat(x, 3, axis=-1) / 255.0, verbose=0)
    assert own.max() - own.min() > 0.05                                         # not a degenerate network
    np.testing.assert_allclose(bundle.predict_prepared(x).probabilities, own, rtol=1e-4, atol=1e-6)
    logits = bundle.network_logits("model", x)
    assert not np.allclose(logits.sum(1), 1.0)                                  # logits, not probabilities
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), own, rtol=1e-4, atol=1e-6)


def test_flat_cnn_gradcam_matches_tf_keras_vis(tmp_path):
    """On a flat model tf-keras-vis works: the imported model's Grad-CAM is the same map."""
    import keras
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    from xai_bt.attribution import cams
    from xai_bt.model.imported import import_model

    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(keras.layers.Rescaling(1 / 255.0)(inputs))
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    cnn = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x), name="cnn")
    cnn.save(tmp_path / "cnn.keras")
    bundle = import_model(tmp_path / "cnn.keras", CLASSES, pixel_scale="0-255")
    assert bundle.last_conv_layer == "cnn/conv2" and bundle.config["imported"]["input"]["channels"] == 1
    x, targets = _scans(4), np.array([1, 0, 3, 2])
    ref = Gradcam(cnn, model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore(list(targets)), x, penultimate_layer="conv2", seek_penultimate_conv_layer=False,
        activation_modifier=None, expand_cam=False, normalize_cam=False)
    acts, grads, _ = cams.cam_pass(bundle.model, "conv2")([x], targets)
    np.testing.assert_allclose(cams.gradcam(acts, grads), np.asarray(ref), rtol=1e-4, atol=1e-6)


# --- the command line ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["keras", pytest.param("h5", marks=pytest.mark.slow)])  # h5 in the slow run
def test_explain_takes_a_model_file_with_classes(files, fmt, tmp_path, capsys):
    out = tmp_path / "ex"
    argv = ["explain", SCAN, "--model", str(files[fmt]), "--classes", CLASSES, "--methods", "gradcam,layercam,saliency",
            "--layer", f"{files['base'].name}/block_16_project", "--out", str(out), "--format", "png"]
    assert cli.main(argv) == 0
    side = json.loads((out / "meningioma.json").read_text())
    assert side["model"] == "my_model" and side["layer"] == f"my_model/{files['base'].name}/block_16_project"
    assert "softmax" in side["score"] and set(side["probabilities"]) == {"glioma", "meningioma", "no_tumor", "pituitary"}
    assert (out / "meningioma.png").is_file()


def test_list_layers_prints_paths_with_sizes(files, capsys):
    assert cli.main(["explain", "--model", str(files["keras"]), "--classes", CLASSES, "--list-layers"]) == 0
    out = capsys.readouterr().out.splitlines()
    last = [line for line in out if "default CAM layer" in line]
    assert len(last) == 1 and last[0].startswith(f"my_model/{files['base'].name}/out_relu") and "2 x 2" in last[0]


def test_import_model_writes_a_bundle_whose_card_says_what_was_assumed(files, tmp_path, capsys):
    from xai_bt.model.bundle import load_model

    out = tmp_path / "models" / "mine"
    assert cli.main(["import-model", str(files["h5"]), "--classes", CLASSES, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "assumed" in printed and "pixel_scale" in printed
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Imported model" in card and "**assumed**, not given" in card and "my_model.h5" in card
    bundle = load_model(out)
    assert bundle.class_names == ("glioma", "meningioma", "no_tumor", "pituitary")
    assert bundle.config["imported"]["assumed"] == ["pixel_scale", "crop_to_head"]
    x = _scans(2)
    own = files["model"].predict(np.repeat(x, 3, axis=-1) / 255.0, verbose=0)
    np.testing.assert_allclose(bundle.predict_prepared(x).probabilities, own, rtol=1e-4, atol=1e-6)
    # a second import into the same folder is refused; the bundle's options cannot be overridden
    assert cli.main(["import-model", str(files["h5"]), "--classes", CLASSES, "--out", str(out)]) == 2
    assert "already there" in capsys.readouterr().err
    assert cli.main(["predict", SCAN, "--model", str(out), "--classes", CLASSES]) == 2
    assert "records its classes" in capsys.readouterr().err


def test_evaluate_and_audit_run_on_a_model_file(files, tiny_benchmark, tmp_path, capsys):
    argv = ["evaluate", str(files["keras"]), "--classes", CLASSES, "--data", str(tiny_benchmark)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "official" in out and "leakage-free: none" in out and "--train-data" in out
    assert cli.main(argv + ["--train-data", str(tiny_benchmark), "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["reference_scans"] == 48 and metrics["official"]["n"] == 12       # 12 training scans per class
    assert metrics.get("leakage_free", {"n": 0})["n"] <= 12 and "leakage_note" not in metrics
    assert cli.main(argv + ["--update-card"]) == 2
    assert "import-model" in capsys.readouterr().err


# --- files that must be refused --------------------------------------------------------------------------

def _lambda_model(marker):
    import keras

    def touch(t):  # would leave a trace if it were ever run
        open(marker, "w").close()
        return t
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Lambda(touch, name="side_effect")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_a_lambda_layer_is_refused_and_never_run(tmp_path, fmt, capsys):
    marker = tmp_path / "ran"
    model = _lambda_model(marker)
    model.save(tmp_path / f"hostile.{fmt}")
    marker.unlink(missing_ok=True)                     # saving traced it once; loading must not run it
    code = cli.main(["predict", SCAN, "--model", str(tmp_path / f"hostile.{fmt}"), "--classes", CLASSES])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"hostile.{fmt}: refused" in err[0] and "Lambda" in err[0]
    assert not marker.exists()


def test_a_class_from_another_module_is_refused(files, tmp_path, capsys):
    """A config naming `os.system` as a layer class never reaches Keras."""
    with zipfile.ZipFile(files["keras"]) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    config = json.loads(parts["config.json"])
    config["config"]["layers"][-1].update(module="os", class_name="system", registered_name=None)
    parts["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "evil.keras", "w") as z:
        for name, data in parts.items():
            z.writestr(name, data)
    assert cli.main(["explain", SCAN, "--model", str(tmp_path / "evil.keras"), "--classes", CLASSES,
                     "--out", str(tmp_path / "ex")]) == 2
    err = capsys.readouterr().err
    assert "evil.keras: refused" in err and "'system' from module 'os'" in err and "Traceback" not in err
    assert not (tmp_path / "ex").exists()


def test_bad_model_files_get_one_line_naming_the_file(files, tmp_path, capsys):
    (tmp_path / "notes.keras").write_text("not a model")
    (tmp_path / "broken.keras").write_bytes(files["keras"].read_bytes()[:2000])
    weights = tmp_path / "only.weights.h5"
    files["model"].save_weights(weights)
    os.replace(weights, tmp_path / "weights.h5")
    cases = {"notes.keras": "not a Keras model file", "broken.keras": "damaged",
             "weights.h5": "weights only", "missing.keras": "no such model file"}
    for name, problem in cases.items():
        code = cli.main(["predict", SCAN, "--model", str(tmp_path / name), "--classes", CLASSES])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and name in err[0] and problem in err[0], (name, err)
    # outputs that do not match --classes, and a model file without --classes
    assert cli.main(["predict", SCAN, "--model", str(files["keras"]), "--classes", "a,b,c"]) == 2
    assert "outputs 4 classes but --classes names 3" in capsys.readouterr().err
    assert cli.main(["predict", SCAN, "--model", str(files["keras"])]) == 2
    err = capsys.readouterr().err
    assert "my_model.keras: a Keras model, not an xai_bt bundle" in err and "--classes" in err


@pytest.mark.slow
def test_a_saved_model_folder_predicts_and_takes_gradient_methods(tmp_path, capsys):
    """A SavedModel runs in place: same probabilities, gradient methods on its log-probabilities; it shows no
    layers, so CAM methods and import-model are refused with one line each."""
    from xai_bt.model.imported import import_model

    folder = tmp_path / "exported"
    model, _ = _nested(seed=2, augment=False)
    model.export(str(folder), verbose=False)
    bundle = import_model(folder, CLASSES)
    assert bundle.config["imported"]["file_format"] == "savedmodel" and "log-probabilities" in bundle.config["imported"]["score"]
    x = _scans(2)
    own = model.predict(np.repeat(x, 3, axis=-1) / 255.0, verbose=0)
    np.testing.assert_allclose(bundle.predict_prepared(x).probabilities, own, rtol=1e-4, atol=1e-6)
    out = tmp_path / "ex"
    base = ["explain", SCAN, "--model", str(folder), "--classes", CLASSES, "--format", "none"]
    assert cli.main(base + ["--methods", "saliency", "--out", str(out)]) == 0
    assert "log-probabilities" in json.loads((out / "meningioma.json").read_text())["score"]
    assert cli.main(base + ["--methods", "gradcam", "--out", str(tmp_path / "cam")]) == 2
    assert "no spatial" in capsys.readouterr().err and not (tmp_path / "cam").exists()
    assert cli.main(["import-model", str(folder), "--classes", CLASSES, "--out", str(tmp_path / "b")]) == 2
    assert "used in place" in capsys.readouterr().err


@pytest.mark.slow
def test_a_saved_model_that_answers_differently_each_call_is_refused(tmp_path, capsys):
    """Keras 3's export of a model with a nested augmentation block serves it augmenting (random flips on every
    call, measured here): such a model cannot be explained or evaluated, so it is refused, naming the folder."""
    model, _ = _nested(seed=3, augment=True)
    model.export(str(tmp_path / "augmenting"), verbose=False)
    assert cli.main(["predict", SCAN, "--model", str(tmp_path / "augmenting"), "--classes", CLASSES]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "augmenting: the SavedModel gives different outputs" in err[0]


@pytest.mark.slow
def test_the_randomisation_cascade_steps_into_the_nested_backbone(files):
    """The sanity check re-draws the backbone block by block, not the whole nested model in one step."""
    from xai_bt.attribution.explain import explain_batch
    from xai_bt.audit.measure import cascade_layers
    from xai_bt.audit.randomisation import randomisation_test
    from xai_bt.model.imported import import_model

    bundle = import_model(files["keras"], CLASSES)
    backbone = f"my_model/{files['base'].name}"
    steps = cascade_layers(bundle.model)
    assert steps[0] == "my_model/predictions" and steps[1] == f"{backbone}/Conv_1"
    assert f"{backbone}/block_16_expand" in steps and len(steps) > 15          # a step per block
    x, targets = _scans(2), np.array([1, 2])

    def gradcam(model, xb, t):
        return explain_batch(model, xb, t, ["gradcam"], layer=bundle.last_conv_layer)["gradcam"]
    before = np.asarray(files["model"].get_layer(files["base"].name).get_layer("Conv_1").get_weights()[0]).copy()
    res = randomisation_test(bundle.model, gradcam, x, targets, layers=steps[:3])
    assert [r["layer"] for r in res] == steps[:3]
    assert res[-1]["spearman"] < 0.99                          # re-drawing backbone blocks changed the maps
    np.testing.assert_array_equal(files["model"].get_layer(files["base"].name).get_layer("Conv_1").get_weights()[0], before)


def test_calibrate_an_imported_bundle_on_declared_validation_scans(files, tiny_benchmark, tmp_path, capsys):
    from xai_bt.model.bundle import load_model

    out = tmp_path / "mine"
    assert cli.main(["import-model", str(files["keras"]), "--classes", CLASSES, "--out", str(out)]) == 0
    held_out = tiny_benchmark / "Testing"                  # stands in for the user's own validation folder
    assert cli.main(["calibrate", str(out), "--data", str(held_out), "--train-data", str(tiny_benchmark)]) == 0
    record = load_model(out).config["calibration"]
    assert record["fitted_on"].startswith(f"every scan under {held_out}, declared held out, without twins")
    assert record["n_val"] + record["n_val_twins_left_out"] == 12 and record["temperature"] > 0
    assert "Temperature" in (out / "MODEL_CARD.md").read_text()


def test_report_and_serve_take_a_model_file(files, tmp_path, capsys):
    from xai_bt.model.imported import import_model
    from xai_bt.review.server import make_app

    page = tmp_path / "report.html"
    assert cli.main(["report", SCAN, "--model", str(files["h5"]), "--classes", CLASSES, "--methods", "gradcam",
                     "--out", str(page)]) == 0
    html = page.read_text()
    assert "Imported" in html and "my_model.h5" in html and "Explained score" in html and "softmax" in html
    # serve --model: the file's model is offered first, as the default, next to the bundles of --models-dir
    import_model(files["keras"], CLASSES, out=tmp_path / "models" / "bundled")
    app = make_app(tmp_path / "models", tmp_path / "reviews")
    name = app.add(import_model(files["h5"], CLASSES), files["h5"])
    assert app.default_model == name == "my_model" and list(app.models) == ["my_model", "bundled"]
    assert app.bundle(name).config["imported"]["file_format"] == "h5"
