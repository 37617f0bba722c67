"""`train --strategy multiworker`: two worker processes on localhost, wired by TF_CONFIG (slow)."""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.mark.slow
def test_two_workers_train_and_only_the_chief_writes_the_bundle(tiny_benchmark, tmp_path):
    out = tmp_path / "multiworker"
    workers = [f"localhost:{p}" for p in _free_ports(2)]
    argv = [sys.executable, "-m", "xai_bt", "train", "--arch", "baseline_cnn", "--data", str(tiny_benchmark),
            "--out", str(out), "--strategy", "multiworker", "--epochs", "1", "--batch-size", "8",
            "--image-size", "32", "--limit", "32", "--no-augment"]
    procs = []
    for index in range(2):
        env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=420)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("the workers did not finish in 420 s:\n" + "\n---\n".join(
            (p.communicate()[0] or "")[-2000:] for p in procs))
    for index, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"worker {index}:\n{log[-3000:]}"
    losses = [re.findall(r" - loss: ([\d.]+)", log) for log in logs]
    assert losses[0] and losses[0] == losses[1], losses            # one synchronous model, not two
    config = json.loads((out / "bundle.json").read_text())
    assert config["training"]["replicas"] == 2 and config["training"]["config"]["strategy"] == "multiworker"
    assert not (out / "checkpoints").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert (tmp_path / ".multiworker.worker-1" / "bundle.json").is_file()   # the other worker's private copy
    assert "metrics" in config                                              # the chief evaluated its bundle
    assert "metrics" not in json.loads((tmp_path / ".multiworker.worker-1" / "bundle.json").read_text())
    assert "non-chief worker" in logs[1] and "non-chief worker" not in logs[0]

    from conftest import SAMPLES

    from xai_bt import load_model

    probs = load_model(out).predict(str(SAMPLES / "glioma.jpg")).probabilities
    assert probs.shape == (1, 4) and np.isclose(probs.sum(), 1)
