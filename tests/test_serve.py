"""`python -m xai_bt serve`: the review web page (Flask on werkzeug), over HTTP and in headless Chromium."""
import html
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import SAMPLES

from xai_bt.review.server import (
    CSP,
    MAX_UPLOAD_BYTES,
    REVIEW_NAME,
    Timings,
    make_app,
    make_server,
    safe_stem,
    shown_name,
)

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
LIMIT = MAX_UPLOAD_BYTES
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app over the repository's models, serving from a thread on a free port; yields (host, port, app)."""
    root = tmp_path_factory.mktemp("serve")
    app = make_app(MODELS, root / "work" / "out", max_bytes=LIMIT)
    srv = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[0], srv.server_address[1], app
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def predicted():
    """What the default model predicts (calibrated) for the shipped meningioma sample."""
    from xai_bt.model.bundle import load_model

    return load_model(MODELS / "default").predict(str(SAMPLES / "meningioma.jpg")).labels[0]


def multipart(fields: dict, files: dict, boundary: str = "xaiBoundary7MA4YWxkTrZu0gW") -> tuple[bytes, str]:
    """A multipart/form-data body as a browser sends it; `fields` values may be lists."""
    out = []
    for name, values in fields.items():
        for v in values if isinstance(values, list) else [values]:
            out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{v}\r\n'.encode())
    for name, (filename, data) in files.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                   f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def request(server, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
            timeout: float = 300, headers: dict | None = None) -> tuple[int, str, dict]:
    """One HTTP request; (status, body text, headers with lower-case names). Redirects are not followed."""
    host, port, _ = server
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    sent = {**({"Content-Type": content_type} if content_type else {}), **(headers or {})}
    conn.request(method, path, body=body, headers=sent)
    resp = conn.getresponse()
    status, text, got = resp.status, resp.read().decode("utf-8"), {k.lower(): v for k, v in resp.getheaders()}
    conn.close()
    return status, text, got


def upload(server, filename: str, data: bytes, headers: dict | None = None, **fields) -> tuple[int, str, dict]:
    """POST the scan with the form's fields (default model, Grad-CAM unless given)."""
    fields = {"model": "default", "methods": "gradcam", **fields}
    body, ctype = multipart(fields, {"scan": (filename, data)})
    return request(server, "POST", "/review", body, ctype, headers=headers)


def review(server, filename: str, data: bytes, **fields) -> tuple[str, str]:
    """Upload, expect the 303 to the saved page, GET it; (its address, the page)."""
    status, page, headers = upload(server, filename, data, **fields)
    assert status == 303, _alert(page)
    location = headers["location"]
    assert re.fullmatch(r"/reviews/[^/]+\.html", location), location
    status, page, _ = request(server, "GET", location)
    assert status == 200
    return location, page


def _alert(page: str) -> str:
    match = re.search(r'role="alert">(.*?)</(?:div|p)>', page, re.S)
    return re.sub(r"<[^>]+>", "", match.group(1)) if match else ""


