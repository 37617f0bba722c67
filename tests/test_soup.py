import json
import shutil

import numpy as np
import pytest

from xai_bt import cli
from xai_bt.model.bundle import BundleError, load_model, write_config
from xai_bt.model.soup import mix_weights, soup_bundles


@pytest.fixture(scope="module")
def pair(tiny_pair):
    """A tiny trained bundle and a copy with shifted weights (a stand-in for its fine-tune)."""
    return tiny_pair(0.05)


def test_soup_is_the_weighted_mean_and_refits_nothing_silently(pair, tmp_path):
    a, b = pair
    out = soup_bundles([a, b], tmp_path / "s", [1, 3])
    wa, wb, ws = (load_model(p).model.get_weights() for p in (a, b, out))
    for x, y, z in zip(wa, wb, ws):
        np.testing.assert_allclose(z, 0.25 * x + 0.75 * y, rtol=1e-5, atol=1e-6)
    cfg = json.loads((out / "bundle.json").read_text())
    assert [i["weight"] for i in cfg["soup"]["ingredients"]] == [0.25, 0.75]
    assert cfg["temperature"] == 1.0 and "calibration" not in cfg and "metrics" not in cfg
    assert (out / "split.csv").read_bytes() == (a / "split.csv").read_bytes()
    card = (out / "MODEL_CARD.md").read_text()
    assert "Model soup" in card
    # how each ingredient was trained travels with the soup, so the card says how to make it again
    for ing in cfg["soup"]["ingredients"]:
        assert ing["command"].startswith("python -m xai_bt train --arch xai_cnn") and ing["seconds"] > 0
        assert f"`{ing['name']}`: `{ing['command']}`" in card


def test_soup_of_a_model_with_itself_predicts_like_it(pair, tmp_path):
    a, _ = pair
    twin = tmp_path / "a2"
    shutil.copytree(a, twin)
    out = soup_bundles([a, twin], tmp_path / "s")
    x = [np.random.default_rng(i).uniform(0, 255, (64, 64)).astype(np.uint8) for i in range(3)]
    ref = load_model(a)
    ref.config["temperature"] = 1.0
    np.testing.assert_allclose(load_model(out).predict(x).probabilities, ref.predict(x).probabilities, atol=1e-5)


def test_soup_refuses_what_is_not_one_model(pair, tmp_path):
    a, b = pair
    soup_bundles([a, b], tmp_path / "s")
    with pytest.raises(FileExistsError):
        soup_bundles([a, b], tmp_path / "s")
    with pytest.raises(ValueError, match="one non-negative weight per bundle"):
        soup_bundles([a, b], tmp_path / "t", [1.0])
    with pytest.raises(ValueError, match="ingredients"):
        soup_bundles([a, b], a, overwrite=True)
    other = tmp_path / "other"
    shutil.copytree(b, other)
    (other / "split.csv").write_text((other / "split.csv").read_text().replace(",train", ",val", 1))
    with pytest.raises(BundleError, match="split.csv differs"):
        soup_bundles([a, other], tmp_path / "u")
    cfg = json.loads((b / "bundle.json").read_text())
    relabelled = tmp_path / "relabelled"
    shutil.copytree(b, relabelled)
    write_config(relabelled, {**cfg, "class_names": cfg["class_names"][::-1]})
    with pytest.raises(BundleError, match="class_names differs"):
        soup_bundles([a, relabelled], tmp_path / "v")


def test_mix_weights_rejects_other_shapes_and_keeps_integers():
    a = [np.ones((2, 2), np.float32), np.array([3], np.int64)]
    b = [np.zeros((2, 2), np.float32), np.array([3], np.int64)]
    mixed = mix_weights([a, b], [0.5, 0.5])
    np.testing.assert_allclose(mixed[0], 0.5)
    assert mixed[1].dtype == np.int64 and mixed[1][0] == 3
    with pytest.raises(ValueError, match="another architecture"):
        mix_weights([a, [np.ones((3, 2), np.float32), a[1]]], [0.5, 0.5])


def test_soup_cli(pair, tmp_path, capsys):
    a, b = pair
    assert cli.main(["soup", str(tmp_path / "s"), str(a), str(b), "--weights", "0.7,0.3"]) == 0
    assert "weights averaged" in capsys.readouterr().out
    assert cli.main(["soup", str(tmp_path / "s"), str(a), str(b)]) == 2
    assert "already there" in capsys.readouterr().err
    assert cli.main(["soup", str(tmp_path / "t"), str(a), str(b), "--weights", "a,b"]) == 2
