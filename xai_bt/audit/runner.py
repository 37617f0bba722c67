"""The focus audit: do a model's explanations point at the tumor, and on which scans?

One batch loop for every scale. The scans with a tumor mask (BRISC masks, figshare `tumorMask`, a folder or CSV
of mask images, or YOLO boxes) that are unseen in training (:mod:`xai_bt.audit.selection`) stream through
`tf.data`; each batch is predicted, explained by every method (the annotated class by default) and scored
against its masks (:mod:`xai_bt.audit.measure`), and its rows go to a sink (:mod:`xai_bt.audit.sinks`). Then
the optional faithfulness and randomisation subsets and the gallery re-read the few scans they need, and the
summary is computed from the stored rows (:mod:`xai_bt.audit.summary`).

- :func:`run_audit` keeps the rows in memory and returns an :class:`AuditResult`; :func:`write_audit` writes
  `scores.csv`, `summary.json` and `report.html` (:mod:`xai_bt.audit.report`).
- :func:`stream_audit` appends rows per batch to `out/scores.csv` and `skipped.csv` (flush + fsync): `resume`
  finishes a killed run, `shard` (K, N) audits every N-th candidate into `scores-K-of-N.csv`, and a final
  resumed run without a shard merges the shards and writes the summary. CSV values are rounded to 4 decimals,
  so its summary means can differ from the in-memory audit's by ~1e-4.

Settings are one :class:`AuditConfig`. Messages go to the `logging` logger "xai_bt.audit" (INFO); progress bars
(tqdm, stderr) are shown when `progress` is set.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xai_bt.attribution import registry
from xai_bt.audit.measure import (
    FAITHFULNESS_SCORES,
    cam_layer,
    explain_maps,
    explained_network,
    faithfulness_scores,
    model_batch,
    network_probabilities,
    sanity_check,
    score_maps,
)
from xai_bt.audit.selection import EMPTY_MASK, scan_loader, select_candidates
from xai_bt.audit.sinks import OUTPUTS, SCORE_FIELDS, CsvSink, MemorySink, Sink, csv_row
from xai_bt.audit.summary import Columns, build_summary, gallery_picks, read_columns
from xai_bt.data.twins import TWIN_THRESHOLD
from xai_bt.io.atomic import write_atomic
from xai_bt.io.shards import shard_positions
from xai_bt.io.stream import stream as stream_scans

__all__ = ["OUTPUTS", "AuditConfig", "AuditResult", "check_out", "run_audit", "stream_audit", "write_audit"]

logger = logging.getLogger("xai_bt.audit")
TARGETS = ("true", "predicted")


@dataclass(frozen=True)
class AuditConfig:
    """What an audit explains and measures. target: "true" explains the annotated class (the tumor the mask
    shows), "predicted" the model's class; tolerance_px: pointing-game tolerance at model resolution (None: 3%
    of the input side); faithfulness / sanity: scans for those checks (0: skip); workers: scans decoded in
    parallel (None: tf.data's AUTOTUNE)."""

    methods: tuple[str, ...] = registry.AUDIT_DEFAULT
    masks: str | None = None
    boxes: str | None = None
    unseen_only: bool = True
    train_data: str | None = None
    limit: int | None = None
    layer: str | None = None
    target: str = "true"
    tolerance_px: float | None = None
    top_k: float = 0.05
    threshold: float = TWIN_THRESHOLD
    faithfulness: int = 0
    sanity: int = 0
    batch_size: int = 32
    gallery_size: int = 4
    seed: int = 0
    workers: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", registry.check_methods(self.methods))
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        for name, least in (("limit", 1), ("batch_size", 1), ("workers", 1), ("faithfulness", 0), ("sanity", 0),
                            ("gallery_size", 0), ("tolerance_px", 0)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"{name} must be at least {least}, got {value}")
        if not 0 < self.top_k <= 1:
            raise ValueError(f"top_k is a fraction of pixels in (0, 1], got {self.top_k}")

    @classmethod
    def of(cls, config: AuditConfig | None = None, **overrides: Any) -> AuditConfig:
        """`config` (default: all defaults) with `overrides` replaced; TypeError names an unknown setting."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise TypeError(f"unknown audit setting(s) {', '.join(unknown)}; the settings are {', '.join(known)}")
        return replace(config or cls(), **overrides)


@dataclass
class AuditResult:
    """Everything an audit measured: per-image rows (as scores.csv holds them), the summary, the gallery."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    gallery: dict[str, list[dict[str, Any]]]


# ---------------------------------------------------------------------------------------------- entries
def run_audit(model, data: str, config: AuditConfig | None = None, **overrides: Any) -> AuditResult:
    """Audit `model` (a Bundle or path) on the masked scans of `data`, rows in memory; settings are `config`
    with `overrides` (AuditConfig's fields, e.g. methods=..., limit=...)."""
    cfg = AuditConfig.of(config, **overrides)
    audit = _Audit(model, data, cfg)
    sink = MemorySink()
    everything = range(len(audit.paths))
    sink.start(audit.paths, everything, cfg.methods)
    audit.score(sink, list(everything))
    summary, gallery = audit.finish(sink)
    return AuditResult([csv_row(r) for r in sink.rows()], summary, gallery)


def stream_audit(model, data: str, out: str | os.PathLike, config: AuditConfig | None = None, *,
                 resume: bool = False, overwrite: bool = False, shard: tuple[int, int] | None = None,
                 command: str | None = None, **overrides: Any) -> dict[str, Any] | None:
    """Audit `model` on `data` into the folder `out`, rows appended per batch; returns the summary (None for a
    shard run, which only writes its rows). Raises FileExistsError for an earlier audit in `out` unless
    resume or overwrite."""
    cfg = AuditConfig.of(config, **overrides)
    out = Path(out)
    if not resume:
        check_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    audit = _Audit(model, data, cfg)
    sink = CsvSink(out, shard, resume)
    mine = list(shard_positions(len(audit.paths), shard))
    try:
        done = sink.start(audit.paths, mine, cfg.methods)
        todo = [j for j in mine if audit.paths[j] not in done]
        if resume:
            logger.info(f"resume: {len(mine) - len(todo)} of {len(mine)} scans already done, {len(todo)} to go")
        audit.score(sink, todo)
    finally:
        sink.close()
    if shard is not None:
        logger.info(f"shard {shard[0]}/{shard[1]} done: {sink.scores.path}; after every shard, run again without "
                    "--shard and with --resume to merge them and write the summary")
        return None
    summary, gallery = audit.finish(sink)
    summary["streamed"] = True
    if command:
        summary["command"] = command
    _write_summary(out, summary, gallery)
    return summary


# ------------------------------------------------------------------------------------------- the audit
class _Audit:
    """One audit: the bundle, the settings resolved against it, and the candidate scans."""

    def __init__(self, model, data: str, cfg: AuditConfig) -> None:
        from xai_bt.model.bundle import Bundle, load_model

        self.t0 = time.perf_counter()
        self.cfg, self.data = cfg, str(data)
        self.bundle = model if isinstance(model, Bundle) else load_model(model)
        net, self.names = explained_network(self.bundle)
        if cfg.sanity and len(net.inputs) > 1:
            raise ValueError("the randomisation check (--sanity) supports single-input networks only")
        self.layer = cam_layer(self.bundle, cfg.layer) if any(registry.spec(m).is_cam for m in cfg.methods) else None
        self.size = self.bundle.preprocessing.image_size
        self.tolerance_px = round(0.03 * self.size, 1) if cfg.tolerance_px is None else float(cfg.tolerance_px)
        self.cands = select_candidates(
            self.bundle, self.data, self.names, masks=cfg.masks, boxes=cfg.boxes, unseen_only=cfg.unseen_only,
            train_data=cfg.train_data, limit=cfg.limit, threshold=cfg.threshold, seed=cfg.seed, progress=cfg.progress)
        self.paths = self.cands.paths()
        self.load = scan_loader(self.bundle, self.cands.samples, self.cands.sources)
        self.timings = {"load_and_select_s": time.perf_counter() - self.t0}

    # --- the one batch loop
    def score(self, sink: Sink, todo: Sequence[int]) -> None:
        """Decode the candidates `todo` in parallel (tf.data, in order), explain and score them in batches of
        `batch_size` readable scans, and give each batch's rows and skipped scans to `sink`. Batches are the same
        consecutive readable scans whatever was skipped (SmoothGrad's seeded noise depends on the batch)."""
        from tqdm.auto import tqdm

        cfg, t, waited = self.cfg, time.perf_counter(), 0.0
        specs = [((self.size, self.size), np.uint8), ((self.size, self.size), bool)]
        batches = stream_scans([self.cands.positions[j] for j in todo], self.load, specs, cfg.batch_size,
                                parallel=cfg.workers)
        pending: list[tuple[int, np.ndarray, np.ndarray]] = []
        with tqdm(total=len(todo), desc="auditing", unit="scan", disable=None if cfg.progress else True,
                  smoothing=0.1) as bar:  # None: on a terminal only
            while True:
                w = time.perf_counter()
                batch = next(batches, None)
                waited += time.perf_counter() - w
                if batch is None:
                    break
                skipped = []
                for p, ok, error, x, mask in zip(batch.positions, batch.ok, batch.errors, *batch.arrays):
                    if ok:
                        pending.append((todo[p], x, mask))
                    else:
                        skipped.append({"path": self.paths[todo[p]],
                                        "reason": EMPTY_MASK if error == EMPTY_MASK else "unreadable", "error": error})
                rows, pending = self._score_full_batches(pending)
                sink.append(rows, skipped)
                bar.update(len(skipped) + len(rows) // len(cfg.methods))
            if pending:
                rows = self._score_batch(pending)
                sink.append(rows, [])
                bar.update(len(pending))
        self.timings["prepare_s"] = waited
        self.timings["explain_and_score_s"] = time.perf_counter() - t - waited

    def _score_full_batches(self, pending: list) -> tuple[list[dict[str, Any]], list]:
        """Rows of every full batch at the head of `pending`, and what is left of it."""
        bs, rows = self.cfg.batch_size, []
        while len(pending) >= bs:
            rows += self._score_batch(pending[:bs])
            pending = pending[bs:]
        return rows, pending

    def _score_batch(self, items: Sequence[tuple[int, np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
        """Predict, explain and score one batch of (candidate, pixels, mask): rows (one per scan and method)."""
        cfg, names = self.cfg, self.names
        positions = [j for j, _, _ in items]
        x, masks = np.stack([it[1] for it in items]), np.stack([it[2] for it in items])
        probs = network_probabilities(self.bundle, model_batch(x), cfg.batch_size)
        true = np.array([names.index(self.cands.sample(j).label) for j in positions])
        targets = true if cfg.target == "true" else probs.argmax(axis=1)
        maps = explain_maps(self.bundle, x, targets, cfg.methods, self.layer, cfg.batch_size)
        scores = {m: score_maps(maps[m], masks, x, self.tolerance_px, cfg.top_k) for m in cfg.methods}
        rows = []
        for i, j in enumerate(positions):
            s, sims = self.cands.sample(j), self.cands.sims[j]
            base = {"path": self.paths[j], "label": s.label, "plane": s.plane or "",
                    "mask_source": self.cands.sources[self.cands.positions[j]].kind,
                    "mask_fraction": float(masks[i].mean()), "max_similarity_train": float(sims[0]),
                    "max_similarity_val": float(sims[1]), "target": names[targets[i]],
                    "prediction": names[int(probs[i].argmax())], "confidence": float(probs[i].max()),
                    "correct": bool(probs[i].argmax() == true[i])}
            for m in cfg.methods:
                rows.append({**base, "method": m, **{k: float(v[i]) for k, v in scores[m].items()},
                             **{k: np.nan for k in FAITHFULNESS_SCORES}})
        return rows

    # --- after the loop
    def finish(self, sink: Sink) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
        """Faithfulness and sanity subsets, gallery and summary from the rows in `sink`."""
        cfg, bundle, timings = self.cfg, self.bundle, self.timings
        cols = read_columns(sink.rows(), {p: j for j, p in enumerate(self.paths)}, cfg.methods)
        selection = {**self.cands.selection, "skipped": _skip_counts(sink.skipped()), "audited": len(cols)}
        n = len(cols)
        if not n:
            example = selection["skipped"].get("unreadable_example")
            raise ValueError(f"{self.data}: none of the {len(self.paths)} selected scans has a readable, non-empty "
                             "mask" + (f" (e.g. {example})" if example else ""))
        targets = np.array([self.names.index(t) for t in cols.target])

        faith: dict[str, dict[str, np.ndarray]] = {}
        curves: dict[str, Any] = {}
        subset = np.array([], int)
        if cfg.faithfulness:
            t = time.perf_counter()
            subset = _subset(n, cfg.faithfulness, cfg.seed)
            logger.info(f"faithfulness (deletion / insertion, ROAD) on {len(subset)} scans ...")
            x, _ = self._reload([cols.positions[i] for i in subset])
            maps = explain_maps(bundle, x, targets[subset], cfg.methods, self.layer, cfg.batch_size)
            faith, curves = faithfulness_scores(bundle, x, targets[subset], maps, batch_size=2 * cfg.batch_size)
            sink.fill({(self.paths[cols.positions[i]], m): {k: faith[m][k][w] for k in FAITHFULNESS_SCORES}
                       for m in faith for w, i in enumerate(subset)})
            timings["faithfulness_s"] = time.perf_counter() - t
        sanity_result = None
        if cfg.sanity:
            t = time.perf_counter()
            few = _subset(n, cfg.sanity, cfg.seed + 1)
            logger.info(f"randomisation check on {len(few)} scans ...")
            x, _ = self._reload([cols.positions[i] for i in few])
            sanity_result = sanity_check(bundle, x, targets[few], cfg.methods, self.layer, cfg.batch_size)
            timings["sanity_s"] = time.perf_counter() - t
        t = time.perf_counter()
        gallery = self._gallery(cols, targets)
        timings["gallery_s"] = time.perf_counter() - t
        summary = build_summary(
            bundle, self.data, self.names, cols, methods=cfg.methods, layer=self.layer, target=cfg.target,
            selection=selection, unseen_text=self.cands.unseen_text, faith=faith, curves=curves,
            sanity_result=sanity_result,
            settings={"tolerance_px": self.tolerance_px, "top_k": cfg.top_k, "faithfulness_images": int(len(subset)),
                      "sanity_images": int(cfg.sanity), "limit": cfg.limit, "seed": cfg.seed})
        timings["total_s"] = time.perf_counter() - self.t0
        summary["timings"] = {k: round(v, 1) for k, v in timings.items()}
        summary["wall_time_s"] = summary["timings"]["total_s"]
        return summary, gallery

    def _reload(self, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Decode a few candidates again (the subsets and the gallery): pixels (n, S, S) and masks (n, S, S)."""
        pairs = [self.load(self.cands.positions[j]) for j in positions]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def _gallery(self, cols: Columns, targets: np.ndarray) -> dict[str, list[dict[str, Any]]]:
        """Per method, the `gallery_size` best, typical (around the median) and worst scans by energy pointing
        game (:func:`gallery_picks`), re-read and re-explained (maps are not kept during the run): image, map,
        mask, scores and what the caption shows."""
        size, out = self.cfg.gallery_size, {}
        for method in self.cfg.methods:
            sc = cols.scores[method]
            picks = gallery_picks(sc["energy_pointing_game"], size)
            if not picks:
                out[method] = []
                continue
            idx = np.array([i for _, i in picks], int)
            x, masks = self._reload([cols.positions[i] for i in idx])
            maps = explain_maps(self.bundle, x, targets[idx], [method], self.layer, self.cfg.batch_size)[method]
            out[method] = []
            for k, (kind, i) in enumerate(picks):
                s = self.cands.sample(cols.positions[i])
                out[method].append({"kind": kind, "image": x[k], "map": maps[k], "mask": masks[k], "path": s.path,
                                    "label": s.label, "plane": s.plane, "prediction": cols.prediction[i],
                                    "confidence": float(cols.confidence[i]),
                                    **{name: float(v[i]) for name, v in sc.items()}})
        return out


def _skip_counts(skipped: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Skipped scans per reason, and one unreadable scan's error as an example."""
    counts: dict[str, Any] = {}
    for r in skipped:
        counts[r["reason"]] = counts.get(r["reason"], 0) + 1
        if r["reason"] == "unreadable":
            counts.setdefault("unreadable_example", f"{r['path']}: {r['error']}")
    return counts


def _subset(n: int, k: int, seed: int) -> np.ndarray:
    """k of n indices, seeded, sorted (all of them when k >= n)."""
    return np.arange(n) if k >= n else np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


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
    out = check_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if command:
        result.summary["command"] = command
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(SCORE_FIELDS))
    writer.writeheader()
    writer.writerows(result.rows)
    write_atomic(out / OUTPUTS[0], text.getvalue().encode("utf-8"))
    _write_summary(out, result.summary, result.gallery)
    return [out / name for name in OUTPUTS]


def _write_summary(out: Path, summary: dict[str, Any], gallery: dict[str, list[dict[str, Any]]]) -> None:
    """summary.json and report.html, each written atomically."""
    from xai_bt.audit.report import render_report

    write_atomic(out / "summary.json", (json.dumps(_finite(summary), indent=1, allow_nan=False) + "\n").encode())
    write_atomic(out / "report.html", render_report(summary, gallery).encode("utf-8"))


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