def _text(html_text: str) -> str:
    """Visible text, roughly: tags dropped, whitespace collapsed, the usual entities restored."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", html_text))).strip()


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _option(page: str, select: str, value: str) -> str:
    """The text of the <option value=...> of a <select id=...>."""
    options = re.search(rf'<select id="{select}"[^>]*>(.*?)</select>', page, re.S).group(1)
    return _text(re.search(rf'<option value="{re.escape(value)}"[^>]*>(.*?)</option>', options, re.S).group(1))


def _bundle_numbers(name: str) -> tuple[dict, dict, dict]:
    """(bundle.json, official metrics, leakage-free metrics) of the first data set a shipped bundle records."""
    config = json.loads((MODELS / name / "bundle.json").read_text())
    metrics = next(iter(config["metrics"].values()))
    return config, metrics["official"], metrics["leakage_free"]


# --- the front page --------------------------------------------------------------------------------

def test_form_lists_models_and_binds_localhost(server):
    status, page, _ = request(server, "GET", "/")
    assert status == 200 and server[0] == "127.0.0.1"
    assert 'type="file"' in page and 'value="default"' in page and 'name="methods"' in page
    models = re.search(r'<select id="model"[^>]*>(.*?)</select>', page, re.S).group(1)
    views = re.search(r'<select id="view_model"[^>]*>(.*?)</select>', page, re.S).group(1)
    assert 'value="default"' in models and 'value="view"' not in models   # the view classifier is offered
    assert 'value="view"' in views                                         # as a view model only


def test_each_model_has_a_one_line_description_from_its_bundle(server):
    _, _, app = server
    _, page, _ = request(server, "GET", "/")
    for name in app.models:
        assert _option(page, "model", name) == f"{name} — {app.descriptions[name]}"
    assert _option(page, "view_model", "view") == f"view — {app.descriptions['view']}"
    for name, select in (("default", "model"), ("two_stage", "model"), ("view", "view_model")):
        config, official, leakage_free = _bundle_numbers(name)   # the numbers come from bundle.json
        text = _option(page, select, name)
        assert f"{config['preprocessing']['image_size']} px" in text
        assert f"accuracy {official['accuracy']:.1%} (n = {official['n']})" in text
        assert f"leakage-free {leakage_free['accuracy']:.1%} (n = {leakage_free['n']})" in text
    assert re.match(r"default — (ensemble of \d+ )?EfficientNet-Lite0", _option(page, "model", "default"))
    assert "two-stage" in _option(page, "model", "two_stage")
    assert "view classifier" in _option(page, "view_model", "view")


def test_an_added_model_file_is_described_as_imported(tmp_path):
    """`App.add` of a Keras file wrapped in memory (`serve --model my_model.h5 --classes ...`): described from
    its import record, offered first."""
    app = make_app(MODELS, tmp_path / "out")
    config = {"kind": "single", "task": "tumor", "arch": "imported:my_net", "class_names": ["a", "b", "c"],
              "preprocessing": {"image_size": 224}, "imported": {"source_name": "my_model.h5", "pixel_scale": "0-1",
                                                                 "assumed": ["pixel_scale", "crop_to_head"]}}
    name = app.add(SimpleNamespace(name="my_model", config=config), tmp_path / "my_model.h5")
    assert name == app.default_model == "my_model" and list(app.models)[0] == "my_model"
    assert app.descriptions[name] == ("your model my_model.h5, imported (pixel scaling 0-1 assumed); 224 px, "
                                      "3 classes; no test accuracy recorded")


def test_safety_headers_on_every_answer(server):
    for path in ("/", "/static/busy.js", "/nothing"):
        _, _, headers = request(server, "GET", path)
        assert headers["content-security-policy"] == CSP and "script-src 'self'" in CSP
        assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"
        assert "werkzeug" not in headers.get("server", "").lower() and "python" not in headers.get("server", "").lower()


def test_busy_indicator_script_is_served_and_referenced(server):
    _, page, _ = request(server, "GET", "/")
    assert re.findall(r"<script\b[^>]*>", page) == ['<script src="/static/busy.js" defer>']   # the only script
    assert not re.search(r"\son[a-z]+\s*=", page)                          # no inline handlers (CSP forbids them)
    assert re.search(r'<div id="busy"[^>]*\bhidden\b', page) and 'role="status"' in page
    assert 'class="spinner"' in page and "@keyframes spin" in page
    status, script, headers = request(server, "GET", "/static/busy.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert "Explaining " in script and '"submit"' in script and "disabled = true" in script and "on this CPU" in script
    assert "http" not in script.replace('"use strict"', "")                # loads nothing from anywhere


def test_the_model_options_carry_what_the_estimate_needs(server):
    """Each model option carries the seconds per method timed here (JSON) and whether it is loaded; each method
    box its label."""
    _, _, app = server
    _, page, _ = request(server, "GET", "/")
    for name in app.models:
        tag = re.search(rf'<option value="{re.escape(name)}"[^>]*>', page).group(0)
        seconds = json.loads(re.search(r'data-seconds="([^"]*)"', tag).group(1).replace("&quot;", '"'))
        assert seconds == app.timings.of(name) and f'data-loaded="{int(app.is_loaded(name))}"' in tag
    assert 'data-label="Grad-CAM" data-default="1"' in page


def test_timings_learn_seconds_per_method():
    t = Timings()
    assert t.estimate("m", ["gradcam"]) == (0, ["gradcam"])
    t.record("m", ["gradcam", "layercam"], 4.0)                   # shared among the untimed methods
    assert t.of("m") == {"gradcam": 2.0, "layercam": 2.0}
    t.record("m", ["gradcam", "smoothgrad"], 10.0)                 # the untimed one gets the rest
    assert t.of("m") == {"gradcam": 2.0, "layercam": 2.0, "smoothgrad": 8.0}
    t.record("m", ["gradcam", "layercam"], 2.0)                    # all timed before: rescaled to the new total
    assert t.of("m") == {"gradcam": 1.0, "layercam": 1.0, "smoothgrad": 8.0}
    assert t.estimate("m", ["layercam", "smoothgrad", "occlusion"]) == (9.0, ["occlusion"])
    assert t.of("other") == {}
    t.record("n", ["gradcam", "layercam"], 6.0)                    # a first (cold) review of two methods, then
    t.record("n", ["gradcam"], 1.0)                                # a warm one of one: both cold times shrink
    assert t.of("n") == {"gradcam": 1.0, "layercam": 1.0}
    t.record("n", ["gradcam"], 2.0)                                # warm now: only the method reviewed changes
    assert t.of("n") == {"gradcam": 2.0, "layercam": 1.0}


# --- uploads ----------------------------------------------------------------------------------------

def test_upload_a_good_scan_redirects_to_its_saved_page(server, predicted):
    _, _, app = server
    before = set(app.out_dir.iterdir())
    location, page = review(server, "meningioma.jpg", (SAMPLES / "meningioma.jpg").read_bytes(),
                            methods=["gradcam", "layercam"], view_model="view")
    new = set(app.out_dir.iterdir()) - before
    assert len(new) == 1 and location == f"/reviews/{next(iter(new)).name}"
    assert REVIEW_NAME.match(next(iter(new)).name) and location.endswith("-meningioma.html")
    assert re.search(r'id="prediction-0"[^>]*>([^<]+)<', page).group(1) == predicted.replace("_", " ")
    assert re.search(r"calibrated probability \d+\.\d%", page) and "After temperature scaling" in page
    assert page.count('src="data:image/png;base64,') >= 2 and "MRI view:" in page
    official = app.bundle("default").config["metrics"]["brain-tumor-mri"]["official"]["accuracy"]
    assert "does not show where the tumor is" in page and f"{official:.2%}" in page
    description = re.search(r'<p id="model-description">(.*?)</p>', page, re.S).group(1)
    shown = html.unescape(re.sub(r"</?strong>", "", description)).replace("\xa0", " ")
    assert shown == f"Model default: {app.descriptions['default']}"
    assert f'<a href="{location}">' in page and '<a href="/" id="again">' in page     # the bar: back, and itself
    # the saved file is the self-contained report (no links back to a server); reloading resubmits nothing
    saved = next(iter(new)).read_text(encoding="utf-8")
    assert 'id="nav"' not in saved and "<script" not in saved and 'id="prediction-0"' in saved
    assert request(server, "GET", location)[:2] == (200, page) and set(app.out_dir.iterdir()) - before == new
    # the front page lists it among the recent reviews, with what the model said
    _, front, _ = request(server, "GET", "/")
    recent = re.search(r'<section class="box" id="recent">(.*?)</section>', front, re.S).group(1)
    item = re.search(rf'<li><a href="{re.escape(location)}">[^<]+ UTC</a>: ([^<]*)</li>', recent).group(1)
    assert item.startswith(f"meningioma.jpg: {predicted.replace('_', ' ')} (") and item.endswith("; model default")
    assert set(app.timings.of("default")) >= {"gradcam", "layercam"}             # the review was timed


def test_upload_a_dicom_scan(server, predicted):
    """A 16-bit DICOM without a file suffix, made from the meningioma sample: read by content, same class."""
    from xai_bt.data.decode import read_image

    gray = read_image(SAMPLES / "meningioma.jpg")
    location, page = review(server, "IM0001", _dicom(gray.astype("uint16") * 16))
    assert location.endswith("-IM0001.html")
    assert re.search(r'id="prediction-0"[^>]*>([^<]+)<', page).group(1) == predicted.replace("_", " ")


def test_upload_garbage_is_a_400_with_a_message(server):
    _, _, app = server
    before = set(app.out_dir.iterdir())
    status, page, _ = upload(server, "notes.jpg", b"this is not an image at all\n" * 10)
    assert status == 400
    assert _alert(page).startswith("Cannot review this upload: notes.jpg: not an image")
    assert "Traceback" not in page and 'id="upload"' in page    # the form is back, ready for another try
    status, page, _ = upload(server, "empty.png", b"")
    assert status == 400 and "no scan file was uploaded" in _alert(page)
    status, page, _ = upload(server, "tiny.png", _png(8, 8))
    assert status == 400 and _alert(page).startswith("Cannot review this upload: tiny.png: ") and "too small" in page
    assert set(app.out_dir.iterdir()) == before


def test_bad_choices_are_400(server):
    data = (SAMPLES / "glioma.jpg").read_bytes()
    status, page, _ = upload(server, "glioma.jpg", data, model="../models/default")
    assert status == 400 and "unknown model" in _alert(page)
    status, page, _ = upload(server, "glioma.jpg", data, view_model="default")
    assert status == 400 and "unknown view model" in _alert(page)
    status, page, _ = upload(server, "glioma.jpg", data, methods="rm -rf")
    assert status == 400 and "unknown method" in _alert(page)
    status, page, _ = request(server, "POST", "/review", b"scan=1", "application/x-www-form-urlencoded")
    assert status == 400 and "multipart/form-data" in _alert(page)
    status, page, _ = request(server, "GET", "/review")
    assert status == 405


def test_a_form_posted_from_another_site_is_refused(server):
    _, _, app = server
    before = set(app.out_dir.iterdir())
    status, page, _ = upload(server, "glioma.jpg", (SAMPLES / "glioma.jpg").read_bytes(),
                             headers={"Origin": "http://evil.example"})
    assert status == 403 and "another site" in _alert(page) and set(app.out_dir.iterdir()) == before


def test_oversize_upload_is_a_413(server):
    _, _, app = server
    before = set(app.out_dir.iterdir())
    status, page, _ = upload(server, "big.jpg", b"\xff\xd8" + os.urandom(LIMIT))
    assert status == 413 and "upload too large" in _alert(page) and f"limit is {LIMIT / 2**20:.1f} MB" in _alert(page)
    assert 'id="upload"' in page and set(app.out_dir.iterdir()) == before


def test_oversize_upload_is_refused_before_its_body_is_read(server):
    """Only the headers are sent, declaring a body over the limit: the answer comes without the body."""
    host, port, _ = server
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(f"POST /review HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; "
                     f"boundary=b\r\nContent-Length: {10 * LIMIT}\r\n\r\n".encode())
        head = sock.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.1 413 ")


@pytest.mark.parametrize("name", ["../../escaped.jpg", "..\\..\\escaped.jpg", "/tmp/escaped.jpg",
                                  "....//....//escaped.jpg", ".hidden"])
def test_path_traversal_names_write_nothing_outside_the_out_dir(server, name):
    _, _, app = server
    work = app.out_dir.parent.parent                        # <tmp>/serve/work/out -> <tmp>/serve
    outside_before = _tree(work) - {str(p.relative_to(work)) for p in app.out_dir.rglob("*")}
    inside_before = set(app.out_dir.iterdir())
    status, page, headers = upload(server, name, (SAMPLES / "pituitary.jpg").read_bytes())
    assert status == 303, _alert(page)
    outside_after = _tree(work) - {str(p.relative_to(work)) for p in app.out_dir.rglob("*")}
    assert outside_after == outside_before
    new = set(app.out_dir.iterdir()) - inside_before
    assert len(new) == 1
    written = next(iter(new))
    assert written.parent == app.out_dir and REVIEW_NAME.match(written.name)
    assert headers["location"] == f"/reviews/{written.name}"
    assert not Path("/tmp/escaped.jpg").exists() and not (REPO / "escaped.jpg").exists()


@pytest.mark.parametrize("path", ["/reviews/../../etc/passwd", "/reviews/%2e%2e%2fbundle.json",
                                  "/reviews/..%2F..%2Fmodels%2Fdefault%2Fbundle.json", "/reviews/",
                                  "/reviews/%2e%2e", "/reviews/20240101-000000-deadbeef.html",
                                  "/reviews/not-ours.html", "/reports/../../etc/passwd", "/static/../server.py",
                                  "/static/busy.js/../../server.py", "/nothing"])
def test_only_saved_review_pages_are_served(server, path):
    _, _, app = server
    (app.out_dir / "not-ours.html").write_text("<p>secret</p>")          # in the folder, but not our naming
    status, page, _ = request(server, "GET", path)
    assert status == 404 and "xai_bt-bundle" not in page and "root:" not in page and "secret" not in page


def test_names():
    assert safe_stem("../../etc/passwd") == "passwd" and safe_stem("..\\..\\x y.dcm") == "x_y"
    assert safe_stem("....") == "" and safe_stem("/") == "" and safe_stem("scan.tar.gz") == "scan_tar"
    assert shown_name("C:\\scans\\a\x00b.dcm") == "ab.dcm" and shown_name("") == "upload"


def test_serve_command_starts_and_answers(tmp_path):
    """The real command in a subprocess: prints its address, answers GET /, binds 127.0.0.1."""
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "xai_bt", "serve", "--port", "0", "--no-preload",
                             "--models-dir", str(MODELS), "--out", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path, env=env)
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"http://localhost:(\d+)/", line).group(1))
        status, page, _ = request(("127.0.0.1", port, None), "GET", "/", timeout=30)
        assert status == 200 and 'type="file"' in page
        with pytest.raises(OSError):                                # the port is taken: a one-line error
            make_server(make_app(MODELS, tmp_path / "out"), "127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _dicom(pixels) -> bytes:
    """A minimal 16-bit MR DICOM file (explicit VR little endian, preamble + DICM) holding `pixels`."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _png(width: int, height: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.arange(width * height) % 255).reshape(height, width).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# --- end to end in a real browser --------------------------------------------------------------------

