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


def test_a_hostile_folder_is_refused_from_its_header_and_the_failure_is_cached(tmp_path, monkeypatch):
    import json
    import resource
    import time

    import sdm.checkpoints as ck

    big = tmp_path / "big"
    shutil.copytree(FIXTURES / "tiny-sdm", big)
    cfg = json.loads((big / "config.json").read_text())
    cfg["model"]["base_channels"] = 384                       # about 0.9 GiB if it were built
    (big / "config.json").write_text(json.dumps(cfg))
    reg = ModelRegistry(tmp_path)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="over this server's limit"):
        reg.get("big")
    assert time.perf_counter() - t0 < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 100 * 1024    # KB: nothing was built
    calls = []
    monkeypatch.setattr(ck, "weight_shapes", lambda *a: calls.append(a))
    with pytest.raises(ValueError, match="over this server's limit"):
        reg.get("big")                                        # cached: the folder is not read again
    assert calls == []
    # within the limit but with shapes that do not match the weights: refused from the header alone
    cfg["model"]["base_channels"] = 16
    (big / "config.json").write_text(json.dumps(cfg))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="shapes do not match"):
        reg.get("big")


def test_a_card_that_is_not_an_object_is_named(tmp_path):
    shutil.copytree(FIXTURES / "tiny-sdm", tmp_path / "listy")
    (tmp_path / "listy" / "card.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="a model card must be a JSON object"):
        ModelRegistry(tmp_path).get("listy")


def test_links_out_of_the_checkpoints_folder_are_not_served(tmp_path):
    root, outside = tmp_path / "ckpts", tmp_path / "elsewhere"
    root.mkdir()
    shutil.copytree(FIXTURES / "tiny-sdm", outside / "secret")
    shutil.copytree(FIXTURES / "tiny-sdm", root / "tiny-sdm")
    (root / "linked").symlink_to(outside / "secret")
    (root / "alias").symlink_to(root / "tiny-sdm")             # a link inside the folder is fine
    reg = ModelRegistry(root)
    assert reg.names() == ["alias", "tiny-sdm"]
    with pytest.raises(ValueError, match="'linked' not found"):
        reg.get("linked")
