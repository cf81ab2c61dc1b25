"""What the explorer's panels show, computed from a ``Session`` as plain data (numpy arrays, dicts, numbers): the
viewed step's images, probes and firing rates, the threshold-guidance comparison (scale 1.0 against the slider's),
the course of the rates over the trajectory, the filmstrip, the energy against the ANN counterpart, the neurons to
trace, the checkpoint's notes, and the layer names every label uses. Only reads the session: the caller holds
``sess.lock`` around a group of calls for a consistent snapshot.

Vocabulary of every label: the *diffusion step t* (the timestep the denoiser is asked about, 999 ... 0) and the
*spiking step τ* (one of the T time steps of a single denoiser call).
"""
from __future__ import annotations

import functools
import hashlib
import html
import math

import numpy as np
import torch

from .. import imaging
from ..pipeline import SpikingDiffusionPipeline
from .session import Session
from .validation import MAX_NEURONS

__all__ = ["EPS_DISPLAY_RANGE", "DIFF_DISPLAY_RANGE", "layer_label", "layer_stage", "default_layer", "view_images",
           "threshold_effect", "probe", "rates", "mean_firing_rate", "spike_counts", "trajectory_spikes",
           "rate_course", "energy", "filmstrip_frames", "auto_neurons", "traced_neurons", "info", "tsm_note",
           "ann_note"]

EPS_DISPLAY_RANGE = 3.0             # eps is shown mapped from [-3, 3] to black..white
DIFF_DISPLAY_RANGE = 0.5            # x̂₀(s) - x̂₀(1.0) is shown mapped from [-0.5, 0.5] (model space) to blue..red
DEFAULT_LAYER_STEPS = 10            # DDIM steps of the run that picks the default layer

_PARTS = {"down": "Down", "up": "Up", "mid": "Middle", "out": "Output"}


def layer_label(name: str, code: bool = False) -> str:
    """The one name of a layer in every label: 'down.0.blocks.1.conv2.act' -> 'Down 1 · block 2 · conv 2',
    'mid.0.conv1.act' -> 'Middle · block 1 · conv 1', 'up.1.upsample.act' -> 'Up 2 · upsample', 'out.act' ->
    'Output' (levels and blocks counted from 1, in forward order). ``code=True`` appends the code name, small
    (HTML, for plot titles and markdown)."""
    parts = [p for p in name.split(".") if p not in ("act", "")]
    if not parts or parts[0] not in _PARTS:
        label = name
    else:
        out = [_PARTS[parts[0]]]
        rest = parts[1:]
        if parts[0] in ("down", "up") and rest and rest[0].isdigit():
            out[0] += f" {int(rest[0]) + 1}"
            rest = rest[1:]
        elif parts[0] == "mid" and rest and rest[0].isdigit():
            out.append(f"block {int(rest[0]) + 1}")
            rest = rest[1:]
        i = 0
        while i < len(rest):
            p = rest[i]
            if p == "blocks" and i + 1 < len(rest) and rest[i + 1].isdigit():
                out.append(f"block {int(rest[i + 1]) + 1}")
                i += 2
                continue
            out.append(f"conv {p[4:]}" if p.startswith("conv") and p[4:].isdigit() else p)
            i += 1
        label = " · ".join(out)
    if code:
        label += f" <span style='font-size:0.7em;color:#666'>{html.escape(name)}</span>"
    return label


def layer_stage(name: str) -> str:
    """'down' | 'mid' | 'up' | 'out': the part of the UNet a layer belongs to."""
    head = name.split(".", 1)[0]
    return head if head in ("down", "mid", "up") else "out"


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _shown_record(sess: Session, index: int):
    """The record of step ``index``, or the threshold preview when it is of that step."""
    pv = sess.preview_data
    return pv if (pv is not None and pv.index == index) else sess.records[index]


@functools.lru_cache(maxsize=32)
def default_layer(pipe: SpikingDiffusionPipeline) -> str | None:
    """The layer the neuron plots open on: the one where threshold guidance changes the raster most reliably.
    Measured once per loaded model on the 10 inputs x_t of a seed-0 DDIM-10 trajectory: the drop of the recorded
    neurons' spikes from scale 0.9 to 1.1 at each input; the layer whose smallest drop is largest (ties: the
    largest total drop). The first layer for an ANN, None without layers."""
    names = pipe.layer_names()
    if not names or not pipe.config.spiking:
        return names[0] if names else None
    drops = {n: [] for n in names}
    with torch.no_grad():
        for out in pipe.steps(seed=0, num_inference_steps=DEFAULT_LAYER_STEPS):
            counts = {}
            for scale in (0.9, 1.1):
                _, frames = pipe.denoise(out.model_input, out.timestep, scale, record=True, max_neurons=MAX_NEURONS)
                counts[scale] = {n: int(f.spikes.sum()) for n, f in frames.items()}
            for n in names:
                drops[n].append(counts[0.9][n] - counts[1.1][n])
    return max(names, key=lambda n: (min(drops[n]), sum(drops[n])))


