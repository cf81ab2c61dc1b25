"""SDM Explorer: step through a Spiking Diffusion Model's reverse process and watch its neurons.

    python app.py                 # serves on 0.0.0.0:7860 (GRADIO_SERVER_PORT / GRADIO_SERVER_NAME override)

This file is only layout, events and wording. The per-user logic (recording, stepping under a time budget,
scrubbing, threshold previews, comparisons, export) is ``sdm.explorer``; what the panels draw is
``sdm.explorer.panels``, the checkpoint a page opens on and the lesson presets ``sdm.explorer.presets``; what app.py
needs from gradio beyond its public API (its input components, error messages, patches) is ``sdm.ui``. Each browser
tab keeps one ``Session`` in ``gr.State``; the loaded models live in one ``ModelRegistry`` shared read-only by
everyone.

Two views of one page: the *Classroom* view (the View toggle, or ``?mode=classroom``) fits one 1280x720 screen:
presets, controls, the sample, x̂₀ at threshold scale 1.0 beside the slider's scale, the spike raster and the
firing-rate bars; the *Full explorer* adds everything else below.

API (gradio_client), see the README: /new_trajectory, /step, /set_threshold, /run_to_end, /export, plus
/scrub, /continue_from_here, /select_layer, /compare_scales, /compare_ann, /checkpoint_info.
"""
from __future__ import annotations

import atexit
import logging
import math
import os

import gradio as gr

from sdm import imaging
from sdm.explorer import (DenoiserBatcher, ModelRegistry, Session, SessionPool, View, compare, panels,
                          freeze_heap, release_memory, sharing, trajectory_export)
from sdm.explorer import display  # noqa: F401 - bench/app_latency.py reads app.display and app.TRIO_KEYS (imported below)
from sdm.explorer.panels import IMAGE_PX, SMALL_PX, grid_image
from sdm.explorer.pool import MAX_TOTAL_BYTES
from sdm.explorer.results import SharedResults
from sdm.explorer.sharing import InFlight
from sdm.explorer.presets import DEFAULTS, lesson_presets, lesson_settings, opening_checkpoint
from sdm.explorer.teaching import (ARCHITECTURE, INTRO, NO_CHECKPOINTS, TEACH_ENERGY, TEACH_IMAGES, TEACH_MEMBRANE,
                                   TEACH_RASTER, TEACH_RATE, TEACH_THRESHOLD, TEACH_TSM, TITLE)
from sdm.explorer.validation import (MAX_NEURONS, MAX_SEED, MAX_STEPS, SCALE_MAX, SCALE_MIN, SCALE_STEP,
                                     STEP_PRESETS)
from sdm.explorer.zerogpu import on_gpu
from sdm.ui.components import RawNumber, RawRadio, RawSlider
from sdm.ui.errors import user_errors
from sdm.ui.gradio_patches import drop_tab_state, patch_demo
from sdm.ui import streams
from sdm.ui.settings import clear_lesson, settings_status, settings_validator
from sdm.ui.outputs import (COMPARE_ANN_KEYS, COMPARE_SCALE_KEYS, CONTROL_KEYS, EXPORT_KEYS,
                            LAYER_KEYS, MODEL_KEYS, PLAY_KEYS, SCRUB_KEYS, SKIP_VIEW, THRESHOLD_INFO,
                            THRESHOLD_KEYS, TIME_STEPS_LABEL, TRIO_KEYS, TSM_KEYS, VIEW_KEYS, as_dict, controls, layer_choices,
                            first_view, model_outputs, render, spiking_step_radio, tsm_view)
from sdm.ui.theme import CSS, THEME

log = logging.getLogger("sdm.app")

# ------------------------------------------------------------------------------------------- settings
INTERACTIVE_LIMIT = 4          # light events at once (one torch thread each): two heavy runs leave room for others
HEAVY_LIMIT = 2                # Continue, Compare, Export at once
BATCHED_LIMIT = 32             # Run to end and the slider at once: a DenoiserBatcher computes their calls together
QUEUE_MAX_SIZE = 64            # waiting events, all users; beyond it gradio answers "Queue is full"
# one Step request computes at most this long (Step x10 of 16 images: about 4 s); one Run to end / Continue / Compare
# request at most RUN_BUDGET_S. An operator may change them: SDM_STEP_BUDGET_S, SDM_RUN_BUDGET_S.
STEP_BUDGET_S = float(os.environ.get("SDM_STEP_BUDGET_S", "10"))
RUN_BUDGET_S = float(os.environ.get("SDM_RUN_BUDGET_S", "120"))
MAX_UPLOAD = "1kb"             # the app takes no uploads: gradio's upload route refuses anything larger
STATE_TTL_S = 3600             # idle sessions are freed after an hour
PLAY_INTERVAL_S = 0.5          # Play: one tick every half second ...
PLAY_TICKS = 60                # ... and any trajectory plays in about this many ticks
STREAM_EVERY_S = 0.5           # Run to end: refresh the images this often (at a cancel point: within_budget)
GENERATED_EVERY_S = 0.2        # the slider once generated images are shown: refresh the picture at s this often
# finished results shared by every session (sdm.explorer.results), out of the server's memory cap: the sessions'
# recordings get the rest (SDM_RESULTS_MB overrides); SDM_WARM_PRESETS=0 computes no lesson preset ahead
RESULTS_BYTES = int(float(os.environ.get("SDM_RESULTS_MB", "256")) * 2 ** 20)
WARM_PRESETS = os.environ.get("SDM_WARM_PRESETS", "1") != "0"
DEFAULT_T = 4                  # the T control's value when there is no checkpoint to take it from
# the one-screen layout (classroom view at 1280x720): widths of its three columns (the heights of its pictures and
# plots, IMAGE_PX, SMALL_PX and PLOT_H, are those sdm.explorer.panels draws them at)
CONTROLS_PX = 270              # controls
IMAGES_PX = 420                # the sample x_t and, under it, x̂₀ at 1.0 / at s / their difference
PLOTS_MIN_PX = 400             # the spike raster and the firing-rate bars (the rest of the width)
RASTER_MODES = [("this diffusion step (T spiking steps τ)", "step"), ("whole trajectory (diffusion steps × τ)", "trajectory")]

