"""What the explorer's panels draw from a ``Session``: the plotly figures (spike raster, membrane heatmap and traces,
firing-rate bars and course, TSM weights, energy), the pictures (the sample grid, the filmstrip, x̂₀ at scale 1.0
beside x̂₀ at the slider's scale and their difference) and the markdown beside them (status line, threshold caption,
energy summary, comparison and export notes). ``display`` computes the numbers; this module draws them. Gradio-free:
``app.py`` puts what these return into its components. Only reads the session: the caller holds ``sess.lock``.
"""
from __future__ import annotations

import math

import numpy as np

from .. import imaging, viz
from . import display
from .registry import ModelRegistry
from .session import Session, View

IMAGE_PX = 290                 # x_t is upscaled (nearest neighbour) to about this size: >= 256 px for one image,
                               # >= 64 px per image of a 4x4 grid
SMALL_PX = 130                 # x̂₀ at 1.0, x̂₀ at s, their difference, ε̂
PLOT_H = 300                   # height of the raster and of the rate bars


def grid_image(images01: np.ndarray, target_px: int = IMAGE_PX) -> np.ndarray:
    """[B, C, H, W] in [0, 1] -> one uint8 picture, nearest-neighbour upscaled to about target_px."""
    b, _, h, w = images01.shape
    ncol = int(math.ceil(math.sqrt(b)))
    scale = max(1, int(round(target_px / (ncol * max(h, w)))))
    return imaging.image_grid(images01, nrow=ncol, pad=2 if b > 1 else 0, scale=scale, pad_value=1.0)


FILMSTRIP_SCALE = 3             # the filmstrip's frames: 28 px upscaled 3x, ten of them 873 px wide: shown at its own
FILMSTRIP_CAPTION_PX = 16      # size (never scaled down) in the full explorer, captions in two lines of 16 px


def filmstrip_image(sess: Session) -> np.ndarray:
    """x_t (top row) over x̂₀ (bottom row, captioned with the step and its diffusion step t, in two lines)."""
    xs, x0s, labels = display.filmstrip_frames(sess, max_frames=10)
    top = imaging.filmstrip(xs, max_frames=10, scale=FILMSTRIP_SCALE, pad=3)
    bottom = imaging.filmstrip(x0s, max_frames=10, scale=FILMSTRIP_SCALE, pad=3,
                               captions=[label.replace(" · ", "\n") for label in labels],
                               caption_px=FILMSTRIP_CAPTION_PX)
    sep = np.full((4, top.shape[1], 3), 160, dtype=np.uint8)
    return np.concatenate([top, sep, bottom], axis=0)


def _scale_line(sess: Session) -> str:
    """The threshold scale shown, in the one wording the status line and the preview banner share."""
    rec, pv = sess.current()
    if pv is not None:
        return f"threshold scale s = {pv.scale:.3f} (preview; step recorded at s = {rec.scale:.3f})"
    return f"threshold scale s = {rec.scale:.3f}"


def status_markdown(sess: Session, note: str | None = None) -> str:
    """The status: a heading (the viewed step, its diffusion step t) and one short line under it: ``note`` when
    given (what just happened: ``restart_note``), else what the view shows: a threshold preview, an earlier step,
    the finished image, or the trajectory's settings."""
    rec, pv = sess.current()
    s = sess.settings
    n = sess.num_recorded
    head = f"### Step {rec.index + 1} / {s.num_steps} · diffusion step t = {rec.timestep}"
    if note:
        return f"{head}\n\n{note}"
    lines = []
    if sess.is_done:
        lines.append("✔ **Finished**: x_t is the generated image")
    if pv is not None:
        lines.append(f"**Preview at threshold scale {pv.scale:.3f}** (step recorded at {rec.scale:.3f})")
    if sess.view_index != n - 1:
        lines.append(f"Viewing an earlier step ({n} recorded): *Continue from here* re-runs from it")
    if not lines:
        spikes = (f"T = {s.spiking_steps} spiking steps τ · s = {rec.scale:.3f}" if sess.spiking
                  else "ANN: no spikes")
        grid = f" · {s.grid} images" if s.grid > 1 else ""
        lines.append(f"{s.checkpoint} · {s.sampler.upper()} {s.num_steps} · seed {s.seed}{grid} · {spikes}")
    return f"{head}\n\n" + " · ".join(lines) + "."


