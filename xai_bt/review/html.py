"""Review content as HTML: one self-contained page (images as base64 PNG, inline CSS, no scripts).

`render_report` makes the page `report` writes (and `serve` saves and serves); `case_html`, `model_html`,
`notes_html` and `page` are the pieces both use, so the file and the web app show the same thing. Every
text that comes from outside (file names, error messages, bundle fields) is HTML-escaped. `write_report`
writes atomically.
"""
from __future__ import annotations

import base64
import html
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from xai_bt.names import display_name
from xai_bt.review.case import HEATMAP_NOTES

CSS = """
body { font-family: -apple-system, 'DejaVu Sans', Arial, sans-serif; max-width: 1200px; margin: 1.5em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
h3 { font-size: 1.0em; margin: 1em 0 0.3em; }
.meta { color: #555; font-size: 0.9em; }
.box { border: 1px solid #ccc; border-radius: 6px; padding: 0.6em 1em; margin: 1em 0; background: #fafafa; }
.caution { border-left: 5px solid #D55E00; background: #fff6ef; }
.case { border-top: 2px solid #888; margin-top: 1.5em; padding-top: 0.5em; }
.prediction { font-size: 1.25em; }
.failed { color: #a33; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.2em 0.7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bar { display: inline-block; height: 0.8em; background: #0072B2; vertical-align: middle; }
.row { display: flex; gap: 1em; flex-wrap: wrap; align-items: flex-start; }
img { max-width: 100%; height: auto; }
img.scan { max-width: 260px; border: 1px solid #ccc; }
figure { margin: 0; } figcaption { font-size: 0.85em; color: #555; }
.tiles { display: flex; gap: 0.8em; flex-wrap: wrap; align-items: flex-end; margin: 0.8em 0; }
img.tile { max-width: 100%; }  /* at its own size: the map over 320 px */
img.tile-input { width: 340px; max-width: 100%; image-rendering: pixelated; border: 1px solid #ccc; }
"""


def esc(value: Any) -> str:
    """Text -> HTML-escaped text (quotes too)."""
    return html.escape(str(value), quote=True)


def img_tag(png: bytes, alt: str, cls: str = "") -> str:
    """An <img> holding `png` as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    cls_attr = f' class="{esc(cls)}"' if cls else ""
    return f'<img{cls_attr} alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def page(title: str, body: str, head: str = "", description: str | None = None) -> str:
    """A complete HTML document with the shared stylesheet inline; `head`: more (trusted) head elements,
    `description`: a one-line summary for the page's meta description (escaped here)."""
    meta = f'<meta name="description" content="{esc(description)}">\n' if description else ""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n{meta}'
            '<link rel="icon" href="data:,">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n{head}</head>\n<body>\n{body}\n</body>\n</html>\n")


def notes_html() -> str:
    """The plain-language note on what a heatmap does and does not show."""
    items = "\n".join(f"<li>{esc(n)}</li>" for n in HEATMAP_NOTES)
    return (f'<section class="box caution" id="notes">\n<h2>How to read this page</h2>\n<ul>\n{items}\n</ul>\n'
            "</section>")


def model_html(summary: dict[str, Any]) -> str:
    """Model card summary: name, architecture, classes, training data, calibration, test accuracy."""
    rows = [("Model", f"{summary['name']} ({summary['kind']} {summary['task']} classifier)"),
            ("Architecture", (f"{summary['ensemble']} x " if summary.get("ensemble") else "")
             + f"{summary['arch'] or 'not recorded'}, input {summary['input_size']} px"
             + (" (one network: the mean of their logits)" if summary.get("ensemble") else "")),
            ("Classes", ", ".join(display_name(c) for c in summary["classes"]))]
    if summary.get("views"):
        rows.append(("Views (first stage)", ", ".join(summary["views"])))
    if summary.get("imported"):
        imp = summary["imported"]
        assumed = ", ".join(display_name(a) for a in imp["assumed"])
        rows.append(("Imported", f"your own Keras model {imp['source']} (pixel scale {imp['pixel_scale']}"
                     + (f"; assumed, not given: {assumed}" if assumed else "") + ")"))
        rows.append(("Explained score", imp["score"]))
    if summary.get("training_data"):
        counts = ", ".join(f"{summary[k]} {w}" for k, w in (("n_train", "training"), ("n_val", "validation"),
                                                              ("n_test", "test")) if summary.get(k) is not None)
        rows.append(("Training data", f"{summary['training_data']} ({counts} scans)" if counts
                     else summary["training_data"]))
    else:
        rows.append(("Training data", "not recorded in the bundle"))
    rows.append(("Calibration", f"temperature T = {summary['temperature']:.4g}"
                 + (" (1 = not calibrated)" if summary["temperature"] == 1 else "")))
    if summary.get("tta", "none") != "none":
        rows.append(("Test-time augmentation", f"{summary['tta']} (probabilities average the scan and its mirror)"))
    body = "\n".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    acc = _metrics_table(summary.get("metrics") or [])
    return (f'<section class="box" id="model">\n<h2>Model</h2>\n<table>\n{body}\n</table>\n{acc}\n'
            "<p class=\"meta\">Leakage-free: test scans with no twin (a near-copy as it is, mirrored or "
            "flipped) among the scans the model learnt from. "
            "The full card is MODEL_CARD.md in the model folder.</p>\n</section>")