#: how the events run: light, heavy and batched ones each in their own group, at most this many at once
INTERACTIVE = dict(concurrency_id="interactive", concurrency_limit=INTERACTIVE_LIMIT)
HEAVY = dict(concurrency_id="heavy", concurrency_limit=HEAVY_LIMIT)
BATCHED = dict(concurrency_id="batched", concurrency_limit=BATCHED_LIMIT)


def _owner(request, sess: Session) -> str:
    """Who a session belongs to in the pool: the browser tab's (or API client's) session hash."""
    return getattr(request, "session_hash", None) or f"local-{id(sess)}"


def _no_trajectory() -> ValueError:
    return ValueError("no trajectory yet: press “New trajectory” first (API: /new_trajectory)")


class Explorer:
    """The app's event handlers: each validates its arguments through sdm.explorer before anything changes, calls
    it, and words what it returns. Everything per user comes in and goes out through ``state`` (a Session); what is
    shared is the registry of loaded, read-only pipelines and the finished results (``results``: trajectories and
    generated images, computed once for everyone, read-only), which count against the server's memory cap with the
    sessions' recordings (``pool`` gets the rest of ``MAX_TOTAL_BYTES``)."""

    render = staticmethod(render)
    controls = staticmethod(controls)
    tsm_view = staticmethod(tsm_view)
    #: the handlers of requests: while any of them runs, the start-up warming of the lesson presets waits
    REQUESTS = ("on_load", "new_trajectory", "step", "set_threshold", "show_generated", "scrub", "run_to_end",
                "continue_from_here", "select_layer", "play_tick", "compare_scales", "compare_ann", "export")

    def __init__(self, registry: ModelRegistry | None = None, pool: SessionPool | None = None,
                 step_budget_s: float = STEP_BUDGET_S, run_budget_s: float = RUN_BUDGET_S,
                 results: SharedResults | None = None, batcher: DenoiserBatcher | None = None):
        self.registry = registry or ModelRegistry()
        self.batcher = batcher or DenoiserBatcher.for_server()
        self.results = results or SharedResults(RESULTS_BYTES)
        self.pool = pool or SessionPool(MAX_TOTAL_BYTES - self.results.max_bytes)
        self.step_budget_s = step_budget_s
        self.run_budget_s = run_budget_s
        self.requests = InFlight()
        for name in self.REQUESTS:
            setattr(self, name, self.requests.counted(getattr(self, name)))

    def warm_presets(self, presets: list):
        """Compute the lesson presets' trajectories (the first lesson's generated images at the first slider scales)
        ahead, at nice 19, waiting while requests run; then start the batcher's workers and check its batch shapes."""
        warming = self.results.warm(sharing.preset_keys(self.registry, presets),
                                    lambda key: sharing.compute_key(self.registry, key), pause_while=self.requests.busy)
        self.batcher.start(after=warming, prepare=sharing.preset_models(self.registry, presets))
        return warming

    def _use(self, state, request) -> Session:
        """The tab's session, with a trajectory (else a clear error), marked as just used in the pool."""
        if not isinstance(state, Session):
            raise _no_trajectory()
        state.require()
        self.pool.touch(_owner(request, state), state)
        return state

    # ------------------------------------------------------------------ checkpoint
    def trained_time_steps(self, checkpoint):
        """The T control set to a checkpoint's own T, its choices labelled for it (a new checkpoint starts at the
        T it was trained for)."""
        T = self.registry.get(checkpoint).config.time_steps
        return gr.Radio(choices=spiking_step_radio(T), value=T)

    def checkpoint_info(self, checkpoint, layer=None) -> tuple:
        """Model card summary, the layer list and the TSM plots of a checkpoint.

        Returns (summary markdown, layer dropdown, TSM heatmap, TSM curve, TSM note, ANN counterpart note).
        A checkpoint that cannot be loaded gives its error in the summary (the others keep working).
        """
        return model_outputs(panels.model_panels(self.registry, checkpoint, layer))

    def on_load(self, checkpoint, seed, sampler, num_steps, threshold_scale, grid_size, layer, raster_mode,
                neurons, state, time_steps=None):
        """Page load: refresh the checkpoint list and start this tab's own session (``controls`` then enables the
        buttons that need it). Returns (checkpoint dropdown, MODEL outputs, VIEW outputs)."""
        names = self.registry.names()
        checkpoint, m = opening_checkpoint(self.registry, checkpoint, layer)
        dropdown = gr.Dropdown(choices=names, value=checkpoint)
        if checkpoint is None:
            return (dropdown, NO_CHECKPOINTS) + tuple(gr.skip() for _ in MODEL_KEYS[1:]) + SKIP_VIEW
        if not m["ok"]:
            return (dropdown,) + model_outputs(m) + SKIP_VIEW
        view = self.new_trajectory(checkpoint, seed, sampler, num_steps, threshold_scale, grid_size, m["layer"],
                                   raster_mode, neurons, state, time_steps)
        return (dropdown,) + model_outputs(m) + view

    def lesson(self, name) -> tuple:
        """The settings of a lesson preset (by its label): checkpoint, seed, sampler, steps, threshold scale, grid
        size, spiking time steps T."""
        return lesson_settings(self.registry, name)

    # ------------------------------------------------------------------ trajectory
    def new_trajectory(self, checkpoint, seed, sampler, num_steps, threshold_scale, grid_size, layer=None,
                       raster_mode="step", neurons=None, state=None, time_steps=None,
                       request: gr.Request = None) -> tuple:
        """Draw x_T from the seed and take the first step, at ``time_steps`` spiking steps per denoiser call (None:
        the checkpoint's trained T). Returns the VIEW outputs; when it replaces another trajectory (T, a step
        preset, the checkpoint changed; or one still running) the status says so."""
        pipe = self.registry.get(checkpoint)
        sess = state if isinstance(state, Session) else Session()
        view = sess.view_for(pipe.layer_names(), checkpoint, layer, raster_mode, neurons)
        args = dict(seed=seed, sampler=sampler, num_steps=num_steps, grid=grid_size, threshold_scale=threshold_scale,
                    time_steps=time_steps, ann_counterpart=self.registry.ann_counterpart(checkpoint))
        shared = sharing.shared_trajectory(self.results, self.registry.signature)   # the class's first step, once
        note = panels.start_noted(sess, pipe, checkpoint, shared, self.batcher, **args)
        self.pool.touch(_owner(request, sess), sess)
        return render(sess, view, note=note)

    def step(self, n_steps, threshold_scale, layer, raster_mode, neurons, state, request: gr.Request = None):
        """Take ``n_steps`` steps (1 for Step, 10 for Step ×10) with the slider's threshold scale, for at most
        ``step_budget_s`` (then it says how far it got). Yields at every cancel point (a cancelled request stops
        there), the images every ``STREAM_EVERY_S``, and the whole view at the end."""
        sess = self._use(state, request)
        view = sess.check_view(layer, raster_mode, neurons)
        yield from self._run(sess, sess.stepping(n_steps, threshold_scale), view, "Stepping", self.step_budget_s,
                             request)

    def set_threshold(self, threshold_scale, layer, raster_mode, neurons, state, request: gr.Request = None):
        """Re-run the denoiser of the viewed step with this threshold scale: x̂₀, ε̂ and every neuron plot
        update, beside the step at scale 1.0; the trajectory itself does not change. Once the trajectory is
        finished (or the generated images were asked for), the trio shows the images generated from the same
        noise at 1.0 and at this scale instead, streamed (``_generate``). Yields THRESHOLD outputs."""
        sess = self._use(state, request)
        view = sess.check_view(layer, raster_mode, neurons)
        sharing.preview(sess, self.results, self.registry.signature, threshold_scale, self.batcher)
        if not sess.wants_generated:
            yield render(sess, view, THRESHOLD_KEYS)
            return
        yield from self._generate(sess, view, threshold_scale, THRESHOLD_KEYS)

    def show_generated(self, threshold_scale, layer, raster_mode, neurons, state, request: gr.Request = None):
        """Show the images generated from this trajectory's noise at 1.0 and at the slider's scale in the trio, also
        before the end (the slider then keeps showing them until a new trajectory). Yields THRESHOLD outputs."""
        sess = self._use(state, request)
        view = sess.check_view(layer, raster_mode, neurons)
        with sess.lock:
            sess.show_generated = True
        yield from self._generate(sess, view, threshold_scale, THRESHOLD_KEYS)

    def _generate(self, sess: Session, view: View, threshold_scale, keys):
        stream = sharing.generated_images(sess, self.results, self.registry.signature(sess.settings.checkpoint), threshold_scale, self.batcher)
        every = streams.paced(GENERATED_EVERY_S, self.requests)         # under load, fewer refreshes per stream
        yield from streams.generated(sess, view, stream, keys, self.run_budget_s, every)

    def _run(self, sess: Session, stepping, view: View, what: str, budget_s: float, request):
        yield from streams.stepping(sess, stepping, view, what, budget_s, streams.paced(STREAM_EVERY_S, self.requests),
                                    lambda: self.pool.touch(_owner(request, sess), sess))

    def _ticks(self, steps, keys, progress):
        return (yield from streams.ticks(steps, keys, progress, self.run_budget_s))

    def scrub(self, step, layer, raster_mode, neurons, state, request: gr.Request = None) -> tuple:
        """Show recorded step ``step`` (1-based). Returns the SCRUB outputs (VIEW without the timeline)."""
        sess = self._use(state, request)
        view = sess.check_view(layer, raster_mode, neurons)
        sess.scrub(step)
        return render(sess, view, SCRUB_KEYS)

    def run_to_end(self, threshold_scale, layer, raster_mode, neurons, state, request: gr.Request = None):
        """Step to the end with the slider's threshold scale (streams the images while it runs); a trajectory that
        another session already ran with the same settings is shown from the shared results. At the end the trio
        shows the images generated at 1.0 and at that scale."""
        sess = self._use(state, request)
        view = sess.check_view(layer, raster_mode, neurons)
        run = sharing.run_to_end(sess, self.results, self.registry.signature(sess.settings.checkpoint),
                                 threshold_scale, self.batcher)
        yield from self._run(sess, run, view, "Running to the end", self.run_budget_s, request)

    def continue_from_here(self, threshold_scale, layer, raster_mode, neurons, state, request: gr.Request = None):
        """Re-run the viewed step with the slider's scale and carry on to the end from there."""
        sess = self._use(state, request)
        view = sess.check_view(layer, raster_mode, neurons)
        generation = sess.continue_from_view(threshold_scale)
        yield from self._run(sess, sess.stepping(None, threshold_scale, generation), view, "Continuing",
                             self.run_budget_s, request)

    def select_layer(self, layer, raster_mode, neurons, state, request: gr.Request = None) -> tuple:
        """Redraw the neuron plots for another layer / raster mode / neuron selection (LAYER outputs)."""
        sess = self._use(state, request)
        return render(sess, sess.check_view(layer, raster_mode, neurons), LAYER_KEYS)

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
        out = render(sess, view)
        return out + (stop if sess.is_done else (gr.skip(), gr.skip(), True))

    # ------------------------------------------------------------------ compare / export
    def compare_scales(self, threshold_scale, state, request: gr.Request = None, progress=gr.Progress()):
        """Final images at threshold scale 1.0 and at the slider's scale, same seed and noise, each labelled with
        its scale (``gr.update`` of value and label)."""
        sess = self._use(state, request)
        r = yield from self._ticks(compare.compare_scales_steps(sess, threshold_scale), COMPARE_SCALE_KEYS, progress)
        yield (gr.update(value=grid_image(imaging.to_display(r["base"])), label="threshold scale s = 1.000"),
               gr.update(value=grid_image(imaging.to_display(r["scaled"])), label=f"threshold scale s = {r['scale']:.3f}"),
               panels.compare_scales_markdown(sess, r))

    def compare_ann(self, threshold_scale, state, request: gr.Request = None, progress=gr.Progress()):
        """The SNN (at the slider's scale) and its ANN counterpart, same seed and noise, each labelled."""
        sess = self._use(state, request)
        r = yield from self._ticks(compare.compare_ann_steps(sess, self.registry, threshold_scale), COMPARE_ANN_KEYS,
                                   progress)
        yield (gr.update(value=grid_image(imaging.to_display(r["snn"])),
                         label=f"SNN: {sess.settings.checkpoint} (s = {r['scale']:.3f})"),
               gr.update(value=grid_image(imaging.to_display(r["ann"])), label=f"ANN: {r['ann_name']}"),
               panels.compare_ann_markdown(sess, r))

    def export(self, state, request: gr.Request = None, progress=gr.Progress()) -> tuple:
        """Write the trajectory as GIF and MP4, the current sample as PNG and the recording as NPZ (at most 200
        frames: bounded work)."""
        sess = self._use(state, request)
        paths = trajectory_export.export(sess, progress=lambda f, d: progress(f, desc=d))
        return (paths["gif"], paths["mp4"], paths["png"], paths["npz"], panels.export_markdown(sess))


