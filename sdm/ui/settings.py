"""The new-trajectory settings boxes (seed, number of steps, lesson) in the browser: the UI's check before a run,
what the status line says of a refused value, and the lesson label cleared by a change by hand."""
from __future__ import annotations

import gradio as gr

from sdm.explorer import Session, panels
from sdm.explorer.validation import check_num_steps, check_seed


def _bad_setting(check, value) -> str | None:
    """The message of a seed / number of steps the UI refuses (capitalised), None when it is fine."""
    try:
        check(value)
        return None
    except ValueError as e:
        msg = str(e)
        return msg[:1].upper() + msg[1:]


def settings_status(seed, num_steps, state):
    """After Enter in the seed or steps box: a value the validator refuses is also said on the status line (the box
    may be off screen), with the trajectory's heading kept; nothing when both are fine."""
    bad = [m for m in (_bad_setting(check_seed, seed), _bad_setting(check_num_steps, num_steps)) if m]
    if not bad:
        return gr.skip()
    note = "⚠ " + " ".join(bad) + ": nothing was started."
    if isinstance(state, Session) and state.started:
        with state.lock:
            return panels.status_markdown(state, note)
    return note


def settings_validator(checkpoint, seed, sampler, num_steps, threshold_scale, grid_size, layer, raster_mode,
                       neurons, state, time_steps):
    """The UI's check of a new trajectory's settings before it runs: a bad seed or number of steps gets one
    message at its own box (gr.validate) instead of an error on every panel. The API endpoint does not use it:
    its errors stay errors (sdm.explorer.validation says the same thing there)."""
    def ok(check, value):
        msg = _bad_setting(check, value)
        return gr.validate(msg is None, msg or "")
    checks = {1: check_seed, 3: check_num_steps}
    args = [checkpoint, seed, sampler, num_steps, threshold_scale, grid_size, layer, raster_mode, neurons, state,
            time_steps]
    return [ok(checks[i], a) if i in checks else gr.validate(True, "") for i, a in enumerate(args)]


def clear_lesson():
    """The lesson dropdown emptied (its label described the settings before a change by hand)."""
    return gr.Dropdown(value=None)