def view_images(sess: Session) -> dict[str, np.ndarray]:
    """x_t, x̂₀, ε̂ of the viewed step (the preview's x̂₀ / ε̂ when previewing): float32 [B, C, H, W] in [0, 1];
    ε̂ is mapped from [-3, 3]."""
    rec, pv = sess.current()
    src = pv or rec
    return {"x_t": imaging.to_display(rec.x_t), "x0": imaging.to_display(src.x0.astype(np.float32)),
            "eps": imaging.to_display(src.eps.astype(np.float32) / EPS_DISPLAY_RANGE)}


def spike_counts(sess: Session, rec) -> dict[str, float]:
    """Spikes per image of every spiking layer (all its neurons, all T spiking steps) in a record or preview."""
    T = sess.settings.spiking_steps
    return {n: r * sess.num_neurons.get(n, 0) * T for n, r in rec.rates.items()}


def threshold_effect(sess: Session, layer: str | None = None) -> dict | None:
    """Threshold guidance at a glance: the viewed step at scale 1.0 against the step as shown (at the slider's scale
    when previewing). None until the scale-1.0 run exists (``Session.ensure_base``).

    Returns {"base_scale": 1.0, "scale", "base_x0", "x0" (display [B, C, H, W] in [0, 1]), "diff" (x̂₀(s) - x̂₀(1.0),
    model space, float32 [B, C, H, W]), "mean_abs_diff", "base_rates", "rates" ({layer: rate}), "base_spikes",
    "spikes" (spikes per image, all layers), "layer", "layer_base_spikes", "layer_spikes" (recorded neurons of
    ``layer`` in the raster, image 0; None for an ANN), "spiking"}."""
    rec, pv = sess.current()
    shown = pv or rec
    base = sess.base_record()
    if base is None:
        return None
    x0, b0 = shown.x0.astype(np.float32), base.x0.astype(np.float32)
    base_counts, counts = spike_counts(sess, base), spike_counts(sess, shown)
    layer_spikes = layer_base = None
    if layer and layer in shown.spikes and layer in base.spikes:
        layer_spikes, layer_base = int(shown.spikes[layer].sum()), int(base.spikes[layer].sum())
    return {"base_scale": 1.0, "scale": shown.scale, "base_x0": imaging.to_display(b0), "x0": imaging.to_display(x0),
            "diff": x0 - b0, "mean_abs_diff": float(np.abs(x0 - b0).mean()), "base_rates": dict(base.rates),
            "rates": dict(shown.rates), "base_spikes": float(sum(base_counts.values())),
            "spikes": float(sum(counts.values())), "layer": layer, "layer_base_spikes": layer_base,
            "layer_spikes": layer_spikes, "spiking": sess.spiking}


def probe(sess: Session, layer: str) -> dict | None:
    """The viewed step's probe of ``layer`` (image 0): spikes bool [T, N], v float16 [T, N], threshold,
    num_neurons M, neuron_index [N]. None for an ANN (no spikes)."""
    rec, pv = sess.current()
    src = pv or rec
    if layer not in src.spikes:
        return None
    return {"spikes": src.spikes[layer], "v": src.v[layer], "threshold": src.thresholds[layer],
            "num_neurons": sess.num_neurons[layer], "neuron_index": sess.neuron_index[layer]}


def rates(sess: Session) -> dict[str, float]:
    """Firing rate per layer at the viewed step (the preview's when previewing), layers in forward order."""
    rec, pv = sess.current()
    return dict((pv or rec).rates)


def mean_firing_rate(sess: Session, layer_rates: dict[str, float]) -> float | None:
    """The neuron-weighted mean of per-layer firing rates (None when there are none: an ANN)."""
    if not layer_rates:
        return None
    w = np.array([sess.num_neurons.get(n, 1) for n in layer_rates], dtype=np.float64)
    return float(np.dot(w, list(layer_rates.values())) / w.sum())


