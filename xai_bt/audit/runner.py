"""The focus audit: do a model's explanations point at the tumor, and on which scans?

For every scan with a tumor mask (BRISC masks, figshare `tumorMask`, a folder or CSV of mask images, or
YOLO boxes), the scan and its mask go through the model's own preprocessing, every requested method
explains the annotated class in batches, and each map is scored against the mask (:mod:`xai_bt.audit.localisation`)
and for shortcut evidence (:mod:`xai_bt.audit.shortcut`). Optionally, faithfulness (deletion / insertion, ROAD;
:mod:`xai_bt.audit.faithfulness`) on a subset and the cascading randomisation check (:mod:`xai_bt.audit.randomisation`) on
a few scans. :func:`run_audit` returns everything; :func:`write_audit` writes `scores.csv`,
`summary.json` and `report.html` (:mod:`xai_bt.audit.report`).

*Unseen* scans: a model cannot be audited fairly on scans it was trained on, and public MRI sets share
near-duplicate scans (BRISC's tumor scans all have a twin in the 4-class benchmark's Training folder). So
by default only scans with no twin (as they are, mirrored, flipped or turned: `xai_bt.data.twins`) and no
shared patient among the bundle's `split.csv` rows marked "train" are audited. Rows marked "val" (early stopping and
checkpoint choice, never a gradient update) do not count as seen: an unseen scan may be a twin of one.
"""
from __future__ import annotations

import csv
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xai_bt.data.twins import TWIN_THRESHOLD, describe_twins
from xai_bt.audit.localisation import LOCALISATION_SCORES, localisation_scores, summarise
from xai_bt.data.sample import ImageError, Sample
from xai_bt.audit.shortcut import shortcut_scores
from xai_bt.attribution.registry import AUDIT_DEFAULT as DEFAULT_METHODS

SHORTCUT_SCORES = ("outside_head_share", "corner_share")
MAP_SCORES = LOCALISATION_SCORES + SHORTCUT_SCORES
#: Per-image faithfulness scores: deletion AUC and ROAD most-relevant-first (lower = more faithful),
#: insertion AUC and ROAD least-relevant-first (higher = more faithful); ROAD as mean probability.
FAITHFULNESS_SCORES = ("deletion_auc", "insertion_auc", "road_morf", "road_lerf")
ROAD_PERCENTAGES = (10, 30, 50, 70, 90)
OUTPUTS = ("scores.csv", "summary.json", "report.html")


# ------------------------------------------------------------------------------------------ the pieces
@dataclass
class MaskSource:
    """Where a sample's tumor mask comes from: "dataset" (the loader's mask), "file" or "yolo" (a path)."""

    kind: str
    path: str | None = None

    def load(self, sample: Sample, gray: np.ndarray) -> np.ndarray | None:
        """The mask at the scan's size (bool), or None when there is none."""
        from xai_bt.data.boxes import yolo_mask
        from xai_bt.data.datasets import sample_mask
        from xai_bt.data.decode import read_mask

        if self.kind == "yolo":
            return yolo_mask(self.path, gray.shape)
        if self.kind == "file":
            return read_mask(self.path, gray.shape)
        return sample_mask(sample, gray.shape)


@dataclass
class AuditSet:
    """The scans to audit, as the model sees them: pixels (N, S, S) uint8 and masks (N, S, S) bool."""

    samples: list[Sample]
    index: list[int]  # position of each kept scan in the list given to prepare_set
    x: np.ndarray
    masks: np.ndarray
    sources: list[str]
    skipped: dict[str, Any] = field(default_factory=dict)  # reason -> count, and one example message


@dataclass
class Selection:
    """Which scans count as unseen: per-sample max similarity to the train / val rows and the verdict."""

    unseen: np.ndarray
    sim_train: np.ndarray
    sim_val: np.ndarray
    n_train_rows: int
    n_val_rows: int
    train_root: str | None


