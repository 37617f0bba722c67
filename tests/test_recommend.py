"""The audit's recommendation: the best localiser among faithful methods that pass the randomisation
check, stored in the bundle and used as the default explanation."""
import json
from pathlib import Path

import pytest

from xai_bt.audit.recommend import recommend, score_line, store


def _entry(mean, n=200):
    return {"mean": mean, "low": mean - 0.05, "high": mean + 0.05, "n": n, "n_valid": n}


def _summary(pg: dict, fails=(), unfaithful=()):
    faith = {m: {"summary": {"deletion_auc": _entry(0.6 if m in unfaithful else 0.3),
                             "insertion_auc": _entry(0.5),
                             "road_morf": _entry(0.4), "road_lerf": _entry(0.7)}} for m in pg}
    return {"methods": list(pg), "command": "python -m xai_bt audit models/x ...",
            "scores": {m: {"all": {"pointing_game": _entry(v), "energy_pointing_game": _entry(v / 4)}}
                       for m, v in pg.items()},
            "faithfulness": faith, "sanity": {"methods": {m: {"fails": m in fails} for m in pg}},
            "chance": {"all": {"mask_fraction": _entry(0.02)}}}


def test_the_best_localiser_that_passes_both_checks_is_recommended():
    pg = {"gradcam": 0.27, "layercam@block6a": 0.66, "layercam@block4a": 0.70, "integrated_gradients": 0.53}
    rec = recommend(_summary(pg, fails={"layercam@block4a"}, unfaithful={"integrated_gradients"}))
    assert rec["method"] == "layercam@block6a" and rec["passed_checks"]
    assert rec["pointing_game"]["mean"] == 0.66 and rec["n"] == 200 and rec["chance_energy"] == 0.02
    checks = {r["method"]: (r["faithful"], r["passes_randomisation"]) for r in rec["candidates"]}
    assert checks["layercam@block4a"] == (True, False) and checks["integrated_gradients"] == (False, True)
    line = score_line(rec, "layercam@block4a")
    assert line.startswith("audit: peak inside the tumor on 70% of 200 unseen scans (95% CI 65%-75%)")
    assert "fails the randomisation check" in line and score_line(rec, "saliency") is None


def test_when_every_method_fails_the_best_is_named_and_flagged():
    rec = recommend(_summary({"gradcam": 0.3, "layercam": 0.2}, fails={"gradcam", "layercam"}))
    assert rec["method"] == "gradcam" and not rec["passed_checks"]


def test_unmeasured_checks_do_not_disqualify():
    summary = _summary({"gradcam": 0.3, "layercam": 0.4})
    summary["faithfulness"], summary["sanity"] = {}, {}
    rec = recommend(summary)
    assert rec["method"] == "layercam" and rec["faithful"] is None and rec["passes_randomisation"] is None


def test_stored_recommendation_sets_the_default_methods(tmp_path):
    from xai_bt.model.bundle import Bundle, read_config
    from xai_bt.model.provenance import default_methods

    src = Path(__file__).resolve().parents[1] / "models" / "default" / "bundle.json"
    (tmp_path / "bundle.json").write_text(src.read_text())
    rec = recommend(_summary({"gradcam": 0.27, "layercam": 0.6}))
    store(tmp_path, rec)
    config = read_config(tmp_path)
    assert config["explanation"]["method"] == "layercam"
    assert json.loads((tmp_path / "bundle.json").read_text())["class_names"] == config["class_names"]
    bundle = Bundle(tmp_path, config, {})
    assert default_methods(bundle, "explain") == ("layercam",)
    assert default_methods(bundle, "review") == ("layercam", "gradcam")
    plain = Bundle(tmp_path, {k: v for k, v in config.items() if k != "explanation"}, {})
    assert default_methods(plain, "explain") == ("gradcam",)
    with pytest.raises(ValueError, match="purpose"):
        default_methods(bundle, "other")