def trajectory_spikes(sess: Session, layer: str) -> tuple[list[np.ndarray], list[int]]:
    """Spikes [T, N] of ``layer`` for every recorded step (the preview substituted at the viewed step) and the
    steps' timesteps; ([], []) for an ANN."""
    sess.require()
    out = [_shown_record(sess, r.index).spikes.get(layer) for r in sess.records]
    if any(a is None for a in out):
        return [], []
    return out, [r.timestep for r in sess.records]


def rate_course(sess: Session, layer: str | None = None) -> tuple[dict[str, list[float]], list[int]]:
    """Firing rate over the recorded steps: the neuron-weighted mean of each part of the UNet (down, mid, up, out)
    and, last (drawn on top), the selected layer. Returns ({line name: rates}, diffusion steps t)."""
    sess.require()
    if not sess.spiking or not sess.records:
        return {}, []
    stages: dict[str, list[str]] = {}
    for name in sess.layers:
        if name in sess.num_neurons:
            stages.setdefault(layer_stage(name), []).append(name)
    selected = f"{layer_label(layer)} (selected)" if layer and layer in sess.num_neurons else None
    lines: dict[str, list[float]] = {f"{st} (mean)": [] for st in stages}
    if selected:
        lines[selected] = []
    weights = {st: np.array([sess.num_neurons[n] for n in names], dtype=np.float64) for st, names in stages.items()}
    for r in sess.records:
        step_rates = _shown_record(sess, r.index).rates
        if selected:
            lines[selected].append(step_rates[layer])
        for st, names in stages.items():
            w = weights[st]
            lines[f"{st} (mean)"].append(float(np.dot(w, [step_rates[n] for n in names]) / w.sum()))
    return lines, [r.timestep for r in sess.records]


def energy(sess: Session) -> dict:
    """SOPs and energy per image over the recorded steps (exact spikes of this trajectory): {"steps", "num_steps",
    "sops", "energy_mj" (this model), "ann_mj" (its ANN counterpart over the same calls), "ratio" (model / ANN,
    NaN without an ANN figure), "ann_factor" (how many times more the ANN needs), "spiking"}."""
    sess.require()
    sops = float(sum(r.sops for r in sess.records))
    mj = float(sum(r.energy_mj for r in sess.records))
    ann = float(sum(r.ann_mj for r in sess.records))
    ratio = mj / ann if ann else float("nan")
    return {"steps": len(sess.records), "num_steps": sess.settings.num_steps, "sops": sops, "energy_mj": mj,
            "ann_mj": ann, "ratio": ratio, "ann_factor": 1 / ratio if ratio else float("inf"),
            "spiking": sess.spiking}


def filmstrip_frames(sess: Session, max_frames: int = 10) -> tuple[list[np.ndarray], list[np.ndarray | None],
                                                                    list[str]]:
    """Image 0 along the trajectory so far: (x_t frames, x̂₀ frames, captions), at most ``max_frames`` evenly spaced
    columns, the current sample last. Frames are display [C, H, W]. Captions name the step and its diffusion step t
    ("step 3 · t=939"). The last column is the sample after the newest step: the generated image ("final", in both
    rows) once the trajectory is finished, else the next x_t ("next x_t"), which has no x̂₀ yet (None)."""
    sess.require()
    n = len(sess.records)
    xs, x0s, labels = [], [], []
    for i in imaging.pick_frames(n + 1, max_frames):
        if i < n:
            r = sess.records[i]
            xs.append(imaging.to_display(r.x_t[0]))
            x0s.append(imaging.to_display(r.x0[0].astype(np.float32)))
            labels.append(f"step {i + 1} · t={r.timestep}")
        else:
            xs.append(imaging.to_display(sess.x[0]))
            x0s.append(imaging.to_display(sess.x[0]) if sess.is_done else None)
            labels.append("final" if sess.is_done else "next x_t")
    return xs, x0s, labels


def auto_neurons(spikes: np.ndarray, v: np.ndarray, k: int = 4) -> list[int]:
    """k recorded neurons spread from the most to the least active (spike count, then peak potential)."""
    n = spikes.shape[1]
    order = np.lexsort((v.astype(np.float32).max(axis=0), spikes.sum(axis=0)))   # ascending activity
    picks = [int(order[int(round(q * (n - 1)))]) for q in np.linspace(1, 0, min(k, n))]
    return list(dict.fromkeys(picks))


