"""sdm.explorer.registry: checkpoints loaded once and shared; a broken one is reported while the others work."""
from __future__ import annotations

import shutil
import threading

import pytest

from conftest import FIXTURES
from sdm.explorer import ModelRegistry


def test_loaded_once_and_shared_between_threads():
    reg = ModelRegistry(FIXTURES)
    got = []
    threads = [threading.Thread(target=lambda: got.append(reg.get("tiny-sdm"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(p is got[0] for p in got)
    assert reg.get(" tiny-sdm ") is got[0]


def test_default_and_ann_counterpart():
    reg = ModelRegistry(FIXTURES)
    assert reg.names() == ["tiny-ann", "tiny-sdm", "tiny-sdm-vanilla"]
    assert reg.default_name() == "tiny-sdm"                    # the first spiking one (no fmnist-sdm-t4 here)
    assert reg.ann_counterpart("tiny-sdm") == "tiny-ann"
    assert reg.ann_counterpart("tiny-ann") is None             # not itself


def test_unknown_names_list_the_available_ones_without_the_servers_path():
    reg = ModelRegistry(FIXTURES)
    with pytest.raises(ValueError) as e:
        reg.get("nope")
    msg = str(e.value)
    assert "'nope' not found; available: tiny-ann, tiny-sdm, tiny-sdm-vanilla" in msg
    assert str(FIXTURES) not in msg
    with pytest.raises(ValueError, match="checkpoint must be a name"):
        reg.get(None)


def test_a_broken_checkpoint_is_reported_and_retried(tmp_path):
    shutil.copytree(FIXTURES / "tiny-sdm", tmp_path / "tiny-sdm")
    shutil.copytree(FIXTURES / "tiny-ann", tmp_path / "broken")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not safetensors")
    reg = ModelRegistry(tmp_path)
    assert reg.summary("broken").startswith("⚠ checkpoint 'broken' cannot be loaded")
    assert str(tmp_path) not in reg.summary("broken")
    assert reg.get("tiny-sdm").config.spiking                  # the others still work
    shutil.copy(FIXTURES / "tiny-ann" / "model.safetensors", tmp_path / "broken" / "model.safetensors")
    assert not reg.get("broken").config.spiking                # fixed on disk: loads on the next request
