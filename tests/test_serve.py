"""`python -m xai_bt serve`: the review web page, over HTTP and in headless Chromium."""
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import SAMPLES

from xai_bt.review.server import MAX_UPLOAD_BYTES, RequestError, make_app, make_server, parse_multipart, safe_stem

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
            timeout: float = 300) -> tuple[int, str]:
    host, port, _ = server
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"Content-Type": content_type} if content_type else {}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    status, text = resp.status, resp.read().decode("utf-8")
    conn.close()
    return status, text


def upload(server, filename: str, data: bytes, **fields) -> tuple[int, str]:
    fields = {"model": "default", "methods": "gradcam", **fields}
    body, ctype = multipart(fields, {"scan": (filename, data)})
    return request(server, "POST", "/review", body, ctype)


def _alert(page: str) -> str:
    match = re.search(r'role="alert">(.*?)</div>', page, re.S)
    return re.sub(r"<[^>]+>", "", match.group(1)) if match else ""


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_form_lists_models_and_binds_localhost(server):
    status, page = request(server, "GET", "/")
    assert status == 200 and server[0] == "127.0.0.1"
    assert 'type="file"' in page and 'value="default"' in page and 'name="methods"' in page
    models = re.search(r'<select id="model"[^>]*>(.*?)</select>', page).group(1)
    views = re.search(r'<select id="view_model"[^>]*>(.*?)</select>', page).group(1)
    assert 'value="default"' in models and 'value="view"' not in models   # the view classifier is offered
    assert 'value="view"' in views                                         # as a view model only


def test_upload_a_good_scan(server, predicted):
    _, _, app = server
    before = set(app.out_dir.iterdir())
    status, page = upload(server, "meningioma.jpg", (SAMPLES / "meningioma.jpg").read_bytes(),
                          methods=["gradcam", "layercam"], view_model="view")
    assert status == 200, _alert(page)
    assert re.search(r'id="prediction-0"[^>]*>([^<]+)<', page).group(1) == predicted.replace("_", " ")
    assert re.search(r"calibrated probability \d+\.\d%", page) and "After temperature scaling" in page
    assert page.count('src="data:image/png;base64,') >= 2 and "MRI view:" in page
    official = app.bundle("default").config["metrics"]["brain-tumor-mri"]["official"]["accuracy"]
    assert "does not show where the tumor is" in page and f"{official:.2%}" in page
    new = set(app.out_dir.iterdir()) - before
    assert len(new) == 1 and next(iter(new)).name.endswith("-meningioma.html")
    status, saved = request(server, "GET", f"/reports/{next(iter(new)).name}")
    assert status == 200 and 'id="prediction-0"' in saved


def test_upload_a_dicom_scan(server, predicted):
    """A 16-bit DICOM without a file suffix, made from the meningioma sample: read by content, same class."""
    from xai_bt.data.decode import read_image

    gray = read_image(SAMPLES / "meningioma.jpg")
    status, page = upload(server, "IM0001", _dicom(gray.astype("uint16") * 16))
    assert status == 200, _alert(page)
    assert re.search(r'id="prediction-0"[^>]*>([^<]+)<', page).group(1) == predicted.replace("_", " ")


def test_upload_garbage_is_a_400_with_a_message(server):
    status, page = upload(server, "notes.jpg", b"this is not an image at all\n" * 10)
    assert status == 400
    assert _alert(page).startswith("Cannot review this upload: notes.jpg: not an image")
    assert "Traceback" not in page and 'id="upload"' in page    # the form is back, ready for another try
    status, page = upload(server, "empty.png", b"")
    assert status == 400 and "no scan file was uploaded" in _alert(page)
    status, page = upload(server, "tiny.png", _png(8, 8))
    assert status == 400 and "too small" in _alert(page)


def test_bad_choices_are_400(server):
    data = (SAMPLES / "glioma.jpg").read_bytes()
    status, page = upload(server, "glioma.jpg", data, model="../models/default")
    assert status == 400 and "unknown model" in _alert(page)
    status, page = upload(server, "glioma.jpg", data, methods="rm -rf")
    assert status == 400 and "unknown method" in _alert(page)
    status, page = request(server, "POST", "/review", b"scan=1", "application/x-www-form-urlencoded")
    assert status == 400 and "multipart/form-data" in _alert(page)


def test_oversize_upload_is_a_413(server):
    _, _, app = server
    before = set(app.out_dir.iterdir())
    status, page = upload(server, "big.jpg", b"\xff\xd8" + os.urandom(LIMIT))
    assert status == 413 and "upload too large" in _alert(page) and f"limit is {LIMIT / 2**20:.1f} MB" in _alert(page)
    assert set(app.out_dir.iterdir()) == before