# ------------------------------------------------------------------------------------------- layout
#: the view toggle: CSS hides everything marked "full-only" while <body> has the class "classroom"
MODE_JS = "(mode) => { document.body.classList.toggle('classroom', mode === 'classroom'); return mode; }"
#: ?mode=classroom opens the classroom view
LOAD_MODE_JS = ("() => new URLSearchParams(window.location.search).get('mode') === 'classroom' "
                "? 'classroom' : 'full'")


def _header(c: dict, presets: list) -> None:
    """The header: title, lesson presets and the view toggle."""
    with gr.Row(equal_height=True, elem_id="header"):
        gr.Markdown(TITLE, elem_id="title")
        gr.Markdown("Lesson presets:", elem_id="lesson-label")
        c["lesson"] = gr.Dropdown(choices=[label for label, _ in presets], value=None, label="Lesson presets",
                                  show_label=False, container=False, elem_id="lesson", interactive=bool(presets),
                                  scale=2, min_width=300)
        c["mode"] = gr.Radio([("Classroom", "classroom"), ("Full explorer", "full")], value="full", label="View",
                             show_label=False, container=False, elem_id="mode", scale=0, min_width=300)
    gr.Markdown(INTRO, elem_id="intro", elem_classes="full-only")


def _controls(c: dict, names: list, default: str | None, model_d: dict, trained: int) -> None:
    """The left column of the one screen: checkpoint, buttons, threshold slider, T, steps, seed, sampler, grid."""
    with gr.Column(scale=0, min_width=CONTROLS_PX, elem_id="controls"):
        c["checkpoint"] = gr.Dropdown(choices=names, value=default, label="Checkpoint", allow_custom_value=True,
                                      elem_id="checkpoint")
        c["summary"] = gr.Markdown(model_d.get("summary", NO_CHECKPOINTS), label="Checkpoint summary",
                                   elem_id="summary", elem_classes="full-only")
        c["new_btn"] = gr.Button("New trajectory", variant="primary", elem_id="btn-new", size="md")
        with gr.Row(elem_classes="buttons"):
            c["step_btn"] = gr.Button("Step", elem_id="btn-step", interactive=False, min_width=60, size="md")
            c["step10_btn"] = gr.Button("Step ×10", elem_id="btn-step10", interactive=False, min_width=60, size="md")
        with gr.Row(elem_classes="buttons"):
            c["play_btn"] = gr.Button("▶ Play", elem_id="btn-play", interactive=False, min_width=60, size="md")
            c["run_btn"] = gr.Button("Run to end", elem_id="btn-run", interactive=False, min_width=60, size="md")
        with gr.Row(elem_classes="buttons"):
            c["continue_btn"] = gr.Button("Continue from here", elem_id="btn-continue", interactive=False,
                                          elem_classes="full-only", min_width=60, size="md")
            c["generated_btn"] = gr.Button("Show the generated image", elem_id="btn-generated", interactive=False,
                                           min_width=60, size="md")
        c["threshold"] = RawSlider(SCALE_MIN, SCALE_MAX, value=DEFAULTS["threshold_scale"], step=SCALE_STEP,
                                   label="Threshold scale s", info=THRESHOLD_INFO, elem_id="threshold")
        c["time_steps"] = RawRadio(spiking_step_radio(trained), value=trained, label=TIME_STEPS_LABEL,
                                   elem_id="time-steps")
        with gr.Row(elem_id="step-presets", equal_height=True):
            gr.Markdown("DDIM steps", elem_id="step-presets-label")
            c["preset_btns"] = [gr.Button(f"{n}", size="sm", min_width=36, elem_id=f"btn-steps-{n}")
                                for n in STEP_PRESETS]
        with gr.Group(elem_classes="full-only"):
            with gr.Row():
                c["seed"] = RawNumber(value=DEFAULTS["seed"], label="Seed", minimum=0, maximum=MAX_SEED,
                                      elem_id="seed", min_width=100)
                c["num_steps"] = RawNumber(value=DEFAULTS["num_steps"], label="Steps", minimum=1, maximum=MAX_STEPS,
                                           elem_id="num-steps", min_width=100)
            c["sampler"] = RawRadio([("DDIM", "ddim"), ("DDPM", "ddpm")], value=DEFAULTS["sampler"],
                                    label="Sampler", elem_id="sampler")
            c["grid_size"] = RawRadio([("1 image", 1), ("4", 4), ("16", 16)], value=DEFAULTS["grid_size"],
                                      label="Grid size", elem_id="grid-size")
        gr.Markdown(TEACH_THRESHOLD, elem_classes=["teach", "full-only"])


