"""A local review web page: upload a scan, pick a model and methods, see the same content as `report`.

A Flask app (`create_wsgi_app`) on werkzeug's threaded server (`make_server`). Routes: GET / (the form,
each model with a one-line description, the recent reviews), POST /review (upload; answered with a 303
redirect to the saved page), GET /reviews/<name> (a saved review page, bookmarkable), GET /static/busy.js
(the busy indicator). Safety: binds 127.0.0.1 unless told otherwise; uploads over `max_bytes` get 413
(Flask's MAX_CONTENT_LENGTH: refused on the declared length, before the body is read) and are held in
memory, never in a temporary file; scans are decoded from memory by `read_image` (bad files: a message
naming the file and HTTP 400); a form another site's page posts here is refused (403, by its Origin and
Sec-Fetch-Site headers); models are chosen from the bundles found at start (and `App.add`) and loaded
once; the only files written are review pages under the app's output folder, named by time and a random
id (never by the uploaded file's name); a review page is served only by a name of that pattern. Every
answer carries a Content-Security-Policy: nothing loads from elsewhere, the only script is the app's own.
"""
from __future__ import annotations

import html
import json
import logging
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path
from typing import IO, Any, Mapping, Sequence

from flask import Flask, Request, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, select_address_family
from werkzeug.serving import make_server as werkzeug_server

from xai_bt.attribution import registry

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Methods offered on the page (every registered one), with a hint for the slow ones (seconds per scan on a CPU).
WEB_METHODS: dict[str, str] = {m: registry.label(m) + (" (slow)" if registry.spec(m).slow else "")
                               for m in registry.names()}
ACCEPT = ".jpg,.jpeg,.png,.tif,.tiff,.bmp,.dcm,.dicom,image/*,application/dicom"
#: Saved review pages: <UTC time>-<8 hex digits, random>[-<the upload's name, reduced>].html
REVIEW_NAME = re.compile(r"^([0-9]{8}-[0-9]{6})-[0-9a-f]{8}(-[A-Za-z0-9_-]{1,40})?\.html$")
MAX_FORM_PARTS = 64
RECENT_REVIEWS = 10
STATIC_DIR = Path(__file__).resolve().parent / "static"
WARM_UP_SCAN = Path(__file__).resolve().parents[1] / "samples" / "meningioma.jpg"
#: Content-Security-Policy: nothing loads from elsewhere; images only as data URIs; scripts only the app's
#: own file (no inline script, no handler attributes); forms post back here; no framing.
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'self'; form-action 'self'; "
       "base-uri 'none'; frame-ancestors 'none'")
#: The app pages' own style: the form, the recent reviews, the busy indicator (the only animation; slower
#: for readers who ask for less motion).
APP_CSS = """<style>
.busy { display: flex; align-items: center; gap: 0.7em; font-size: 1.05em; margin: 0.6em 0 0.2em;
        padding: 0.6em 1em; border-left: 5px solid #0072B2; background: #eaf3fa; border-radius: 4px; }
.busy[hidden] { display: none; }
.spinner { flex: none; width: 1.3em; height: 1.3em; border: 3px solid #b9d3e6; border-top-color: #0072B2;
           border-radius: 50%; animation: spin 0.9s linear infinite; }
@keyframes spin { to { transform: rotate(360deg); } }
@media (prefers-reduced-motion: reduce) { .spinner { animation-duration: 3s; } }
.elapsed { color: #555; font-size: 0.9em; white-space: nowrap; }
select, button { font: inherit; } select { max-width: 100%; font-size: 0.92em; }
.choice { margin: 0.5em 0; } .field { font-weight: 600; }
button#submit { font-size: 1.05em; padding: 0.35em 1.6em; }
.methods label { white-space: nowrap; margin-right: 0.6em; line-height: 1.8; }
.desc { color: #444; font-size: 0.9em; margin: 0.15em 0 0 0; }
ul.recent { padding-left: 1.2em; } ul.recent li { margin: 0.15em 0; }
#nav { display: flex; gap: 1.5em; flex-wrap: wrap; align-items: baseline; }
</style>
"""


