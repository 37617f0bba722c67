"""The focus audit at archive scale: scans stream through `tf.data`, score rows are appended per batch.

Same scans, scores and outputs as :func:`xai_bt.audit.runner.run_audit`, but no image or mask is held beyond a few
batches: each batch's rows go to `scores.csv` (flush + fsync) as it finishes, unusable scans to
`skipped.csv`, and the summary (bootstrap CIs), faithfulness and sanity subsets and the gallery are computed
at the end from the CSV, re-reading only the few scans they need. `resume` finishes a killed run (a scan is
done when all its method rows are in the CSV); `shard` (K, N) audits every N-th candidate into
`scores-K-of-N.csv`, and a final resumed run without a shard merges the shards and writes the summary.
CSV values are rounded to 4 decimals, so summary means can differ from the in-memory audit by ~1e-4.
"""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from xai_bt.io import batches as archive
from xai_bt.audit.runner import FAITHFULNESS_SCORES, MAP_SCORES, OUTPUTS, _finite, _model_batch, _relative, _round, _subset, build_summary, cam_layer, check_out, explain_maps, explained_network, faithfulness_scores, network_probabilities, sanity_check, score_maps, select_candidates
from xai_bt.data.twins import TWIN_THRESHOLD

BASE_FIELDS = ("path", "label", "plane", "mask_source", "mask_fraction", "max_similarity_train",
               "max_similarity_val", "target", "prediction", "confidence", "correct")
SCORE_FIELDS = BASE_FIELDS + ("method",) + MAP_SCORES + FAITHFULNESS_SCORES
SKIPPED_FIELDS = ("path", "reason", "error")
EMPTY_MASK = "empty mask"


class _EmptyMask(ValueError):
    """The scan has no tumor pixels at the model's resolution (left out, like the in-memory audit)."""


