"""SDM Explorer: step through a Spiking Diffusion Model's reverse process and watch its neurons.

    python app.py                 # serves on 0.0.0.0:7860 (GRADIO_SERVER_PORT / GRADIO_SERVER_NAME override)

This file is only layout, events and formatting. The per-user logic (recording, stepping, scrubbing, threshold
previews, comparisons, export) is ``sdm.explorer``; the figures come from ``sdm.viz``. Each browser tab keeps
one ``Session`` in ``gr.State``; the loaded models live in one ``ModelRegistry`` shared read-only by everyone.

Two views of one page: the *Classroom* view (the View toggle, or ``?mode=classroom``) fits one 1280x720 screen:
presets, controls, the sample, x̂₀ at threshold scale 1.0 beside the slider's scale, the spike raster and the
firing-rate bars; the *Full explorer* adds everything else below.

API (gradio_client), see the README: /new_trajectory, /step, /set_threshold, /run_to_end, /export, plus
/scrub, /continue_from_here, /select_layer, /compare_scales, /compare_ann, /checkpoint_info.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import logging
import math
import os
import time

import numpy as np
import gradio as gr

from sdm import imaging, viz
from sdm.explorer import ModelRegistry, Session, Superseded, View, compare, display, trajectory_export
from sdm.explorer.pool import SessionPool, release_memory
from sdm.explorer.zerogpu import on_gpu
from sdm.explorer.validation import (MAX_NEURONS, MAX_SEED, MAX_STEPS, SCALE_MAX, SCALE_MIN, SCALE_STEP,
                                     STEP_PRESETS, check_num_steps, check_scale, check_seed, check_step_count,
                                     shown, time_step_choices)

log = logging.getLogger("sdm.app")

# ------------------------------------------------------------------------------------------- settings
DEFAULTS = dict(seed=0, sampler="ddim", num_steps=50, threshold_scale=1.0, grid_size=1)
INTERACTIVE_LIMIT = 4          # light events at once (one torch thread each): two heavy runs leave room for others
HEAVY_LIMIT = 2                # Run to end, Continue, Compare, Export at once
QUEUE_MAX_SIZE = 64            # waiting events, all users; beyond it gradio answers "Queue is full"
# one Step request computes at most this long (Step x10 of 16 images: about 4 s); one Run to end / Continue / Compare
# request at most RUN_BUDGET_S. An operator may change them: SDM_STEP_BUDGET_S, SDM_RUN_BUDGET_S.
STEP_BUDGET_S = float(os.environ.get("SDM_STEP_BUDGET_S", "10"))
RUN_BUDGET_S = float(os.environ.get("SDM_RUN_BUDGET_S", "120"))
MAX_UPLOAD = "1kb"             # the app takes no uploads: gradio's upload route refuses anything larger
STATE_TTL_S = 3600             # idle sessions are freed after an hour
PLAY_INTERVAL_S = 0.5          # Play: one tick every half second ...
PLAY_TICKS = 60                # ... and any trajectory plays in about this many ticks
STREAM_EVERY_S = 0.5           # Run to end: refresh the images this often
YIELD_EVERY_S = 0.1            # a long request hands control back this often (where a cancel stops it)
DEFAULT_T = 4                  # the T control's value when there is no checkpoint to take it from
# the one-screen layout (classroom view at 1280x720): widths of its three columns, heights of its panels
CONTROLS_PX = 270              # controls
IMAGES_PX = 420                # the sample x_t and, under it, x̂₀ at 1.0 / at s / their difference
PLOTS_MIN_PX = 400             # the spike raster and the firing-rate bars (the rest of the width)
IMAGE_PX = 290                 # x_t is upscaled (nearest neighbour) to about this size: >= 256 px for one image,
                               # >= 64 px per image of a 4x4 grid
SMALL_PX = 130                 # x̂₀ at 1.0, x̂₀ at s, their difference, ε̂
PLOT_H = 300                   # height of the raster and of the rate bars
RASTER_MODES = [("this diffusion step (T spiking steps τ)", "step"),
                ("whole trajectory (diffusion steps × τ)", "trajectory")]
NO_CHECKPOINTS = ("⚠ **No checkpoints found** (in checkpoints/, or the folder $SDM_CHECKPOINTS names). Train one: "
                  "`python -m sdm.train ...`")

THEME = gr.themes.Default(text_size=gr.themes.sizes.text_lg, primary_hue="blue")
CSS = """
.gradio-container { --layout-gap: 10px; --block-padding: 6px 10px; --block-label-padding: 2px 8px;
                    padding-top: 8px !important; }