class RequestError(ValueError):
    """A request the app refuses: `status` and a one-line message shown to the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Timings:
    """Seconds each method takes per model on this machine, learnt from the reviews done here (for the
    busy indicator's "about N s"). A review's time is shared among its methods not timed yet; such first
    times are "cold" (they include building TensorFlow's graphs). When every method of a review was timed
    before, their times are rescaled to the new total, and so are the cold times learnt with them."""

    def __init__(self) -> None:
        self._seconds: dict[str, dict[str, float]] = {}
        self._cold: dict[str, dict[str, int]] = {}       # model -> method -> the review its cold time came from
        self._reviews = 0
        self._lock = threading.Lock()

    def record(self, model: str, methods: Sequence[str], seconds: float) -> None:
        """Learn from one review of `model` with `methods` that took `seconds`."""
        methods = list(dict.fromkeys(methods))
        if not methods or seconds <= 0:
            return
        with self._lock:
            self._reviews += 1
            known, cold = self._seconds.setdefault(model, {}), self._cold.setdefault(model, {})
            untimed = [m for m in methods if m not in known]
            if untimed:
                rest = max(seconds - sum(known[m] for m in methods if m in known), 0.1 * seconds)
                known.update({m: rest / len(untimed) for m in untimed})
                cold.update({m: self._reviews for m in untimed})
                return
            scale = seconds / max(sum(known[m] for m in methods), 1e-9)
            batches = {cold.pop(m) for m in methods if m in cold}
            for m in [*methods, *(m for m, b in cold.items() if b in batches)]:
                known[m] *= scale
                cold.pop(m, None)

    def of(self, model: str) -> dict[str, float]:
        """Method -> seconds measured for `model` (empty when none was timed)."""
        with self._lock:
            return {m: round(s, 2) for m, s in self._seconds.get(model, {}).items()}

    def estimate(self, model: str, methods: Sequence[str]) -> tuple[float, list[str]]:
        """(seconds for the methods timed, the methods not timed yet) for a review of `model`."""
        known = self.of(model)
        return sum(known[m] for m in methods if m in known), [m for m in methods if m not in known]


@dataclass
class App:
    """What the server knows: the bundles it may load, its output folder, limits, and the loaded models."""

    models: dict[str, Path]
    view_models: dict[str, Path]
    out_dir: Path
    max_bytes: int = MAX_UPLOAD_BYTES
    default_model: str | None = None
    descriptions: dict[str, str] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)   # model -> its bundle.json
    timings: Timings = field(default_factory=Timings)
    _cache: dict[str, Any] = field(default_factory=dict)
    _load_lock: threading.Lock = field(default_factory=threading.Lock)
    run_lock: threading.Lock = field(default_factory=threading.Lock)

    def bundle(self, name: str):
        """The loaded bundle called `name` (a key of `models` or `view_models`), loaded once and cached."""
        from xai_bt.model.bundle import load_model

        with self._load_lock:
            if name not in self._cache:
                self._cache[name] = load_model({**self.view_models, **self.models}[name])
            return self._cache[name]

    def is_loaded(self, name: str) -> bool:
        """Whether `name` is loaded already (its first review will not have to load it)."""
        with self._load_lock:
            return name in self._cache

    def add(self, bundle, path: str | Path) -> str:
        """Offer an already loaded bundle (a Keras model file wrapped in memory) first, as the default."""
        from xai_bt.review.case import model_description

        name = bundle.name if bundle.name not in self.models else f"{bundle.name} ({Path(path).name})"
        with self._load_lock:
            self.models = {name: Path(path), **self.models}
            self._cache[name] = bundle
        self.descriptions[name] = model_description(bundle.config)
        self.configs[name] = bundle.config
        self.default_model = name
        return name

    def offered(self) -> dict[str, str]:
        """Method -> label of every method the page offers: every registered one, and each model's
        audit-recommended method (a CAM method on its own layer)."""
        from xai_bt.model.provenance import recommended_explanation

        extra = {rec["method"]: registry.label(rec["method"]) + " (the audit's choice)"
                 for c in self.configs.values() if (rec := recommended_explanation(c))
                 and registry.is_method(rec["method"]) and rec["method"] not in WEB_METHODS}
        return {**WEB_METHODS, **extra}

    def default_checked(self) -> tuple[str, ...]:
        """The methods checked at first: the default model's recommendation and Grad-CAM, else the review
        defaults."""
        from xai_bt.model.provenance import default_methods

        return default_methods(self.configs.get(self.default_model or "", {}), "review")

    def choices(self, form: Mapping[str, Any]) -> dict[str, Any]:
        """Model, view model and methods from a submitted form (a MultiDict), each checked against what the
        app offers; RequestError(400) names the first one that is not."""
        getlist = getattr(form, "getlist", lambda key: [form[key]] if key in form else [])
        model = (getlist("model") or [self.default_model or ""])[0]
        view_model = (getlist("view_model") or [""])[0] or None
        methods = list(dict.fromkeys(getlist("methods") or self.default_checked()))
        chosen = {"model": model, "view_model": view_model, "methods": methods}
        if model not in self.models:
            raise RequestError(400, f"unknown model {model!r}; choose one of {', '.join(self.models)}")
        if view_model is not None and view_model not in self.view_models:
            raise RequestError(400, f"unknown view model {view_model!r}")
        offered = self.offered()
        bad = [m for m in methods if m not in offered]
        if bad:
            raise RequestError(400, f"unknown method {bad[0]!r}; choose from {', '.join(offered)}")
        return chosen

    def review(self, filename: str, data: bytes, chosen: dict[str, Any]) -> str:
        """Decode, explain and save one upload's review page; returns the saved page's name.
        A file that is not a scan raises RequestError(400) with a message naming it."""
        from xai_bt.data.decode import read_image
        from xai_bt.data.sample import ImageError
        from xai_bt.review.case import model_summary, review_scan
        from xai_bt.review.html import render_report, write_report

        name, stem = shown_name(filename), safe_stem(filename)
        try:
            read_image(data, name=name)   # validate before loading a model or taking the run lock
        except ImageError as e:
            raise RequestError(400, str(e)) from None
        bundle = self.bundle(chosen["model"])
        view = self.bundle(chosen["view_model"]) if chosen["view_model"] else None
        with self.run_lock:          # one explanation at a time: TensorFlow already uses every core
            start = time.perf_counter()
            try:
                case = review_scan(bundle, data, name=name, methods=chosen["methods"], view_bundle=view)
            except ImageError as e:
                raise RequestError(400, str(e)) from None
            self.timings.record(chosen["model"], chosen["methods"], time.perf_counter() - start)
        saved = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}{f'-{stem}' if stem else ''}.html"
        write_report(self.out_dir / saved, render_report([case], model_summary(bundle), title=f"xai_bt review: {name}",
                                                          cases_first=True))
        return saved

    def warm_up(self, model: str, scan: Path = WARM_UP_SCAN) -> float | None:
        """Review a shipped sample twice, unsaved (the first run builds TensorFlow's graphs, the second is
        timed), so the first real review is fast and its busy message has an estimate; seconds, or None."""
        from xai_bt.review.case import review_scan

        try:
            bundle, data = self.bundle(model), scan.read_bytes()
            with self.run_lock:
                review_scan(bundle, data, name=scan.name, methods=self.default_checked())
                start = time.perf_counter()
                review_scan(bundle, data, name=scan.name, methods=self.default_checked())
                seconds = time.perf_counter() - start
        except Exception as e:  # a warm-up failure must not stop the server; the reviews report their own
            logger.warning("warm-up of %s skipped: %s: %s", model, type(e).__name__, _first_line(e))
            return None
        self.timings.record(model, self.default_checked(), seconds)
        return seconds

    def recent(self, n: int = RECENT_REVIEWS) -> list[tuple[str, str, str]]:
        """The newest saved review pages: (file name, UTC time, one-line summary from the page), newest first."""
        matches = sorted((m for p in self.out_dir.iterdir() if (m := REVIEW_NAME.match(p.name))),
                         key=lambda m: m.string, reverse=True)
        out = []
        for match in matches[:n]:
            when = datetime.strptime(match.group(1), "%Y%m%d-%H%M%S").strftime("%Y-%m-%d %H:%M:%S UTC")
            fallback = (match.group(2) or "")[1:] or match.string      # the upload's name as kept in the file's
            out.append((match.string, when, _page_description(self.out_dir / match.string) or fallback))
        return out


def find_bundles(models_dir: str | Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Bundles in the sub-folders of `models_dir`: (tumor classifiers, view classifiers), by folder name."""
    from xai_bt.model.bundle import BundleError, read_config

    models: dict[str, Path] = {}
    views: dict[str, Path] = {}
    root = Path(models_dir)
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []:
        try:
            config = read_config(sub)
        except BundleError:
            continue
        (views if config.get("task") == "view" else models)[sub.name] = sub
    return models, views


def make_app(models_dir: str | Path = "models", out_dir: str | Path = "reviews",
             max_bytes: int = MAX_UPLOAD_BYTES) -> App:
    """The app over the bundles in `models_dir`; ValueError when there is none."""
    from xai_bt.model.bundle import read_config
    from xai_bt.review.case import model_description

    models, views = find_bundles(models_dir)
    if not models:
        raise ValueError(f"{models_dir}: no model bundles found (folders with bundle.json)")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    default = "default" if "default" in models else next(iter(models))
    configs = {name: read_config(path) for name, path in {**views, **models}.items()}
    descriptions = {name: model_description(c) for name, c in configs.items()}
    return App(models, views, out, max_bytes, default, descriptions, {n: configs[n] for n in models})


# --- names ----------------------------------------------------------------------------------------

def safe_stem(filename: str, limit: int = 40) -> str:
    """An uploaded file's name reduced to [A-Za-z0-9_-] for use inside our own file names (never a path)."""
    base = re.split(r"[\\/]", filename or "")[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.strip(".") else base
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_-")[:limit]


def shown_name(filename: str, limit: int = 80) -> str:
    """The upload's base name as shown on the page (escaped when rendered; control characters dropped)."""
    base = re.split(r"[\\/]", filename or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return (base[:limit] or "upload")


def _page_description(path: Path) -> str | None:
    """The meta description our own review page carries (in its first few KB), unescaped; None without one."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r'<meta name="description" content="([^"]*)">', head)
    return html.unescape(match.group(1)) if match else None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else ""


# --- pages ----------------------------------------------------------------------------------------

def _head() -> str:
    """The head elements of the app's own pages: the busy indicator's style and script."""
    return APP_CSS + '<script src="/static/busy.js" defer></script>\n'


def _model_option(app: App, name: str, selected: bool) -> str:
    """One model <option>: its name and description, its measured seconds per method, whether it is loaded."""
    from xai_bt.review.html import esc

    seconds = json.dumps({m: s for m, s in app.timings.of(name).items() if m in app.offered()})
    desc = app.descriptions.get(name, "")
    return (f'<option value="{esc(name)}"{" selected" if selected else ""} data-seconds="{esc(seconds)}" '
            f'data-loaded="{int(app.is_loaded(name))}" title="{esc(desc)}">{esc(name)}'
            f'{" — " + esc(desc) if desc else ""}</option>')


def _method_box(method: str, label: str, checked: bool, defaults: tuple[str, ...]) -> str:
    """One method checkbox; `data-label` names it in the busy message, `data-default` marks the defaults."""
    from xai_bt.review.html import esc

    default = ' data-default="1"' if method in defaults else ""
    return (f'<label><input type="checkbox" name="methods" value="{esc(method)}" '
            f'data-label="{esc(registry.label(method))}"{default}{" checked" if checked else ""}> '
            f"{esc(label)}</label> ")


def form_html(app: App, chosen: dict[str, Any] | None = None) -> str:
    """The upload form: scan file, model, optional view model, methods, and the (hidden) busy indicator."""
    from xai_bt.review.html import esc

    chosen = chosen or {}
    model = chosen.get("model", app.default_model)
    defaults = app.default_checked()
    methods = chosen.get("methods", defaults)
    opts = "".join(_model_option(app, n, n == model) for n in app.models)
    view_opts = '<option value="">none (two-stage models report their own view)</option>' + "".join(
        f'<option value="{esc(n)}"{" selected" if n == chosen.get("view_model") else ""} '
        f'title="{esc(app.descriptions.get(n, ""))}">{esc(n)} — {esc(app.descriptions.get(n, ""))}</option>'
        for n in app.view_models)
    boxes = "".join(_method_box(m, label, m in methods, defaults) for m, label in app.offered().items())
    return f"""<form class="box" id="upload" method="post" action="/review" enctype="multipart/form-data">
<h2>Review a scan</h2>
<p class="choice"><label for="scan" class="field">Scan</label>
(JPEG, PNG, TIFF, DICOM; at most {app.max_bytes / 2**20:.3g} MB):
<input type="file" id="scan" name="scan" accept="{ACCEPT}" required></p>
<p class="choice"><label for="model" class="field">Model</label><br><select id="model" name="model">{opts}</select></p>
<p class="choice"><label for="view_model" class="field">View model</label> (names the MRI plane)<br>
<select id="view_model" name="view_model">{view_opts}</select></p>
<p class="choice methods"><span class="field">Methods</span><br>{boxes}</p>
<p><button type="submit" id="submit">Review</button></p>
<div id="busy" class="busy" role="status" aria-live="polite" hidden><span class="spinner"></span>
<span><span id="busy-text">Explaining…</span> <span id="busy-elapsed" class="elapsed"></span></span></div>
</form>"""


def recent_html(app: App) -> str:
    """Links to the newest saved review pages (they stay in the out folder; each page is bookmarkable)."""
    from xai_bt.review.html import esc

    items = "\n".join(f'<li><a href="/reviews/{esc(name)}">{esc(when)}</a>: {esc(text)}</li>'
                      for name, when, text in app.recent())
    body = f'<ul class="recent">\n{items}\n</ul>' if items else "<p>None yet.</p>"
    return (f'<section class="box" id="recent">\n<h2>Recent reviews</h2>\n{body}\n<p class="meta">Saved in '
            f"{esc(app.out_dir)}; each page's address can be bookmarked.</p>\n</section>")


def front_page(app: App, chosen: dict[str, Any] | None = None, message: str | None = None) -> str:
    """The start page: title, an error message when a review was refused, the form, recent reviews, notes."""
    from xai_bt.review.html import esc, notes_html, page

    parts = ["<h1>xai_bt review</h1>", '<p class="meta">Local research tool: not a diagnosis.</p>']
    if message:
        parts.append(f'<div class="box caution" id="error" role="alert"><strong>Cannot review this upload:</strong> '
                     f"{esc(message)}</div>")
    parts += [form_html(app, chosen), recent_html(app), notes_html()]
    return page("xai_bt review", "\n".join(parts), head=_head())


def message_page(title: str, message: str) -> str:
    """A page with one line of text and a link back to the form."""
    from xai_bt.review.html import esc, page

    return page(title, f'<h1>{esc(title)}</h1><p id="message" role="alert">{esc(message)}</p>'
                       '<p><a href="/">Back</a></p>')


def served_review(text: str, name: str) -> str:
    """A saved review page as the app serves it: with a bar linking back to the form and to itself."""
    from xai_bt.review.html import esc

    nav = (f'<nav class="box" id="nav"><a href="/" id="again"><strong>Review another scan</strong></a>'
           f'<span>This page: <a href="/reviews/{esc(name)}">/reviews/{esc(name)}</a> (bookmark it)</span></nav>')
    return text.replace("</head>", f"{APP_CSS}</head>", 1).replace("<body>\n", f"<body>\n{nav}\n", 1)


# --- the web app ------------------------------------------------------------------------------------

class _InMemoryRequest(Request):
    """Flask's request, keeping uploaded files in memory (bounded by MAX_CONTENT_LENGTH), never on disk."""

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        return BytesIO()


def _html(text: str, status: int = 200) -> Response:
    return Response(text, status=status, mimetype="text/html")


def create_wsgi_app(app: App) -> Flask:
    """The Flask application serving `app`."""
    wsgi = Flask(__name__, static_folder=None)
    wsgi.request_class = _InMemoryRequest
    wsgi.config.update(MAX_CONTENT_LENGTH=app.max_bytes, MAX_FORM_PARTS=MAX_FORM_PARTS)
    busy_js = (STATIC_DIR / "busy.js").read_text(encoding="utf-8")

    @wsgi.get("/")
    @wsgi.get("/index.html")
    def index() -> Response:
        return _html(front_page(app))

    @wsgi.post("/review")
    def review() -> Response:
        chosen: dict[str, Any] = {}
        try:
            _refuse_other_sites()
            if request.mimetype != "multipart/form-data":
                raise RequestError(400, "expected a form upload (multipart/form-data)")
            chosen = app.choices(request.form)          # RequestEntityTooLarge (413) before anything is read
            upload = request.files.get("scan")
            filename, data = (upload.filename or "", upload.read()) if upload is not None else ("", b"")
            if not data:
                raise RequestError(400, "no scan file was uploaded")
            saved = app.review(filename, data, chosen)
        except RequestError as e:
            return _html(front_page(app, chosen, message=str(e)), e.status)
        return Response(status=303, headers={"Location": f"/reviews/{saved}"})   # reload or bookmark: a GET

    @wsgi.get("/reviews/<name>")
    def saved_review(name: str) -> Response:
        path = app.out_dir / name
        if not REVIEW_NAME.match(name) or not path.is_file():
            return _html(message_page("Not found", "no such review page"), 404)
        return _html(served_review(path.read_text(encoding="utf-8"), name))

    @wsgi.get("/static/busy.js")
    def script() -> Response:
        return Response(busy_js, mimetype="text/javascript")

    @wsgi.errorhandler(RequestEntityTooLarge)
    def too_large(error: RequestEntityTooLarge) -> Response:
        n = request.content_length
        if n is not None and n <= app.max_bytes:
            message = f"too many form fields (more than {MAX_FORM_PARTS})"
        else:
            size = f"{n / 2**20:.1f} MB; " if n is not None else ""
            message = f"upload too large ({size}the limit is {app.max_bytes / 2**20:.1f} MB)"
        return _html(front_page(app, message=message), 413)

    @wsgi.errorhandler(Exception)
    def failed(error: Exception) -> Response:
        if isinstance(error, HTTPException):
            code = error.code or 500
            return _html(message_page(error.name, "no such page" if code == 404 else str(error.description)), code)
        # never a traceback to the browser; one line to the server log
        logger.error("error: %s: %s: %s", request.path, type(error).__name__, _first_line(error))
        return _html(front_page(app, message="internal error while reviewing; see the server log"), 500)

    @wsgi.after_request
    def safety_headers(response: Response) -> Response:
        response.headers.update({"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "same-origin", "Cache-Control": "no-store",
                                 "Cross-Origin-Resource-Policy": "same-origin"})
        return response

    return wsgi


def _refuse_other_sites() -> None:
    """RequestError(403) for a form another site's page posted here: the browser says so (Sec-Fetch-Site), or
    its Origin is not this server's (our pages send their origin: Referrer-Policy same-origin)."""
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if site not in (None, "same-origin", "none") or (origin is not None and origin != request.host_url.rstrip("/")):
        raise RequestError(403, f"refused a form sent from another site ({origin or site})")


# --- the server -------------------------------------------------------------------------------------

class _Handler(WSGIRequestHandler):
    """werkzeug's request handler, with a client timeout, no version in the Server header, and the access
    log on this module's logger (control characters escaped)."""

    timeout = 60            # seconds a client may stall while sending; slow-loris protection
    server_version = "xai_bt-review"  # type: ignore[assignment]
    sys_version = ""

    def version_string(self) -> str:
        return self.server_version

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """'<client> "<request line>" <status> <size>', as http.server writes it (werkzeug would add colours)."""
        self.log("info", '"%s" %s %s', self.requestline, code, size)

    def log(self, type: str, message: str, *args: Any) -> None:  # noqa: A002 (werkzeug's signature)
        line = (message % args if args else message).translate(self._control_char_table)
        getattr(logger, "error" if type == "error" else "info")("%s %s", self.address_string(), line)


def make_server(app: App, host: str = "127.0.0.1", port: int = 8000) -> BaseWSGIServer:
    """A threaded HTTP server for `app` (port 0 picks a free port: see `server.server_address`); OSError when
    the address cannot be used (port taken)."""
    sock = socket.create_server((host, port), family=select_address_family(host, port))
    try:
        server = werkzeug_server(host, port, create_wsgi_app(app), threaded=True, request_handler=_Handler,
                                 fd=sock.fileno())
    finally:
        sock.close()        # the server holds its own duplicate
    return server