def run_streaming(model, data: str, out: str | os.PathLike, *, methods: Sequence[str], masks: str | None = None,
                  boxes: str | None = None, unseen_only: bool = True, train_data: str | None = None,
                  limit: int | None = None, layer: str | None = None, target: str = "true",
                  tolerance_px: float | None = None, top_k: float = 0.05, threshold: float = TWIN_THRESHOLD,
                  faithfulness: int = 0, sanity: int = 0, batch_size: int = 32, gallery_size: int = 4,
                  seed: int = 0, resume: bool = False, overwrite: bool = False,
                  shard: tuple[int, int] | None = None, workers: int | None = None, progress: bool = True,
                  command: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Audit `model` on `data` into `out`, streaming; returns the summary (None for a shard run, which
    only writes its rows). Raises FileExistsError for an earlier audit in `out` unless resume/overwrite."""
    from xai_bt.model.bundle import Bundle, load_model
    from xai_bt.attribution import registry

    t0 = time.perf_counter()
    bundle = model if isinstance(model, Bundle) else load_model(model)
    net, names = explained_network(bundle)
    if sanity and len(net.inputs) > 1:
        raise ValueError("the randomisation check (--sanity) supports single-input networks only")
    layer = cam_layer(bundle, layer) if any(registry.spec(m).is_cam for m in methods) else None
    tolerance_px = round(0.03 * bundle.preprocessing.image_size, 1) if tolerance_px is None else float(tolerance_px)
    out = Path(out)
    if not resume:
        check_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    samples, sources, candidates, sims, selection, unseen_text = select_candidates(
        bundle, data, names, masks=masks, boxes=boxes, unseen_only=unseen_only, train_data=train_data,
        limit=limit, threshold=threshold, seed=seed, progress=progress, log=log)
    rel = [_relative(samples[i].path, data) for i in candidates]
    scores_file = archive.IndexFile(out / archive.index_name(shard, "scores.csv"), SCORE_FIELDS, ("path", "method"))
    skipped_file = archive.IndexFile(out / archive.index_name(shard, "skipped.csv"), SKIPPED_FIELDS)
    archive.sweep_temporaries(out, {scores_file.path.name, skipped_file.path.name, *OUTPUTS}.__contains__)
    mine = list(archive.shard_positions(len(candidates), shard))
    if resume:
        done = _resume(scores_file, skipped_file, {rel[j] for j in mine}, methods, merge=shard is None)
    else:
        scores_file.rewrite([])
        skipped_file.rewrite([])
        done = set()
    todo = [j for j in mine if rel[j] not in done]
    if resume:
        log(f"resume: {len(mine) - len(todo)} of {len(mine)} scans already done, {len(todo)} to go")

    t = time.perf_counter()
    load = _loader(bundle, samples, sources)
    size = bundle.preprocessing.image_size
    specs = [((size, size), np.uint8), ((size, size), bool)]
    bar = _bar(len(todo), progress)
    try:
        for batch in archive.stream([candidates[j] for j in todo], load, specs, batch_size, parallel=workers):
            positions = [todo[p] for p in batch.positions]
            skipped = [{"path": rel[j], "reason": EMPTY_MASK if e == EMPTY_MASK else "unreadable", "error": e}
                       for j, ok, e in zip(positions, batch.ok, batch.errors) if not ok]
            good = np.flatnonzero(batch.ok)
            rows = _score_batch(bundle, [positions[i] for i in good], batch.arrays[0][good], batch.arrays[1][good],
                                samples, sources, candidates, sims, rel, names, methods, layer, target,
                                tolerance_px, top_k, batch_size) if good.size else []
            scores_file.append(rows)
            skipped_file.append(skipped)
            bar.update(len(positions))
    finally:
        bar.close()
        scores_file.close()
        skipped_file.close()
    explain_s = time.perf_counter() - t
    if shard is not None:
        log(f"shard {shard[0]}/{shard[1]} done: {scores_file.path}; after every shard, run again without "
            "--shard and with --resume to merge them and write the summary")
        return None
    return _finish(bundle, data, out, names, methods, layer, target, selection, unseen_text, rel, samples,
                   candidates, load, specs, tolerance_px, top_k, faithfulness, sanity, batch_size, gallery_size,
                   seed, limit, command, {"explain_and_score_s": explain_s, "start": t0}, log)


# ----------------------------------------------------------------------------------------------- pieces
def _loader(bundle, samples, sources) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    """Sample position -> (model pixels (S, S) uint8, prepared mask (S, S) bool) through the bundle's
    preprocessing; an empty mask raises so the scan is skipped, as in the in-memory audit."""
    from xai_bt.data.datasets import sample_image

    pre = bundle.preprocessing

    def load(i: int):
        gray = sample_image(samples[i])
        mask = sources[i].load(samples[i], gray)
        if mask is None or not mask.any():
            raise _EmptyMask(EMPTY_MASK)
        m = pre.prepare_mask(mask, gray)
        if not m.any():
            raise _EmptyMask(EMPTY_MASK)
        return pre.prepare(gray), m

    return load


def _score_batch(bundle, positions: list[int], x: np.ndarray, masks: np.ndarray, samples, sources, candidates, sims,
                 rel: list[str], names, methods, layer, target: str, tolerance_px: float, top_k: float,
                 batch_size: int) -> list[dict[str, Any]]:
    """Predict, explain and score one batch: scores.csv rows (one per scan and method), in order."""
    probs = network_probabilities(bundle, _model_batch(x), batch_size)
    true = np.array([names.index(samples[candidates[j]].label) for j in positions])
    targets = true if target == "true" else probs.argmax(axis=1)
    maps = explain_maps(bundle, x, targets, methods, layer, batch_size)
    scores = {m: score_maps(maps[m], masks, x, tolerance_px, top_k) for m in methods}
    rows = []
    for i, j in enumerate(positions):
        s = samples[candidates[j]]
        base = {"path": rel[j], "label": s.label, "plane": s.plane or "", "mask_source": sources[candidates[j]].kind,
                "mask_fraction": _round(masks[i].mean()), "max_similarity_train": _round(sims[j, 0]),
                "max_similarity_val": _round(sims[j, 1]), "target": names[targets[i]],
                "prediction": names[int(probs[i].argmax())], "confidence": _round(probs[i].max()),
                "correct": bool(probs[i].argmax() == true[i])}
        for m in methods:
            rows.append({**base, "method": m, **{k: _round(v[i]) for k, v in scores[m].items()},
                         **{k: "" for k in FAITHFULNESS_SCORES}})
    return rows


def _resume(scores_file, skipped_file, mine: set[str], methods: Sequence[str], merge: bool) -> set[str]:
    """Scans already done (every method's row present, or skipped); rewrites both files without rows of
    unfinished scans. `merge`: take the shards' files in too (the final run after a sharded audit)."""
    score_rows = scores_file.latest(repair=True)
    skip_rows = skipped_file.latest(repair=True)
    if merge:
        for path in archive.shard_indexes(scores_file.path.parent, "scores.csv"):
            score_rows.update(archive.IndexFile(path, SCORE_FIELDS, ("path", "method")).latest())
        for path in archive.shard_indexes(skipped_file.path.parent, "skipped.csv"):
            skip_rows.update(archive.IndexFile(path, SKIPPED_FIELDS).latest())
    have: dict[str, set[str]] = {}
    for path, method in score_rows:
        have.setdefault(path, set()).add(method)
    complete = {p for p, ms in have.items() if set(methods) <= ms}
    done = (complete | set(skip_rows)) & mine
    scores_file.rewrite(r for k, r in sorted(score_rows.items()) if k[0] in complete or k[0] not in mine)
    skipped_file.rewrite(r for k, r in sorted(skip_rows.items()))
    return done


def _finish(bundle, data, out: Path, names, methods, layer, target, selection, unseen_text, rel, samples,
            candidates, load, specs, tolerance_px, top_k, faithfulness, sanity, batch_size, gallery_size, seed,
            limit, command, timings, log) -> dict[str, Any]:
    """Summary, faithfulness / sanity subsets and gallery from scores.csv; writes the three outputs."""
    from xai_bt.audit.report import render_report

    order = {p: j for j, p in enumerate(rel)}
    cols = _columns(out / "scores.csv", methods, order)
    audited = cols["positions"]
    n = len(audited)
    skipped = archive.IndexFile(out / "skipped.csv", SKIPPED_FIELDS).read()
    counts: dict[str, Any] = {}
    for r in skipped:
        counts[r["reason"]] = counts.get(r["reason"], 0) + 1
        if r["reason"] == "unreadable":
            counts.setdefault("unreadable_example", f"{r['path']}: {r['error']}")
    selection.update(skipped=counts, audited=n)
    if not n:
        raise ValueError(f"{data}: none of the {len(rel)} selected scans has a readable, non-empty mask")
    pos = [candidates[j] for j in audited]
    targets = np.array([names.index(t) for t in cols["target"]])

    faith, curves, subset = {}, {}, np.array([], int)
    if faithfulness:
        t = time.perf_counter()
        subset = _subset(n, faithfulness, seed)
        log(f"faithfulness (deletion / insertion, ROAD) on {len(subset)} scans ...")
        x, _ = _reload(load, [pos[i] for i in subset])
        maps = explain_maps(bundle, x, targets[subset], methods, layer, batch_size)
        faith, curves = faithfulness_scores(bundle, x, targets[subset], maps, batch_size=2 * batch_size)
        timings["faithfulness_s"] = time.perf_counter() - t
    sanity_result = None
    if sanity:
        t = time.perf_counter()
        few = _subset(n, sanity, seed + 1)
        log(f"randomisation check on {len(few)} scans ...")
        x, _ = _reload(load, [pos[i] for i in few])
        sanity_result = sanity_check(bundle, x, targets[few], methods, layer, batch_size)
        timings["sanity_s"] = time.perf_counter() - t
    t = time.perf_counter()
    gallery = _gallery(bundle, load, pos, cols, targets, methods, layer, gallery_size, batch_size, rel, audited)
    timings["gallery_s"] = time.perf_counter() - t
    summary = build_summary(
        bundle, data, names, methods=methods, layer=layer, target=target, selection=selection,
        unseen_text=unseen_text, labels=cols["label"], planes=[p or "unknown" for p in cols["plane"]],
        correct=np.array([c == "True" for c in cols["correct"]]), mask_fraction=cols["mask_fraction"],
        mask_sources=cols["mask_source"], scores=cols["scores"],
        faith=faith, curves=curves, sanity_result=sanity_result,
        settings={"tolerance_px": tolerance_px, "top_k": top_k, "faithfulness_images": int(len(subset)),
                  "sanity_images": int(sanity), "limit": limit, "seed": seed})
    summary["streamed"] = True
    start = timings.pop("start")
    timings["total_s"] = time.perf_counter() - start
    summary["timings"] = {k: round(v, 1) for k, v in timings.items()}
    summary["wall_time_s"] = summary["timings"]["total_s"]
    if command:
        summary["command"] = command
    _fill_faithfulness(out / "scores.csv", {(rel[audited[i]], m): {k: _round(faith[m][k][w]) for k in faith[m]}
                                            for m in faith for w, i in enumerate(subset)})
    archive.write_atomic(out / "summary.json", (json.dumps(_finite(summary), indent=1, allow_nan=False) + "\n").encode())
    archive.write_atomic(out / "report.html", render_report(summary, gallery).encode("utf-8"))
    return summary


def _columns(path: Path, methods: Sequence[str], order: dict[str, int]) -> dict[str, Any]:
    """Read scores.csv row by row into per-scan columns (audit order) and per-method score arrays."""
    per: dict[int, dict[str, Any]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            j = order.get(r["path"])
            if j is None or r["method"] not in methods:
                continue
            entry = per.setdefault(j, {"base": {k: r[k] for k in ("label", "plane", "target", "prediction",
                                                                  "confidence", "correct", "mask_fraction",
                                                                  "mask_source")},
                                       "scores": {}})
            entry["scores"][r["method"]] = [float(r[k]) if r[k] != "" else np.nan for k in MAP_SCORES]
    positions = sorted(j for j, e in per.items() if set(methods) <= set(e["scores"]))
    cols: dict[str, Any] = {"positions": positions}
    for k in ("label", "plane", "target", "prediction", "correct", "mask_source"):
        cols[k] = [per[j]["base"][k] for j in positions]
    cols["confidence"] = np.array([float(per[j]["base"]["confidence"]) for j in positions])
    cols["mask_fraction"] = np.array([float(per[j]["base"]["mask_fraction"]) for j in positions])
    cols["scores"] = {m: {k: np.array([per[j]["scores"][m][c] for j in positions]) for c, k in enumerate(MAP_SCORES)}
                      for m in methods}
    return cols


def _reload(load, positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Decode a few scans again (the subsets and the gallery): pixels (n, S, S) and masks (n, S, S)."""
    pairs = [load(i) for i in positions]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _gallery(bundle, load, pos, cols, targets, methods, layer, size, batch_size, rel, audited):
    """Per method the `size` best and worst scans by energy pointing game, re-read and re-explained."""
    out = {}
    for method in methods:
        sc = cols["scores"][method]
        energy = sc["energy_pointing_game"]
        valid = np.flatnonzero(np.isfinite(energy))
        order = valid[np.argsort(-energy[valid], kind="stable")]
        picks = [("best", i) for i in order[:size]] + [("worst", i) for i in order[::-1][:size]]
        if not picks:
            out[method] = []
            continue
        idx = [i for _, i in picks]
        x, masks = _reload(load, [pos[i] for i in idx])
        maps = explain_maps(bundle, x, targets[idx], [method], layer, batch_size)[method]
        out[method] = [{"kind": kind, "image": x[j], "map": maps[j], "mask": masks[j],
                        "path": rel[audited[i]], "label": cols["label"][i], "plane": cols["plane"][i] or None,
                        "prediction": cols["prediction"][i], "confidence": float(cols["confidence"][i]),
                        **{k: float(v[i]) for k, v in sc.items()}}
                       for j, (kind, i) in enumerate(picks)]
    return out


def _fill_faithfulness(path: Path, values: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Rewrite scores.csv line by line (flat memory) with the faithfulness columns of the subset filled."""
    if not values:
        return

    def write(fh):
        import io

        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        writer = csv.DictWriter(text, fieldnames=SCORE_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        with open(path, newline="", encoding="utf-8") as src:
            for r in csv.DictReader(src):
                r.update(values.get((r["path"], r["method"]), {}))
                writer.writerow(r)
        text.flush()
        text.detach()

    archive.write_atomic(path, write)


def _bar(total: int, enabled: bool):
    """A tqdm bar in scans (images/s and time left) on stderr; a stub when disabled."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="auditing", unit="scan", disable=not enabled, smoothing=0.1)
