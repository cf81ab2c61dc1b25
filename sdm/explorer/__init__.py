"""The explorer behind app.py, without gradio: validation of user input, the shared model registry, the per-tab
session state machine, what the panels show, the comparisons and the trajectory export.

    from sdm.explorer import ModelRegistry, Session, display
    reg = ModelRegistry()
    sess = Session()
    sess.start(reg.get("fmnist-sdm-t4"), "fmnist-sdm-t4", seed=0, num_steps=50)
    sess.advance(10, threshold_scale=1.0)
    display.view_images(sess)["x0"]          # [B, C, H, W] in [0, 1]
"""
from . import compare, display, trajectory_export, validation
from .registry import DEFAULT_CHECKPOINT, ModelRegistry
from .session import MAX_STATE_BYTES, Preview, Session, StepRecord, Superseded, View, estimate_state_bytes

__all__ = ["compare", "display", "trajectory_export", "validation", "DEFAULT_CHECKPOINT", "ModelRegistry",
           "MAX_STATE_BYTES", "Preview", "Session", "StepRecord", "Superseded", "View", "estimate_state_bytes"]
