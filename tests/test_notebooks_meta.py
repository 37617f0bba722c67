"""The notebooks are committed clean: a "parameters" cell near the top, no outputs, no absolute paths.

Executing them is CI's job (`pytest --nbmake notebooks/`); this test only reads the files, so it is fast.
"""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_quickstart", "02_train_and_compare", "03_explanation_gallery", "04_calibration_and_roc",
            "05_focus_audit", "06_view_ablation", "07_paper_figures", "08_your_own_model"]

# absolute paths: POSIX roots of user, CI and data folders, home folders, Windows drives, file URLs
ABSOLUTE = re.compile(r"""(?x)
    (?<![\w.~/-])/(?:work|home|Users|root|tmp|mnt|data|opt|srv|var|usr|private|Volumes)/
  | ~/
  | \b[A-Za-z]:[\\/]{1,2}[\w.-]
  | file:///
""")


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _strings(obj) -> list[str]:
    """Every string inside a JSON value (decoded, so an escaped newline is not a backslash)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def test_all_notebooks_present():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_near_the_top(path):
    cells = _cells(path)
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters', found {len(tagged)}"
    i = tagged[0]
    assert cells[i]["cell_type"] == "code" and i <= 3, f"{path.name}: the parameters cell should be code, near the top"
    assert cells[0]["cell_type"] == "markdown" and _source(cells[0]).lstrip().startswith("# "), \
        f"{path.name}: should open with a markdown title"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_stored_outputs(path):
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name}: cell {i} has stored outputs; clear them"
            assert cell.get("execution_count") is None, f"{path.name}: cell {i} has an execution count"
        assert not cell.get("attachments"), f"{path.name}: cell {i} has attachments"
    assert path.stat().st_size < 100_000, f"{path.name}: {path.stat().st_size} bytes; keep notebooks small"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_absolute_paths(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    texts = [_source(c) for c in nb["cells"]] + _strings(nb.get("metadata", {}))
    texts += [s for c in nb["cells"] for s in _strings(c.get("metadata", {}))]
    found = sorted({m.group(0) for text in texts for m in ABSOLUTE.finditer(text)})
    assert not found, f"{path.name}: absolute paths {found}; build paths from the repository root instead"


def test_absolute_path_pattern():
    for bad in ('"/work/main/models"', "Path('/home/me/data')", "~/data", r"C:\data", "D:/x", "file:///tmp/x"):
        assert ABSOLUTE.search(bad), bad
    for ok in ('ROOT / "models" / "default"', '"models/default"', "../shared/data", "notebooks/_outputs/",
               "xai_bt/samples/glioma.jpg", "1/2", "$$y^c = w/Z$$", "http://example.org/data/x"):
        assert not ABSOLUTE.search(ok), ok