def _chrome(tmp_path):
    """Headless Chromium under selenium (each command waits for a pending page load, up to 300 s)."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip(f"headless browser test needs {CHROMIUM} and {CHROMEDRIVER} "
                    "(apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="headless browser test needs selenium (pip)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1100,1400",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-', dir=tmp_path)}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _loaded(driver, element_id: str, timeout: float = 300):
    """Wait until a page holding `element_id` has loaded completely (images decoded); returns the element."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.readyState === 'complete'")
                                         and d.find_elements(By.ID, element_id))
    return driver.find_element(By.ID, element_id)


def _full_page_shot(driver, path: Path) -> Path:
    """A screenshot of the whole page (up to 5000 px high) at the window's width."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1100, "height": min(int(height), 5000), "deviceScaleFactor": 1, "mobile": False})
    driver.execute_script("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 20_000
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return path


def _copy_shot(shot: Path, variable: str) -> None:
    """Copy a screenshot where the environment variable `variable` says, when it is set."""
    target = os.environ.get(variable)
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target)


def test_browser_upload_in_headless_chromium(server, predicted, tmp_path):
    """Open the page in headless Chromium, upload the meningioma sample through the file input, submit, see the
    busy indicator (the form is held back until the test has looked), then the review at its own address;
    check the predicted class and the images, reload without resubmitting, and keep screenshots.

    Set XAI_BT_SCREENSHOT=path to copy the review page's screenshot there (figures/review/serve.png), and
    XAI_BT_BUSY_SCREENSHOT=path for the busy indicator's (docs/screenshots/serve_busy.png).
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    host, port, app = server
    driver = _chrome(tmp_path)
    try:
        driver.set_page_load_timeout(300)
        driver.get(f"http://{host}:{port}/")
        _loaded(driver, "upload")
        driver.find_element(By.ID, "scan").send_keys(str(SAMPLES / "meningioma.jpg"))
        Select(driver.find_element(By.ID, "model")).select_by_value("default")
        for box in driver.find_elements(By.CSS_SELECTOR, 'input[name="methods"]'):
            if (box.get_attribute("value") in ("gradcam", "layercam", "smoothgrad")) != box.is_selected():
                box.click()
        before = set(app.out_dir.iterdir())
        # Hold the form back after its submit event (a listener of the test's own, registered after the page's):
        # the page shows its busy state with nothing in flight, for as long as the test looks.
        driver.execute_script("document.getElementById('upload').addEventListener('submit', function (e) {"
                              " if (window.__hold) { e.preventDefault(); } }); window.__hold = true;")
        driver.find_element(By.ID, "submit").click()
        busy = driver.find_element(By.ID, "busy")
        assert busy.is_displayed() and not driver.find_element(By.ID, "submit").is_enabled()
        text = driver.find_element(By.ID, "busy-text").text
        assert text.startswith("Explaining meningioma.jpg with default…") and "on this CPU" in text, text
        timed = app.timings.of("default")
        assert ("SmoothGrad: not yet timed" in text) == ("smoothgrad" not in timed)
        assert ("about " in text) == bool(set(timed) & {"gradcam", "layercam", "smoothgrad"})
        assert busy.find_element(By.CLASS_NAME, "spinner").value_of_css_property("animation-name") == "spin"
        WebDriverWait(driver, 60).until(lambda d: "s so far" in d.find_element(By.ID, "busy-elapsed").text)
        busy_shot = _full_page_shot(driver, tmp_path / "serve_busy.png")
        assert set(app.out_dir.iterdir()) == before                      # nothing was sent yet
        driver.execute_script("window.__hold = false; var f = document.getElementById('upload');"
                              " window.setTimeout(function () { f.requestSubmit(); }, 0);")
        shown = _loaded(driver, "prediction-0")
        assert re.fullmatch(rf"http://{re.escape(host)}:{port}/reviews/[^/]+\.html", driver.current_url)
        assert shown.text == predicted.replace("_", " ")  # what the model says (for this unseen scan: pituitary)
        assert "calibrated probability" in driver.find_element(By.ID, "case-0").text
        assert driver.find_element(By.ID, "model-description").text == f"Model default: {app.descriptions['default']}"
        assert driver.execute_script(                                  # the scan's review comes before the notes
            "return document.getElementById('case-0').compareDocumentPosition(document.getElementById('notes'))") == 4
        widths = driver.execute_script(
            "return Array.from(document.querySelectorAll('#case-0 img')).map(i => i.naturalWidth)")
        assert len(widths) >= 3 and min(widths) > 100                 # the embedded PNGs decoded
        assert len(set(app.out_dir.iterdir()) - before) == 1
        driver.refresh()                                               # a GET of the saved page: nothing resent
        _loaded(driver, "prediction-0")
        assert len(set(app.out_dir.iterdir()) - before) == 1
        severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []                                            # no CSP violation, no failed load
        shot = _full_page_shot(driver, tmp_path / "serve.png")
        assert shot.stat().st_size > 50_000
    finally:
        driver.quit()
    _copy_shot(shot, "XAI_BT_SCREENSHOT")
    _copy_shot(busy_shot, "XAI_BT_BUSY_SCREENSHOT")
