"""A local review web page: upload a scan, pick a model and methods, see the same content as `report`.

Standard library only (`http.server.ThreadingHTTPServer`, a small multipart parser of our own). Safety:
binds 127.0.0.1 unless told otherwise; uploads over `max_bytes` get 413 without being read into memory;
scans are decoded from memory by `read_image` (bad files: a message and HTTP 400); models are chosen
from the bundles found at start and loaded once; the only files written are review pages under the
app's output folder, named by time and a random id (never by the uploaded file's name).
"""
from __future__ import annotations

import email.parser
import logging
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from xai_bt.attribution import registry

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Methods offered on the page (every registered one), with a hint for the slow ones (seconds per scan on a CPU).
WEB_METHODS: dict[str, str] = {m: registry.label(m) + (" (slow)" if registry.spec(m).slow else "")
                               for m in registry.names()}
DEFAULT_CHECKED = registry.REVIEW_DEFAULT
ACCEPT = ".jpg,.jpeg,.png,.tif,.tiff,.bmp,.dcm,.dicom,image/*,application/dicom"
_REPORT_NAME = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{8}(-[A-Za-z0-9_-]{1,40})?\.html$")
_MAX_PARTS = 64
#: Content-Security-Policy: nothing loads from anywhere; images only as data URIs; forms post back here.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'"


class RequestError(ValueError):
    """A request the app refuses: `status` and a one-line message shown to the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class App:
    """What the server knows: the bundles it may load, its output folder, limits, and the loaded models."""

    models: dict[str, Path]
    view_models: dict[str, Path]
    out_dir: Path
    max_bytes: int = MAX_UPLOAD_BYTES
    default_model: str | None = None
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


    def add(self, bundle, path: str | Path) -> str:
        """Offer an already loaded bundle (a Keras model file wrapped in memory) first, as the default."""
        name = bundle.name if bundle.name not in self.models else f"{bundle.name} ({Path(path).name})"
        with self._load_lock:
            self.models = {name: Path(path), **self.models}
            self._cache[name] = bundle
        self.default_model = name
        return name


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
    models, views = find_bundles(models_dir)
    if not models:
        raise ValueError(f"{models_dir}: no model bundles found (folders with bundle.json)")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    default = "default" if "default" in models else next(iter(models))
    return App(models, views, out, max_bytes, default)


def make_server(app: App, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server for `app` (port 0 picks a free port: see `server.server_address`)."""
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.app = app  # type: ignore[attr-defined]
    return server


# --- multipart/form-data --------------------------------------------------------------------------

def parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, list[str]], dict[str, tuple[str, bytes]]]:
    """A multipart/form-data body -> (text fields, files {field: (client file name, bytes)}).

    Strict enough for browsers and test clients; anything malformed raises RequestError(400).
    """
    match = re.search(r'boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))', content_type or "")
    if not content_type.lower().startswith("multipart/form-data") or not match:
        raise RequestError(400, "expected a form upload (multipart/form-data)")
    delimiter = b"\r\n--" + (match.group(1) or match.group(2)).encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)     # [preamble, part, ..., "--" epilogue]
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise RequestError(400, "malformed form upload (no closing boundary)")
    if len(chunks) - 2 > _MAX_PARTS:
        raise RequestError(400, f"too many form fields (more than {_MAX_PARTS})")
    fields: dict[str, list[str]] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for chunk in chunks[1:-1]:
        head, sep, data = chunk.lstrip(b" \t").removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise RequestError(400, "malformed form upload (a part has no headers)")
        headers = email.parser.BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise RequestError(400, "malformed form upload (a part has no name)")
        filename = headers.get_filename()
        if filename is not None:
            files[name] = (filename, data)
        else:
            fields.setdefault(name, []).append(data.decode("utf-8", errors="replace"))
    return fields, files