def mask_sources(samples: Sequence[Sample], data: str, masks: str | None = None,
                 boxes: str | None = None) -> list[MaskSource | None]:
    """A MaskSource per sample (None when it has no mask): `masks` (a folder of mask images matched by
    file stem, or a CSV `file,mask` with files relative to `data` and masks to the CSV's folder), then
    `boxes` (a folder of YOLO .txt files matched by stem), then the dataset's own mask."""
    by_stem = _stem_index(masks, "file") if masks and os.path.isdir(masks) else {}
    by_path = _mask_csv(masks, data) if masks and not os.path.isdir(masks) else {}
    yolo = _stem_index(boxes, "yolo") if boxes else {}
    out: list[MaskSource | None] = []
    for s in samples:
        stem = Path(s.path).stem
        found = by_path.get(os.path.normpath(os.path.abspath(s.path))) or by_stem.get(stem) or yolo.get(stem)
        own = s.mask is not None or s.mask_path or s.path.lower().endswith(".mat")
        out.append(found or (MaskSource("dataset") if own else None))
    return out


def _stem_index(folder: str, kind: str) -> dict[str, MaskSource]:
    """file stem -> MaskSource for the mask images ("file") or YOLO .txt files ("yolo") under `folder`."""
    from xai_bt.data.decode import iter_image_files

    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such folder")
    files = ([str(p) for p in sorted(Path(folder).rglob("*.txt"))] if kind == "yolo"
             else iter_image_files([folder]))
    return {Path(f).stem: MaskSource(kind, f) for f in files}


def _mask_csv(path: str, data: str) -> dict[str, MaskSource]:
    """absolute image path -> MaskSource from a CSV with columns `file` and `mask`."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such mask folder or CSV file")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"file", "mask"} <= rows[0].keys():
        raise ValueError(f"{path}: a mask CSV needs columns 'file' and 'mask'")
    base = os.path.dirname(os.path.abspath(path))
    return {os.path.normpath(os.path.join(os.path.abspath(data), r["file"])):
            MaskSource("file", os.path.join(base, r["mask"])) for r in rows if r.get("mask")}


def prepare_set(bundle, samples: Sequence[Sample], sources: Sequence[MaskSource], workers: int = 4,
                progress: bool = True) -> AuditSet:
    """Decode each scan once; resample it and its mask through the bundle's preprocessing.

    Scans that cannot be read and masks that are empty at the model's resolution are left out and
    counted in `skipped`."""
    from xai_bt.data.datasets import sample_image

    pre = bundle.preprocessing
    problems: dict[str, str] = {}

    def one(i: int) -> tuple[np.ndarray, np.ndarray] | str:
        try:
            gray = sample_image(samples[i])
            mask = sources[i].load(samples[i], gray)
        except (ImageError, OSError, ValueError) as e:
            problems.setdefault("unreadable_example", str(e))
            return "unreadable"
        if mask is None or not mask.any():
            return "empty mask"
        m = pre.prepare_mask(mask, gray)
        return (pre.prepare(gray), m) if m.any() else "empty mask"

    with ThreadPoolExecutor(workers) as ex:
        results = list(_bar(ex.map(one, range(len(samples))), len(samples), "reading scans and masks", progress))
    keep = [i for i, r in enumerate(results) if not isinstance(r, str)]
    s = pre.image_size
    skipped: dict[str, Any] = {}
    for r in results:
        if isinstance(r, str):
            skipped[r] = skipped.get(r, 0) + 1
    skipped.update(problems)
    return AuditSet(samples=[samples[i] for i in keep], index=keep,
                    x=np.stack([results[i][0] for i in keep]) if keep else np.zeros((0, s, s), np.uint8),
                    masks=np.stack([results[i][1] for i in keep]) if keep else np.zeros((0, s, s), bool),
                    sources=[sources[i].kind for i in keep], skipped=skipped)


def select_unseen(bundle, samples: Sequence[Sample], train_data: str | None = None,
                  threshold: float = TWIN_THRESHOLD, progress: bool = False) -> Selection:
    """Mark the samples with no twin (xai_bt.data.twins, at r >= threshold) or shared patient among the bundle's
    "train" rows; also measure each sample's closest "val" row. Raises ValueError when the bundle has no
    split.csv or its training data cannot be found (the caller suggests --train-data or --all)."""
    from xai_bt.data.twins import thumbnails
    from xai_bt.model.provenance import split_table, training_root
    from xai_bt.data.splits import leakage_free, max_similarity

    table = split_table(bundle)
    if not table:
        raise ValueError(f"{bundle.path}: the bundle has no split.csv, so which scans it was trained on is unknown")
    root = training_root(bundle, train_data)
    if root is None or not os.path.isdir(root):
        raise ValueError(f"the bundle's training data folder ({root or 'not recorded'}) is not here")
    rows = {part: [Sample(path=os.path.join(root, rel)) for rel, p in table.items() if p == part]
            for part in ("train", "val")}
    missing = [s.path for s in rows["train"] if not os.path.isfile(s.path)]
    if missing:
        raise ValueError(f"{len(missing)} of the bundle's {len(rows['train'])} training scans are not under "
                         f"{root}, e.g. {missing[0]}")
    thumbs = thumbnails(samples, progress=progress)
    ref = {part: thumbnails(r, progress=progress) for part, r in rows.items()}
    sims = {part: (max_similarity(samples, r, thumbs=thumbs, reference_thumbs=ref[part]) if r
                   else np.full(len(samples), np.nan)) for part, r in rows.items()}
    unseen = np.array(leakage_free(samples, rows["train"], threshold, similarity=sims["train"]))
    return Selection(unseen, sims["train"], sims["val"], len(rows["train"]), len(rows["val"]), root)


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


def network_probabilities(bundle, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Calibrated probabilities (N, K) of the explained network for a model batch (N, S, S, 1)."""
    pred = bundle.predict_prepared(x, batch_size=batch_size)
    return pred.stage_probabilities["stage2"] if bundle.kind == "cascade" else pred.probabilities