def start_noted(sess: Session, pipe, checkpoint: str, shared=None, batcher=None, **settings) -> str | None:
    """``sess.start(pipe, checkpoint, shared=shared, batcher=batcher, **settings)`` and the status note of what the
    new trajectory replaced (``restart_note``), kept on the session. The same request twice (``Session.repeats``: a
    control that fired twice) starts nothing and returns the note of the first, so that "New trajectory: B (was A)"
    is not replaced by a bare "New trajectory"."""
    if not sess.repeats(pipe, checkpoint, **settings):
        before = (sess.settings, sess.num_recorded, sess.records[0].scale) if sess.started else None
        sess.start(pipe, checkpoint, shared=shared, batcher=batcher, **settings)
        sess.restart_note = restart_note(before, sess)
    return sess.restart_note


def restart_note(before: tuple | None, sess: Session) -> str | None:
    """What the status says after a new trajectory replaced another one, so that no restart goes unnoticed (a
    change of T, of a DDIM step preset, of the checkpoint mid-run): the settings that changed and, if the old one
    was unfinished, where it stopped. ``before``: (the old ``Settings``, steps it had recorded, the threshold scale
    of its first step), None when there was none. None when nothing is worth saying (same settings, the old one finished)."""
    if before is None:
        return None
    old, recorded, old_scale = before
    new = sess.settings
    changed = []
    if new.checkpoint != old.checkpoint:
        changed.append(f"{new.checkpoint} (was {old.checkpoint})")
    if (new.sampler, new.num_steps) != (old.sampler, old.num_steps):
        changed.append(f"{new.sampler.upper()} {new.num_steps} steps (was {old.sampler.upper()} {old.num_steps})")
    if new.spiking_steps != old.spiking_steps and sess.spiking:
        changed.append(f"T = {new.spiking_steps} spiking steps τ (was {old.spiking_steps})")
    if new.seed != old.seed:
        changed.append(f"seed {new.seed} (was {old.seed})")
    if new.grid != old.grid:
        changed.append(f"{new.grid} image{'s' if new.grid > 1 else ''} (was {old.grid})")
    scale = sess.records[0].scale
    if sess.spiking and old_scale is not None and scale != old_scale:
        changed.append(f"s = {scale:.3f} (was {old_scale:.3f})")
    unfinished = recorded < old.num_steps
    if not changed and not unfinished:
        return None
    note = "**New trajectory**" + (": " + ", ".join(changed) if changed else "")
    if unfinished:
        note += f"; the previous one stopped at step {recorded} of {old.num_steps}"
    return note + "."


def paused_note(sess: Session, budget_s: float) -> str:
    """The notice of a run stopped by its time budget, counting steps as the status does (step k of N)."""
    return (f"Paused at step {sess.num_recorded} of {sess.settings.num_steps}: one request computes for at most "
            f"{budget_s:.0f} s on this shared server. Press the button again to go on.")


def superseded_note(what: str) -> str:
    """The notice of a run stopped because its trajectory was replaced while it ran (a new trajectory, another
    checkpoint or setting)."""
    return (f"{what} stopped: a new trajectory was started (the checkpoint or a setting changed) while it ran; "
            "the status shows the new one.")


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
        k = sess.view_index
        fig.add_vrect(x0=k * T - 0.5, x1=(k + 1) * T - 0.5, fillcolor="#56B4E9", opacity=0.25, line_width=0,
                      layer="below")          # the viewed step
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


def tsm_figures(pipe, layer: str | None, spiking_steps: int | None = None):
    """TSM heatmap (all layers) and curve (one layer) of the weights a run at ``spiking_steps`` T uses (None: the
    trained T)."""
    weights = pipe.run_tsm_weights(spiking_steps)   # checked once, where the session took it
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
    return (f"**s = {effect['scale']:.3f} vs 1.0**, same x_t. {_spike_change(effect)}: {spike_direction(effect)}. "
            f"Mean |x̂₀ difference| = {effect['mean_abs_diff']:.3f}.")


