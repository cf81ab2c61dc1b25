"""The page's outputs, by key, and how each is drawn from a session as a gradio value: which outputs each kind of event
refreshes (``VIEW_KEYS``, ``THRESHOLD_KEYS``, ...), the whole view or a light one while a run streams, the controls
that follow the session, the TSM panel, the checkpoint's panels. app.py names its components by these keys.
"""
from __future__ import annotations

import gradio as gr

from sdm.explorer import Session, View, display, panels
from sdm.explorer.panels import SMALL_PX, grid_image
from sdm.explorer.presets import first_session
from sdm.explorer.validation import spiking_step_choices

THRESHOLD_INFO = "1 = off · < 1: more spikes · > 1: fewer"
TIME_STEPS_LABEL = "Spiking steps T per denoiser call"

#: outputs of every event that refreshes the whole view, in this order (the session info last)
VIEW_KEYS = ("state", "status", "timeline", "img_xt", "img_x0", "img_eps", "filmstrip", "raster", "membrane",
             "traces", "rate_bars", "rate_course", "energy_md", "energy_plot", "img_x0_base", "img_diff",
             "threshold_md", "info")
#: outputs of the threshold slider (x_t, the timeline, the filmstrip and the energy do not change)
THRESHOLD_KEYS = ("state", "status", "img_x0", "img_eps", "raster", "membrane", "traces", "rate_bars",
                  "rate_course", "img_x0_base", "img_diff", "threshold_md", "info")
#: outputs of scrubbing (the timeline is being dragged: not sent back)
SCRUB_KEYS = tuple(k for k in VIEW_KEYS if k != "timeline")
#: outputs of a layer / raster mode / neuron selection
LAYER_KEYS = ("raster", "membrane", "traces", "rate_course", "tsm_curve")
#: outputs that depend on the checkpoint only
MODEL_KEYS = ("summary", "layer", "tsm_heat", "tsm_curve", "tsm_note", "ann_note")
COMPARE_SCALE_KEYS = ("img_scale_base", "img_scale_s", "compare_scale_md")
COMPARE_ANN_KEYS = ("img_snn", "img_ann", "compare_ann_md")
EXPORT_KEYS = ("file_gif", "file_mp4", "file_png", "file_npz", "export_md")
PLAY_KEYS = VIEW_KEYS + ("timer", "play_btn", "playing")
#: a VIEW update that changes nothing (a run's cancel points)
SKIP_VIEW = tuple(gr.skip() for _ in VIEW_KEYS)
#: buttons that need the tab's session: disabled until the page load has created it
ACTION_KEYS = ("step_btn", "step10_btn", "play_btn", "run_btn", "continue_btn", "generated_btn",
               "compare_scale_btn", "compare_ann_btn", "export_btn")
#: ... of them, the ones that take steps forward: disabled once the trajectory is finished
FORWARD_KEYS = ("step_btn", "step10_btn", "play_btn", "run_btn")
#: what follows the session after every event that changes it: the buttons, and the controls a checkpoint allows
CONTROL_KEYS = ACTION_KEYS + ("threshold", "time_steps")
#: the TSM panel at the trajectory's spiking time steps T (after every new trajectory)
TSM_KEYS = ("tsm_heat", "tsm_curve", "tsm_note")
#: the side-by-side pictures: x̂₀ at scale 1.0, at the scale shown, and their difference (drawn together)
TRIO_KEYS = ("img_x0_base", "img_x0", "img_diff")
#: what a generated image streaming in refreshes: the pictures and their caption
GENERATED_KEYS = TRIO_KEYS + ("threshold_md",)
#: keys that show the viewed step at scale 1.0 beside the scale shown (``Session.ensure_base`` first)
BASE_KEYS = frozenset(TRIO_KEYS + ("raster", "rate_bars", "threshold_md", "info"))


def timeline_update(sess: Session):
    """The timeline slider spans the recorded steps (a slider needs min < max: with one step it is 1..2, locked)."""
    n = sess.num_recorded
    return gr.Slider(minimum=1, maximum=max(n, 2), value=sess.view_index + 1, step=1, interactive=n > 1)


#: what each output key but the TRIO_KEYS shows, from the session and the validated view (under its lock)
RENDERERS = {
    "state": lambda sess, view: sess,
    "status": lambda sess, view: panels.status_markdown(sess),
    "timeline": lambda sess, view: timeline_update(sess),
    "img_xt": lambda sess, view: grid_image(display.view_images(sess)["x_t"]),
    "img_eps": lambda sess, view: grid_image(display.view_images(sess)["eps"], SMALL_PX),
    "filmstrip": lambda sess, view: panels.filmstrip_image(sess),
    "raster": panels.raster_figure,
    "membrane": panels.membrane_figure,
    "traces": panels.traces_figure,
    "rate_bars": panels.rate_bars_figure,
    "rate_course": panels.rate_course_figure,
    "energy_md": lambda sess, view: panels.energy_markdown(sess),
    "energy_plot": lambda sess, view: panels.energy_figure(sess),
    "threshold_md": lambda sess, view: panels.trio_markdown(sess),
    "info": lambda sess, view: display.info(sess),
    "tsm_curve": lambda sess, view: panels.tsm_figures(sess.pipe, view.layer, sess.settings.spiking_steps)[1],
}


def as_dict(result, keys) -> dict:
    """A handler's output tuple as {key: value} (for tests and scripts)."""
    return dict(zip(keys, result))