def _images_and_plots(c: dict, first: dict, img_kw: dict) -> None:
    """The middle and right columns of the one screen: status, x_t, the threshold trio; raster and rate bars."""
    small_kw = dict(img_kw, buttons=["fullscreen"])
    with gr.Column(scale=0, min_width=IMAGES_PX, elem_id="images"):
        c["status"] = gr.Markdown(first.get("status", "Loading…"), label="Status", elem_id="status")
        c["img_xt"] = gr.Image(first.get("img_xt"), label="x_t: the sample", elem_id="img-xt", height=IMAGE_PX,
                               **img_kw)
        with gr.Row(elem_id="trio", equal_height=True):
            c["img_x0_base"] = gr.Image(first.get("img_x0_base"), label="x̂₀ at 1.0", elem_id="img-x0-base",
                                        height=SMALL_PX, min_width=SMALL_PX, **small_kw)
            c["img_x0"] = gr.Image(first.get("img_x0"), label="x̂₀ at s", elem_id="img-x0", height=SMALL_PX,
                                   min_width=SMALL_PX, **small_kw)
            c["img_diff"] = gr.Image(first.get("img_diff"), label="s − 1.0", elem_id="img-diff", height=SMALL_PX,
                                     min_width=SMALL_PX, **small_kw)
        c["threshold_md"] = gr.Markdown(first.get("threshold_md", ""), label="Threshold guidance",
                                        elem_id="threshold-text")
    with gr.Column(scale=1, min_width=PLOTS_MIN_PX, elem_id="plots"):
        c["raster"] = gr.Plot(first.get("raster"), label="Spike raster", elem_id="plot-raster", show_label=False)
        c["rate_bars"] = gr.Plot(first.get("rate_bars"), label="Firing rate per layer", elem_id="plot-rate-bars",
                                 show_label=False)