def spike_direction(effect: dict) -> str:
    """The spike change between scale 1.0 and the scale shown, worded from its sign, beside what that scale does on
    average: 'fewer spikes, as s > 1 gives on average', 'fewer spikes here, although s < 1 gives more on
    average'."""
    a, b, s = effect["base_spikes"], effect["spikes"], effect["scale"]
    here = "fewer" if b < a else "more" if b > a else "as many"
    usual = "fewer" if s > 1 else "more"
    if here == usual:
        return f"{here} spikes, as s {'>' if s > 1 else '<'} 1 gives on average"
    return f"{here} spikes here, although s {'>' if s > 1 else '<'} 1 gives {usual} on average"


def no_ann_reason(checkpoint: str) -> str:
    """Why a spiking checkpoint's energy is shown without an ANN figure."""
    return (f"no ANN counterpart checkpoint for {checkpoint} (looked for the card's `ann_counterpart` and for "
            "`<data set>-ann`), so no ANN energy to compare with")


def trio_caption(sess: Session) -> str:
    """The words that say what the side-by-side pictures show: the images generated from the same noise at 1.0 and
    at s, or the viewed step's x̂₀ at 1.0 and at s. Empty for an ANN."""
    if not sess.spiking:
        return ""
    g = sess.generated_now()
    if g is not None:
        head = f"**Generated images from the same noise: s = 1.000 vs s = {g.scale:.3f}**"
        if g.done:
            return f"{head} · mean |difference| {g.final_difference:.3f}"
        return f"{head} · generating at s: step {g.steps_done} / {g.num_steps}…"
    rec, pv = sess.current()
    return f"**Step {rec.index + 1} preview: x̂₀ at s = 1.000 vs s = {(pv or rec).scale:.3f}**"


def trio_markdown(sess: Session) -> str:
    """The caption under the side-by-side pictures, one paragraph: ``trio_caption``, then what changed at the viewed
    step (``threshold_markdown``; with the generated images, only its change in spikes)."""
    if not sess.spiking or sess.generated_now() is None:
        if not sess.spiking:
            return threshold_markdown(sess)
        rec, _ = sess.current()
        return f"**Step {rec.index + 1} preview:** {threshold_markdown(sess)}"
    effect = display.threshold_effect(sess)
    if effect is None or effect["scale"] == 1.0:
        return f"{trio_caption(sess)} · move the slider to generate at another scale."
    return (f"{trio_caption(sess)} · step {sess.current()[0].index + 1}, s = {effect['scale']:.3f} vs 1.0: "
            f"{_spike_change(effect)}")


def energy_markdown(sess: Session) -> str:
    """The energy summary: the SNN's, against its own ANN counterpart's (``Settings.ann_counterpart``) or, when it
    has none, alone and saying why."""
    e = display.energy(sess)
    part = f"{e['steps']} of {e['num_steps']} steps" if e["steps"] < e["num_steps"] else f"all {e['steps']} steps"
    if not e["spiking"]:
        return (f"**{sess.settings.checkpoint} is an ANN**: no spikes; every layer multiplies and accumulates "
                f"(4.6 pJ per MAC). Energy per image, {part}: **{e['energy_mj']:.4g} mJ**.")
    head = (f"**Energy per image, this trajectory ({part}, T = {sess.settings.spiking_steps} spiking steps τ)**\n\n"
            f"Synaptic operations: **{e['sops']:.3g} SOPs** · SNN ≈ **{e['energy_mj']:.4g} mJ**")
    ann = sess.settings.ann_counterpart
    if ann is None:
        reason = no_ann_reason(sess.settings.checkpoint)
        return f"{head}\n\n{reason[:1].upper()}{reason[1:]}."
    return (f"{head} · ANN counterpart ({ann}) ≈ **{e['ann_mj']:.4g} mJ**\n\n"
            f"### SNN / ANN energy = {e['ratio']:.2f}  (the ANN needs {e['ann_factor']:.1f}× more)")


