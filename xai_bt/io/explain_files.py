"""Explain many scans into one folder, resumably and in shards: the pipeline behind `python -m xai_bt explain`.

Per scan: figures (`<stem>.png/.pdf`; none with ``formats=()``), a JSON sidecar and optionally the raw maps
(:mod:`xai_bt.io.explanation_files`); per folder: `index.csv`, one row per scan (ok / error / skipped).
Scans stream through `tf.data` in batches (:mod:`xai_bt.io.stream`), so memory stays flat for any archive;
each batch's files are written atomically and its index rows appended (fsync) as it finishes, so
``resume=True`` finishes a killed run without redoing finished scans. ``shard=(K, N)`` explains every N-th
scan of the sorted list into `index-K-of-N.csv`; a later resumed run without a shard merges the shards'
indexes into `index.csv`. A bad file fails only its own row; existing outputs are kept unless ``overwrite``.

    result = explain_files("models/default", ["/archive"], "explanations", methods=["gradcam"], resume=True)
    for failure in result.failures:
        print(failure.path, failure.error)
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

from xai_bt.io.atomic import fsync_dir, sweep_temporaries
from xai_bt.io.index import IndexFile
from xai_bt.io.listing import list_inputs
from xai_bt.io.shards import index_name, parse_shard, shard_indexes, shard_positions

if TYPE_CHECKING:
    from xai_bt.io.stream import Batch

__all__ = ["INDEX", "INDEX_FIELDS", "FIGURE_FORMATS", "Failure", "ScanResult", "ExplainResult", "ExplainPlan",
           "plan_explain", "explain_files", "unique_stems", "check_formats", "check_layer", "resolve_target"]

log = logging.getLogger(__name__)

INDEX = "index.csv"
INDEX_FIELDS = ("path", "status", "prediction", "confidence", "figure", "error", "note")
#: figure formats written (lossless, for papers)
FIGURE_FORMATS = ("png", "pdf", "svg")
GEOMETRY_FIELDS = 6   # original height, width, head box y0, y1, x0, x1


class Failure(NamedTuple):
    """A scan that could not be explained, and why (one line)."""

    path: str
    error: str


@dataclass(frozen=True)
class ScanResult:
    """What became of one scan in this run, as `on_scan` receives it: status 'ok', 'error' or 'skipped'.
    `figure`: the first file written (or, for a skipped scan, its index entry); `existing`: for a skipped scan,
    the output already there that made it skip; `warnings`: how an explained scan is unlike the training scans."""

    path: str
    status: str
    prediction: str = ""
    confidence: float | None = None
    figure: str = ""
    error: str = ""
    note: str = ""
    existing: str = ""
    warnings: tuple[str, ...] = ()     # competence warnings of an explained scan (model.competence)


@dataclass
class ExplainResult:
    """One run's counts (ok / failed / skipped), the scans a resumed run found finished, every failure (this
    run's first, then those of the run it resumed), the index written and the seconds spent explaining."""

    index: Path
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    done_earlier: int = 0
    failed_earlier: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def attempted(self) -> int:
        """Scans this run decoded and explained or failed on (skipped and earlier ones left out)."""
        return self.ok + self.failed


@dataclass
class _Job:
    """One scan to explain: its file, the output stem, and what became of it (its index row)."""

    path: str
    stem: str
    row: dict[str, Any] = field(default_factory=dict)


OnScan = Callable[[ScanResult], None]


# --- checking the request -----------------------------------------------------------------------

def check_formats(formats: Sequence[str] | str) -> list[str]:
    """Figure formats, lower case without dots, duplicates dropped; 'png,pdf' and 'none' (no figures) accepted.
    ValueError for a format not in FIGURE_FORMATS."""
    if isinstance(formats, str):
        formats = [] if formats.strip().lower() == "none" else formats.split(",")
    names = list(dict.fromkeys(f.strip().lower().lstrip(".") for f in formats if f.strip()))
    bad = [f for f in names if f not in FIGURE_FORMATS]
    if bad:
        raise ValueError(f"unknown figure format {bad[0]!r}; choose from {', '.join(FIGURE_FORMATS)}")
    return names


def check_layer(bundle, layer: str | None) -> None:
    """`layer` (the CAM layer: a path such as `backbone/out_relu`, or a unique tail of one) must name a
    spatial layer of the bundle's network; ValueError otherwise."""
    if layer is None:
        return
    from xai_bt.model.provenance import cam_layer

    cam_layer(bundle, bundle.model, layer)