def _inside(c: dict, first: dict, model_d: dict, img_kw: dict) -> None:
    """The full explorer below the one screen, down to the neuron plots: timeline, ε̂, filmstrip, layer, neurons."""
    c["timeline"] = RawSlider(1, 2, value=1, step=1, interactive=False, elem_id="timeline",
                              label="Timeline: scrub back to any recorded step")
    with gr.Row(equal_height=False):
        with gr.Column(scale=0, min_width=2 * SMALL_PX):
            c["img_eps"] = gr.Image(first.get("img_eps"), label="ε̂: the noise it predicts", elem_id="img-eps",
                                    height=2 * SMALL_PX, **img_kw)
        with gr.Column(scale=3):
            c["filmstrip"] = gr.Image(first.get("filmstrip"), elem_id="filmstrip", height=250,
                                      label="Filmstrip: x_t (top) and x̂₀ (bottom) along the trajectory",
                                      **dict(img_kw, elem_classes=None))
            gr.Markdown(TEACH_IMAGES, elem_classes="teach")
    gr.Markdown("## Inside the spiking network")
    with gr.Row():
        c["layer"] = gr.Dropdown(choices=layer_choices(model_d.get("layers")), value=model_d.get("layer"),
                                 label="Layer (spiking layers in forward order)", allow_custom_value=True,
                                 elem_id="layer", scale=2)
        c["raster_mode"] = RawRadio(RASTER_MODES, value="step", label="Spike raster shows", elem_id="raster-mode",
                                    scale=2)
        c["neurons"] = gr.Dropdown(choices=list(range(MAX_NEURONS)), value=[], multiselect=True, max_choices=8,
                                   allow_custom_value=True,
                                   label="Neurons to trace (empty: 4 picked from most to least active)",
                                   elem_id="neurons", scale=2)
    gr.Markdown(TEACH_RASTER, elem_classes="teach")
    with gr.Row(equal_height=False):
        c["membrane"] = gr.Plot(first.get("membrane"), label="Membrane potential", elem_id="plot-membrane")
        c["traces"] = gr.Plot(first.get("traces"), label="Membrane traces", elem_id="plot-traces")
    gr.Markdown(TEACH_MEMBRANE, elem_classes="teach")


