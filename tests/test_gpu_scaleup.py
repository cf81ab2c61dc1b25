"""bench/gpu_scaleup.sh --dry-run: the GPU lease's script runs every stage on the CPU, on tiny synthetic data."""
from __future__ import annotations

import json
import lzma
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from test_data import idx_bytes, make_digits

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"fmnist-sdm-t4-large", "fmnist-ann-large", "mnist-sdm-t4", "mnist-ann", "fmnist-qann-b2", "fmnist-qann-b3"}


def fake_data(root: Path) -> Path:
    """What the lease carries (.q): Fashion-MNIST as xz IDX files, MNIST digits; here 64 random images each."""
    fm = root / "fashion-mnist"
    fm.mkdir(parents=True)
    rng = np.random.RandomState(0)
    (fm / "train-images-idx3-ubyte.xz").write_bytes(lzma.compress(idx_bytes(rng.randint(0, 256, (64, 28, 28)))))
    (fm / "train-labels-idx1-ubyte.xz").write_bytes(lzma.compress(idx_bytes(np.arange(64) % 10)))
    make_digits(root / "mnist" / "package" / "src" / "digits", per_digit=1)
    return root


def run(out: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SDM_DATA=str(data), PYTHON=sys.executable)
    return subprocess.run(["bash", "bench/gpu_scaleup.sh", str(out), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_dry_run_trains_every_stage_and_writes_one_tarball_of_checkpoints(tmp_path):
    data = fake_data(tmp_path / "data")
    r = run(tmp_path / "out", data, "--dry-run")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with tarfile.open(tmp_path / "out" / "gpu_scaleup.tar") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "x", filter="data")
    assert {n.split("/")[0] for n in names} == FOLDERS
    assert not any("train_state" in n for n in names)
    for name in FOLDERS:
        folder = tmp_path / "x" / name
        card = json.loads((folder / "card.json").read_text())
        assert (folder / "model.safetensors").stat().st_size < 10_000_000
        assert card["training"]["command"].startswith("python -m sdm.train")
    # the continued ones went on from their committed steps; the ANN counterparts are new; the quantised ANNs
    # started from fmnist-ann's weights with calibrated clips
    shipped = json.loads((ROOT / "checkpoints/fmnist-sdm-t4-large/card.json").read_text())["training"]["steps"]
    large = json.loads((tmp_path / "x/fmnist-sdm-t4-large/card.json").read_text())["training"]
    assert large["steps"] == shipped + 2
    cfg = json.loads((tmp_path / "x/fmnist-ann-large/config.json").read_text())["model"]
    assert (cfg["neuron"], cfg["base_channels"], cfg["precondition"]) == ("ann", 36, True)
    q2 = json.loads((tmp_path / "x/fmnist-qann-b2/card.json").read_text())["training"]["init"]
    assert "initialised from fmnist-ann" in q2 and "calibrated" in q2
    assert json.loads((tmp_path / "x/fmnist-qann-b3/config.json").read_text())["model"]["bits"] == 3
    log = (tmp_path / "out" / "gpu_scaleup.log").read_text()
    assert all(f"== {s}:" in log for s in ("a", "b", "c-snn", "c-ann", "d-b2", "d-b3"))
    # the committed checkpoints are untouched
    assert json.loads((ROOT / "checkpoints/fmnist-sdm-t4-large/card.json").read_text())["training"]["steps"] == shipped


def test_missing_data_is_named_before_anything_runs(tmp_path):
    r = run(tmp_path / "out", tmp_path / "nothing-here", "--dry-run")
    assert r.returncode == 2
    assert "train-images-idx3-ubyte.xz is missing" in r.stderr and "docs/GPU.md" in r.stderr