.pixelated img, .pixelated canvas { image-rendering: pixelated; image-rendering: crisp-edges; }
#status h3 { margin: 0 0 .1rem 0; font-size: 1.1rem; }
#status p { margin: 0 0 .15rem 0; font-size: .85rem; line-height: 1.25; }
#title p { margin: 0; font-size: 1.15rem; line-height: 1.3; }
#threshold-text p { margin: 0; font-size: .85rem; line-height: 1.25; }
#header { align-items: center; flex-wrap: nowrap; }
#title { flex: 0 0 310px !important; min-width: 0 !important; }
#lesson-label { flex: 0 0 120px !important; min-width: 0 !important; text-align: right; }
#lesson-label p { margin: 0; font-size: .95rem; white-space: nowrap; }
#mode { flex: 0 0 auto !important; }
#mode .wrap { flex-wrap: nowrap; }
#threshold input[type=number] { width: 4.5rem; }
#time-steps .wrap { gap: 4px; }
#time-steps label { padding: 3px 6px; font-size: .9rem; white-space: nowrap; }
#step-presets { align-items: center; flex-wrap: nowrap; gap: 4px; }
#step-presets > * { min-width: 0 !important; flex: 1 1 0 !important; }
#step-presets > #step-presets-label { flex: 0 0 auto !important; width: auto !important; }
#step-presets-label p { margin: 0; font-size: .9rem; white-space: nowrap; }
#img-diff img { outline: 1px solid #BBBBBB; }
#trio > * { min-width: 0 !important; flex: 1 1 0 !important; }
.buttons { flex-wrap: nowrap; }
.teach { font-size: 1rem; color: #333; border-left: 4px solid #0072B2; padding-left: .6rem; }
.teach p { margin: .2rem 0; }
#summary { font-size: 1rem; }
footer { display: none !important; }
/* the classroom view: one screen, nothing else */
body.classroom .full-only { display: none !important; }
"""


# ------------------------------------------------------------------------------------ input guards
@contextlib.contextmanager
def _no_stub_files():
    """Gradio writes a .pyi type stub next to every file that defines a Component subclass (a help for authors
    of custom components). The app must not write into the repository: switch that off while the input
    components below are defined."""
    import gradio.component_meta as meta
    original = meta.create_or_modify_pyi
    meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        meta.create_or_modify_pyi = original


with _no_stub_files():
    # Inputs whose value reaches the handler as sent: sdm.explorer.validation checks it once, with a message that
    # names the input (gradio's own conversion would fail first, with a generic error, on strings, NaN or inf).
    # No __init__ of their own: gradio reads a component's props from its __init__ signature.
    class RawSlider(gr.Slider):
        is_template = True   # rendered by the frontend as a plain Slider

        def preprocess(self, payload):
            return payload

    class RawNumber(gr.Number):
        is_template = True

        def preprocess(self, payload):
            return payload

    class RawRadio(gr.Radio):
        is_template = True

        def preprocess(self, payload):
            return payload


def user_errors(fn):
    """Turn the ValueErrors of sdm (bad input, unknown names, broken checkpoints) into gr.Error messages, and
    anything unexpected into a short gr.Error too: one bad request never takes the app down."""

    def convert(e: Exception) -> gr.Error:
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, (ValueError, FileNotFoundError, KeyError)):
            msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            return gr.Error(msg[:1].upper() + msg[1:], print_exception=False)
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"Internal error ({type(e).__name__}). The app is still running; please retry.")

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                raise convert(e) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise convert(e) from None
    return wrapper


# ------------------------------------------------------------------------------------------ formatting
def grid_image(images01: np.ndarray, target_px: int = IMAGE_PX) -> np.ndarray:
    """[B, C, H, W] in [0, 1] -> one uint8 picture, nearest-neighbour upscaled to about target_px."""
    b, _, h, w = images01.shape
    ncol = int(math.ceil(math.sqrt(b)))
    scale = max(1, int(round(target_px / (ncol * max(h, w)))))
    return imaging.image_grid(images01, nrow=ncol, pad=2 if b > 1 else 0, scale=scale, pad_value=1.0)


def filmstrip_image(sess: Session) -> np.ndarray:
    """x_t (top row) over x̂₀ (bottom row, captioned with the step and its diffusion step t)."""
    xs, x0s, labels = display.filmstrip_frames(sess, max_frames=10)
    top = imaging.filmstrip(xs, max_frames=10, scale=4, pad=3)
    bottom = imaging.filmstrip(x0s, max_frames=10, scale=4, pad=3, captions=labels)
    sep = np.full((4, top.shape[1], 3), 160, dtype=np.uint8)
    return np.concatenate([top, sep, bottom], axis=0)


def _scale_line(sess: Session) -> str:
    """The threshold scale shown, in the one wording the status line and the preview banner share."""
    rec, pv = sess.current()
    if pv is not None:
        return f"threshold scale s = {pv.scale:.3f} (preview; step recorded at s = {rec.scale:.3f})"
    return f"threshold scale s = {rec.scale:.3f}"


def status_markdown(sess: Session) -> str:
    rec, pv = sess.current()
    s = sess.settings
    n = sess.num_recorded
    head = f"### Step {rec.index + 1} / {s.num_steps} · diffusion step t = {rec.timestep}"
    e = display.energy(sess)
    if sess.spiking:
        steps_tau = (f"T = {s.time_steps} spiking steps τ · {_scale_line(sess)} · energy so far "
                     f"{e['energy_mj']:.3g} mJ/image (ANN {e['ann_mj']:.3g})")
    else:
        steps_tau = f"ANN: no spikes · energy so far {e['energy_mj']:.3g} mJ/image"
    line = (f"{s.checkpoint} · {s.sampler.upper()} · seed {s.seed} · {s.grid} image{'s' if s.grid > 1 else ''} · "
            f"{steps_tau}")
    notes = []
    if pv is not None:
        notes.append(f"**Preview at threshold scale {pv.scale:.3f}**: this step re-run with it (x̂₀, spikes); "
                     "*Continue from here* carries on with it.")
    if sess.view != n - 1:
        carry = "" if sess.is_done else f"*Step* carries on after step {n}, "
        notes.append(f"Viewing an earlier step ({n} recorded): {carry}*Continue from here* re-runs from this one.")
    if sess.is_done:
        notes.append("✔ **Finished**: x_t is the generated image. Step and Run are off: press *New trajectory*.")
    return "\n\n".join([head, line] + notes)


def running_markdown(sess: Session, what: str = "Running") -> str:
    s = sess.settings
    rec = sess.records[-1]
    return (f"### {what}… step {sess.num_recorded} / {s.num_steps} · diffusion step t = {rec.timestep}\n\n"
            f"{s.checkpoint} · {s.sampler.upper()} · seed {s.seed}")


def _no_spikes_figure(sess: Session, title: str, height: int | None = None) -> "viz.go.Figure":
    return viz.empty_figure(f"{sess.settings.checkpoint} is an ANN: no spikes to show", title, height)


def _step_tag(sess: Session) -> str:
    rec, pv = sess.current()
    tag = f"step {rec.index + 1} (t = {rec.timestep})"
    return tag + (f" · preview s = {pv.scale:.3f}" if pv is not None else "")


def _subtitle(sess: Session, layer: str) -> str:
    """The second title line of a neuron plot: the layer's code name, the step, the preview scale."""
    return f"{layer} · {_step_tag(sess)}"


def raster_figure(sess: Session, view: View):
    title = f"Spikes · {display.layer_label(view.layer)}"
    if not sess.spiking:
        return _no_spikes_figure(sess, title, PLOT_H)
    if view.raster_mode == "trajectory":
        spikes, labels = display.trajectory_spikes(sess, view.layer)
        fig = viz.spike_raster_trajectory(spikes, labels, sess.num_neurons[view.layer], title=title, height=PLOT_H,
                                          subtitle=f"{view.layer} · steps 1-{sess.num_recorded}")
        T = spikes[0].shape[0]
        fig.add_vrect(x0=sess.view * T - 0.5, x1=(sess.view + 1) * T - 0.5, fillcolor="#56B4E9", opacity=0.25,
                      line_width=0, layer="below")          # the viewed step
        return fig
    p = display.probe(sess, view.layer)
    effect = display.threshold_effect(sess, view.layer)
    note = ""
    if effect and effect["layer_base_spikes"] is not None and effect["scale"] != 1.0:
        note = f"{effect['layer_base_spikes']:,} at s = 1.0"
    return viz.spike_raster(p["spikes"], p["num_neurons"], title=title, subtitle=_subtitle(sess, view.layer),
                            note=note, height=PLOT_H)


def membrane_figure(sess: Session, view: View):
    title = f"Membrane potential · {display.layer_label(view.layer)}"
    if not sess.spiking:
        return _no_spikes_figure(sess, title)
    p = display.probe(sess, view.layer)
    return viz.membrane_heatmap(p["v"], p["threshold"], title=title, subtitle=_subtitle(sess, view.layer))


def traces_figure(sess: Session, view: View):
    title = f"Membrane traces · {display.layer_label(view.layer)}"
    if not sess.spiking:
        return _no_spikes_figure(sess, title)
    p = display.probe(sess, view.layer)
    chosen = display.traced_neurons(sess, view.layer, view.neurons)
    return viz.membrane_traces(p["v"], chosen, p["threshold"], title=title, spikes=p["spikes"],
                               reset=sess.pipe.config.reset, subtitle=_subtitle(sess, view.layer))


def _spike_change(effect: dict, what: str = "spikes per image") -> str:
    """'spikes per image: 12,345 at s = 1.0 → 11,020 at s = 1.050 (−10.7%)' between scale 1.0 and the scale shown."""
    a, b = effect["base_spikes"], effect["spikes"]
    pct = f" ({(b - a) / a:+.1%})".replace("-", "−") if a else ""
    return f"{what}: {a:,.0f} at s = 1.0 → {b:,.0f} at s = {effect['scale']:.3f}{pct}"


def rate_bars_figure(sess: Session, view: View):
    title = "Firing rate per layer"
    if not sess.spiking:
        return _no_spikes_figure(sess, title, PLOT_H)
    effect = display.threshold_effect(sess)
    rates = {display.layer_label(k): v for k, v in display.rates(sess).items()}
    base = None
    rec, pv = sess.current()
    if effect is None or effect["scale"] == 1.0:
        spikes = sum(display.spike_counts(sess, pv or rec).values())
        sub = f"{spikes:,.0f} spikes per image at s = {(pv or rec).scale:.3f} · {_step_tag(sess)}"
    else:
        base = {display.layer_label(k): v for k, v in effect["base_rates"].items()}
        sub = _spike_change(effect, "spikes/image")
    return viz.firing_rate_bars(rates, title=title, base_rates=base, name=f"s = {(pv or rec).scale:.3f}",
                                base_name="s = 1.0", highlight=display.layer_label(view.layer), horizontal=True,
                                subtitle=sub, height=PLOT_H)


def rate_course_figure(sess: Session, view: View):
    title = "Firing rate over the trajectory"
    if not sess.spiking:
        return _no_spikes_figure(sess, title)
    lines, steps = display.rate_course(sess, view.layer)
    if len(steps) < 2:
        return viz.empty_figure("take a few steps to see the course", title)
    selected = next((k for k in lines if k.endswith("(selected)")), None)
    return viz.firing_rate_course(lines, steps, title=title, highlight=selected, mark=sess.current()[0].timestep,
                                  xtitle="diffusion step t (generation runs left to right)")


def tsm_figures(pipe, layer: str | None, time_steps: int | None = None):
    """TSM heatmap (all layers) and curve (one layer) of the weights a run at ``time_steps`` uses."""
    weights = pipe.tsm_weights(time_steps if pipe.config.spiking else None)
    trained = pipe.config.time_steps
    named = {display.layer_label(k): v for k, v in weights.items()}
    heat = viz.tsm_heatmap(named, title="TSM weights of every layer", trained=trained)
    label = display.layer_label(layer or "")
    curve = viz.tsm_curve(weights.get(layer) if layer else None, label, title=f"TSM weights · {label}",
                          trained=trained)
    return heat, curve


def threshold_markdown(sess: Session) -> str:
    """The caption of the side-by-side view: what changed between scale 1.0 and the scale shown."""
    if not sess.spiking:
        return (f"**{sess.settings.checkpoint} is an ANN**: it has no thresholds, so threshold guidance does not "
                "apply (x̂₀ is the same at every scale).")
    effect = display.threshold_effect(sess)
    if effect is None:
        return ""
    if effect["scale"] == 1.0:
        return ("Move the **threshold slider**: this step is re-run at the new scale s and shown beside s = 1.0, "
                "with their difference (orange: brighter at s, blue: darker).")
    more = "fewer" if effect["spikes"] < effect["base_spikes"] else "more"
    return (f"**s = {effect['scale']:.3f} vs 1.0**, same x_t. {_spike_change(effect)}: {more} spikes (on average "
            f"s > 1 gives fewer). Mean |x̂₀ difference| = {effect['mean_abs_diff']:.3f}.")


def energy_markdown(sess: Session) -> str:
    e = display.energy(sess)
    part = f"{e['steps']} of {e['num_steps']} steps" if e["steps"] < e["num_steps"] else f"all {e['steps']} steps"
    if not e["spiking"]:
        return (f"**{sess.settings.checkpoint} is an ANN**: no spikes; every layer multiplies and accumulates "
                f"(4.6 pJ per MAC). Energy per image, {part}: **{e['energy_mj']:.4g} mJ**.")
    return (f"**Energy per image, this trajectory ({part}, T = {sess.settings.time_steps} spiking steps τ)**\n\n"
            f"Synaptic operations: **{e['sops']:.3g} SOPs** · SNN ≈ **{e['energy_mj']:.4g} mJ** · "
            f"ANN counterpart ≈ **{e['ann_mj']:.4g} mJ**\n\n"
            f"### SNN / ANN energy = {e['ratio']:.2f}  (the ANN needs {e['ann_factor']:.1f}× more)")


def energy_figure(sess: Session):
    e = display.energy(sess)
    return viz.energy_bars(e["energy_mj"], e["ann_mj"])


def timeline_update(sess: Session):
    """The timeline slider spans the recorded steps (a slider needs min < max: with one step it is 1..2, locked)."""
    n = sess.num_recorded
    return gr.Slider(minimum=1, maximum=max(n, 2), value=sess.view + 1, step=1, interactive=n > 1)


def _trio(sess: Session) -> dict:
    """x̂₀ at scale 1.0, at the scale shown and their difference, as pictures (the preview's when previewing)."""
    effect = display.threshold_effect(sess)
    if effect is None:                   # the scale-1.0 run is missing (a streamed update): leave them alone
        return {}
    diff = imaging.diff_to_rgb(effect["diff"], display.DIFF_DISPLAY_RANGE)
    return {"img_x0_base": grid_image(effect["base_x0"], SMALL_PX), "img_x0": grid_image(effect["x0"], SMALL_PX),
            "img_diff": grid_image(diff, SMALL_PX)}


# -------------------------------------------------------------------------------------- output layout
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
#: buttons that need the tab's session: disabled until the page load has created it
SKIP_VIEW = tuple(gr.skip() for _ in VIEW_KEYS)
ACTION_KEYS = ("step_btn", "step10_btn", "play_btn", "run_btn", "continue_btn", "compare_scale_btn",
               "compare_ann_btn", "export_btn")
#: ... of them, the ones that take steps forward: disabled once the trajectory is finished
FORWARD_KEYS = ("step_btn", "step10_btn", "play_btn", "run_btn")
#: what follows the session after every event that changes it: the buttons, and the controls a checkpoint allows
CONTROL_KEYS = ACTION_KEYS + ("threshold", "time_steps")
#: the TSM panel at the trajectory's spiking time steps T (after every new trajectory)
TSM_KEYS = ("tsm_heat", "tsm_curve", "tsm_note")
#: the side-by-side pictures: x̂₀ at scale 1.0, at the scale shown, and their difference (drawn together)
TRIO_KEYS = ("img_x0_base", "img_x0", "img_diff")
#: keys that show the viewed step at scale 1.0 beside the scale shown (``Session.ensure_base`` first)
BASE_KEYS = frozenset(TRIO_KEYS + ("raster", "rate_bars", "threshold_md", "info"))

#: what each output key but the TRIO_KEYS shows, from the session and the validated view (under its lock)
RENDERERS = {
    "state": lambda sess, view: sess,
    "status": lambda sess, view: status_markdown(sess),
    "timeline": lambda sess, view: timeline_update(sess),
    "img_xt": lambda sess, view: grid_image(display.view_images(sess)["x_t"]),
    "img_eps": lambda sess, view: grid_image(display.view_images(sess)["eps"], SMALL_PX),
    "filmstrip": lambda sess, view: filmstrip_image(sess),
    "raster": raster_figure,
    "membrane": membrane_figure,
    "traces": traces_figure,
    "rate_bars": rate_bars_figure,
    "rate_course": rate_course_figure,
    "energy_md": lambda sess, view: energy_markdown(sess),
    "energy_plot": lambda sess, view: energy_figure(sess),
    "threshold_md": lambda sess, view: threshold_markdown(sess),
    "info": lambda sess, view: display.info(sess),
    "tsm_curve": lambda sess, view: tsm_figures(sess.pipe, view.layer, sess.settings.time_steps)[1],
}


def as_dict(result, keys) -> dict:
    """A handler's output tuple as {key: value} (for tests and scripts)."""
    return dict(zip(keys, result))


def _owner(request, sess: Session) -> str:
    """Who a session belongs to in the pool: the browser tab's (or API client's) session hash."""
    return getattr(request, "session_hash", None) or f"local-{id(sess)}"


def _no_trajectory() -> ValueError:
    return ValueError("no trajectory yet: press “New trajectory” first (API: /new_trajectory)")


class OverBudget(ValueError):
    """A request would compute longer than one request may on this server."""


class Explorer:
    """The app's event handlers: each validates its arguments through sdm.explorer before anything changes, calls
    it, and formats what it returns. Everything per user comes in and goes out through ``state`` (a Session); the
    only thing shared is the registry of loaded, read-only pipelines."""

    def __init__(self, registry: ModelRegistry | None = None, pool: SessionPool | None = None,
                 step_budget_s: float = STEP_BUDGET_S, run_budget_s: float = RUN_BUDGET_S):
        self.registry = registry or ModelRegistry()
        self.pool = pool or SessionPool()
        self.step_budget_s = step_budget_s
        self.run_budget_s = run_budget_s

    def _use(self, state, request) -> Session:
        """The tab's session, with a trajectory (else a clear error), marked as just used in the pool."""
        if not isinstance(state, Session):
            raise _no_trajectory()
        state.require()
        self.pool.touch(_owner(request, state), state)
        return state


    # ------------------------------------------------------------------ rendering
    @staticmethod
    def render(sess: Session, view: View, keys=VIEW_KEYS) -> tuple:
        """The outputs named in ``keys`` for the session's current view (a consistent snapshot: another event of
        the same tab cannot change the session while it is read). Keys that compare with scale 1.0 get the viewed
        step at 1.0 first (one denoiser call when it ran at another scale, none otherwise)."""
        if sess.spiking and BASE_KEYS.intersection(keys):
            sess.ensure_base()
        with sess.lock:
            trio = _trio(sess) if set(TRIO_KEYS).intersection(keys) else {}
            return tuple(trio.get(k, gr.skip()) if k in TRIO_KEYS else RENDERERS[k](sess, view) for k in keys)

    @staticmethod
    def _light(sess: Session, what: str) -> tuple:
        """A cheap VIEW update while a run streams: images, status and timeline; the plots are left alone."""
        with sess.lock:
            imgs = display.view_images(sess)
            light = {"state": sess, "status": running_markdown(sess, what), "timeline": timeline_update(sess),
                     "img_xt": grid_image(imgs["x_t"]), "img_eps": grid_image(imgs["eps"], SMALL_PX),
                     "filmstrip": filmstrip_image(sess)}
        return tuple(light.get(k, gr.skip()) for k in VIEW_KEYS)

    @staticmethod
    def controls(state) -> tuple:
        """The controls that follow the session (CONTROL_KEYS), after every event that changes it: the buttons
        that need a trajectory are enabled, those that step forward are disabled once it is finished; on an ANN
        the threshold slider and the T control are disabled, and say why."""
        if not isinstance(state, Session) or not state.started:
            return tuple(gr.skip() for _ in CONTROL_KEYS)
        with state.lock:
            done, spiking, s = state.is_done, state.spiking, state.settings
            trained = state.pipe.config.time_steps
        buttons = tuple(gr.Button(interactive=not (done and k in FORWARD_KEYS)) for k in ACTION_KEYS)
        if spiking:
            return buttons + (gr.Slider(interactive=True, info=THRESHOLD_INFO),
                              gr.Radio(choices=time_step_radio(trained), value=s.time_steps, interactive=True,
                                       label=TIME_STEPS_LABEL))
        return buttons + (gr.Slider(interactive=False, info="off: an ANN has no thresholds to scale"),
                          gr.Radio(choices=[("none", 1)], value=1, interactive=False,
                                   label="Spiking steps T: none, an ANN does not spike"))

    @staticmethod
    def tsm_view(layer, state) -> tuple:
        """The TSM panel (TSM_KEYS) for the weights the trajectory's T uses (after a new trajectory)."""
        if not isinstance(state, Session) or not state.started:
            return tuple(gr.skip() for _ in TSM_KEYS)
        with state.lock:
            pipe, T = state.pipe, state.settings.time_steps
        layer = layer if layer in pipe.layer_names() else None
        return tsm_figures(pipe, layer, T) + (display.tsm_note(pipe, T),)

    # ------------------------------------------------------------------ checkpoint
    def model_info(self, checkpoint, layer=None) -> dict:
        """What the checkpoint-level views show: summary, layers, the chosen layer (``layer`` if it is one of the
        checkpoint's, else the one where threshold guidance shows best: ``display.default_layer``), TSM figures,
        notes. A listed checkpoint that cannot be loaded gives ``ok=False`` and its error as the summary; an
        unknown name raises ValueError."""
        checkpoint = self.registry.check_name(checkpoint)
        try:
            pipe = self.registry.get(checkpoint)
        except ValueError as e:
            msg = f"⚠ **{e}**"
            empty = viz.empty_figure("checkpoint unavailable", "TSM weights")
            return dict(ok=False, summary=msg, layers=None, layer=None, tsm_heat=empty, tsm_curve=empty,
                        tsm_note=msg, ann_note=msg)
        layers = pipe.layer_names()
        layer = layer if layer in layers else display.default_layer(pipe)
        heat, curve = tsm_figures(pipe, layer)
        return dict(ok=True, summary=f"**{checkpoint}**: {pipe.summary()}", layers=layers, layer=layer,
                    tsm_heat=heat, tsm_curve=curve, tsm_note=display.tsm_note(pipe),
                    ann_note=display.ann_note(checkpoint, pipe, self.registry.ann_counterpart(checkpoint)))

    def trained_time_steps(self, checkpoint):
        """The T control set to a checkpoint's own T, its choices labelled for it (a new checkpoint starts at the
        T it was trained for)."""
        T = self.registry.get(checkpoint).config.time_steps
        return gr.Radio(choices=time_step_radio(T), value=T)

    def checkpoint_info(self, checkpoint, layer=None) -> tuple:
        """Model card summary, the layer list and the TSM plots of a checkpoint.

        Returns (summary markdown, layer dropdown, TSM heatmap, TSM curve, TSM note, ANN counterpart note).
        A checkpoint that cannot be loaded gives its error in the summary (the others keep working).
        """
        return self._model_outputs(self.model_info(checkpoint, layer))

    @staticmethod
    def _model_outputs(m: dict) -> tuple:
        dropdown = gr.Dropdown(choices=layer_choices(m["layers"]), value=m["layer"]) if m["ok"] else gr.skip()
        return (m["summary"], dropdown, m["tsm_heat"], m["tsm_curve"], m["tsm_note"], m["ann_note"])

    def on_load(self, checkpoint, seed, sampler, num_steps, threshold_scale, grid_size, layer, raster_mode,
                neurons, state, time_steps=None):
        """Page load: refresh the checkpoint list and start this tab's own session (``controls`` then enables the
        buttons that need it). Returns (checkpoint dropdown, MODEL outputs, VIEW outputs)."""
        names = self.registry.names()
        if checkpoint not in names:
            checkpoint = self.registry.default_name()
        dropdown = gr.Dropdown(choices=names, value=checkpoint)
        skip_view = tuple(gr.skip() for _ in VIEW_KEYS)
        if checkpoint is None:
            return (dropdown, NO_CHECKPOINTS) + tuple(gr.skip() for _ in MODEL_KEYS[1:]) + skip_view
        m = self.model_info(checkpoint, layer)
        fallback = self.registry.default_name()
        if not m["ok"] and fallback not in (None, checkpoint):      # e.g. a checkpoint broken since startup
            checkpoint, m = fallback, self.model_info(fallback, layer)
            dropdown = gr.Dropdown(choices=names, value=checkpoint)
        if not m["ok"]:
            return (dropdown,) + self._model_outputs(m) + skip_view
        view = self.new_trajectory(checkpoint, seed, sampler, num_steps, threshold_scale, grid_size, m["layer"],
                                   raster_mode, neurons, state, time_steps)
        return (dropdown,) + self._model_outputs(m) + view

    # ------------------------------------------------------------------ trajectory
    def new_trajectory(self, checkpoint, seed, sampler, num_steps, threshold_scale, grid_size, layer=None,
                       raster_mode="step", neurons=None, state=None, time_steps=None,
                       request: gr.Request = None) -> tuple:
        """Draw x_T from the seed and take the first step, at ``time_steps`` spiking steps per denoiser call (None:
        the checkpoint's trained T). Returns the VIEW outputs."""
        pipe = self.registry.get(checkpoint)
        sess = state if isinstance(state, Session) else Session()
        view = sess.view_for(pipe.layer_names(), checkpoint, layer, raster_mode, neurons)
        sess.start(pipe, checkpoint, seed=seed, sampler=sampler, num_steps=num_steps, grid=grid_size,
                   threshold_scale=threshold_scale, time_steps=time_steps)
        self.pool.touch(_owner(request, sess), sess)
        return self.render(sess, view)

    def step(self, n_steps, threshold_scale, layer, raster_mode, neurons, state, request: gr.Request = None):
        """Take ``n_steps`` steps (1 for Step, 10 for Step ×10) with the slider's threshold scale, for at most
        ``step_budget_s`` (then it says how far it got). Yields every ``YIELD_EVERY_S`` (a cancelled request stops
        there), the images every ``STREAM_EVERY_S``, and the whole view at the end."""
        sess = self._use(state, request)
        view = sess.check_view(layer, raster_mode, neurons)
        n = check_step_count(n_steps)
        check_scale(threshold_scale)
        yield from self._advance(sess, n, threshold_scale, view, "Stepping", self.step_budget_s, request)

    def set_threshold(self, threshold_scale, layer, raster_mode, neurons, state, request: gr.Request = None) -> tuple:
        """Re-run the denoiser of the viewed step with this threshold scale: x̂₀, ε̂ and every neuron plot
        update, beside the step at scale 1.0; the trajectory itself does not change. Returns the THRESHOLD
        outputs."""
        sess = self._use(state, request)
        view = sess.check_view(layer, raster_mode, neurons)
        sess.preview(threshold_scale)
        return self.render(sess, view, THRESHOLD_KEYS)

    def scrub(self, step, layer, raster_mode, neurons, state, request: gr.Request = None) -> tuple:
        """Show recorded step ``step`` (1-based). Returns the SCRUB outputs (VIEW without the timeline)."""
        sess = self._use(state, request)
        view = sess.check_view(layer, raster_mode, neurons)
        sess.scrub(step)
        return self.render(sess, view, SCRUB_KEYS)

    def _advance(self, sess: Session, n: int, threshold_scale, view: View, what: str, budget_s: float, request,
                 generation: int | None = None):
        """Up to ``n`` steps, one at a time, for at most ``budget_s``: yields a no-change update every
        ``YIELD_EVERY_S`` (where a cancelled request stops), the images every ``STREAM_EVERY_S``, and the view."""
        generation = sess.generation if generation is None else generation
        start = last = last_yield = time.monotonic()
        done = 0
        try:
            while done < n:
                sess.advance(1, threshold_scale, generation=generation)
                done += 1
                if sess.is_done or done == n:
                    break
                now = time.monotonic()
                if now - start > budget_s:
                    gr.Info(f"Paused after {done} of {n} steps: one request computes for at most {budget_s:.0f} s on "
                            "this shared server. Press the button again to go on.")
                    break
                if now - last > STREAM_EVERY_S:
                    last = last_yield = now
                    yield self._light(sess, what)
                elif now - last_yield > YIELD_EVERY_S:
                    last_yield = now
                    yield SKIP_VIEW
        except Superseded:
            pass    # restarted by another event of this tab: show what is there now
        self.pool.touch(_owner(request, sess), sess)
        yield self.render(sess, view)

    def run_to_end(self, threshold_scale, layer, raster_mode, neurons, state, request: gr.Request = None):
        """Step to the end with the slider's threshold scale (streams the images while it runs)."""
        sess = self._use(state, request)
        view = sess.check_view(layer, raster_mode, neurons)
        check_scale(threshold_scale)
        left = sess.settings.num_steps - sess.num_recorded
        if left == 0:
            yield self.render(sess, view)
            return
        yield from self._advance(sess, left, threshold_scale, view, "Running to the end", self.run_budget_s, request)

    def continue_from_here(self, threshold_scale, layer, raster_mode, neurons, state, request: gr.Request = None):
        """Re-run the viewed step with the slider's scale and carry on to the end from there."""
        sess = self._use(state, request)
        view = sess.check_view(layer, raster_mode, neurons)
        generation = sess.continue_from_view(threshold_scale)
        left = sess.settings.num_steps - sess.num_recorded
        if left == 0:
            yield self.render(sess, view)
            return
        yield from self._advance(sess, left, threshold_scale, view, "Continuing", self.run_budget_s, request,
                                 generation)

    def select_layer(self, layer, raster_mode, neurons, state, request: gr.Request = None) -> tuple:
        """Redraw the neuron plots for another layer / raster mode / neuron selection (LAYER outputs)."""
        sess = self._use(state, request)
        return self.render(sess, sess.check_view(layer, raster_mode, neurons), LAYER_KEYS)

    # ------------------------------------------------------------------ play
    def toggle_play(self, playing, state, request: gr.Request = None):
        sess = self._use(state, request)
        playing = not bool(playing)
        if playing and sess.is_done:
            gr.Info("The trajectory is finished: press New trajectory to play another one.")
            playing = False
        return (gr.Timer(active=playing), gr.Button(value="■ Pause" if playing else "▶ Play"), playing)

    def play_tick(self, threshold_scale, layer, raster_mode, neurons, playing, state):
        sess = state if isinstance(state, Session) and state.started else None
        stop = (gr.Timer(active=False), gr.Button(value="▶ Play"), False)
        if not playing or sess is None:
            return tuple(gr.skip() for _ in VIEW_KEYS) + stop
        view = sess.check_view(layer, raster_mode, neurons)
        if not sess.is_done:
            sess.advance(max(1, math.ceil(sess.settings.num_steps / PLAY_TICKS)), threshold_scale)
        out = self.render(sess, view)
        return out + (stop if sess.is_done else (gr.skip(), gr.skip(), True))

    # ------------------------------------------------------------------ presets
    def lesson(self, name) -> tuple:
        """The settings of a lesson preset (by its label): checkpoint, seed, sampler, steps, threshold scale, grid
        size, spiking time steps T."""
        presets = dict(lesson_presets(self.registry, self.registry.default_name()))
        if name not in presets:
            raise ValueError(f"lesson preset {shown(name)} is not one of: {', '.join(presets)}")
        values = list(presets[name])
        if values[-1] is None:
            values[-1] = self.registry.get(values[0]).config.time_steps
        return tuple(values)

    # ------------------------------------------------------------------ compare / export
    def _ticks(self, steps, keys, progress):
        """Drive a ``sdm.explorer.compare.*_steps`` generator: progress and a no-change update every
        ``YIELD_EVERY_S`` (where a cancelled request stops), and the per-request budget. Returns its result."""
        start = last_yield = time.monotonic()
        skip = tuple(gr.skip() for _ in keys)
        while True:
            try:
                frac, desc = next(steps)
            except StopIteration as stop:
                return stop.value
            now = time.monotonic()
            if now - start > self.run_budget_s:
                raise OverBudget(f"this comparison takes longer than one request may compute on this shared server "
                                 f"({self.run_budget_s:.0f} s): use fewer steps or a smaller grid")
            if now - last_yield > YIELD_EVERY_S:
                last_yield = now
                progress(frac, desc=desc)
                yield skip

    def compare_scales(self, threshold_scale, state, request: gr.Request = None, progress=gr.Progress()):
        """Final images at threshold scale 1.0 and at the slider's scale, same seed and noise, each labelled with
        its scale (``gr.update`` of value and label)."""
        sess = self._use(state, request)
        r = yield from self._ticks(compare.compare_scales_steps(sess, threshold_scale), COMPARE_SCALE_KEYS, progress)
        eb, es = r["base_energy"], r["scaled_energy"]
        s = sess.settings
        md = (f"Same seed ({s.seed}) and noise, {s.num_steps} {s.sampler.upper()} steps, T = {s.time_steps}. "
              f"Mean |difference| = {r['mean_abs_diff']:.3f} (pixel range 0-2).\n\nEnergy per image: scale 1.000 → "
              f"{eb['energy_mj']:.4g} mJ ({eb['sops']:.3g} SOPs); scale {r['scale']:.3f} → {es['energy_mj']:.4g} mJ "
              f"({es['sops']:.3g} SOPs).")
        yield (gr.update(value=grid_image(imaging.to_display(r["base"])), label="threshold scale s = 1.000"),
               gr.update(value=grid_image(imaging.to_display(r["scaled"])), label=f"threshold scale s = {r['scale']:.3f}"),
               md)

    def compare_ann(self, threshold_scale, state, request: gr.Request = None, progress=gr.Progress()):
        """The SNN (at the slider's scale) and its ANN counterpart, same seed and noise, each labelled."""
        sess = self._use(state, request)
        r = yield from self._ticks(compare.compare_ann_steps(sess, self.registry, threshold_scale), COMPARE_ANN_KEYS,
                                   progress)
        es, ea = r["snn_energy"], r["ann_energy"]
        md = (f"**{sess.settings.checkpoint}** (threshold scale {r['scale']:.3f}, T = {sess.settings.time_steps}) "
              f"vs **{r['ann_name']}**, seed {sess.settings.seed}, same x_T and noise.\n\nEnergy per image: SNN "
              f"{es['energy_mj']:.4g} mJ ({es['sops']:.3g} SOPs) · ANN {ea['energy_mj']:.4g} mJ → SNN / ANN = "
              f"**{r['energy_ratio']:.2f}**")
        yield (gr.update(value=grid_image(imaging.to_display(r["snn"])),
                         label=f"SNN: {sess.settings.checkpoint} (s = {r['scale']:.3f})"),
               gr.update(value=grid_image(imaging.to_display(r["ann"])), label=f"ANN: {r['ann_name']}"), md)

    def export(self, state, request: gr.Request = None, progress=gr.Progress()) -> tuple:
        """Write the trajectory as GIF and MP4, the current sample as PNG and the recording as NPZ (at most 200
        frames: bounded work)."""
        sess = self._use(state, request)
        paths = trajectory_export.export(sess, progress=lambda f, d: progress(f, desc=d))
        s = sess.settings
        md = (f"Exported {sess.num_recorded} of {s.num_steps} steps of {s.checkpoint} (seed {s.seed}). "
              "The NPZ holds x_t / x̂₀ / ε̂ of every step, the firing rates of every layer, and the spikes and "
              f"membrane potentials of {sess.max_neurons} neurons per layer of image 1 "
              "(read it with `sdm.export.load_npz`).")
        return (paths["gif"], paths["mp4"], paths["png"], paths["npz"], md)


# ----------------------------------------------------------------------------------------- teaching
TITLE = "**SDM Explorer** · spiking diffusion"

INTRO = """A diffusion model turns noise into an image one **diffusion step t** at a time (t = 999 … 0). Here the
denoiser is a **spiking neural network**: its neurons talk in binary spikes, over **T spiking steps τ** within each
diffusion step. Press **Step** and watch."""

THRESHOLD_INFO = "1 = off · < 1: more spikes · > 1: fewer"
TIME_STEPS_LABEL = "Spiking steps T per denoiser call"

TEACH_IMAGES = """**x_t** is the noisy image the denoiser sees at diffusion step t; after the last step it is the
generated image. **x̂₀** is the denoiser's current guess of the clean image, x̂₀ = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t, and
**ε̂** the noise it thinks is in x_t (gray = 0). The filmstrip shows x_t (top) and x̂₀ (bottom) along the way."""

TEACH_THRESHOLD = """**Threshold guidance** multiplies every neuron's firing threshold by the scale s at sampling
time (no retraining). s < 1: neurons fire more easily; s > 1: less easily, so fewer spikes on average (a layer can
still go the other way). Move the slider to re-run the viewed step: x̂₀ at s appears beside x̂₀ at 1.0; **Continue
from here** carries the trajectory on with the new scale. **T** sets how many spiking steps τ each denoiser call
runs: more steps, more spikes and energy, usually a cleaner x̂₀."""

TEACH_RASTER = """A **spike raster**: one row per recorded neuron, one tick per spike, over the T spiking steps τ of
one denoiser call (or of every diffusion step, side by side, in *whole trajectory* mode). Only a random subset of
each layer's neurons is recorded: the label says how many."""

TEACH_MEMBRANE = """The **membrane potential** v of each neuron collects input current and leaks; when v crosses the
threshold θ·s (the bold tick on the colour bar) the neuron spikes and v resets to 0. In the traces, stars mark the
spikes and the line drops to the reset value."""

TEACH_RATE = """**Firing rate**: the fraction of a layer's neurons that spike per spiking step τ. Fewer spikes means
fewer synaptic operations, which means less energy. The bars beside the image compare the slider's scale with 1.0
(hollow bars)."""

TEACH_TSM = """**TSM** (temporal-wise spiking mechanism) gives every layer one learned weight per spiking step τ
that scales its input current, so the network can treat early and late steps differently (Cao et al. 2024,
Eq. 16). Run at a larger T than it was trained for, the steps beyond repeat the last learned weight."""

TEACH_ENERGY = """An SNN layer only **accumulates** when a spike arrives (≈ 0.9 pJ per synaptic operation, SOP);
an ANN **multiplies and accumulates** every input (≈ 4.6 pJ per MAC, 45 nm figures). The SOPs are counted from the
actual spikes of this trajectory, at its T."""

ARCHITECTURE = """
**The spiking UNet** predicts the noise ε̂ in x_t:

1. **Direct encoding**: the first convolution reads the analog pixels of x_t; its output is the same input
   current at each of the T spiking steps τ.
2. **Spiking layers**: every block is *LIF neuron → convolution → batch norm*. A leaky integrate-and-fire neuron
   keeps a membrane potential U[τ] = β·U[τ−1] + I[τ] and emits a spike when U crosses the threshold θ (then
   resets).
   Only spikes (0/1) travel between layers, so convolutions become additions.
3. **Down / mid / up path** with skip connections, as in the DDPM UNet; the diffusion step t enters every block
   as an extra input current (a small time-embedding MLP).
4. **Readout**: the output layer's spikes are averaged over the T spiking steps and a last convolution gives ε̂.
5. **TSM** (Eq. 16) scales the input current of each layer at each spiking step τ by a learned weight p[τ].
6. **Threshold guidance** (Eq. 18) multiplies every threshold θ by s at sampling time only.

**Sampling**: DDIM (deterministic, few steps) or DDPM (stochastic, adds fresh noise each step) turns ε̂ into the
next, less noisy x. Every random number comes from the seed, so the same seed gives the same noise: two runs that
differ only in the threshold scale are directly comparable.

**Lesson plan (10 minutes)**, in the *Classroom* view: ① Noise to image: New trajectory, Step a few times, then Run
to end. ② Move the threshold slider: x̂₀ at s beside x̂₀ at 1.0, and the spikes change. ③ T = 1, 2, 4, 8 spiking
steps: quality, spikes and energy. ④ DDIM 10, 20, 50, 100 steps. Then, in the full explorer: ⑤ scrub back and
watch x̂₀ sharpen; ⑥ membrane potentials of one layer; ⑦ energy against the ANN; ⑧ a model without TSM, and the
ANN.
"""


def lesson_presets(registry: ModelRegistry, default: str | None) -> list[tuple[str, list]]:
    """(label, [checkpoint, seed, sampler, steps, threshold scale, grid, T]) of each lesson preset; T None: the
    checkpoint's trained T."""
    if default is None:
        return []
    names = registry.names()
    rows = [
        ("① Noise → image: DDIM, 50 steps", [default, 0, "ddim", 50, 1.0, 1, None]),
        ("② Threshold guidance: s = 0.95, more spikes", [default, 0, "ddim", 50, 0.95, 1, None]),
        ("③ Threshold guidance: s = 1.05, fewer spikes", [default, 0, "ddim", 50, 1.05, 1, None]),
        ("④ More spiking steps: T = 8", [default, 0, "ddim", 50, 1.0, 1, 8]),
        ("⑤ One spiking step: T = 1", [default, 0, "ddim", 50, 1.0, 1, 1]),
        ("⑥ Sixteen images at once", [default, 1, "ddim", 50, 1.0, 16, None]),
        ("⑦ Stochastic sampling: DDPM, 200 steps", [default, 0, "ddpm", 200, 1.0, 1, None]),
    ]
    prefix = default.split("-", 1)[0]
    vanilla = next((n for n in names if n.startswith(prefix) and n.endswith("vanilla")), None)
    if vanilla:
        rows.append(("⑧ The same model without TSM", [vanilla, 0, "ddim", 50, 1.0, 1, None]))
    try:
        ann = registry.ann_counterpart(default)
    except ValueError:
        ann = None
    if ann:
        rows.append(("⑨ The ANN counterpart (no spikes)", [ann, 0, "ddim", 50, 1.0, 1, None]))
    return rows


def layer_choices(layers: list[str] | None) -> list[tuple[str, str]]:
    """The layer dropdown: friendly names shown, code names as values (the API takes code names)."""
    return [(display.layer_label(n), n) for n in layers or []]


def time_step_radio(trained: int) -> list[tuple[str, int]]:
    """The T control: 1, 2, 4, 8 and the checkpoint's own T, which says "trained"."""
    return [(f"{T} (trained)" if T == trained else str(T), T) for T in time_step_choices(trained)]


# ------------------------------------------------------------------------------------------- layout
#: the view toggle: CSS hides everything marked "full-only" while <body> has the class "classroom"
MODE_JS = "(mode) => { document.body.classList.toggle('classroom', mode === 'classroom'); return mode; }"
#: ?mode=classroom opens the classroom view
LOAD_MODE_JS = ("() => new URLSearchParams(window.location.search).get('mode') === 'classroom' "
                "? 'classroom' : 'full'")


def settings_validator(checkpoint, seed, sampler, num_steps, threshold_scale, grid_size, layer, raster_mode,
                       neurons, state, time_steps):
    """The UI's check of a new trajectory's settings before it runs: a bad seed or number of steps gets one
    message at its own box (gr.validate) instead of an error on every panel. The API endpoint does not use it:
    its errors stay errors (sdm.explorer.validation says the same thing there)."""
    def ok(check, value):
        try:
            check(value)
            return gr.validate(True, "")
        except ValueError as e:
            msg = str(e)
            return gr.validate(False, msg[:1].upper() + msg[1:])
    checks = {1: check_seed, 3: check_num_steps}
    args = [checkpoint, seed, sampler, num_steps, threshold_scale, grid_size, layer, raster_mode, neurons, state,
            time_steps]
    return [ok(checks[i], a) if i in checks else gr.validate(True, "") for i, a in enumerate(args)]


def build_demo(explorer: Explorer | None = None) -> gr.Blocks:
    """The Blocks app. Loads (and warms up) the default checkpoint once, at build time."""
    ex = explorer or Explorer()
    reg = ex.registry
    default = reg.default_name()
    names = reg.names()
    # The default view, computed once here: it is the page's content before the tab's own session exists
    # (the first image shows at once), and it warms up the model and plotly for the first user.
    first: dict = {}
    model_d: dict = {}
    trained = DEFAULT_T
    if default is not None:
        model_d = ex.model_info(default)
        if model_d["ok"]:
            trained = reg.get(default).config.time_steps
            warm = Session()
            try:
                first = as_dict(ex.new_trajectory(default, DEFAULTS["seed"], DEFAULTS["sampler"],
                                                  DEFAULTS["num_steps"], DEFAULTS["threshold_scale"],
                                                  DEFAULTS["grid_size"], model_d["layer"], "step", [], warm),
                                VIEW_KEYS)
            except ValueError as e:
                log.warning("default checkpoint %s: %s", default, e)
            ex.pool.release(_owner(None, warm))
            warm.close()
            first.pop("state", None)
    presets = lesson_presets(reg, default)

    with gr.Blocks(title="SDM Explorer · Spiking Diffusion Models", delete_cache=(3600, 7200)) as demo:
        state = gr.State(None, time_to_live=STATE_TTL_S, delete_callback=_free_session)
        playing = gr.State(False)
        timer = gr.Timer(PLAY_INTERVAL_S, active=False)
        n_one = RawNumber(value=1, visible=False, label="steps per click", elem_id="n-steps")
        n_ten = RawNumber(value=10, visible=False, label="steps per click (x10)", elem_id="n-steps-10")
        img_kw = dict(format="png", interactive=False, elem_classes="pixelated", buttons=["download", "fullscreen"])
        small_kw = dict(img_kw, buttons=["fullscreen"])

        # ------------------------------------------------------------------------ header: presets and the view
        with gr.Row(equal_height=True, elem_id="header"):
            gr.Markdown(TITLE, elem_id="title")
            gr.Markdown("Lesson presets:", elem_id="lesson-label")
            lesson = gr.Dropdown(choices=[label for label, _ in presets], value=None, label="Lesson presets",
                                 show_label=False, container=False, elem_id="lesson", interactive=bool(presets),
                                 scale=2, min_width=300)
            mode = gr.Radio([("Classroom", "classroom"), ("Full explorer", "full")], value="full", label="View",
                            show_label=False, container=False, elem_id="mode", scale=0, min_width=300)
        gr.Markdown(INTRO, elem_id="intro", elem_classes="full-only")

        # ------------------------------------------------------------------------ one screen: controls, image, plots
        with gr.Row(equal_height=False, elem_id="main"):
            with gr.Column(scale=0, min_width=CONTROLS_PX, elem_id="controls"):
                checkpoint = gr.Dropdown(choices=names, value=default, label="Checkpoint", allow_custom_value=True,
                                         elem_id="checkpoint")
                summary = gr.Markdown(model_d.get("summary", NO_CHECKPOINTS), label="Checkpoint summary",
                                      elem_id="summary", elem_classes="full-only")
                new_btn = gr.Button("New trajectory", variant="primary", elem_id="btn-new", size="md")
                with gr.Row(elem_classes="buttons"):
                    step_btn = gr.Button("Step", elem_id="btn-step", interactive=False, min_width=60, size="md")
                    step10_btn = gr.Button("Step ×10", elem_id="btn-step10", interactive=False, min_width=60,
                                           size="md")
                with gr.Row(elem_classes="buttons"):
                    play_btn = gr.Button("▶ Play", elem_id="btn-play", interactive=False, min_width=60, size="md")
                    run_btn = gr.Button("Run to end", elem_id="btn-run", interactive=False, min_width=60, size="md")
                continue_btn = gr.Button("Continue from here", elem_id="btn-continue", interactive=False,
                                         elem_classes="full-only", size="md")
                threshold = RawSlider(SCALE_MIN, SCALE_MAX, value=DEFAULTS["threshold_scale"], step=SCALE_STEP,
                                      label="Threshold scale s", info=THRESHOLD_INFO, elem_id="threshold")
                time_steps = RawRadio(time_step_radio(trained), value=trained, label=TIME_STEPS_LABEL,
                                      elem_id="time-steps")
                with gr.Row(elem_id="step-presets", equal_height=True):
                    gr.Markdown("DDIM steps", elem_id="step-presets-label")
                    preset_btns = [gr.Button(f"{n}", size="sm", min_width=36, elem_id=f"btn-steps-{n}")
                                   for n in STEP_PRESETS]
                with gr.Group(elem_classes="full-only"):
                    with gr.Row():
                        seed = RawNumber(value=DEFAULTS["seed"], label="Seed", minimum=0, maximum=MAX_SEED,
                                         elem_id="seed", min_width=100)
                        num_steps = RawNumber(value=DEFAULTS["num_steps"], label="Steps", minimum=1,
                                              maximum=MAX_STEPS, elem_id="num-steps", min_width=100)
                    sampler = RawRadio([("DDIM", "ddim"), ("DDPM", "ddpm")], value=DEFAULTS["sampler"],
                                       label="Sampler", elem_id="sampler")
                    grid_size = RawRadio([("1 image", 1), ("4", 4), ("16", 16)], value=DEFAULTS["grid_size"],
                                         label="Grid size", elem_id="grid-size")
                gr.Markdown(TEACH_THRESHOLD, elem_classes=["teach", "full-only"])
            with gr.Column(scale=0, min_width=IMAGES_PX, elem_id="images"):
                status = gr.Markdown(first.get("status", "Loading…"), label="Status", elem_id="status")
                img_xt = gr.Image(first.get("img_xt"), label="x_t: the sample", elem_id="img-xt", height=IMAGE_PX,
                                  **img_kw)
                with gr.Row(elem_id="trio", equal_height=True):
                    img_x0_base = gr.Image(first.get("img_x0_base"), label="x̂₀ at 1.0", elem_id="img-x0-base",
                                           height=SMALL_PX, min_width=SMALL_PX, **small_kw)
                    img_x0 = gr.Image(first.get("img_x0"), label="x̂₀ at s", elem_id="img-x0", height=SMALL_PX,
                                      min_width=SMALL_PX, **small_kw)
                    img_diff = gr.Image(first.get("img_diff"), label="s − 1.0", elem_id="img-diff",
                                        height=SMALL_PX, min_width=SMALL_PX, **small_kw)
                threshold_md = gr.Markdown(first.get("threshold_md", ""), label="Threshold guidance",
                                           elem_id="threshold-text")
            with gr.Column(scale=1, min_width=PLOTS_MIN_PX, elem_id="plots"):
                raster = gr.Plot(first.get("raster"), label="Spike raster", elem_id="plot-raster", show_label=False)
                rate_bars = gr.Plot(first.get("rate_bars"), label="Firing rate per layer", elem_id="plot-rate-bars",
                                    show_label=False)

        # ------------------------------------------------------------------------ the full explorer below
        with gr.Column(elem_classes="full-only", elem_id="explorer"):
            timeline = RawSlider(1, 2, value=1, step=1, interactive=False, elem_id="timeline",
                                 label="Timeline: scrub back to any recorded step")
            with gr.Row(equal_height=False):
                with gr.Column(scale=0, min_width=2 * SMALL_PX):
                    img_eps = gr.Image(first.get("img_eps"), label="ε̂: the noise it predicts", elem_id="img-eps",
                                       height=2 * SMALL_PX, **img_kw)
                with gr.Column(scale=3):
                    filmstrip = gr.Image(first.get("filmstrip"), elem_id="filmstrip", height=250,
                                         label="Filmstrip: x_t (top) and x̂₀ (bottom) along the trajectory", **img_kw)
                    gr.Markdown(TEACH_IMAGES, elem_classes="teach")

            gr.Markdown("## Inside the spiking network")
            with gr.Row():
                layer = gr.Dropdown(choices=layer_choices(model_d.get("layers")), value=model_d.get("layer"),
                                    label="Layer (spiking layers in forward order)", allow_custom_value=True,
                                    elem_id="layer", scale=2)
                raster_mode = RawRadio(RASTER_MODES, value="step", label="Spike raster shows",
                                       elem_id="raster-mode", scale=2)
                neurons = gr.Dropdown(choices=list(range(MAX_NEURONS)), value=[], multiselect=True, max_choices=8,
                                      allow_custom_value=True,
                                      label="Neurons to trace (empty: 4 picked from most to least active)",
                                      elem_id="neurons", scale=2)
            gr.Markdown(TEACH_RASTER, elem_classes="teach")
            with gr.Row(equal_height=False):
                membrane = gr.Plot(first.get("membrane"), label="Membrane potential", elem_id="plot-membrane")
                traces = gr.Plot(first.get("traces"), label="Membrane traces", elem_id="plot-traces")
            gr.Markdown(TEACH_MEMBRANE, elem_classes="teach")
            with gr.Tabs(elem_id="tabs"):
                with gr.Tab("Firing rate", elem_id="tab-rates"):
                    rate_course = gr.Plot(first.get("rate_course"), label="Firing rate over the trajectory",
                                          elem_id="plot-rate-course")
                    gr.Markdown(TEACH_RATE, elem_classes="teach")
                with gr.Tab("TSM", elem_id="tab-tsm"):
                    tsm_note_md = gr.Markdown(model_d.get("tsm_note", ""), label="TSM note", elem_id="tsm-note")
                    with gr.Row(equal_height=False):
                        tsm_heat = gr.Plot(model_d.get("tsm_heat"), label="TSM weights (all layers)",
                                           elem_id="plot-tsm")
                        tsm_curve = gr.Plot(model_d.get("tsm_curve"), label="TSM weights (selected layer)",
                                            elem_id="plot-tsm-curve")
                    gr.Markdown(TEACH_TSM, elem_classes="teach")
                with gr.Tab("Energy", elem_id="tab-energy"):
                    with gr.Row(equal_height=False):
                        with gr.Column():
                            energy_md = gr.Markdown(first.get("energy_md", ""), label="Energy summary",
                                                    elem_id="energy-text")
                            gr.Markdown(TEACH_ENERGY, elem_classes="teach")
                        energy_plot = gr.Plot(first.get("energy_plot"), label="Energy per image",
                                              elem_id="plot-energy")
                with gr.Tab("Compare", elem_id="tab-compare"):
                    gr.Markdown("**Threshold guidance**: the final image at scale 1.0 and at the slider's scale, "
                                "from the same seed and noise.")
                    compare_scale_btn = gr.Button("Compare scale 1.0 with the slider's scale",
                                                  elem_id="btn-compare-scale", interactive=False)
                    with gr.Row():
                        img_scale_base = gr.Image(label="threshold scale s = 1.000", elem_id="img-scale-base",
                                                  **img_kw)
                        img_scale_s = gr.Image(label="threshold scale s (slider)", elem_id="img-scale-s", **img_kw)
                    compare_scale_md = gr.Markdown(label="Scale comparison", elem_id="compare-scale-text")
                    gr.Markdown("**SNN vs ANN**: the spiking model and its ANN counterpart (same UNet with SiLU), "
                                "from the same seed and noise.")
                    ann_note = gr.Markdown(model_d.get("ann_note", ""), label="ANN counterpart", elem_id="ann-note")
                    compare_ann_btn = gr.Button("Compare with the ANN counterpart", elem_id="btn-compare-ann",
                                                interactive=False)
                    with gr.Row():
                        img_snn = gr.Image(label="SNN", elem_id="img-snn", **img_kw)
                        img_ann = gr.Image(label="ANN counterpart", elem_id="img-ann", **img_kw)
                    compare_ann_md = gr.Markdown(label="SNN vs ANN", elem_id="compare-ann-text")
                with gr.Tab("Export", elem_id="tab-export"):
                    export_btn = gr.Button("Export the trajectory (GIF, MP4, PNG, NPZ)", elem_id="btn-export",
                                           interactive=False)
                    with gr.Row():
                        file_gif = gr.File(label="Trajectory (GIF)", elem_id="file-gif")
                        file_mp4 = gr.File(label="Trajectory (MP4)", elem_id="file-mp4")
                        file_png = gr.File(label="Final image (PNG)", elem_id="file-png")
                        file_npz = gr.File(label="Spikes and potentials (NPZ)", elem_id="file-npz")
                    export_md = gr.Markdown(label="Export summary", elem_id="export-text")
                with gr.Tab("Session data (JSON)", elem_id="tab-info"):
                    info = gr.JSON(first.get("info"), label="This session", elem_id="info")

            with gr.Accordion("How it works: the spiking UNet, TSM, threshold guidance, and a lesson plan",
                              open=False, elem_id="overview"):
                gr.Markdown(ARCHITECTURE)

        # -------------------------------------------------------------------- wiring
        comp = dict(state=state, status=status, timeline=timeline, img_xt=img_xt, img_x0=img_x0, img_eps=img_eps,
                    filmstrip=filmstrip, raster=raster, membrane=membrane, traces=traces, rate_bars=rate_bars,
                    rate_course=rate_course, energy_md=energy_md, energy_plot=energy_plot, info=info,
                    img_x0_base=img_x0_base, img_diff=img_diff, threshold_md=threshold_md,
                    summary=summary, layer=layer, tsm_heat=tsm_heat, tsm_curve=tsm_curve, tsm_note=tsm_note_md,
                    ann_note=ann_note, img_scale_base=img_scale_base, img_scale_s=img_scale_s,
                    compare_scale_md=compare_scale_md, img_snn=img_snn, img_ann=img_ann, compare_ann_md=compare_ann_md,
                    file_gif=file_gif, file_mp4=file_mp4, file_png=file_png, file_npz=file_npz, export_md=export_md,
                    timer=timer, play_btn=play_btn, playing=playing, step_btn=step_btn, step10_btn=step10_btn,
                    run_btn=run_btn, continue_btn=continue_btn, compare_scale_btn=compare_scale_btn,
                    compare_ann_btn=compare_ann_btn, export_btn=export_btn, threshold=threshold,
                    time_steps=time_steps)

        def outs(keys):
            return [comp[k] for k in keys]

        settings_in = [checkpoint, seed, sampler, num_steps, threshold, grid_size]
        view_in = [layer, raster_mode, neurons]
        new_in = settings_in + view_in + [state, time_steps]
        interactive = dict(concurrency_id="interactive", concurrency_limit=INTERACTIVE_LIMIT)
        heavy = dict(concurrency_id="heavy", concurrency_limit=HEAVY_LIMIT)
        # errors of the view events are shown once, on the status line, not on every panel
        view_kw = dict(show_progress="minimal", show_progress_on=[status])

        def follow(dep, new: bool = False):
            """After an event that changes the session: the controls follow it (and, for a new trajectory, the
            TSM panel at its T)."""
            dep = dep.then(ex.controls, [state], outs(CONTROL_KEYS), queue=False, api_visibility="private")
            if new:
                dep.then(ex.tsm_view, [layer, state], outs(TSM_KEYS), queue=False, api_visibility="private")
            return dep

        new_fn = user_errors(ex.new_trajectory)
        new_args = dict(fn=new_fn, inputs=new_in, outputs=outs(VIEW_KEYS), **view_kw, **interactive)
        ui_new = dict(api_visibility="private", validator=settings_validator, **new_args)

        # the API's /new_trajectory (its errors stay errors for API clients) on a trigger no one sees; the button
        # below runs the same handler after the UI's validator
        api_new = gr.Button(visible=False, elem_id="api-new")
        follow(api_new.click(
            api_name="new_trajectory",
            api_description="Draw x_T from the seed and take the first step. Inputs: checkpoint, seed, sampler "
                            "('ddim'|'ddpm'), num_steps (1-1000), threshold_scale (0.9-1.1), grid_size (1|4|16), "
                            "layer, raster_mode ('step'|'trajectory'), neurons, time_steps (spiking steps T: 1, 2, "
                            "4, 8 or the checkpoint's own; an ANN ignores it).", **new_args), new=True)
        follow(new_btn.click(**ui_new), new=True)
        info_fn = user_errors(ex.checkpoint_info)
        follow(checkpoint.input(info_fn, [checkpoint, layer], outs(MODEL_KEYS), api_name="checkpoint_info",
                                queue=False,
                                api_description="The model card summary, layers and TSM plots of a checkpoint.")
               .success(user_errors(ex.trained_time_steps), [checkpoint], [time_steps], queue=False,
                        api_visibility="private")
               .success(**ui_new), new=True)
        for c in (sampler, grid_size, time_steps):
            follow(c.input(**ui_new), new=True)
        for c in (seed, num_steps):
            follow(c.submit(**ui_new), new=True)
        for n, b in zip(STEP_PRESETS, preset_btns):
            follow(b.click(lambda n=n: (n, "ddim"), None, [num_steps, sampler], queue=False,
                           api_visibility="private").then(**ui_new), new=True)
        if presets:
            follow(lesson.input(user_errors(ex.lesson), [lesson], settings_in + [time_steps], queue=False,
                                api_visibility="private")
                   .then(info_fn, [checkpoint, layer], outs(MODEL_KEYS), queue=False, api_visibility="private")
                   .success(**ui_new), new=True)

        step_fn = user_errors(ex.step)
        follow(step_btn.click(step_fn, [n_one, threshold] + view_in + [state], outs(VIEW_KEYS), api_name="step",
                              api_description="Take n_steps steps (default 1) with this threshold scale.",
                              **view_kw, **interactive))
        follow(step10_btn.click(step_fn, [n_ten, threshold] + view_in + [state], outs(VIEW_KEYS), api_name="step_10",
                                api_visibility="undocumented", **view_kw, **interactive))
        threshold.input(user_errors(ex.set_threshold), [threshold] + view_in + [state], outs(THRESHOLD_KEYS),
                        api_name="set_threshold", show_progress="hidden", show_progress_on=[status],
                        trigger_mode="always_last",
                        api_description="Re-run the viewed step's denoiser with this threshold scale: x̂₀, ε̂ "
                                        "and the neuron plots change (shown beside scale 1.0), the trajectory does "
                                        "not.", **interactive)
        timeline.input(user_errors(ex.scrub), [timeline] + view_in + [state], outs(SCRUB_KEYS), api_name="scrub",
                       api_description="View recorded step `step` (1-based).", show_progress="hidden",
                       show_progress_on=[status], trigger_mode="always_last", **interactive)
        follow(run_btn.click(on_gpu(user_errors(ex.run_to_end)), [threshold] + view_in + [state], outs(VIEW_KEYS),
                             api_name="run_to_end",
                             api_description="Step to the end with this threshold scale (streams while running).",
                             **view_kw, **heavy))
        follow(continue_btn.click(on_gpu(user_errors(ex.continue_from_here)), [threshold] + view_in + [state],
                                  outs(VIEW_KEYS), api_name="continue_from_here",
                                  api_description="Re-run the viewed step with this threshold scale and carry on to "
                                                  "the end.", **view_kw, **heavy))
        layer_fn = user_errors(ex.select_layer)
        layer.input(layer_fn, view_in + [state], outs(LAYER_KEYS), api_name="select_layer", show_progress="hidden",
                    api_description="Redraw the neuron plots for a layer, raster mode and neuron selection.",
                    **interactive)
        for c in (raster_mode, neurons):
            c.input(layer_fn, view_in + [state], outs(LAYER_KEYS), api_visibility="private", show_progress="hidden",
                    **interactive)
        play_btn.click(user_errors(ex.toggle_play), [playing, state], outs(("timer", "play_btn", "playing")),
                       api_visibility="private", queue=False)
        follow(timer.tick(user_errors(ex.play_tick), [threshold] + view_in + [playing, state], outs(PLAY_KEYS),
                          api_visibility="private", show_progress="hidden", **interactive))
        compare_scale_btn.click(on_gpu(user_errors(ex.compare_scales)), [threshold, state], outs(COMPARE_SCALE_KEYS),
                                api_name="compare_scales", **heavy,
                                api_description="Final images at threshold scale 1.0 and at this scale, same noise.")
        compare_ann_btn.click(on_gpu(user_errors(ex.compare_ann)), [threshold, state], outs(COMPARE_ANN_KEYS),
                              api_name="compare_ann", **heavy,
                              api_description="Final images of the SNN and its ANN counterpart, same noise.")
        export_btn.click(on_gpu(user_errors(ex.export)), [state], outs(EXPORT_KEYS), api_name="export", **heavy,
                         api_description="The trajectory as GIF and MP4, the current sample as PNG, the recording "
                                         "as NPZ.")
        follow(demo.load(user_errors(ex.on_load), new_in, [checkpoint] + outs(MODEL_KEYS) + outs(VIEW_KEYS),
                         api_visibility="private", show_progress="hidden"), new=True)
        mode.change(None, [mode], None, js=MODE_JS, api_visibility="private")
        demo.load(None, None, [mode], js=LOAD_MODE_JS, api_visibility="private")

        def forget_tab(request: gr.Request):
            _forget_tab(demo, ex, request)

        demo.unload(forget_tab)
    atexit.register(ex.pool.close_all)       # the sessions' exported files go with the server
    demo.queue(default_concurrency_limit=INTERACTIVE_LIMIT, max_size=QUEUE_MAX_SIZE)
    _say_busy(demo)
    return demo


def _forget_tab(demo: gr.Blocks, ex: Explorer, request: gr.Request) -> None:
    """The tab closed (gradio's unload): free its session now, and gradio's copy of the tab's outputs (plots,
    images), which gradio otherwise keeps for an hour in case the tab comes back."""
    owner = _owner(request, None)
    ex.pool.release(owner)
    holder = getattr(demo, "state_holder", None)
    if holder is not None and owner in holder:
        holder.delete_state(owner)
        with holder.lock:
            holder.session_data.pop(owner, None)
            holder.time_last_used.pop(owner, None)
    release_memory()


BUSY = ("The server is busy: {n} requests are waiting, the most it queues. Please try again in a minute.")


def _say_busy(demo: gr.Blocks) -> None:
    """A full queue answers with BUSY instead of gradio's "Queue is full. Max size is 64 and size is 64."."""
    queue = demo._queue
    push = queue.push

    async def push_or_busy(*args, **kwargs):
        ok, msg, status = await push(*args, **kwargs)
        if status == "queue_full":
            msg = BUSY.format(n=queue.max_size)
        return ok, msg, status

    queue.push = push_or_busy


def _free_session(sess) -> None:
    """gr.State delete_callback: an idle or closed tab's recording is freed."""
    if isinstance(sess, Session):
        sess.close()


def launch_kwargs() -> dict:
    """Theme and CSS (Gradio 6 takes them in launch()), and no uploads (the app has no upload component)."""
    return dict(theme=THEME, css=CSS, max_file_size=MAX_UPLOAD)


def __getattr__(name: str):
    """``app.demo``, built on first use (Hugging Face Spaces and ``gradio app.py`` look for it), so that importing
    app.py loads no model."""
    if name == "demo":
        globals()["demo"] = build_demo()
        return globals()["demo"]
    raise AttributeError(f"module 'app' has no attribute {name!r}")


def main() -> None:
    import torch
    # one intra-op thread per request: concurrent users share the cores instead of fighting over them
    torch.set_num_threads(int(os.environ.get("SDM_TORCH_THREADS", "1")))
    demo = build_demo()
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), **launch_kwargs())


if __name__ == "__main__":
    main()
