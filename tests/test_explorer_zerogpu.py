"""The app on a GPU: the registry's device (SDM_DEVICE) and ZeroGPU's spaces.GPU around the heavy events, tested
with a stand-in ``spaces`` module on the CPU."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from conftest import FIXTURES
from sdm.explorer import ModelRegistry
from sdm.explorer.registry import check_device, default_device
from sdm.explorer.zerogpu import HEAVY_GPU_S, on_gpu


@pytest.fixture
def fake_spaces(monkeypatch):
    """A stand-in for Hugging Face's ``spaces`` package: GPU(duration=...) marks what it wraps."""
    wrapped = []
    mod = types.ModuleType("spaces")

    def GPU(duration=60):
        def deco(fn):
            def inner(*a, **k):
                return fn(*a, **k)
            inner.zerogpu_duration = duration
            inner.__wrapped__ = fn
            wrapped.append(fn)
            return inner
        return deco

    mod.GPU = GPU
    monkeypatch.setitem(sys.modules, "spaces", mod)
    return wrapped


def test_without_spaces_a_handler_is_returned_unchanged(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)   # import spaces -> ImportError

    def handler():
        return 1
    assert on_gpu(handler) is handler


def test_with_spaces_a_handler_runs_inside_spaces_gpu(fake_spaces):
    def handler(x):
        return x + 1
    g = on_gpu(handler)
    assert g is not handler and g.zerogpu_duration == HEAVY_GPU_S and g(1) == 2
    assert fake_spaces == [handler]


def test_the_app_wraps_exactly_its_heavy_events(fake_spaces, monkeypatch):
    monkeypatch.setenv("SDM_CHECKPOINTS", str(FIXTURES))
    import app
    app.build_demo(app.Explorer(ModelRegistry(FIXTURES)))
    names = sorted(getattr(f, "__name__", "") for f in fake_spaces)
    assert names == ["compare_ann", "compare_scales", "continue_from_here", "export", "run_to_end"]


def test_device_defaults_to_the_cpu_here_and_sdm_device_chooses(monkeypatch):
    monkeypatch.delenv("SDM_DEVICE", raising=False)
    assert default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("SDM_DEVICE", "cpu")
    reg = ModelRegistry(FIXTURES)
    assert reg.device == "cpu" and reg.get("tiny-sdm").device.type == "cpu"


def test_a_device_torch_cannot_use_is_a_clear_error():
    with pytest.raises(ValueError, match="not a torch device.*use cpu or cuda"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device here: unset it or use cpu"):
            ModelRegistry(FIXTURES, device="cuda")