def _metrics_table(metrics: list[dict[str, Any]]) -> str:
    """Test accuracy, official and leakage-free, with 95% CIs, per evaluated data set."""
    if not metrics:
        return "<p>No test metrics recorded in the bundle.</p>"
    rows = []
    for m in metrics:
        cells = []
        for part in ("official", "leakage_free"):
            r = m.get(part)
            if not r:
                cells.append("<td>not measured</td>")
                continue
            ci = f" (95% CI {r['low']:.2%}–{r['high']:.2%})" if r.get("low") is not None else ""
            cells.append(f'<td class="num">{r["accuracy"]:.2%}{ci}, n = {r["n"]}</td>')
        rows.append(f"<tr><td>{esc(m['data'])}</td>{''.join(cells)}</tr>")
    return ("<h3>Test accuracy</h3>\n<table>\n<tr><th>data set</th><th>official test split</th>"
            f"<th>leakage-free part</th></tr>\n{chr(10).join(rows)}\n</table>")


def case_html(case: dict[str, Any], index: int = 0) -> str:
    """One scan: prediction, probabilities, view, the scan, the heatmap figure, map numbers, notes."""
    title = f'<h2>{esc(case["name"])}</h2>'
    if case["status"] != "ok":
        return (f'<section class="case" id="case-{index}">\n{title}\n<p class="failed">Could not be reviewed: '
                f'{esc(case["error"])}</p>\n</section>')
    view = ""
    if case.get("view"):
        vp = case["view_probabilities"][case["view"]]
        view = (f'<p id="view-{index}">MRI view: <strong>{esc(case["view"])}</strong> ({vp:.0%}, from the '
                f'{esc(case["view_source"])})</p>')
    notes = "".join(f"<li>{esc(n)}</li>" for n in case.get("notes", []))
    warnings = _warnings_html(case, index)
    tiles = "\n".join(f'<figure>{img_tag(t["png"], "heatmap: " + display_name(t["method"]), "tile")}'
                       f'{_tile_caption(t)}</figure>' for t in case.get("tiles", []))
    return f"""<section class="case" id="case-{index}">
{title}
<p class="prediction">Predicted:
<strong id="prediction-{index}" class="predicted">{esc(display_name(case["prediction"]))}</strong> (calibrated probability {case["confidence"]:.1%})</p>
{view}
{warnings}
<div class="row">
<figure>{img_tag(case["scan_png"], "the uploaded scan", "scan")}<figcaption>The scan as given
({case["original_shape"][1]}x{case["original_shape"][0]} px)</figcaption></figure>
<div>{_probability_table(case)}</div>
</div>
<div class="tiles">
<figure>{img_tag(case["model_input_png"], "the scan as the model saw it", "tile-input")}<figcaption>Model input
({case["input_size"]}x{case["input_size"]} px)</figcaption></figure>
{tiles}
</div>
<p class="meta">Each heatmap explains the predicted class. Outline: the top {case["top_k"]:.0%} of the map; +: its peak.
Magma maps are non-negative; red/blue maps are signed (red: evidence for the class, blue: against).</p>
{_maps_table(case)}
<ul>{notes}</ul>
</section>"""


def _warnings_html(case: dict[str, Any], index: int) -> str:
    """The competence warnings of a case in a box above its prediction's evidence; empty when it has none."""
    items = case.get("warnings") or []
    if not items:
        return ""
    from xai_bt.model.competence import PREFIX

    lines = "".join(f"<li>{esc(w.removeprefix(PREFIX))}</li>" for w in items)   # the heading says it once
    return (f'<div class="box caution competence" id="warnings-{index}" role="alert"><strong>This scan is unlike '
            "the scans the model was trained on.</strong> Its prediction and heatmaps may mean nothing:"
            f"<ul>{lines}</ul></div>")