def _rates_tsm_energy(c: dict, first: dict, model_d: dict) -> None:
    """The first tabs: firing rate over the trajectory, TSM weights, energy."""
    with gr.Tab("Firing rate", elem_id="tab-rates"):
        c["rate_course"] = gr.Plot(first.get("rate_course"), label="Firing rate over the trajectory",
                                   elem_id="plot-rate-course")
        gr.Markdown(TEACH_RATE, elem_classes="teach")
    with gr.Tab("TSM", elem_id="tab-tsm"):
        c["tsm_note"] = gr.Markdown(model_d.get("tsm_note", ""), label="TSM note", elem_id="tsm-note")
        with gr.Row(equal_height=False):
            c["tsm_heat"] = gr.Plot(model_d.get("tsm_heat"), label="TSM weights (all layers)", elem_id="plot-tsm")
            c["tsm_curve"] = gr.Plot(model_d.get("tsm_curve"), label="TSM weights (selected layer)",
                                     elem_id="plot-tsm-curve")
        gr.Markdown(TEACH_TSM, elem_classes="teach")
    with gr.Tab("Energy", elem_id="tab-energy"):
        with gr.Row(equal_height=False):
            with gr.Column():
                c["energy_md"] = gr.Markdown(first.get("energy_md", ""), label="Energy summary",
                                             elem_id="energy-text")
                gr.Markdown(TEACH_ENERGY, elem_classes="teach")
            c["energy_plot"] = gr.Plot(first.get("energy_plot"), label="Energy per image", elem_id="plot-energy")


def _compare_export_info(c: dict, first: dict, model_d: dict, img_kw: dict) -> None:
    """The last tabs: the comparisons, the export, the session's data."""
    with gr.Tab("Compare", elem_id="tab-compare"):
        gr.Markdown("**Threshold guidance**: the final image at scale 1.0 and at the slider's scale, "
                    "from the same seed and noise.")
        c["compare_scale_btn"] = gr.Button("Compare scale 1.0 with the slider's scale", elem_id="btn-compare-scale",
                                           interactive=False)
        with gr.Row():
            c["img_scale_base"] = gr.Image(label="threshold scale s = 1.000", elem_id="img-scale-base", **img_kw)
            c["img_scale_s"] = gr.Image(label="threshold scale s (slider)", elem_id="img-scale-s", **img_kw)
        c["compare_scale_md"] = gr.Markdown(label="Scale comparison", elem_id="compare-scale-text")
        gr.Markdown("**SNN vs ANN**: the spiking model and its ANN counterpart (same UNet with SiLU), "
                    "from the same seed and noise.")
        c["ann_note"] = gr.Markdown(model_d.get("ann_note", ""), label="ANN counterpart", elem_id="ann-note")
        c["compare_ann_btn"] = gr.Button("Compare with the ANN counterpart", elem_id="btn-compare-ann",
                                         interactive=False)
        with gr.Row():
            c["img_snn"] = gr.Image(label="SNN", elem_id="img-snn", **img_kw)
            c["img_ann"] = gr.Image(label="ANN counterpart", elem_id="img-ann", **img_kw)
        c["compare_ann_md"] = gr.Markdown(label="SNN vs ANN", elem_id="compare-ann-text")
    with gr.Tab("Export", elem_id="tab-export"):
        c["export_btn"] = gr.Button("Export the trajectory (GIF, MP4, PNG, NPZ)", elem_id="btn-export",
                                    interactive=False)
        with gr.Row():
            c["file_gif"] = gr.File(label="Trajectory (GIF)", elem_id="file-gif")
            c["file_mp4"] = gr.File(label="Trajectory (MP4)", elem_id="file-mp4")
            c["file_png"] = gr.File(label="Final image (PNG)", elem_id="file-png")
            c["file_npz"] = gr.File(label="Spikes and potentials (NPZ)", elem_id="file-npz")
        c["export_md"] = gr.Markdown(label="Export summary", elem_id="export-text")
    with gr.Tab("Session data (JSON)", elem_id="tab-info"):
        c["info"] = gr.JSON(first.get("info"), label="This session", elem_id="info")


