"""Which checkpoint and settings the explorer opens on: the default settings, the lesson presets (which find the
default model's "vanilla" sibling and its ANN counterpart by name), the fallback when the wanted checkpoint cannot
be loaded, and the first trajectory that warms the model up before the first user arrives. Gradio-free.
"""
from __future__ import annotations

import logging

from . import panels
from .registry import ModelRegistry
from .session import Session, View
from .validation import shown

__all__ = ["DEFAULTS", "MAX_LESSON_LABEL", "lesson_presets", "lesson_settings", "opening_checkpoint", "first_session"]

log = logging.getLogger("sdm.app")

#: the settings of a new page (and of the warm-up trajectory)
DEFAULTS = dict(seed=0, sampler="ddim", num_steps=50, threshold_scale=1.0, grid_size=1)
#: the longest lesson label: the header's dropdown shows it whole at 16 px, beside its arrow
MAX_LESSON_LABEL = 26


def lesson_presets(registry: ModelRegistry, default: str | None) -> list[tuple[str, list]]:
    """(label, [checkpoint, seed, sampler, steps, threshold scale, grid, T]) of each lesson preset; T None: the
    checkpoint's trained T. A label is at most ``MAX_LESSON_LABEL`` characters (it fits the dropdown beside its
    arrow on a projector) and claims nothing the run may not show (s = 0.95 gives more spikes on average, not at
    every step)."""
    if default is None:
        return []
    names = registry.names()
    rows = [
        ("① Noise → image: DDIM 50", [default, 0, "ddim", 50, 1.0, 1, None]),
        ("② Threshold scale s = 0.95", [default, 0, "ddim", 50, 0.95, 1, None]),
        ("③ Threshold scale s = 1.05", [default, 0, "ddim", 50, 1.05, 1, None]),
        ("④ Spiking steps T = 8", [default, 0, "ddim", 50, 1.0, 1, 8]),
        ("⑤ Spiking steps T = 1", [default, 0, "ddim", 50, 1.0, 1, 1]),
        ("⑥ Sixteen images at once", [default, 1, "ddim", 50, 1.0, 16, None]),
        ("⑦ DDPM, 200 steps", [default, 0, "ddpm", 200, 1.0, 1, None]),
    ]
    prefix = default.split("-", 1)[0]
    vanilla = next((n for n in names if n.startswith(prefix) and n.endswith("vanilla")), None)
    if vanilla:
        rows.append(("⑧ The model without TSM", [vanilla, 0, "ddim", 50, 1.0, 1, None]))
    try:
        ann = registry.ann_counterpart(default)
    except ValueError:
        ann = None
    if ann:
        rows.append(("⑨ Its ANN (no spikes)", [ann, 0, "ddim", 50, 1.0, 1, None]))
    return rows


def lesson_settings(registry: ModelRegistry, label) -> tuple:
    """The settings of the lesson preset ``label``: checkpoint, seed, sampler, steps, threshold scale, grid size,
    spiking time steps T (the checkpoint's own when the preset leaves it open)."""
    presets = dict(lesson_presets(registry, registry.default_name()))
    if label not in presets:
        raise ValueError(f"lesson preset {shown(label)} is not one of: {', '.join(presets)}")
    values = list(presets[label])
    if values[-1] is None:
        values[-1] = registry.get(values[0]).config.time_steps
    return tuple(values)


def opening_checkpoint(registry: ModelRegistry, wanted, layer=None) -> tuple[str | None, dict | None]:
    """The checkpoint a page opens on and its ``panels.model_panels``: ``wanted`` if it is listed, else the default;
    when that one cannot be loaded (e.g. broken since startup), the default instead. (None, None) when there is no
    checkpoint at all; ``ok=False`` in the panels when none of them loads."""
    checkpoint = wanted if wanted in registry.names() else registry.default_name()
    if checkpoint is None:
        return None, None
    m = panels.model_panels(registry, checkpoint, layer)
    fallback = registry.default_name()
    if not m["ok"] and fallback not in (None, checkpoint):
        checkpoint, m = fallback, panels.model_panels(registry, fallback, layer)
    return checkpoint, m


def first_session(registry: ModelRegistry, checkpoint: str, layer: str | None) -> tuple[Session, View] | None:
    """The default trajectory of ``checkpoint`` (``DEFAULTS``, its first step), started once when the app is built:
    it is the page's content before a tab's own session exists, and it warms up the model for the first user.
    None (and a warning in the log) when it cannot be started. The caller closes the session."""
    d = DEFAULTS
    pipe = registry.get(checkpoint)
    sess = Session()
    try:
        view = sess.view_for(pipe.layer_names(), checkpoint, layer, "step", [])
        sess.start(pipe, checkpoint, seed=d["seed"], sampler=d["sampler"], num_steps=d["num_steps"],
                   grid=d["grid_size"], threshold_scale=d["threshold_scale"],
                   ann_counterpart=registry.ann_counterpart(checkpoint))
    except ValueError as e:
        log.warning("default checkpoint %s: %s", checkpoint, e)
        sess.close()
        return None
    return sess, view