def render(sess: Session, view: View, keys=VIEW_KEYS, note: str | None = None) -> tuple:
    """The outputs named in ``keys`` for the session's current view (a consistent snapshot: another event of the
    same tab cannot change the session while it is read). Keys that compare with scale 1.0 get the viewed step at
    1.0 first (one denoiser call when it ran at another scale, none otherwise). ``note``: what the status line says
    under its heading instead (``panels.restart_note``)."""
    if sess.spiking and BASE_KEYS.intersection(keys):
        sess.ensure_base()
    with sess.lock:
        trio = panels.threshold_pictures(sess) if set(TRIO_KEYS).intersection(keys) else {}
        return tuple(trio.get(k, gr.skip()) if k in TRIO_KEYS else
                     panels.status_markdown(sess, note) if k == "status" and note else
                     RENDERERS[k](sess, view) for k in keys)


def render_only(sess: Session, view: View, keys, only) -> tuple:
    """The outputs named in ``keys``, of which only those in ``only`` are drawn (the others are left alone)."""
    drawn = as_dict(render(sess, view, only), only)
    return tuple(drawn.get(k, gr.skip()) for k in keys)


def render_light(sess: Session, what: str) -> tuple:
    """A cheap VIEW update while a run streams: images, status and timeline; the plots are left alone."""
    with sess.lock:
        imgs = display.view_images(sess)
        light = {"state": sess, "status": panels.running_markdown(sess, what), "timeline": timeline_update(sess),
                 "img_xt": grid_image(imgs["x_t"]), "img_eps": grid_image(imgs["eps"], SMALL_PX),
                 "filmstrip": panels.filmstrip_image(sess)}
    return tuple(light.get(k, gr.skip()) for k in VIEW_KEYS)


def controls(state) -> tuple:
    """The controls that follow the session (CONTROL_KEYS), after every event that changes it: the buttons that
    need a trajectory are enabled, those that step forward are disabled once it is finished, and so is *Continue
    from here* while the view is on the finished trajectory's last step (there is nothing after it to re-run); on
    an ANN the threshold slider and the T control are disabled, and say why."""
    if not isinstance(state, Session) or not state.started:
        return tuple(gr.skip() for _ in CONTROL_KEYS)
    with state.lock:
        done, spiking, s = state.is_done, state.spiking, state.settings
        at_end = done and state.view_index == state.num_recorded - 1
        trained = state.pipe.config.time_steps
    off = FORWARD_KEYS + (("continue_btn",) if at_end else ()) if done else ()
    # Every returned component makes gradio rebuild its config (a pydantic JSON schema: 9% of a class's server
    # CPU), so the buttons and the slider, which no other event changes, are sent only when they change for this
    # tab (its Session lives as long as the page). The T control is always sent: a checkpoint switch resets it.
    sent, shown = getattr(state, "ui_controls_sent", None), (off, spiking)
    state.ui_controls_sent = shown
    if sent == shown:
        buttons = tuple(gr.skip() for _ in ACTION_KEYS) + (gr.skip(),)
    elif spiking:
        buttons = tuple(gr.Button(interactive=k not in off) for k in ACTION_KEYS) + (
            gr.Slider(interactive=True, info=THRESHOLD_INFO),)
    else:
        buttons = tuple(gr.Button(interactive=k not in off) for k in ACTION_KEYS) + (
            gr.Slider(interactive=False, info="off: an ANN has no thresholds to scale"),)
    if spiking:
        return buttons + (gr.Radio(choices=spiking_step_radio(trained), value=s.spiking_steps, interactive=True,
                                   label=TIME_STEPS_LABEL),)
    return buttons + (gr.Radio(choices=[("none", 1)], value=1, interactive=False,
                               label="Spiking steps T: none, an ANN does not spike"),)


def tsm_view(layer, state) -> tuple:
    """The TSM panel (TSM_KEYS) for the weights the trajectory's T uses (after a new trajectory)."""
    if not isinstance(state, Session) or not state.started:
        return tuple(gr.skip() for _ in TSM_KEYS)
    with state.lock:
        pipe, T = state.pipe, state.settings.spiking_steps
    layer = layer if layer in pipe.layer_names() else None
    return panels.tsm_figures(pipe, layer, T) + (display.tsm_note(pipe, T),)


def model_outputs(m: dict) -> tuple:
    """The MODEL outputs of ``panels.model_panels``."""
    dropdown = gr.Dropdown(choices=layer_choices(m["layers"]), value=m["layer"]) if m["ok"] else gr.skip()
    return (m["summary"], dropdown, m["tsm_heat"], m["tsm_curve"], m["tsm_note"], m["ann_note"])


def layer_choices(layers: list[str] | None) -> list[tuple[str, str]]:
    """The layer dropdown: friendly names shown, code names as values (the API takes code names)."""
    return [(display.layer_label(n), n) for n in layers or []]


def spiking_step_radio(trained: int) -> list[tuple[str, int]]:
    """The T control: 1, 2, 4, 8 and the checkpoint's own T, which says "trained"."""
    return [(f"{T} (trained)" if T == trained else str(T), T) for T in spiking_step_choices(trained)]


def first_view(registry, default: str | None, default_t: int) -> tuple[dict, dict, int]:
    """The default view, computed once when the app is built: it is the page's content before the tab's own session
    exists (the first image shows at once), and it warms up the model and plotly for the first user. Returns (VIEW
    outputs by key, MODEL outputs by key, the T control's value)."""
    if default is None:
        return {}, {}, default_t
    model_d = panels.model_panels(registry, default)
    if not model_d["ok"]:
        return {}, model_d, default_t
    first = {}
    warm = first_session(registry, default, model_d["layer"])
    if warm is not None:
        sess, view = warm
        first = as_dict(render(sess, view), VIEW_KEYS)
        sess.close()
        first.pop("state", None)
    return first, model_d, registry.get(default).config.time_steps