def traced_neurons(sess: Session, layer: str, neurons: list[int]) -> list[int]:
    """The neurons whose membrane traces are drawn: the chosen ones, else four from most to least active."""
    if neurons:
        return list(neurons)
    p = probe(sess, layer)
    return auto_neurons(p["spikes"], p["v"]) if p is not None else []


def info(sess: Session) -> dict:
    """A JSON-able summary of the session (for the API and the tests). Its energy has ANN figures only when the
    checkpoint has an ANN counterpart (``ann_counterpart``, from ``Settings``)."""
    rec, pv = sess.current()
    s = sess.settings
    layer_rates = rates(sess)
    e = energy(sess)
    g = sess.generated_now()
    # a spiking model without an ANN counterpart checkpoint has no ANN figure to compare with
    no_ann = ("ann_mj", "ratio", "ann_factor") if sess.spiking and s.ann_counterpart is None else ()
    return {
        "checkpoint": s.checkpoint, "seed": s.seed, "sampler": s.sampler, "num_steps": s.num_steps,
        "grid_size": s.grid, "steps_done": len(sess.records), "done": sess.is_done,
        "time_steps": s.spiking_steps, "trained_time_steps": sess.pipe.config.time_steps,
        "step": sess.view_index + 1, "timestep": rec.timestep, "recorded_scale": rec.scale,
        "threshold_scale": pv.scale if pv else rec.scale, "previewing": pv is not None,
        "x0_mean": float((pv or rec).x0.astype(np.float32).mean()), "x0_digest": _digest((pv or rec).x0),
        "sample_digest": _digest(sess.x), "mean_firing_rate": mean_firing_rate(sess, layer_rates),
        "firing_rates": {k: round(v, 6) for k, v in layer_rates.items()},
        "energy": {k: (None if isinstance(v, float) and not math.isfinite(v) or k in no_ann else v)
                   for k, v in e.items()},
        "ann_counterpart": s.ann_counterpart,
        "state_mb": round(sess.nbytes() / 2 ** 20, 3),
        # the images generated at s and at 1.0 from the same noise, once shown: their mean |pixel difference|
        "final_difference": g.final_difference if g is not None else None,
        "final_difference_scale": g.scale if g is not None and g.done else None,
    }


TSM_RULE = ("Run at more spiking steps than it was trained for, each layer repeats its last learned weight p[T−1] "
            "for the steps beyond; at fewer, it uses the first T weights.")


def tsm_note(pipe: SpikingDiffusionPipeline, time_steps: int | None = None) -> str:
    """What the TSM panel says of a checkpoint run at ``time_steps`` spiking steps τ (None: the trained T)
    (markdown)."""
    c = pipe.config
    if not c.spiking:
        return "**This checkpoint is an ANN: it has no spiking time steps and no TSM.**"
    T = c.T if time_steps is None else int(time_steps)
    if c.tsm and T != c.T:
        how = (f"the steps τ ≥ {c.T} repeat the last learned weight (hollow markers)" if T > c.T
               else f"only the first {T} learned weights are used")
        return f"TSM is on, learned for T = {c.T} spiking steps; this trajectory runs T = {T}: {how}."
    conv = pipe.card.get("conversion") if isinstance(pipe.card, dict) else None
    if not c.tsm and isinstance(conv, dict):
        return (f"**This model has no TSM**: it was converted from a {conv.get('bits', '?')}-bit quantised ANN "
                f"({conv.get('source', '?')}) to IF neurons with T = {c.T}, whose thresholds are the ANN's clip "
                "values; every time step gets the same weights.")
    if not c.tsm:
        return (f"**This model has no TSM** (vanilla SDM): every one of its T = {c.T} time steps gets the same "
                "input current.")
    return (f"TSM is on: each layer learned one weight per spiking step τ (T = {c.T}) that scales its input "
            f"current. Weights above 1 make that step more likely to spike. {TSM_RULE}")


def ann_note(checkpoint: str, pipe: SpikingDiffusionPipeline, ann: str | None) -> str:
    """What the Compare panel says of a checkpoint's ANN counterpart (markdown)."""
    if not pipe.config.spiking:
        return f"**{checkpoint} is itself an ANN**: pick a spiking checkpoint to compare it with its ANN."
    if ann:
        return f"ANN counterpart: **{ann}** (same UNet, SiLU activations, T = 1)."
    return (f"No ANN counterpart checkpoint found for {checkpoint} (looked for the card's `ann_counterpart` and "
            f"for `<data set>-ann`).")