@pytest.fixture(scope="module")
def recommended_bundle(tmp_path_factory):
    """A copy of the shipped default bundle whose (synthetic) audit recommends Layer-CAM on a 10x10 layer."""
    import shutil

    src = Path(__file__).resolve().parents[1] / "models" / "default"
    root = tmp_path_factory.mktemp("models")
    dst = root / "default"
    shutil.copytree(src, dst)
    store(dst, recommend(_summary({"gradcam": 0.27, "layercam@block6a_expand_activation": 0.62})))
    return dst


def test_review_and_serve_show_the_recommended_explanation_first(recommended_bundle, tmp_path):
    from conftest import SAMPLES

    from xai_bt.model.bundle import load_model
    from xai_bt.review.case import model_summary, review_scan
    from xai_bt.review.html import render_report
    from xai_bt.review.server import form_html, make_app

    bundle = load_model(recommended_bundle)
    case = review_scan(bundle, str(SAMPLES / "glioma.jpg"))
    assert [t["method"] for t in case["tiles"]] == ["layercam@block6a_expand_activation", "gradcam"]
    page = render_report([case], model_summary(bundle))
    assert "Recommended by the audit." in page and "peak inside the tumor on 62% of 200 unseen scans" in page
    assert "Layer-CAM (block6a_expand_activation)" in page
    app = make_app(recommended_bundle.parent, tmp_path / "reviews")
    assert app.default_checked() == ("layercam@block6a_expand_activation", "gradcam")
    assert "layercam@block6a_expand_activation" in app.offered()
    form = form_html(app)
    assert 'value="layercam@block6a_expand_activation" data-label="Layer-CAM (block6a_expand_activation)"' in form
    assert app.choices({})["methods"] == ["layercam@block6a_expand_activation", "gradcam"]


def test_explain_without_methods_runs_the_recommendation(recommended_bundle):
    from conftest import SAMPLES

    from xai_bt.attribution.explain import explain
    from xai_bt.model.bundle import load_model

    expl = explain(load_model(recommended_bundle), [str(SAMPLES / "pituitary.jpg")])[0]
    assert list(expl.maps) == ["layercam@block6a_expand_activation"]
    assert expl.audit["layercam@block6a_expand_activation"].startswith("audit: peak inside the tumor on 62% of 200")


def test_the_explanation_figure_and_sidecar_carry_each_methods_audit_score(recommended_bundle, tmp_path):
    from conftest import SAMPLES

    from xai_bt.attribution.explain import explain
    from xai_bt.io.explanation_files import sidecar
    from xai_bt.model.bundle import load_model
    from xai_bt.plots.explanation import plot_explanation

    expl = explain(load_model(recommended_bundle), [str(SAMPLES / "pituitary.jpg")],
                   methods=["gradcam", "saliency"])[0]
    assert set(expl.audit) == {"gradcam"}                            # the audit did not score saliency
    assert sidecar(expl)["audit"] == {"gradcam": expl.audit["gradcam"]}
    texts = [t.get_text() for ax in plot_explanation(expl).axes for t in ax.texts]
    assert any(t.startswith("audit: peak in the tumor\non 27% of 200 unseen scans\n(95% CI") for t in texts)


def test_the_audit_page_says_first_what_it_recommends_and_what_it_passed_over():
    from xai_bt.audit.report import _finding_recommendation

    pg = {"gradcam": 0.27, "layercam@block6a": 0.66, "layercam@block4a": 0.70, "integrated_gradients": 0.53}
    text = _finding_recommendation(_summary(pg, fails={"layercam@block4a"}, unfaithful={"integrated_gradients"}))
    assert text.startswith("<b>Shown first: Layer-CAM (block6a)</b>")
    assert "Layer-CAM (block4a) (0.700: fails the randomisation check)" in text
    assert "Integrated Gradients" not in text                     # it localises worse: not passed over
    none = _finding_recommendation(_summary({"gradcam": 0.3}, fails={"gradcam"}))
    assert none.startswith("<b>No method passed")