# -------------------------------------------------------------------------------------------- wiring
class _Wiring:
    """The events of one page: ``c`` holds its components by key (the output keys above, and the inputs)."""

    def __init__(self, demo: gr.Blocks, ex: Explorer, c: dict):
        self.demo, self.ex, self.c = demo, ex, c
        self.settings_in = [c[k] for k in ("checkpoint", "seed", "sampler", "num_steps", "threshold", "grid_size")]
        self.view_in = [c["layer"], c["raster_mode"], c["neurons"]]
        self.new_in = self.settings_in + self.view_in + [c["state"], c["time_steps"]]
        # errors of the view events are shown once, on the status line, not on every panel
        self.view_kw = dict(show_progress="minimal", show_progress_on=[c["status"]])

    def outs(self, keys) -> list:
        return [self.c[k] for k in keys]

    def follow(self, dep, new: bool = False):
        """After an event that changes the session: the controls follow it (and, for a new trajectory, the TSM
        panel at its T)."""
        c = self.c
        dep = dep.then(controls, [c["state"]], self.outs(CONTROL_KEYS), queue=False, api_visibility="private")
        if new:
            dep.then(tsm_view, [c["layer"], c["state"]], self.outs(TSM_KEYS), queue=False, api_visibility="private")
        return dep

    def new_trajectory_events(self, presets: list) -> None:
        """/new_trajectory, and every control that starts one: the button, checkpoint, sampler, grid, T, seed,
        steps, the DDIM step presets and the lesson presets."""
        c, ex, follow = self.c, self.ex, self.follow
        new_args = dict(fn=user_errors(ex.new_trajectory), inputs=self.new_in, outputs=self.outs(VIEW_KEYS),
                        **self.view_kw, **INTERACTIVE)
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
        follow(c["new_btn"].click(**ui_new), new=True)
        info_fn = user_errors(ex.checkpoint_info)
        checkpoint, layer = c["checkpoint"], c["layer"]
        follow(checkpoint.input(info_fn, [checkpoint, layer], self.outs(MODEL_KEYS), api_name="checkpoint_info",
                                queue=False,
                                api_description="The model card summary, layers and TSM plots of a checkpoint.")
               .success(user_errors(ex.trained_time_steps), [checkpoint], [c["time_steps"]], queue=False,
                        api_visibility="private")
               .success(**ui_new), new=True)
        # a lesson's label no longer describes what is shown once the checkpoint is changed by hand
        checkpoint.input(clear_lesson, None, [c["lesson"]], queue=False, api_visibility="private")
        for k in ("sampler", "grid_size", "time_steps"):
            follow(c[k].input(**ui_new), new=True)
        for k in ("seed", "num_steps"):
            follow(c[k].submit(**ui_new), new=True)
            c[k].submit(settings_status, [c["seed"], c["num_steps"], c["state"]], [c["status"]], queue=False,
                        api_visibility="private")
        for n, b in zip(STEP_PRESETS, c["preset_btns"]):
            follow(b.click(lambda n=n: (n, "ddim"), None, [c["num_steps"], c["sampler"]], queue=False,
                           api_visibility="private").then(**ui_new), new=True)
        if presets:
            follow(c["lesson"].input(user_errors(ex.lesson), [c["lesson"]], self.settings_in + [c["time_steps"]],
                                     queue=False, api_visibility="private")
                   .then(info_fn, [checkpoint, layer], self.outs(MODEL_KEYS), queue=False, api_visibility="private")
                   .success(**ui_new), new=True)

    def view_events(self) -> None:
        """Step, Step ×10, the threshold slider, the timeline, Run to end, Continue, the layer controls, Play."""
        c, ex, follow, outs = self.c, self.ex, self.follow, self.outs
        view_in, state = self.view_in, c["state"]
        step_fn = user_errors(ex.step)
        follow(c["step_btn"].click(step_fn, [c["n_one"], c["threshold"]] + view_in + [state], outs(VIEW_KEYS),
                                   api_name="step", api_description="Take n_steps steps (default 1) with this "
                                   "threshold scale.", **self.view_kw, **INTERACTIVE))
        follow(c["step10_btn"].click(step_fn, [c["n_ten"], c["threshold"]] + view_in + [state], outs(VIEW_KEYS),
                                     api_name="step_10", api_visibility="undocumented", **self.view_kw, **INTERACTIVE))
        c["threshold"].input(user_errors(ex.set_threshold), [c["threshold"]] + view_in + [state],
                             outs(THRESHOLD_KEYS), api_name="set_threshold", show_progress="hidden",
                             show_progress_on=[c["status"]], trigger_mode="always_last",
                             api_description="Re-run the viewed step's denoiser with this threshold scale: x̂₀, ε̂ "
                                             "and the neuron plots change (shown beside scale 1.0), the trajectory "
                                             "does not. Once it is finished (or after /show_generated) the images "
                                             "generated from the same noise at 1.0 and at this scale are shown "
                                             "(streamed); the session info's final_difference is their mean "
                                             "absolute pixel difference in [0, 1] (null before).", **BATCHED)
        c["generated_btn"].click(user_errors(ex.show_generated), [c["threshold"]] + view_in + [state],
                                 outs(THRESHOLD_KEYS), api_name="show_generated", show_progress="hidden",
                                 show_progress_on=[c["status"]],
                                 api_description="Show the images generated from this trajectory's noise at "
                                                 "threshold scale 1.0 and at this scale (streamed), also before "
                                                 "the end; the slider then keeps showing them.", **BATCHED)
        follow(c["timeline"].input(user_errors(ex.scrub), [c["timeline"]] + view_in + [state], outs(SCRUB_KEYS),
                                   api_name="scrub", api_description="View recorded step `step` (1-based).",
                                   show_progress="hidden", show_progress_on=[c["status"]], trigger_mode="always_last",
                                   **INTERACTIVE))
        follow(c["run_btn"].click(on_gpu(user_errors(ex.run_to_end)), [c["threshold"]] + view_in + [state],
                                  outs(VIEW_KEYS), api_name="run_to_end",
                                  api_description="Step to the end with this threshold scale (streams while "
                                                  "running).", **self.view_kw, **BATCHED))
        follow(c["continue_btn"].click(on_gpu(user_errors(ex.continue_from_here)), [c["threshold"]] + view_in + [state],
                                       outs(VIEW_KEYS), api_name="continue_from_here",
                                       api_description="Re-run the viewed step with this threshold scale and carry on "
                                                       "to the end.", **self.view_kw, **HEAVY))
        layer_fn = user_errors(ex.select_layer)
        c["layer"].input(layer_fn, view_in + [state], outs(LAYER_KEYS), api_name="select_layer",
                         show_progress="hidden", api_description="Redraw the neuron plots for a layer, raster mode "
                         "and neuron selection.", **INTERACTIVE)
        for k in ("raster_mode", "neurons"):
            c[k].input(layer_fn, view_in + [state], outs(LAYER_KEYS), api_visibility="private", show_progress="hidden",
                       **INTERACTIVE)
        c["play_btn"].click(user_errors(ex.toggle_play), [c["playing"], state], outs(("timer", "play_btn", "playing")),
                            api_visibility="private", queue=False)
        follow(c["timer"].tick(user_errors(ex.play_tick), [c["threshold"]] + view_in + [c["playing"], state],
                               outs(PLAY_KEYS), api_visibility="private", show_progress="hidden", **INTERACTIVE))

    def heavy_and_page_events(self) -> None:
        """The comparisons, the export, the page load and unload, the view toggle."""
        c, ex, outs, demo = self.c, self.ex, self.outs, self.demo
        threshold, state = c["threshold"], c["state"]
        c["compare_scale_btn"].click(on_gpu(user_errors(ex.compare_scales)), [threshold, state],
                                     outs(COMPARE_SCALE_KEYS), api_name="compare_scales", **HEAVY,
                                     api_description="Final images at threshold scale 1.0 and at this scale, same "
                                                     "noise.")
        c["compare_ann_btn"].click(on_gpu(user_errors(ex.compare_ann)), [threshold, state], outs(COMPARE_ANN_KEYS),
                                   api_name="compare_ann", **HEAVY,
                                   api_description="Final images of the SNN and its ANN counterpart, same noise.")
        c["export_btn"].click(on_gpu(user_errors(ex.export)), [state], outs(EXPORT_KEYS), api_name="export", **HEAVY,
                              api_description="The trajectory as GIF and MP4, the current sample as PNG, the "
                                              "recording as NPZ.")
        self.follow(demo.load(user_errors(ex.on_load), self.new_in,
                              [c["checkpoint"]] + outs(MODEL_KEYS) + outs(VIEW_KEYS), api_visibility="private",
                              show_progress="hidden"), new=True)
        c["mode"].change(None, [c["mode"]], None, js=MODE_JS, api_visibility="private")
        demo.load(None, None, [c["mode"]], js=LOAD_MODE_JS, api_visibility="private")

        def forget_tab(request: gr.Request):
            _forget_tab(demo, ex, request)

        demo.unload(forget_tab)


