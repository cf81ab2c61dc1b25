"""The explorer behind app.py, without gradio: validation of user input, the shared model registry, the per-tab
session state machine and its time-budgeted runs, what the panels show and draw, the opening checkpoint and lesson
presets, the comparisons, the trajectory export, the pool of live sessions, the results they share and the batching of
their denoiser calls.

    from sdm.explorer import ModelRegistry, Session, display
    reg = ModelRegistry()
    sess = Session()
    sess.start(reg.get("fmnist-sdm-t4"), "fmnist-sdm-t4", seed=0, num_steps=50)
    sess.advance(10, threshold_scale=1.0)
    display.view_images(sess)["x0"]          # [B, C, H, W] in [0, 1]
"""
from . import batching, compare, display, panels, presets, results, sharing, trajectory_export, validation
from .batching import DenoiserBatcher
from .heap import freeze_heap, release_memory
from .pool import SessionPool
from .registry import DEFAULT_CHECKPOINT, ModelRegistry
from .session import (MAX_STATE_BYTES, OverBudget, Preview, Session, StepRecord, Superseded, View,
                      estimate_state_bytes, within_budget)

__all__ = ["batching", "compare", "display", "panels", "presets", "results", "sharing", "trajectory_export", "validation", "DEFAULT_CHECKPOINT",
           "DenoiserBatcher", "ModelRegistry", "MAX_STATE_BYTES", "OverBudget", "Preview", "Session", "SessionPool", "StepRecord",
           "Superseded", "View", "estimate_state_bytes", "freeze_heap", "release_memory", "within_budget"]