def resolve_target(name: str | None, class_names: Sequence[str]) -> str | None:
    """The class to explain as one of the model's class names (dataset spellings such as 'notumor' accepted);
    None stays None (each scan's predicted class). ValueError for a class the model does not know."""
    from xai_bt.data.sample import normalise_label

    if name is None or name in class_names:
        return name
    try:
        canonical = normalise_label(name)
    except ValueError:
        canonical = None
    if canonical not in class_names:
        raise ValueError(f"unknown target class {name!r}; this model knows {', '.join(class_names)}")
    return canonical


def _check_settings(top_k: float, batch_size: int, workers: int | None, resume: bool, overwrite: bool,
                    shard: tuple[int, int] | None) -> None:
    """The numbers and flags of a request; ValueError naming the first that cannot work."""
    if not 0 < top_k <= 1:
        raise ValueError(f"top_k is a fraction of pixels in (0, 1], got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if resume and overwrite:
        raise ValueError("resume keeps finished scans and overwrite redoes them: choose one")
    if shard is not None and not (len(shard) == 2 and 1 <= shard[0] <= shard[1]):
        raise ValueError(f"shard must be (K, N) with 1 <= K <= N, got {shard!r}")


def _list_files(inputs: list[str], list_file: str | os.PathLike | None) -> list[str]:
    """The sorted scan list; FileNotFoundError for an input that does not exist, ValueError for an unreadable
    list or no scans at all (a missing file named inside the list fails only its own scan, later)."""
    named = [os.fspath(p) for p in inputs] + ([os.fspath(list_file)] if list_file else [])
    missing = [p for p in named if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: no such file or folder")
    if not named:
        raise ValueError("give scan files or folders, or a list file")
    try:
        files = list_inputs(inputs, list_file)
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{list_file}: cannot read the list ({e})") from e
    if not files:
        raise ValueError(f"no scan files found in {' '.join(named)}")
    return files


def unique_stems(files: Sequence[str]) -> list[str]:
    """Output stems: the file name without suffix, prefixed by parent folders where names repeat."""
    paths = [Path(f) for f in files]
    stems = [p.stem for p in paths]
    counts = Counter(stems)
    stems = [f"{p.parent.name}_{s}" if counts[s] > 1 and p.parent.name else s for p, s in zip(paths, stems)]
    seen: Counter = Counter()
    out = []
    for s in stems:
        seen[s] += 1
        out.append(s if seen[s] == 1 else f"{s}_{seen[s]}")
    return out


# --- the request, checked -----------------------------------------------------------------------

@dataclass
class ExplainPlan:
    """A checked request (made by `plan_explain`): the model, the sorted scan list and the settings. Nothing
    is written until `run`."""

    bundle: Any
    files: list[str]
    out: Path
    methods: list[str]
    formats: list[str]
    target: str | None = None
    layer: str | None = None
    top_k: float = 0.1
    mask: Path | None = None
    save_maps: bool = False
    overwrite: bool = False
    resume: bool = False
    shard: tuple[int, int] | None = None
    batch_size: int = 16
    workers: int | None = None

    @property
    def index_path(self) -> Path:
        """`index.csv`, or this shard's `index-K-of-N.csv`."""
        return self.out / index_name(self.shard, INDEX)

    def run(self, progress: bool = False, on_scan: OnScan | None = None) -> ExplainResult:
        """Explain this shard's scans (all without a shard) into `out`; `on_scan` hears of each scan whose
        fate this run decides, `progress` shows a tqdm bar on stderr. The index ends with one row per scan,
        sorted, also after an interruption (Ctrl-C)."""
        tell = on_scan or _ignore
        stems = unique_stems(self.files)            # over the whole list, so shards never share a name
        jobs = [_Job(self.files[i], stems[i]) for i in shard_positions(len(self.files), self.shard)]
        self.out.mkdir(parents=True, exist_ok=True)
        index = IndexFile(self.index_path, INDEX_FIELDS)
        names = {n for j in jobs for n in self._output_names(j.stem)} | {index.path.name}
        sweep_temporaries(self.out, names.__contains__)      # leftovers of a killed run
        if self.resume:
            todo, earlier = self._resume(jobs, index)
        else:
            index.read(repair=True)           # a row cut short by a kill must not swallow the next one
            todo = [j for j in jobs if not self._skip_existing(j, tell)]
            index.append([j.row for j in jobs if j.row.get("status") == "skipped"])
            earlier = []
        start = time.perf_counter()
        try:
            self._explain(todo, index, progress, tell)
        finally:                      # also after Ctrl-C: one row per scan, sorted
            index.close()
            index.compact()
        return _result(jobs, earlier, index.path, time.perf_counter() - start)

    # --- which scans to do ---------------------------------------------------------------------

    def _output_paths(self, stem: str, out: Path | str | None = None) -> list[Path]:
        from xai_bt.io.explanation_files import output_paths

        return output_paths(stem, self.out if out is None else out, self.formats, self.methods, self.save_maps)

    def _output_names(self, stem: str) -> list[str]:
        """File names a scan's outputs have (and its temporary folder's name, the stem)."""
        return [stem] + [p.name for p in self._output_paths(stem, ".")]

    def _resume(self, jobs: list[_Job], index: IndexFile) -> tuple[list[_Job], list[dict[str, str]]]:
        """Split jobs into finished (an index row, and for ok/skipped rows all their files) and to do; rewrite
        the index without rows of unfinished scans so each scan ends with exactly one row. Without a shard,
        also take rows from the shard indexes in `out`. Returns (to do, earlier rows of these jobs)."""
        rows = index.latest(repair=True)
        if self.shard is None:
            for path in shard_indexes(self.out, INDEX):
                rows.update(IndexFile(path, INDEX_FIELDS).latest())
        this_run = {j.path for j in jobs}
        keep = {p: r for p, r in rows.items() if p not in this_run}
        todo, earlier = [], []
        for job in jobs:
            row = rows.get(job.path)
            finished = row is not None and (row.get("status") == "error" or (
                row.get("status") in ("ok", "skipped")
                and all(p.exists() for p in self._output_paths(job.stem))))
            if finished:
                keep[job.path] = row
                earlier.append(row)
                continue
            sidecar = _previous_result(self.out / f"{job.stem}.json", job.path)
            if "note" in sidecar:              # outputs of this name belong to another scan: leave them
                job.row.update(path=job.path, status="skipped", figure=str(self.out / f"{job.stem}.json"), **sidecar)
                keep[job.path] = job.row
                earlier.append(job.row)
                continue
            todo.append(job)                   # files without a row are from a killed batch: redo them
        index.rewrite(keep[p] for p in sorted(keep))
        if earlier:
            log.info("resume: %d of %d scans already done, %d to go", len(earlier), len(jobs), len(todo))
        return todo, earlier

    def _skip_existing(self, job: _Job, tell: OnScan) -> bool:
        """Mark a scan whose outputs exist as skipped (unless overwrite); True when skipped."""
        existing = [p for p in self._output_paths(job.stem) if p.exists()]
        if not existing:
            return False
        if self.overwrite:
            job.row["note"] = "replaced earlier outputs"
            return False
        job.row.update(path=job.path, status="skipped",
                       figure=str(self.out / f"{job.stem}.{(self.formats or ['json'])[0]}"),
                       note="outputs exist; pass --overwrite to replace")
        job.row.update(_previous_result(self.out / f"{job.stem}.json", job.path))
        tell(_scan_result(job.row, existing=str(existing[0])))
        return True

    # --- doing it ------------------------------------------------------------------------------

    def _explain(self, jobs: list[_Job], index: IndexFile, progress: bool, tell: OnScan) -> None:
        """Stream the jobs through tf.data; each batch's rows are appended once its files are in place."""
        from tqdm import tqdm

        from xai_bt.io.stream import stream

        if not jobs:
            return
        load, specs = _loader(self.bundle, self.mask)
        batches = stream([j.path for j in jobs], load, specs, self.batch_size, parallel=self.workers)
        with tqdm(total=len(jobs), unit="scan", file=sys.stderr, desc="explaining", smoothing=0.1,
                  disable=None if progress else True) as bar:  # None: on a terminal only
            for batch in batches:
                rows = self._explain_batch([jobs[i] for i in batch.positions], batch, tell)
                fsync_dir(self.out)      # the renames first, then the rows that say they happened
                index.append(rows)
                bar.update(len(rows))

    def _explain_batch(self, batch: list[_Job], data: Batch, tell: OnScan) -> list[dict[str, Any]]:
        """Explain and save one streamed batch; a bad file or a failed save only fails its own scan.
        Returns the batch's index rows, in order."""
        import numpy as np

        from xai_bt.attribution.explain import explain
        from xai_bt.attribution.summary import GEOMETRY_KEY, scan_geometry
        from xai_bt.io.explanation_files import save_explanation

        for job, ok, error in zip(batch, data.ok, data.errors):
            if not ok:
                _failed(job, error, tell)
        good = np.flatnonzero(data.ok)
        explanations = []
        if good.size:
            try:
                explanations = explain(self.bundle, data.arrays[0][good], methods=tuple(self.methods),
                                       target=self.target, layer=self.layer, batch_size=self.batch_size)
            except Exception as e:  # a method failing on this batch: report its scans, keep going
                for i in good:
                    _failed(batch[i], f"explanation failed ({_reason(e, batch[i].path)})", tell)
                explanations = []
        for i, expl in zip(good, explanations):
            job = batch[i]
            geo = data.arrays[1][i]
            expl.path = job.path
            expl.extra[GEOMETRY_KEY] = scan_geometry(tuple(geo[:2]), tuple(geo[2:]))
            expl.warnings = _image_warnings(data.arrays[2][i]) + expl.warnings
            if self.mask:
                expl.mask = data.arrays[3][i]
            try:
                written = save_explanation(expl, self.out, self.formats, overwrite=True, save_maps=self.save_maps,
                                           top_k=self.top_k, stem=job.stem, sync_dir=False)
            except (OSError, ValueError) as e:
                _failed(job, f"cannot save ({_reason(e, job.path)})", tell)
                continue
            job.row.update(path=job.path, status="ok", prediction=expl.predicted,
                           confidence=f"{expl.confidence:.4f}", figure=str(written[0]), error="")
            tell(_scan_result(job.row, confidence=float(expl.confidence), warnings=tuple(expl.warnings)))
        return [j.row for j in batch]


def plan_explain(model, inputs: Sequence[str | os.PathLike] | str | os.PathLike, out: str | os.PathLike, *,
                 list_file: str | os.PathLike | None = None, methods: Sequence[str] | str = ("gradcam",),
                 target: str | None = None, layer: str | None = None,
                 formats: Sequence[str] | str = ("png", "pdf"), top_k: float = 0.1,
                 mask: str | os.PathLike | None = None, save_maps: bool = False, overwrite: bool = False,
                 resume: bool = False, shard: tuple[int, int] | str | None = None, batch_size: int = 16,
                 workers: int | None = None) -> ExplainPlan:
    """Check an explain request and list its scans, writing nothing, so a bad request costs no work: ValueError
    for bad settings, an unknown method, class or layer, an unusable model or no scans; FileNotFoundError for
    a missing input or mask. `model`: a Bundle or a bundle path (loaded after the cheap checks)."""
    from xai_bt.attribution import registry
    from xai_bt.model.bundle import Bundle, load_model

    methods = list(registry.check_methods(methods))
    formats = check_formats(formats)
    shard = parse_shard(shard) if isinstance(shard, str) else (tuple(shard) if shard is not None else None)
    _check_settings(top_k, batch_size, workers, resume, overwrite, shard)
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files = _list_files([os.fspath(p) for p in inputs], list_file)
    if mask is not None:
        if len(files) != 1:
            raise ValueError(f"a mask describes one scan, but {len(files)} scans were given")
        if not Path(mask).is_file():
            raise FileNotFoundError(f"{mask}: no such mask file")
    bundle = model if isinstance(model, Bundle) else load_model(model)
    target = resolve_target(target, bundle.class_names)
    if any(registry.spec(m).is_cam for m in methods):
        from xai_bt.model.provenance import cam_layer

        cam_layer(bundle, bundle.model, layer)  # a model with no spatial layer is refused here, not per scan
    else:
        check_layer(bundle, layer)
    return ExplainPlan(bundle, files, Path(out), methods, formats, target=target, layer=layer, top_k=top_k,
                       mask=Path(mask) if mask is not None else None, save_maps=save_maps, overwrite=overwrite,
                       resume=resume, shard=shard, batch_size=batch_size, workers=workers)


def explain_files(model, inputs: Sequence[str | os.PathLike] | str | os.PathLike, out: str | os.PathLike, *,
                  list_file: str | os.PathLike | None = None, methods: Sequence[str] | str = ("gradcam",),
                  target: str | None = None, layer: str | None = None,
                  formats: Sequence[str] | str = ("png", "pdf"), top_k: float = 0.1,
                  mask: str | os.PathLike | None = None, save_maps: bool = False, overwrite: bool = False,
                  resume: bool = False, shard: tuple[int, int] | str | None = None, batch_size: int = 16,
                  workers: int | None = None, progress: bool = False,
                  on_scan: OnScan | None = None) -> ExplainResult:
    """Explain every scan in `inputs` (files, folders searched recursively) and `list_file` into `out`:
    figures, JSON sidecars, `index.csv`. Bad files are listed in the result's `failures`, not raised;
    `resume` finishes a killed run, `shard` (K, N) or 'K/N' does every N-th scan. See `plan_explain` for
    what is checked (and raised) before any work, `ExplainPlan.run` for `progress` and `on_scan`."""
    plan = plan_explain(model, inputs, out, list_file=list_file, methods=methods, target=target, layer=layer,
                        formats=formats, top_k=top_k, mask=mask, save_maps=save_maps, overwrite=overwrite,
                        resume=resume, shard=shard, batch_size=batch_size, workers=workers)
    return plan.run(progress=progress, on_scan=on_scan)


# --- helpers ------------------------------------------------------------------------------------

def _ignore(scan: ScanResult) -> None:
    """The default `on_scan`: nobody listens."""


def _scan_result(row: dict[str, Any], **extra: Any) -> ScanResult:
    """The `ScanResult` of an index row (confidence parsed back unless given)."""
    values = {k: row.get(k) or "" for k in ("path", "status", "prediction", "figure", "error", "note")}
    if "confidence" not in extra:
        try:
            extra["confidence"] = float(row["confidence"])
        except (KeyError, TypeError, ValueError):
            extra["confidence"] = None
    return ScanResult(**values, **extra)


def _previous_result(sidecar: Path, path: str) -> dict[str, Any]:
    """Prediction and confidence recorded by an earlier run, so a skipped scan's index row stays useful;
    a note instead when the existing outputs were made for another scan of the same name."""
    try:
        data = json.loads(sidecar.read_text())
        if data.get("path") not in (None, path):
            return {"note": f"outputs of this name exist for {data['path']}; pass --overwrite to replace"}
        return {"prediction": data["prediction"], "confidence": f"{data['confidence']:.4f}"}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _loader(bundle, mask_path: Path | None):
    """The per-scan decode for tf.data: path -> (model input (S, S, 1), geometry[6], image statistics of the
    competence checks, [prepared mask])."""
    import numpy as np

    from xai_bt.data.decode import read_mask
    from xai_bt.model.competence import STAT_KEYS, decode_scan, image_statistics

    pre = bundle.preprocessing
    size = pre.image_size

    def load(path: str):
        gray, rgb = decode_scan(path)
        stats = image_statistics(gray, rgb)
        out = [bundle.prepare(gray)[0], np.array([*gray.shape, *pre.head_box(gray)], np.int32),
               np.array([stats[k] for k in STAT_KEYS], np.float64)]
        if mask_path:
            out.append(pre.prepare_mask(read_mask(mask_path, gray.shape), gray))
        return out

    specs = [((size, size, 1), np.float32), ((GEOMETRY_FIELDS,), np.int32), ((len(STAT_KEYS),), np.float64)]
    return load, specs + ([((size, size), bool)] if mask_path else [])


def _image_warnings(stats) -> list[str]:
    """The image-check warnings of a scan from its streamed statistics vector."""
    from xai_bt.model.competence import STAT_KEYS, image_warnings

    return image_warnings(dict(zip(STAT_KEYS, map(float, stats))))


def _failed(job: _Job, reason: str, tell: OnScan) -> None:
    """Record a scan that could not be explained, and pass it on."""
    job.row.update(path=job.path, status="error", error=reason)
    tell(_scan_result(job.row))


def _reason(e: Exception, path: str) -> str:
    """One line saying what went wrong; an ImageError about the scan itself without repeating its path."""
    from xai_bt.io.stream import one_line

    if getattr(e, "path", None) == path and getattr(e, "problem", None):
        return e.problem
    return one_line(e)


def _result(jobs: list[_Job], earlier: list[dict[str, str]], index: Path, seconds: float) -> ExplainResult:
    """Counts of the scans this run decided, the earlier ones, and every failure (this run's first)."""
    before = {id(r) for r in earlier}
    counts = Counter(j.row.get("status") for j in jobs if j.row.get("status") and id(j.row) not in before)
    failures = [Failure(j.path, j.row["error"]) for j in jobs if j.row.get("status") == "error"]
    failures += [Failure(r["path"], r.get("error", "")) for r in earlier if r.get("status") == "error"]
    return ExplainResult(index=index, ok=counts["ok"], failed=counts["error"], skipped=counts["skipped"],
                         done_earlier=len(earlier), failed_earlier=sum(r.get("status") == "error" for r in earlier),
                         failures=failures, seconds=seconds)