def build_demo(explorer: Explorer | None = None) -> gr.Blocks:
    """The Blocks app. Loads (and warms up) the default checkpoint once, at build time."""
    ex = explorer or Explorer()
    default = ex.registry.default_name()
    first, model_d, trained = first_view(ex.registry, default, DEFAULT_T)
    presets = lesson_presets(ex.registry, default)
    img_kw = dict(format="png", interactive=False, elem_classes="pixelated", buttons=["download", "fullscreen"])

    with gr.Blocks(title="SDM Explorer · Spiking Diffusion Models", delete_cache=(3600, 7200)) as demo:
        c = dict(state=gr.State(None, time_to_live=STATE_TTL_S, delete_callback=_free_session),
                 playing=gr.State(False), timer=gr.Timer(PLAY_INTERVAL_S, active=False),
                 n_one=RawNumber(value=1, visible=False, label="steps per click", elem_id="n-steps"),
                 n_ten=RawNumber(value=10, visible=False, label="steps per click (x10)", elem_id="n-steps-10"))
        _header(c, presets)
        with gr.Row(equal_height=False, elem_id="main"):           # one screen: controls, image, plots
            _controls(c, ex.registry.names(), default, model_d, trained)
            _images_and_plots(c, first, img_kw)
        with gr.Column(elem_classes="full-only", elem_id="explorer"):   # the full explorer below
            _inside(c, first, model_d, img_kw)
            with gr.Tabs(elem_id="tabs"):
                _rates_tsm_energy(c, first, model_d)
                _compare_export_info(c, first, model_d, img_kw)
            with gr.Accordion("How it works: the spiking UNet, TSM, threshold guidance, and a lesson plan",
                              open=False, elem_id="overview"):
                gr.Markdown(ARCHITECTURE)
        wiring = _Wiring(demo, ex, c)
        wiring.new_trajectory_events(presets)
        wiring.view_events()
        wiring.heavy_and_page_events()
    atexit.register(ex.pool.close_all)       # the sessions' exported files go with the server
    if WARM_PRESETS and presets:
        ex.warm_presets(presets)
        atexit.register(ex.results.stop)     # the warming stops between two steps at shutdown
    demo.queue(default_concurrency_limit=INTERACTIVE_LIMIT, max_size=QUEUE_MAX_SIZE)
    patch_demo(demo)
    return demo


def _forget_tab(demo: gr.Blocks, ex: Explorer, request: gr.Request) -> None:
    """The tab closed (gradio's unload): free its session now, and gradio's copy of the tab's outputs (plots,
    images), which gradio otherwise keeps for an hour in case the tab comes back."""
    owner = _owner(request, None)
    ex.pool.release(owner)
    drop_tab_state(demo, owner)
    release_memory()


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
        globals()["demo"] = freeze_heap(build_demo())
        return globals()["demo"]
    raise AttributeError(f"module 'app' has no attribute {name!r}")


def main() -> None:
    import torch
    # one intra-op thread per request: concurrent users share the cores instead of fighting over them
    torch.set_num_threads(int(os.environ.get("SDM_TORCH_THREADS", "1")))
    demo = freeze_heap(build_demo())
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), **launch_kwargs())


if __name__ == "__main__":
    main()