@pytest.mark.parametrize("name", ["../../escaped.jpg", "..\\..\\escaped.jpg", "/tmp/escaped.jpg",
                                  "....//....//escaped.jpg", ".hidden"])
def test_path_traversal_names_write_nothing_outside_the_out_dir(server, name):
    _, _, app = server
    work = app.out_dir.parent.parent                        # <tmp>/serve/work/out -> <tmp>/serve
    outside_before = _tree(work) - {str(p.relative_to(work)) for p in app.out_dir.rglob("*")}
    inside_before = set(app.out_dir.iterdir())
    status, page = upload(server, name, (SAMPLES / "pituitary.jpg").read_bytes())
    assert status == 200, _alert(page)
    outside_after = _tree(work) - {str(p.relative_to(work)) for p in app.out_dir.rglob("*")}
    assert outside_after == outside_before
    new = set(app.out_dir.iterdir()) - inside_before
    assert len(new) == 1
    written = next(iter(new))
    assert written.parent == app.out_dir and re.fullmatch(r"[0-9-]+-[0-9a-f]{8}(-[A-Za-z0-9_-]+)?\.html",
                                                         written.name)
    assert not Path("/tmp/escaped.jpg").exists() and not (REPO / "escaped.jpg").exists()


@pytest.mark.parametrize("path", ["/reports/../../etc/passwd", "/reports/%2e%2e%2fbundle.json",
                                  "/reports/..%2F..%2Fmodels%2Fdefault%2Fbundle.json", "/reports/", "/nothing"])
def test_only_saved_reports_are_served(server, path):
    status, page = request(server, "GET", path)
    assert status == 404 and "xai_bt-bundle" not in page and "root:" not in page


def test_parse_multipart_and_names():
    body, ctype = multipart({"model": "default", "methods": ["gradcam", "layercam"]}, {"scan": ("a b.jpg", b"\r\n--x")})
    fields, files = parse_multipart(body, ctype)
    assert fields == {"model": ["default"], "methods": ["gradcam", "layercam"]}
    assert files == {"scan": ("a b.jpg", b"\r\n--x")}
    for bad_body, bad_type in ((body[:-30], ctype), (body, "multipart/form-data"), (body, "text/plain"),
                               (b"--b\r\nno headers here\r\n--b--", "multipart/form-data; boundary=b")):
        with pytest.raises(RequestError) as e:
            parse_multipart(bad_body, bad_type)
        assert e.value.status == 400
    assert safe_stem("../../etc/passwd") == "passwd" and safe_stem("..\\..\\x y.dcm") == "x_y"
    assert safe_stem("....") == "" and safe_stem("/") == "" and safe_stem("scan.tar.gz") == "scan_tar"


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
        status, page = request(("127.0.0.1", port, None), "GET", "/", timeout=30)
        assert status == 200 and 'type="file"' in page
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

def test_browser_upload_in_headless_chromium(server, predicted, tmp_path):
    """Open the page in headless Chromium, upload the meningioma sample through the file input, submit,
    wait for the review, check the predicted class and the images, and keep a screenshot.

    Set XAI_BT_SCREENSHOT=path to also copy the screenshot there (figures/review/serve.png).
    """
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip(f"headless browser test needs {CHROMIUM} and {CHROMEDRIVER} "
                    "(apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="headless browser test needs selenium (pip)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1100,1400",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-', dir=tmp_path)}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        host, port, _ = server
        driver.set_page_load_timeout(300)
        driver.get(f"http://{host}:{port}/")
        driver.find_element(By.ID, "scan").send_keys(str(SAMPLES / "meningioma.jpg"))
        Select(driver.find_element(By.ID, "model")).select_by_value("default")
        for box in driver.find_elements(By.CSS_SELECTOR, 'input[name="methods"]'):
            if (box.get_attribute("value") in ("gradcam", "layercam", "smoothgrad")) != box.is_selected():
                box.click()
        driver.find_element(By.ID, "submit").click()
        shown = WebDriverWait(driver, 300).until(ec.presence_of_element_located((By.ID, "prediction-0")))
        assert shown.text == predicted.replace("_", " ")  # what the model says (for this unseen scan: pituitary)
        assert "calibrated probability" in driver.find_element(By.ID, "result").text
        widths = driver.execute_script(
            "return Array.from(document.querySelectorAll('#result img')).map(i => i.naturalWidth)")
        assert len(widths) >= 2 and min(widths) > 100                 # the embedded PNGs decoded
        severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []                                            # no CSP violation, no failed load
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {      # the whole page in one shot
            "width": 1100, "height": min(int(height), 5000), "deviceScaleFactor": 1, "mobile": False})
        time.sleep(0.5)
        shot = tmp_path / "serve.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 50_000
    finally:
        driver.quit()
    target = os.environ.get("XAI_BT_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target)