def energy_figure(sess: Session):
    e = display.energy(sess)
    has_ann = sess.spiking and sess.settings.ann_counterpart is not None
    return viz.energy_bars(e["energy_mj"], e["ann_mj"] if has_ann else None)




def threshold_pictures(sess: Session) -> dict:
    """x̂₀ at scale 1.0, at the scale shown and their difference, as pictures (the preview's when previewing); the
    images generated at 1.0 and at s from the same noise instead once they are shown (``Session.generated_now``)."""
    g = sess.generated_now()
    if g is not None:
        diff = imaging.diff_to_rgb(g.image - g.base, display.DIFF_DISPLAY_RANGE)
        return {"img_x0_base": grid_image(imaging.to_display(g.base), SMALL_PX),
                "img_x0": grid_image(imaging.to_display(g.image), SMALL_PX), "img_diff": grid_image(diff, SMALL_PX)}
    effect = display.threshold_effect(sess)
    if effect is None:                   # the scale-1.0 run is missing (a streamed update): leave them alone
        return {}
    diff = imaging.diff_to_rgb(effect["diff"], display.DIFF_DISPLAY_RANGE)
    return {"img_x0_base": grid_image(effect["base_x0"], SMALL_PX), "img_x0": grid_image(effect["x0"], SMALL_PX),
            "img_diff": grid_image(diff, SMALL_PX)}


def model_panels(registry: ModelRegistry, checkpoint, layer=None) -> dict:
    """What the checkpoint-level views show: summary, layers, the chosen layer (``layer`` if it is one of the
    checkpoint's, else the one where threshold guidance shows best: ``display.default_layer``), TSM figures,
    notes. A listed checkpoint that cannot be loaded gives ``ok=False`` and its error as the summary; an
    unknown name raises ValueError."""
    checkpoint = registry.check_name(checkpoint)
    try:
        pipe = registry.get(checkpoint)
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
                ann_note=display.ann_note(checkpoint, pipe, registry.ann_counterpart(checkpoint)))


def compare_scales_markdown(sess: Session, r: dict) -> str:
    """The note under the two final images of ``compare.compare_scales`` (its result ``r``)."""
    eb, es = r["base_energy"], r["scaled_energy"]
    s = sess.settings
    return (f"Same seed ({s.seed}) and noise, {s.num_steps} {s.sampler.upper()} steps, T = {s.spiking_steps}. "
            f"Mean |difference| = {r['mean_abs_diff']:.3f} (pixel range 0-2).\n\nEnergy per image: scale 1.000 → "
            f"{eb['energy_mj']:.4g} mJ ({eb['sops']:.3g} SOPs); scale {r['scale']:.3f} → {es['energy_mj']:.4g} mJ "
            f"({es['sops']:.3g} SOPs).")


def compare_ann_markdown(sess: Session, r: dict) -> str:
    """The note under the SNN and ANN final images of ``compare.compare_ann`` (its result ``r``)."""
    es, ea = r["snn_energy"], r["ann_energy"]
    s = sess.settings
    return (f"**{s.checkpoint}** (threshold scale {r['scale']:.3f}, T = {s.spiking_steps}) "
            f"vs **{r['ann_name']}**, seed {s.seed}, same x_T and noise.\n\nEnergy per image: SNN "
            f"{es['energy_mj']:.4g} mJ ({es['sops']:.3g} SOPs) · ANN {ea['energy_mj']:.4g} mJ → SNN / ANN = "
            f"**{r['energy_ratio']:.2f}**")


def export_markdown(sess: Session) -> str:
    """The note beside the files of ``trajectory_export.export``."""
    s = sess.settings
    return (f"Exported {sess.num_recorded} of {s.num_steps} steps of {s.checkpoint} (seed {s.seed}). "
            "The NPZ holds x_t / x̂₀ / ε̂ of every step, the firing rates of every layer, and the spikes and "
            f"membrane potentials of {sess.max_neurons} neurons per layer of image 1 "
            "(read it with `sdm.export.load_npz`).")