def _probability_table(case: dict[str, Any]) -> str:
    """All class probabilities with bars, highest first."""
    rows = []
    for name, p in sorted(case["probabilities"].items(), key=lambda kv: -kv[1]):
        strong = name == case["prediction"]
        label = f"<strong>{esc(display_name(name))}</strong>" if strong else esc(display_name(name))
        rows.append(f'<tr><td>{label}</td><td class="num">{p:.1%}</td>'
                    f'<td><span class="bar" style="width:{max(1, round(150 * p))}px"></span></td></tr>')
    return (f"<table class=\"probabilities\">\n<tr><th>class</th><th>probability</th><th></th></tr>\n"
            f"{chr(10).join(rows)}\n</table>\n<p class=\"meta\">After temperature scaling "
            f"(T = {case['temperature']:.4g}).</p>")


def _maps_table(case: dict[str, Any]) -> str:
    """Where each map peaks (as a fraction of the scan) and how large its top region is."""

    rows = []
    for method, m in case["maps"].items():
        pk = m.get("peak_original_fraction")
        where = f"{pk['row']:.0%} down, {pk['col']:.0%} across" if pk else "n/a"
        rows.append(f"<tr><td>{esc(display_name(method))}</td><td>{esc(where)}</td>"
                    f'<td class="num">{m["top_k_area_fraction"]:.1%}</td>'
                    f"<td>{'signed' if m['signed'] else 'non-negative'}</td></tr>")
    return ("<table class=\"maps\">\n<tr><th>method</th><th>peak on the scan</th><th>top region area</th>"
            f"<th>values</th></tr>\n{chr(10).join(rows)}\n</table>")


def render_report(cases: Sequence[dict[str, Any]], summary: dict[str, Any], title: str = "xai_bt review report",
                  generated: datetime | None = None, cases_first: bool = False) -> str:
    """The whole report page: header, reading notes, model summary, failures, then one section per scan
    (`cases_first`: the scans right after the header, as the web page shows one review)."""
    generated = generated or datetime.now(timezone.utc)
    failed = [c for c in cases if c["status"] != "ok"]
    head = (f"<h1>{esc(title)}</h1>\n<p class=\"meta\">{len(cases) - len(failed)} scan(s) reviewed, "
            f"{len(failed)} failed · model {esc(summary['name'])} · generated "
            f"{generated.strftime('%Y-%m-%d %H:%M UTC')} by xai_bt</p>")
    if summary.get("description"):
        head += (f'\n<p id="model-description">Model <strong>{esc(summary["name"])}</strong>: '
                 f'{nowrap_counts(esc(summary["description"]))}</p>')
    failures = ""
    if failed:
        rows = "\n".join(f"<tr><td>{esc(c['name'])}</td><td>{esc(c['error'])}</td></tr>" for c in failed)
        failures = (f'<section class="box" id="failures">\n<h2 class="failed">Files that could not be reviewed '
                    f"({len(failed)})</h2>\n<table>\n<tr><th>file</th><th>problem</th></tr>\n{rows}\n</table>\n"
                    "</section>")
    sections = "\n".join(case_html(c, i) for i, c in enumerate(c for c in cases if c["status"] == "ok"))
    parts = (head, failures, sections, notes_html(), model_html(summary)) if cases_first else \
        (head, notes_html(), model_html(summary), failures, sections)
    return page(title, "\n".join(p for p in parts if p), description=report_description(cases, summary))


def nowrap_counts(escaped: str) -> str:
    """Escaped text with each "n = 1311" kept on one line (non-breaking spaces)."""
    return re.sub(r"\bn = (\d)", "n&nbsp;=&nbsp;\\1", escaped)


def report_description(cases: Sequence[dict[str, Any]], summary: dict[str, Any]) -> str:
    """One line on a report: "scan.jpg: pituitary (75.9%); model default" for one scan, counts for more."""
    ok = [c for c in cases if c["status"] == "ok"]
    if len(cases) == 1 and ok:
        c = ok[0]
        return f"{c['name']}: {display_name(c['prediction'])} ({c['confidence']:.1%}); model {summary['name']}"
    if len(cases) == 1:
        return f"{cases[0]['name']}: could not be reviewed; model {summary['name']}"
    return f"{len(ok)} scan(s) reviewed, {len(cases) - len(ok)} failed; model {summary['name']}"


def write_report(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Write the page atomically (temporary file, then rename); FileExistsError unless `overwrite`."""
    from xai_bt.io.atomic import write_atomic

    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists; pass --overwrite to replace it")
    if target.is_dir():
        raise IsADirectoryError(f"{target}: is a folder; give a file name such as report.html")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, text.encode("utf-8"))
    return target


def _tile_caption(tile: dict[str, Any]) -> str:
    """Under a heatmap: its audit score ("audit: peak inside the tumor on 67% of 281 unseen scans"), and
    whether the audit recommends it; nothing for a method the bundle's audit did not measure."""
    if not tile.get("audit"):
        return ""
    lead = "<strong>Recommended by the audit.</strong> " if tile.get("recommended") else ""
    return f'<figcaption class="audit">{lead}{esc(tile["audit"])}</figcaption>'