def _model_batch(x: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 pixels -> (N, S, S, 1) float32, the model's input."""
    return x[..., None].astype(np.float32)


def explain_maps(bundle, x: np.ndarray, targets: np.ndarray, methods: Sequence[str], layer: str,
                 batch_size: int = 32) -> dict[str, np.ndarray]:
    """Maps (N, S, S) per method for one batch of model pixels (N, S, S), explaining `targets`."""
    from xai_bt.attribution.explain import explain_batch

    net, _ = explained_network(bundle)
    xb = _model_batch(x)
    extra = [bundle.view_features(xb, batch_size)] if len(net.inputs) > 1 else None
    return explain_batch(net, xb, targets, list(methods), layer=layer, extra_inputs=extra, batch_size=batch_size)


def score_maps(maps: np.ndarray, masks: np.ndarray, images: np.ndarray, tolerance_px: float,
               k: float = 0.05) -> dict[str, np.ndarray]:
    """Localisation and shortcut scores of maps (N, S, S) against masks and the model's pixels."""
    return {**localisation_scores(maps, masks, tolerance_px=tolerance_px, k=k),
            **shortcut_scores(maps, images)}


def summarise_scores(scores: dict[str, np.ndarray], groups: dict[str, Sequence[str]],
                     n_boot: int = 1000) -> dict[str, Any]:
    """Means with bootstrap 95% CIs overall ("all") and per grouping (e.g. "by_class": labels)."""
    out: dict[str, Any] = {"all": summarise(scores, n_boot=n_boot)["all"]}
    for name, labels in groups.items():
        per = summarise(scores, groups=labels, n_boot=n_boot)
        per.pop("all")
        out[name] = dict(sorted(per.items()))
    return out


# ------------------------------------------------------------------------------------ optional checks
def faithfulness_scores(bundle, x: np.ndarray, targets: np.ndarray, maps: dict[str, np.ndarray],
                        steps: int = 20, batch_size: int = 64) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Deletion / insertion AUC and ROAD (MoRF and LeRF, mean probability over ROAD_PERCENTAGES) per
    method and image; also the mean curves for the report."""
    from xai_bt.audit.faithfulness import deletion_insertion, road

    xb = _model_batch(x)

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
    `logits`, `top`, `stem`). Each step is the run's lowest layer, so the step randomises the whole block."""
    from xai_bt.audit.randomisation import weighted_layers

    def key(name: str) -> str:
        match = re.match(r"[A-Za-z]+_?\d+", name)
        return match.group(0).lower() if match else name.split("_")[0].lower()

    steps: list[str] = []
    last_key = None
    for name in weighted_layers(keras_model):
        if key(name) == last_key:
            steps[-1] = name
        else:
            steps.append(name)
            last_key = key(name)
    return steps


def sanity_check(bundle, x: np.ndarray, targets: np.ndarray, methods: Sequence[str], layer: str,
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

        res = randomisation_test(net, explain_fn, _model_batch(x), targets, layers=steps)
        out["methods"][method] = {"fails": flag_insensitive(res),
                                  "steps": [{k: r[k] for k in ("layer", "spearman", "ssim")} for r in res]}
    return out


# ---------------------------------------------------------------------------------------------- the run
def select_candidates(bundle, data: str, names: Sequence[str], *, masks: str | None = None,
                      boxes: str | None = None, unseen_only: bool = True, train_data: str | None = None,
                      limit: int | None = None, threshold: float = TWIN_THRESHOLD, seed: int = 0, progress: bool = True,
                      log: Callable[[str], None] = print):
    """The scans to audit: (samples, mask sources, candidate positions, similarities (n, 2) to the train /
    val rows, the selection counts, the text defining "unseen"). Raises ValueError when none is left."""
    from xai_bt.data.datasets import load_dataset

    samples = load_dataset(data)
    sources = mask_sources(samples, data, masks, boxes)
    candidates = [i for i, src in enumerate(sources) if src is not None and samples[i].label in names]
    selection = {"scans": len(samples), "with_mask": len(candidates), "unseen_only": unseen_only,
                 "dedup_threshold": threshold}
    sims = np.full((len(candidates), 2), np.nan)
    unseen_text = "all scans with a mask (no check against the training data)"
    if unseen_only and candidates:
        sel = select_unseen(bundle, [samples[i] for i in candidates], train_data, threshold, progress)
        selection.update(_selection_counts(sel, threshold))
        unseen_text = unseen_definition(sel, threshold)
        sims = np.column_stack([sel.sim_train, sel.sim_val])[sel.unseen]
        candidates = [i for i, u in zip(candidates, sel.unseen) if u]
    if limit is not None and len(candidates) > limit:
        pick = np.sort(np.random.default_rng(seed).choice(len(candidates), limit, replace=False))
        candidates, sims = [candidates[i] for i in pick], sims[pick]
    log(f"{len(candidates)} scans to audit ({selection['with_mask']} with a mask"
        + (f", {selection['unseen']} of them unseen in training" if "unseen" in selection else "") + ")")
    if not candidates:
        raise ValueError(f"{data}: no scans left to audit (with a mask, of the classes {list(names)}"
                         + (", unseen in training" if unseen_only else "") + ")")
    return samples, sources, candidates, sims, selection, unseen_text


@dataclass
class AuditResult:
    """Everything an audit measured: per-image rows, the summary, and the data for the gallery."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    gallery: dict[str, list[dict[str, Any]]]


def run_audit(model, data: str, *, methods: Sequence[str] = DEFAULT_METHODS, masks: str | None = None,
              boxes: str | None = None, unseen_only: bool = True, train_data: str | None = None,
              limit: int | None = None, layer: str | None = None, target: str = "true",
              tolerance_px: float | None = None, top_k: float = 0.05, threshold: float = TWIN_THRESHOLD,
              faithfulness: int = 0, sanity: int = 0, batch_size: int = 32, gallery_size: int = 4,
              seed: int = 0, progress: bool = True, log: Callable[[str], None] = print) -> AuditResult:
    """Audit `model` (a Bundle or path) on the masked scans of `data`; see the module docstring.

    target: "true" explains the annotated class (the tumor the mask shows), "predicted" the model's
    class. tolerance_px: pointing-game tolerance at model resolution (default 3% of the input side).
    faithfulness / sanity: number of scans for those checks (0 = skip)."""
    from xai_bt.model.bundle import Bundle, load_model

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    bundle = model if isinstance(model, Bundle) else load_model(model)
    from xai_bt.attribution import registry

    net, names = explained_network(bundle)
    if sanity and len(net.inputs) > 1:
        raise ValueError("the randomisation check (--sanity) supports single-input networks only")
    layer = cam_layer(bundle, layer) if any(registry.spec(m).is_cam for m in methods) else None
    size = bundle.preprocessing.image_size
    tolerance_px = round(0.03 * size, 1) if tolerance_px is None else float(tolerance_px)


    samples, sources, candidates, sims, selection, unseen_text = select_candidates(
        bundle, data, names, masks=masks, boxes=boxes, unseen_only=unseen_only, train_data=train_data,
        limit=limit, threshold=threshold, seed=seed, progress=progress, log=log)
    timings["load_and_select_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    aset = prepare_set(bundle, [samples[i] for i in candidates], [sources[i] for i in candidates],
                       progress=progress)
    sims = sims[aset.index]
    selection.update(skipped=aset.skipped, audited=len(aset.samples))
    timings["prepare_s"] = time.perf_counter() - t
    if not aset.samples:
        example = aset.skipped.get("unreadable_example")
        raise ValueError(f"{data}: none of the {len(candidates)} selected scans has a readable, non-empty mask"
                         + (f" (e.g. {example})" if example else ""))

    t = time.perf_counter()
    probs = network_probabilities(bundle, _model_batch(aset.x), batch_size)
    true = np.array([names.index(s.label) for s in aset.samples])
    targets = true if target == "true" else probs.argmax(axis=1)
    scores = _score_all(bundle, aset, targets, methods, layer, tolerance_px, top_k, batch_size, progress)
    timings["explain_and_score_s"] = time.perf_counter() - t

    faith: dict[str, dict[str, np.ndarray]] = {}
    curves: dict[str, Any] = {}
    subset = np.array([], int)
    if faithfulness:
        t = time.perf_counter()
        subset = _subset(len(aset.samples), faithfulness, seed)
        log(f"faithfulness (deletion / insertion, ROAD) on {len(subset)} scans ...")
        maps = explain_maps(bundle, aset.x[subset], targets[subset], methods, layer, batch_size)
        faith, curves = faithfulness_scores(bundle, aset.x[subset], targets[subset], maps, batch_size=2 * batch_size)
        timings["faithfulness_s"] = time.perf_counter() - t
    sanity_result = None
    if sanity:
        t = time.perf_counter()
        few = _subset(len(aset.samples), sanity, seed + 1)
        log(f"randomisation check on {len(few)} scans ...")
        sanity_result = sanity_check(bundle, aset.x[few], targets[few], methods, layer, batch_size)
        timings["sanity_s"] = time.perf_counter() - t

    t = time.perf_counter()
    gallery = _gallery(bundle, aset, targets, scores, layer, gallery_size, batch_size, names, probs)
    timings["gallery_s"] = time.perf_counter() - t
    correct = probs.argmax(axis=1) == true
    summary = build_summary(
        bundle, data, names, methods=methods, layer=layer, target=target, selection=selection,
        unseen_text=unseen_text, labels=[s.label for s in aset.samples],
        planes=[s.plane or "unknown" for s in aset.samples], correct=correct,
        mask_fraction=aset.masks.reshape(len(aset.masks), -1).mean(axis=1), mask_sources=aset.sources,
        scores=scores, faith=faith, curves=curves, sanity_result=sanity_result,
        settings={"tolerance_px": tolerance_px, "top_k": top_k, "faithfulness_images": int(len(subset)),
                  "sanity_images": int(sanity), "limit": limit, "seed": seed})
    timings["total_s"] = time.perf_counter() - t0
    summary["timings"] = {k: round(v, 1) for k, v in timings.items()}
    summary["wall_time_s"] = summary["timings"]["total_s"]
    rows = _rows(aset, sims, names, true, targets, probs, scores, faith, subset, data)
    return AuditResult(rows, summary, gallery)


def build_summary(bundle, data: str, names: Sequence[str], *, methods: Sequence[str], layer: str | None,
                  target: str, selection: dict[str, Any], unseen_text: str, labels: Sequence[str],
                  planes: Sequence[str], correct: np.ndarray, mask_fraction: np.ndarray,
                  mask_sources: Sequence[str], scores: dict[str, dict[str, np.ndarray]],
                  faith: dict[str, dict[str, np.ndarray]], curves: dict[str, Any], sanity_result: Any,
                  settings: dict[str, Any]) -> dict[str, Any]:
    """summary.json (less timings) from per-image arrays in audit order; shared by the in-memory and the
    streaming audit so both write the same thing."""
    correct = np.asarray(correct, bool)
    groups = {"by_class": list(labels), "by_plane": list(planes),
              "by_prediction": ["correct" if c else "wrong" for c in correct]}
    return {
        "model": str(bundle.path), "model_name": bundle.name, "temperature": bundle.temperature,
        "data": str(data), "classes": list(names),
        "input_size": bundle.preprocessing.image_size, "cam_layer": layer, "target": target,
        "methods": list(methods), "n_images": len(labels), "selection": selection,
        "unseen_definition": unseen_text, "accuracy": float(correct.mean()),
        "mask_sources": {k: list(mask_sources).count(k) for k in sorted(set(mask_sources))},
        "settings": {"tolerance_px": settings["tolerance_px"], "top_k": settings["top_k"],
                     "bootstrap_resamples": 1000, "ci": 0.95,
                     "faithfulness_images": settings["faithfulness_images"],
                     "road_percentages": list(ROAD_PERCENTAGES), "sanity_images": settings["sanity_images"],
                     "limit": settings["limit"], "seed": settings["seed"]},
        "chance": summarise_scores({"mask_fraction": np.asarray(mask_fraction, float)}, groups),
        "scores": {m: summarise_scores(scores[m], groups) for m in methods},
        "faithfulness": {m: {"summary": summarise_scores(faith[m], {})["all"], "curves": curves[m]} for m in faith},
        "sanity": sanity_result,
    }


def _selection_counts(sel: Selection, threshold: float) -> dict[str, Any]:
    """Counts for summary.json: unseen and seen scans, and the unseen ones with a twin in validation."""
    return {"train_rows": sel.n_train_rows, "val_rows": sel.n_val_rows, "train_root": sel.train_root,
            "unseen": int(sel.unseen.sum()), "seen": int((~sel.unseen).sum()),
            "unseen_with_val_twin": int(np.sum(sel.unseen & (sel.sim_val >= threshold)))}


def unseen_definition(sel: Selection, threshold: float) -> str:
    """One paragraph saying exactly what "unseen" means for this audit."""
    twin_val = int(np.sum(sel.unseen & (sel.sim_val >= threshold)))
    return (f"Unseen = no twin ({describe_twins(threshold)}) and no shared patient among "
            f"the {sel.n_train_rows} scans of the bundle's split.csv marked 'train' (resolved under "
            f"{sel.train_root}), i.e. never used for a gradient update. These scans are not in training but "
            f"may be in validation: the {sel.n_val_rows} 'val' scans steered early stopping and the choice "
            f"of checkpoint, and {twin_val} of the {int(sel.unseen.sum())} unseen scans have a twin "
            f"among them. Unseen is therefore weaker than 'held-out test'.")


def _subset(n: int, k: int, seed: int) -> np.ndarray:
    """k of n indices, seeded, sorted (all of them when k >= n)."""
    return np.arange(n) if k >= n else np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def _score_all(bundle, aset: AuditSet, targets: np.ndarray, methods: Sequence[str], layer: str | None,
               tolerance_px: float, top_k: float, batch_size: int, progress: bool) -> dict[str, dict[str, np.ndarray]]:
    """Explain and score every scan, batch by batch (maps are not kept): method -> score -> (N,)."""
    parts: dict[str, list[dict[str, np.ndarray]]] = {m: [] for m in methods}
    starts = range(0, len(aset.x), batch_size)
    for start in _bar(starts, len(starts), f"explaining ({', '.join(methods)})", progress):
        sl = slice(start, start + batch_size)
        maps = explain_maps(bundle, aset.x[sl], targets[sl], methods, layer, batch_size)
        for m in methods:
            parts[m].append(score_maps(maps[m], aset.masks[sl], aset.x[sl], tolerance_px, top_k))
    return {m: {name: np.concatenate([p[name] for p in parts[m]]) for name in MAP_SCORES} for m in methods}


def _gallery(bundle, aset: AuditSet, targets: np.ndarray, scores: dict[str, dict[str, np.ndarray]],
             layer: str | None, size: int, batch_size: int, names: tuple[str, ...],
             probs: np.ndarray) -> dict[str, list[dict[str, Any]]]:
    """Per method, the `size` best and `size` worst scans by energy pointing game, re-explained (maps
    are not kept during the run): dicts with image, map, mask, scores and a caption."""
    out = {}
    for method, sc in scores.items():
        energy = sc["energy_pointing_game"]
        valid = np.flatnonzero(np.isfinite(energy))
        order = valid[np.argsort(-energy[valid], kind="stable")]
        picks = [("best", i) for i in order[:size]] + [("worst", i) for i in order[::-1][:size]]
        idx = np.array([i for _, i in picks], int)
        maps = explain_maps(bundle, aset.x[idx], targets[idx], [method], layer, batch_size)[method] if len(idx) else []
        out[method] = [{"kind": kind, "image": aset.x[i], "map": maps[j], "mask": aset.masks[i],
                        "path": aset.samples[i].path, "label": aset.samples[i].label,
                        "plane": aset.samples[i].plane,
                        "prediction": names[int(probs[i].argmax())], "confidence": float(probs[i].max()),
                        **{k: float(v[i]) for k, v in sc.items()}}
                       for j, (kind, i) in enumerate(picks)]
    return out


def _rows(aset: AuditSet, sims: np.ndarray, names: tuple[str, ...], true: np.ndarray, targets: np.ndarray,
          probs: np.ndarray, scores: dict[str, dict[str, np.ndarray]], faith: dict[str, dict[str, np.ndarray]],
          subset: np.ndarray, data: str) -> list[dict[str, Any]]:
    """scores.csv: one row per scan and method, paths relative to the data folder."""
    where = {int(i): j for j, i in enumerate(subset)}
    rows = []
    for i, s in enumerate(aset.samples):
        base = {"path": _relative(s.path, data), "label": s.label, "plane": s.plane or "",
                "mask_source": aset.sources[i], "mask_fraction": _round(aset.masks[i].mean()),
                "max_similarity_train": _round(sims[i, 0]), "max_similarity_val": _round(sims[i, 1]),
                "target": names[targets[i]], "prediction": names[int(probs[i].argmax())],
                "confidence": _round(probs[i].max()), "correct": bool(probs[i].argmax() == true[i])}
        for m, sc in scores.items():
            row = {**base, "method": m, **{k: _round(v[i]) for k, v in sc.items()}}
            row.update({k: _round(faith[m][k][where[i]]) if m in faith and i in where else ""
                        for k in FAITHFULNESS_SCORES})
            rows.append(row)
    return rows


def _round(v: float) -> float | str:
    """4 decimals for the CSV; NaN (undefined) as an empty field."""
    v = float(v)
    return round(v, 4) if np.isfinite(v) else ""


def _relative(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    return Path(path).as_posix() if rel.startswith("..") else Path(rel).as_posix()


def _bar(iterable, total: int, desc: str, enabled: bool):
    """A tqdm progress bar on stderr (a plain iterator when disabled)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch" if "explaining" in desc else "scan")


# --------------------------------------------------------------------------------------------- writing
def check_out(out: str | os.PathLike, overwrite: bool) -> Path:
    """The output folder; raises FileExistsError when it already holds audit outputs and not `overwrite`."""
    out = Path(out)
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds an audit ({', '.join(existing)}); pass --overwrite to replace it")
    return out


def write_audit(result: AuditResult, out: str | os.PathLike, overwrite: bool = False,
                command: str | None = None) -> list[Path]:
    """Write scores.csv, summary.json and report.html into `out`; returns their paths."""
    import json

    from xai_bt.audit.report import render_report

    out = check_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if command:
        result.summary["command"] = command
    paths = [out / name for name in OUTPUTS]
    with open(paths[0], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(result.rows[0]))
        writer.writeheader()
        writer.writerows(result.rows)
    paths[1].write_text(json.dumps(_finite(result.summary), indent=1, allow_nan=False) + "\n")
    paths[2].write_text(render_report(result.summary, result.gallery), encoding="utf-8")
    return paths


def _finite(o: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays to Python, NaN and infinities to None."""
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, np.ndarray)):
        return [_finite(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    return o
