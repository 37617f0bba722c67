"""Archive-scale explain: atomic writes, a tolerant index, shards, and kill -9 then --resume on real scans."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import BENCHMARK, FOLDERS

from xai_bt.io import atomic, shards
from xai_bt.io.index import IndexFile
from xai_bt.io.stream import stream

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("path", "status", "prediction")


# --- atomic writes ---------------------------------------------------------------------------------

def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "result.json"
    atomic.write_atomic(target, b'{"old": true}')

    def dies_halfway(fh):
        fh.write(b'{"new": ')
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError):
        atomic.write_atomic(target, dies_halfway)
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_atomic_write_survives_kill_9_and_the_sweep_removes_the_leftover(tmp_path):
    target = tmp_path / "result.json"
    atomic.write_atomic(target, b'{"old": true}')
    code = ("import sys, time; from xai_bt.io import atomic\n"
            "def slow(fh):\n"
            "    fh.write(b'{\"new\": '); fh.flush(); print('writing', flush=True); time.sleep(60)\n"
            f"atomic.write_atomic({str(target)!r}, slow)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == b"writing"
    finally:
        proc.kill()
        proc.wait()
    assert json.loads(target.read_text()) == {"old": True}
    leftovers = [p for p in tmp_path.iterdir() if p.name != "result.json"]
    assert len(leftovers) == 1 and atomic.temp_owner(leftovers[0].name) == "result.json"
    assert atomic.sweep_temporaries(tmp_path, lambda name: name == "other.json") == 0
    assert atomic.sweep_temporaries(tmp_path, lambda name: name == "result.json") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_atomic_write_for_caches_skips_fsync_but_still_renames(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    target = atomic.write_atomic(tmp_path / "entry.bin", b"thumb", durable=False)
    assert target.read_bytes() == b"thumb" and synced == []
    atomic.write_atomic(target, b"durable")                    # the default: file and folder fsynced
    assert target.read_bytes() == b"durable" and len(synced) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.bin"]


# --- the index ---------------------------------------------------------------------------------------

def test_index_tolerates_and_repairs_a_truncated_last_line(tmp_path):
    index = IndexFile(tmp_path / "index.csv", FIELDS)
    index.append([{"path": "a.jpg", "status": "ok", "prediction": "glioma"}])
    index.append([{"path": "b.jpg", "status": "error", "prediction": "", "extra": "ignored"}])
    index.close()
    with open(index.path, "ab") as fh:           # a kill in the middle of the next append
        fh.write(b"c.jpg,o")
    assert [r["path"] for r in index.read()] == ["a.jpg", "b.jpg"]
    assert index.path.read_bytes().endswith(b"c.jpg,o")            # reading alone changes nothing
    assert [r["path"] for r in index.read(repair=True)] == ["a.jpg", "b.jpg"]
    index.append([{"path": "c.jpg", "status": "ok", "prediction": "multi\nline"}])
    index.append([{"path": "a.jpg", "status": "error", "prediction": ""}])
    index.close()
    assert index.latest()["a.jpg"]["status"] == "error" and index.latest()["c.jpg"]["prediction"] == "multi line"
    rows = index.compact()
    assert [r["path"] for r in rows] == ["a.jpg", "b.jpg", "c.jpg"]
    assert index.path.read_text().count("\n") == 4


def test_shards_partition_the_sorted_list_exactly_once():
    for n_items in (0, 1, 7, 100):
        for n in (1, 2, 3, 8):
            parts = [list(shards.shard_positions(n_items, (k, n))) for k in range(1, n + 1)]
            flat = sorted(i for p in parts for i in p)
            assert flat == list(range(n_items))
            assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    assert shards.parse_shard("2/3") == (2, 3) and shards.parse_shard(None) is None
    for bad in ("0/3", "4/3", "2", "a/b"):
        with pytest.raises(ValueError):
            shards.parse_shard(bad)
    assert shards.index_name((2, 3)) == "index-2-of-3.csv"


def test_stream_flags_bad_items_and_keeps_order():
    def load(item):
        if item == "bad":
            raise ValueError("cannot read\nsecond line")
        return np.full((2, 2), len(item), np.float32), np.int32(len(item))

    items = ["a", "bb", "bad", "cccc", "ddddd"]
    batches = list(stream(items, load, [((2, 2), np.float32), ((), np.int32)], batch_size=2, parallel=2))
    assert [list(b.positions) for b in batches] == [[0, 1], [2, 3], [4]]
    assert [bool(v) for b in batches for v in b.ok] == [True, True, False, True, True]
    assert batches[1].errors[0] == "ValueError: cannot read" and batches[1].arrays[1][1] == 4


# --- explain on an archive of real scans ---------------------------------------------------------

def _real_scans(folder: Path, per_class: int) -> list[Path]:
    """The first `per_class` Testing scans of each class, two class folders deep, plus a corrupt file."""
    if not BENCHMARK.is_dir():
        pytest.skip(f"real data not found at {BENCHMARK}")
    out = []
    for name in FOLDERS.values():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for src in sorted((BENCHMARK / "Testing" / name).glob("*.jpg"))[:per_class]:
            out.append(Path(shutil.copy(src, folder / name / src.name)))
    bad = folder / "glioma" / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" * 4)
    return sorted(out + [bad])


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _no_temporaries(out: Path) -> None:
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(atomic.TMP_SUFFIX)]
    assert not hidden, hidden


@pytest.mark.slow
def test_kill_9_then_resume_finishes_every_scan_exactly_once(tmp_path):
    from PIL import Image

    scans = _real_scans(tmp_path / "archive", 10)             # 40 real scans + 1 corrupt
    out = tmp_path / "out"
    argv = ["explain", str(tmp_path / "archive"), "--methods", "gradcam", "--format", "png",
            "--out", str(out), "--batch-size", "4"]
    env = {**os.environ, "MPLBACKEND": "Agg", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "xai_bt", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = IndexFile(out / "index.csv", ("path", "status"))
    deadline = time.monotonic() + 240
    try:
        while len(index.read()) < 6 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done_at_kill = {r["path"]: r for r in index.read()}
    assert 6 <= len(done_at_kill) < len(scans)
    with open(out / "index.csv", "ab") as fh:             # as if the kill had cut a row in half
        fh.write(b"/somewhere/half-written.jpg,o")
    stamps = {p: p.stat().st_mtime_ns for r in done_at_kill.values() if r["status"] == "ok"
              for p in (Path(r["figure"]), Path(r["figure"]).with_suffix(".json"))}

    from xai_bt import cli
    assert cli.main([*argv, "--resume"]) == 1                 # the corrupt scan failed
    rows = _rows(out / "index.csv")
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in scans)   # each scan exactly once
    status = {r["path"]: r["status"] for r in rows}
    assert status.pop(str(tmp_path / "archive" / "glioma" / "corrupt.jpg")) == "error"
    assert set(status.values()) == {"ok"}
    for r in rows:
        if r["status"] == "ok":
            with Image.open(r["figure"]) as im:
                im.verify()
            side = json.loads(Path(r["figure"]).with_suffix(".json").read_text())
            assert side["path"] == r["path"] and side["prediction"] == r["prediction"]
    assert len(list(out.glob("*.png"))) == len(list(out.glob("*.json"))) == 40
    _no_temporaries(out)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps    # finished scans were not redone
    assert not index.path.read_bytes().count(b"half-written")


@pytest.mark.slow
def test_shards_cover_the_archive_once_and_a_final_resume_merges_them(tmp_path, capsys):
    from xai_bt import cli

    scans = _real_scans(tmp_path / "archive", 2)               # 8 real scans + 1 corrupt
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join([*(os.path.relpath(p, tmp_path) for p in scans), "archive/missing.jpg"]) + "\n")
    out = tmp_path / "out"
    argv = ["explain", "--list", str(listing), "--methods", "gradcam,layercam", "--format", "none",
            "--out", str(out), "--batch-size", "2"]
    seen = []
    for k in (1, 2, 3):
        assert cli.main([*argv, "--shard", f"{k}/3"]) in (0, 1)
        seen += [r["path"] for r in _rows(out / f"index-{k}-of-3.csv")]
    expected = sorted([str(p) for p in scans] + [str(tmp_path / "archive" / "missing.jpg")])
    assert sorted(seen) == expected                               # together: every scan exactly once
    assert not (out / "index.csv").exists()
    capsys.readouterr()

    assert cli.main([*argv, "--resume"]) == 1                     # nothing left to do: merges the shards
    err = capsys.readouterr().err
    assert "0 explained" in err and "10 done earlier (2 of them failed)" in err
    rows = _rows(out / "index.csv")
    assert [r["path"] for r in rows] == expected
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["status"] == "error"}
    assert set(errors) == {"corrupt.jpg", "missing.jpg"} and all("\n" not in e for e in errors.values())
    assert len(list(out.glob("*.json"))) == 8 and not list(out.glob("*.png"))
    _no_temporaries(out)