def safe_stem(filename: str, limit: int = 40) -> str:
    """An uploaded file's name reduced to [A-Za-z0-9_-] for use inside our own file names (never a path)."""
    base = re.split(r"[\\/]", filename or "")[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.strip(".") else base
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_-")[:limit]


def display_name(filename: str, limit: int = 80) -> str:
    """The upload's base name as shown on the page (escaped when rendered; control characters dropped)."""
    base = re.split(r"[\\/]", filename or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return (base[:limit] or "upload")


# --- pages --------------------------------------------------------------------------------------

def form_html(app: App, chosen: dict[str, Any] | None = None) -> str:
    """The upload form: scan file, model, optional view model, methods."""
    from xai_bt.review.html import esc

    chosen = chosen or {}
    model = chosen.get("model", app.default_model)
    methods = chosen.get("methods", DEFAULT_CHECKED)
    opts = "".join(f'<option value="{esc(n)}"{" selected" if n == model else ""}>{esc(n)}</option>'
                   for n in app.models)
    view_opts = '<option value="">none (two-stage models report their own view)</option>' + "".join(
        f'<option value="{esc(n)}"{" selected" if n == chosen.get("view_model") else ""}>{esc(n)}</option>'
        for n in app.view_models)
    boxes = "".join(f'<label><input type="checkbox" name="methods" value="{esc(m)}"'
                    f'{" checked" if m in methods else ""}> {esc(label)}</label> '
                    for m, label in WEB_METHODS.items())
    return f"""<form class="box" id="upload" method="post" action="/review" enctype="multipart/form-data">
<h2>Review a scan</h2>
<p><label>Scan (JPEG, PNG, TIFF, DICOM; at most {app.max_bytes // (1024 * 1024)} MB):
<input type="file" id="scan" name="scan" accept="{ACCEPT}" required></label></p>
<p><label>Model: <select id="model" name="model">{opts}</select></label>
<label>View model: <select id="view_model" name="view_model">{view_opts}</select></label></p>
<p>Methods: {boxes}</p>
<p><button type="submit" id="submit">Review</button></p>
</form>"""


def result_page(app: App, case: dict[str, Any] | None, summary: dict[str, Any] | None, chosen: dict[str, Any],
                message: str | None = None, saved: str | None = None) -> str:
    """The page after an upload: the form again, then an error message or the review content."""
    from xai_bt.review.html import case_html, esc, model_html, notes_html, page

    parts = ["<h1>xai_bt review</h1>", '<p class="meta">Local research tool: not a diagnosis.</p>']
    if message:
        parts.append(f'<div class="box caution" id="error" role="alert"><strong>Cannot review this upload:</strong> '
                     f"{esc(message)}</div>")
    parts.append(form_html(app, chosen))
    if case is not None and summary is not None:
        link = (f'<p>Saved as a self-contained report: <a href="/reports/{esc(saved)}">{esc(saved)}</a></p>'
                if saved else "")
        parts += [f'<div id="result">{case_html(case)}{link}</div>', notes_html(), model_html(summary)]
    else:
        parts.append(notes_html())
    return page("xai_bt review", "\n".join(parts))


# --- the request handler ------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    """GET / (form), POST /review (upload), GET /reports/<name> (a saved review page)."""

    server_version = "xai_bt-review"
    sys_version = ""
    timeout = 60            # seconds a client may stall while sending; slow-loris protection
    protocol_version = "HTTP/1.0"
    _pending = 0            # bytes a refused (413) upload still has to send

    @property
    def app(self) -> App:
        return self.server.app  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            return self._send(200, result_page(self.app, None, None, {}))
        if path.startswith("/reports/"):
            return self._send_report(path[len("/reports/"):])
        if path == "/favicon.ico":
            return self._send(404, "", content_type="text/plain")
        return self._send(404, self._message_page("Not found", "no such page"))

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/review":
            return self._send(404, self._message_page("Not found", "no such page"))
        chosen: dict[str, Any] = {}
        try:
            body = self._read_body()
            fields, files = parse_multipart(body, self.headers.get("Content-Type", ""))
            chosen = self._choices(fields)
            if "scan" not in files or not files["scan"][1]:
                raise RequestError(400, "no scan file was uploaded")
            filename, data = files["scan"]
            case, summary, saved = self._review(display_name(filename), safe_stem(filename), data, chosen)
        except RequestError as e:
            self._drain_if_needed(e)
            return self._send(e.status, result_page(self.app, None, None, chosen, message=str(e)))
        except Exception as e:  # never a traceback to the browser; one line to the server log
            logger.error("error: %s: %s: %s", self.path, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            return self._send(500, result_page(self.app, None, None, chosen,
                                               message="internal error while reviewing; see the server log"))
        return self._send(200, result_page(self.app, case, summary, chosen, saved=saved))

    # --- pieces ----------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        """The request body, refusing missing lengths (411) and bodies over the limit (413) unread."""
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            raise RequestError(411, "the upload must state its length (Content-Length)")
        n = int(length)
        if n > self.app.max_bytes:
            self._pending = n
            raise RequestError(413, f"upload too large ({n / 2**20:.1f} MB; the limit is "
                                    f"{self.app.max_bytes / 2**20:.1f} MB)")
        data = self.rfile.read(n)
        if len(data) != n:
            raise RequestError(400, "the upload was cut off")
        return data

    def _drain_if_needed(self, error: RequestError) -> None:
        """After a 413, read and discard what the client still sends (up to 4x the limit), so it gets to
        see the answer instead of a reset connection; then the connection is closed."""
        left = min(getattr(self, "_pending", 0), 4 * self.app.max_bytes) if error.status == 413 else 0
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def _choices(self, fields: dict[str, list[str]]) -> dict[str, Any]:
        """Model, view model and methods from the form, each checked against what the app offers."""
        model = (fields.get("model") or [self.app.default_model or ""])[0]
        view_model = (fields.get("view_model") or [""])[0] or None
        methods = list(dict.fromkeys(fields.get("methods") or DEFAULT_CHECKED))
        chosen = {"model": model, "view_model": view_model, "methods": methods}
        if model not in self.app.models:
            raise RequestError(400, f"unknown model {model!r}; choose one of {', '.join(self.app.models)}")
        if view_model is not None and view_model not in self.app.view_models:
            raise RequestError(400, f"unknown view model {view_model!r}")
        bad = [m for m in methods if m not in WEB_METHODS]
        if bad:
            raise RequestError(400, f"unknown method {bad[0]!r}; choose from {', '.join(WEB_METHODS)}")
        return chosen

    def _review(self, name: str, stem: str, data: bytes, chosen: dict[str, Any]):
        """Decode, explain and save the review page; ImageError -> RequestError(400)."""
        from xai_bt.data.decode import read_image
        from xai_bt.data.sample import ImageError
        from xai_bt.review.case import model_summary, review_scan
        from xai_bt.review.html import render_report, write_report

        try:
            read_image(data, name=name)   # validate before taking the model lock
        except ImageError as e:
            raise RequestError(400, str(e)) from None
        bundle = self.app.bundle(chosen["model"])
        view = self.app.bundle(chosen["view_model"]) if chosen["view_model"] else None
        with self.app.run_lock:          # one explanation at a time: TensorFlow already uses every core
            try:
                case = review_scan(bundle, data, name=name, methods=chosen["methods"], view_bundle=view)
            except ImageError as e:
                raise RequestError(400, str(e)) from None
        summary = model_summary(bundle)
        saved = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}{f'-{stem}' if stem else ''}.html"
        write_report(self.app.out_dir / saved, render_report([case], summary, title=f"xai_bt review: {name}"))
        return case, summary, saved

    def _send_report(self, name: str) -> None:
        """A saved review page, by a name that must match our own naming (no paths)."""
        if not _REPORT_NAME.match(name) or not (self.app.out_dir / name).is_file():
            return self._send(404, self._message_page("Not found", "no such report"))
        self._send(200, (self.app.out_dir / name).read_text(encoding="utf-8"))

    def _message_page(self, title: str, message: str) -> str:
        from xai_bt.review.html import esc, page

        return page(title, f"<h1>{esc(title)}</h1><p>{esc(message)}</p><p><a href=\"/\">Back</a></p>")

    def _send(self, status: int, text: str, content_type: str = "text/html; charset=utf-8") -> None:
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        """One access-log line per request (logger `xai_bt.review.server`); control characters from the client
        escaped."""
        line = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in format % args)
        logger.info("%s %s", self.address_string(), line)
