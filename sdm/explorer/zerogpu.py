"""Hugging Face ZeroGPU: a Space on ZeroGPU hardware holds a GPU only inside functions decorated with
``spaces.GPU``. ``on_gpu`` wraps the app's heavy events (Run to end, Continue, Compare, Export) that way when the
``spaces`` package is importable, and returns them unchanged elsewhere (a laptop, CPU Basic, the tests)."""
from __future__ import annotations

import importlib

HEAVY_GPU_S = 120   # the longest a heavy event computes (the app's run budget): ZeroGPU's duration for it


def on_gpu(fn, duration: int = HEAVY_GPU_S):
    """``spaces.GPU(duration=duration)(fn)`` where the ``spaces`` package is importable, else ``fn`` itself."""
    try:
        spaces = importlib.import_module("spaces")
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)
