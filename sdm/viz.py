"""Plotly figures for the SDM Explorer: spike rasters, membrane potentials, firing rates, TSM weights, energy.

Pure functions: numpy arrays in, plotly ``go.Figure`` objects out. Nothing here touches the model, the file system
or gradio; the images themselves (grids, film strips) come from :mod:`sdm.imaging`.

Conventions
    * Spikes of one probe are bool ``[T, N]`` (spiking time steps x recorded neurons), membrane potentials
      are ``[T, N]`` in threshold units. Select the batch item before calling (``frame.spikes[:, b]``).
    * Two different steps, two names in every label: the *diffusion step t* (timestep of the reverse process,
      999 ... 0) and the *spiking step τ* (one of the T time steps of one denoiser call).

All figures share one template (:data:`TEMPLATE`): white background, black axes, big fonts and a
colour-blind-safe palette, so that they stay readable on a classroom projector.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

__all__ = [
    "TEMPLATE", "PALETTE", "NO_TSM_MESSAGE", "MAX_RASTER_MARKERS", "DIFFUSION_STEP", "SPIKING_STEP",
    "spike_raster", "spike_raster_trajectory", "membrane_heatmap", "membrane_traces",
    "firing_rate_bars", "firing_rate_course", "tsm_heatmap", "tsm_curve", "energy_bars", "empty_figure",
]

# ----------------------------------------------------------------------------------------------- style

FONT_SIZE = 18
INK = "#111111"
GRID = "#D0D0D0"
#: Okabe-Ito (colour-blind safe) first, then a few more dark, high-contrast colours.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
           "#882255", "#44AA99", "#999933")
DASHES = ("solid", "dash", "dot", "dashdot")
DIVERGING = "RdBu_r"

NO_TSM_MESSAGE = "This model has no TSM weights (TSM off)"
DIFFUSION_STEP = "diffusion step t"
SPIKING_STEP = "spiking step τ"
#: Above this many spikes :func:`spike_raster_trajectory` draws a random (seeded) subsample.
MAX_RASTER_MARKERS = 200_000


def _axis_style() -> dict:
    return dict(
        showline=True, linecolor=INK, linewidth=2, mirror=False,
        ticks="outside", tickcolor=INK, tickwidth=2, ticklen=6,
        tickfont=dict(size=FONT_SIZE - 2, color=INK),
        title=dict(font=dict(size=FONT_SIZE, color=INK)),
        showgrid=True, gridcolor=GRID, zeroline=False, automargin=True,
    )


#: The one template every figure of this module uses.
TEMPLATE = go.layout.Template(
    layout=go.Layout(
        font=dict(family="Arial, Helvetica, sans-serif", size=FONT_SIZE, color=INK),
        title=dict(font=dict(size=FONT_SIZE + 4, color=INK), x=0.01, xanchor="left"),
        paper_bgcolor="white",
        plot_bgcolor="white",
        colorway=list(PALETTE),
        xaxis=_axis_style(),
        yaxis=_axis_style(),
        legend=dict(font=dict(size=FONT_SIZE - 2), bgcolor="rgba(255,255,255,0.85)"),
        hoverlabel=dict(font=dict(size=FONT_SIZE - 2)),
        margin=dict(l=80, r=30, t=90, b=70),
        height=480,
    ),
    data=dict(
        heatmap=[go.Heatmap(colorbar=dict(
            outlinecolor=INK, outlinewidth=1, thickness=22,
            tickfont=dict(size=FONT_SIZE - 2), title=dict(font=dict(size=FONT_SIZE - 2))))],
    ),
)


def _figure(title: str = "", height: int | None = None, subtitle: str = "", data=None, **layout) -> go.Figure:
    """A figure of the house template. ``subtitle``: a second, smaller title line (what step, which scale), so
    that the title itself stays short enough for a narrow panel; the plot area moves down to leave room for it
    and for a note above the plot. ``data`` (traces) and further ``layout`` keys are given at construction: plotly
    validates every later update on its own, which is what makes building a figure slow."""
    layout = dict(layout, template=TEMPLATE)
    if title or subtitle:
        layout["title"] = dict(text=title)
    if subtitle:
        layout["title"]["subtitle"] = dict(text=subtitle, font=dict(size=FONT_SIZE - 2, color="#444444"))
        layout["margin"] = dict(t=TEMPLATE.layout.margin.t + 16)
    if height is not None:
        layout["height"] = int(height)
    return go.Figure(data=data, layout=layout)


def _note_annotation(text: str) -> dict:
    """A small annotation in the top-right corner, just above the plot area."""
    return dict(text=text, xref="paper", yref="paper", x=1.0, y=1.0, xanchor="right", yanchor="bottom",
                showarrow=False, font=dict(size=FONT_SIZE - 2, color=INK))


def _centre_annotation(text: str) -> dict:
    return dict(text=text, xref="paper", yref="paper", x=0.5, y=0.5, xanchor="center", yanchor="middle",
                showarrow=False, font=dict(size=FONT_SIZE + 4, color=INK), bgcolor="rgba(255,255,255,0.85)")


def _hline(y: float, text: str) -> tuple[dict, dict]:
    """A dashed horizontal line across the plot at ``y`` and its label (top left): a shape and an annotation."""
    return (dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=y, y1=y,
                 line=dict(dash="dash", color=INK, width=2)),
            dict(text=text, xref="paper", x=0, yref="y", y=y, xanchor="left", yanchor="bottom", showarrow=False,
                 font=dict(size=FONT_SIZE - 2, color=INK)))


def _note(fig: go.Figure, text: str) -> None:
    fig.add_annotation(**_note_annotation(text))


def _centre_message(fig: go.Figure, text: str) -> None:
    fig.add_annotation(**_centre_annotation(text))


def empty_figure(message: str, title: str = "", height: int | None = None) -> go.Figure:
    """A figure with hidden axes and only ``message`` centred in it (placeholders, "nothing to show")."""
    fig = _figure(title, height)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    _centre_message(fig, message)
    return fig


def _fmt(x: float) -> str:
    return f"{x:.3g}"


# ---------------------------------------------------------------------------------------------- spikes

def _check_spikes(spikes, what: str = "spikes") -> np.ndarray:
    a = np.asarray(spikes)
    if a.ndim != 2:
        hint = " (select one batch item, e.g. frame.spikes[:, 0])" if a.ndim == 3 else ""
        raise ValueError(f"{what}: expected a [T, N] array, got shape {tuple(a.shape)}{hint}")
    return a.astype(bool, copy=False)


def _check_total(total_neurons, n: int) -> int:
    if isinstance(total_neurons, bool) or not isinstance(total_neurons, (int, np.integer)):
        raise ValueError(f"total_neurons must be an integer, got {total_neurons!r}")
    if total_neurons < n:
        raise ValueError(f"total_neurons ({total_neurons}) is smaller than the {n} recorded neurons")
    return int(total_neurons)


def _showing(n: int, m: int) -> str:
    return f"showing {n:,} of {m:,} neurons"


def _neuron_axis(n: int) -> dict:
    return dict(title=dict(text="recorded neuron"), range=[-0.5, max(n, 1) - 0.5], showgrid=False)


def spike_raster(spikes, total_neurons: int, title: str = "", subtitle: str = "", note: str = "",
                 height: int | None = None) -> go.Figure:
    """Spike raster of one layer for one denoiser call: one marker per spike.

    Args:
        spikes: bool ``[T, N]`` (spiking step τ x recorded neuron).
        total_neurons: neurons M of the whole layer (N of them are recorded).
        title: figure title (default "Spike raster"); ``subtitle`` a smaller second line.
        note: appended to the annotation (e.g. the spike count at another threshold scale).

    Returns:
        Figure with one trace named "spikes" (x = spiking step τ, y = neuron index); the annotation reads
        "showing N of M neurons · k spikes", or "... · no spikes" (plus a centred "no spikes").
    """
    s = _check_spikes(spikes)
    T, N = s.shape
    M = _check_total(total_neurons, N)
    t, n = np.nonzero(s)
    size = float(np.clip(300.0 / max(N, 1), 4, 16))
    k = int(t.size)
    notes = [_note_annotation(f"{_showing(N, M)} · " + (f"{k:,} spikes" if k else "no spikes")
                              + (f" · {note}" if note else ""))]
    if k == 0:
        notes.append(_centre_annotation("no spikes"))
    return _figure(
        title or "Spike raster", height, subtitle,
        data=[go.Scatter(x=t.astype(np.int32), y=n.astype(np.int32), mode="markers", name="spikes", showlegend=False,
                         marker=dict(symbol="line-ns", size=size, color=INK, line=dict(width=2.5, color=INK)),
                         hovertemplate="τ = %{x}<br>neuron %{y}<extra></extra>")],
        annotations=notes, yaxis=_neuron_axis(N),
        xaxis=dict(title=dict(text=SPIKING_STEP), range=[-0.5, max(T, 1) - 0.5], dtick=1 if T <= 32 else None))


def _thin(n: int, k: int) -> np.ndarray:
    """At most k evenly spaced indices out of n (first and last included)."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(int))


def spike_raster_trajectory(spikes: Sequence, step_labels: Sequence, total_neurons: int,
                            title: str = "", max_markers: int = MAX_RASTER_MARKERS,
                            max_separators: int = 200, max_ticks: int = 20, subtitle: str = "",
                            height: int | None = None) -> go.Figure:
    """Spike raster over a whole reverse-diffusion run: denoising steps side by side.

    Args:
        spikes: list (one per diffusion step, in display order) of bool ``[T, N]``, all the same shape.
        step_labels: one label per entry of ``spikes`` (e.g. the diffusion step t), shown as x tick labels.
        total_neurons: neurons M of the whole layer.
        title: figure title (default "Spikes across denoising steps").
        max_markers: above this many spikes a seeded random subsample of this size is drawn (noted in
            the annotation), so 1000 steps x T=4 x 256 neurons stays fast (WebGL ``Scattergl``).
        max_separators: separator lines are drawn between all steps up to this many steps, otherwise
            only at the labelled steps (so they do not cover the raster).
        max_ticks: most x tick labels (evenly spaced, first and last included).

    Returns:
        Figure with a trace "spikes" at x = step_index * T + t, y = neuron, and a trace "step boundaries"
        of vertical lines at x = step_index * T - 0.5; the annotation reads "showing N of M neurons · ...".
        An empty ``spikes`` list gives an :func:`empty_figure`.
    """
    spikes = list(spikes)
    step_labels = list(step_labels)
    if not spikes:
        return empty_figure("no denoising steps recorded yet", title, height)
    if len(step_labels) != len(spikes):
        raise ValueError(f"step_labels has {len(step_labels)} entries but spikes has {len(spikes)} steps")
    arrs = [_check_spikes(s, f"spikes[{i}]") for i, s in enumerate(spikes)]
    shape0 = arrs[0].shape
    for i, a in enumerate(arrs):
        if a.shape != shape0:
            raise ValueError(f"spikes[{i}] has shape {a.shape}, but spikes[0] has {shape0}; "
                             "all steps must record the same [T, N]")
    K = len(arrs)
    T, N = shape0
    M = _check_total(total_neurons, N)
    k, t, n = np.nonzero(np.stack(arrs))
    total = int(k.size)
    note = _showing(N, M)
    if total > max_markers:
        keep = np.sort(np.random.default_rng(0).choice(total, size=int(max_markers), replace=False))
        k, t, n = k[keep], t[keep], n[keep]
        note += f" · {int(max_markers):,} of {total:,} spikes drawn (random subsample)"
    else:
        note += f" · {total:,} spikes" if total else " · no spikes"
    x = (k * T + t).astype(np.int32)

    # hover: the step label when labels are numbers, else the step position
    try:
        label_vals = np.asarray([int(v) for v in step_labels], dtype=np.int64)
        step_name = "t ="
    except (TypeError, ValueError):
        label_vals = np.arange(K, dtype=np.int64)
        step_name = "step #"
    custom = np.stack([label_vals[k], t.astype(np.int64)], axis=1) if total else None

    fig = _figure(title or "Spikes across denoising steps", height, subtitle)
    ticks = _thin(K, max_ticks)
    sep_steps = np.arange(1, K) if K - 1 <= max_separators else ticks[ticks > 0]
    sx = np.repeat(sep_steps * T - 0.5, 3).astype(np.float64)
    sy = np.tile([-0.5, max(N, 1) - 0.5, np.nan], len(sep_steps))
    sx[2::3] = np.nan
    fig.add_trace(go.Scatter(
        x=sx, y=sy, mode="lines", name="step boundaries", showlegend=False, hoverinfo="skip",
        line=dict(color="#8C8C8C", width=1),
    ))
    width_px = 900.0 / max(K * T, 1)
    height_px = 300.0 / max(N, 1)
    fig.add_trace(go.Scattergl(
        x=x, y=n.astype(np.int32), mode="markers", name="spikes", showlegend=False,
        marker=dict(symbol="square", size=float(np.clip(min(width_px, height_px), 2, 10)), color=INK),
        customdata=custom,
        hovertemplate=f"{step_name} %{{customdata[0]}} · τ = %{{customdata[1]}}<br>neuron %{{y}}<extra></extra>",
    ))
    _note(fig, note)
    if total == 0:
        _centre_message(fig, "no spikes")
    fig.update_xaxes(title_text=f"{DIFFUSION_STEP} (each block: T = {T} spiking steps τ)",
                     range=[-0.5, K * T - 0.5], showgrid=False,
                     tickmode="array", tickvals=(ticks * T + (T - 1) / 2.0).tolist(),
                     ticktext=[str(step_labels[i]) for i in ticks])
    fig.update_yaxes(**_neuron_axis(N))
    return fig


# -------------------------------------------------------------------------------------------- membrane

def _check_v(v) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    if a.ndim != 2:
        hint = " (select one batch item, e.g. frame.v[:, 0])" if a.ndim == 3 else ""
        raise ValueError(f"v: expected a [T, N] array, got shape {tuple(a.shape)}{hint}")
    return a


def membrane_heatmap(v, threshold: float, title: str = "", subtitle: str = "", height: int | None = None) -> go.Figure:
    """Membrane potentials as a heatmap: recorded neurons (y) x spiking steps τ (x).

    The diverging colour scale is centred at 0 (rest) and symmetric, wide enough to include the threshold. The
    colour bar is titled "v" and marks the threshold with a bold "θ·s = ..." tick (cells at or above it spiked);
    its other ticks are left out where they would crowd that one.

    Args:
        v: ``[T, N]`` membrane potential in threshold units (float16 is fine).
        threshold: the effective threshold θ·s in the same units.
    """
    a = _check_v(v)
    T, N = a.shape
    thr = float(threshold)
    finite = a[np.isfinite(a)]
    m = max(float(np.abs(finite).max()) if finite.size else 0.0, abs(thr), 1e-6)
    # ticks at -m, 0, θ·s and m; those closer than a quarter of the half-range to θ·s are left out
    ticks, ticktext = [thr], [f"<b>θ·s = {thr:g}</b>"]
    for val, text in ((-m, _fmt(-m)), (0.0, "0"), (m, _fmt(m))):
        if abs(val - thr) > 0.25 * m:
            ticks.append(val)
            ticktext.append(text)
    return _figure(
        title or "Membrane potential", height, subtitle,
        data=[go.Heatmap(z=a.T, x=np.arange(T), y=np.arange(N), zmin=-m, zmax=m, zmid=0.0, colorscale=DIVERGING,
                         colorbar=dict(title=dict(text="v", side="top"), tickvals=ticks, ticktext=ticktext),
                         hovertemplate="τ = %{x}<br>neuron %{y}<br>v = %{z:.3f}<extra></extra>")],
        xaxis=dict(title=dict(text=SPIKING_STEP), dtick=1 if T <= 32 else None, showgrid=False),
        yaxis=dict(title=dict(text="recorded neuron"), showgrid=False))


def membrane_traces(v, neurons: Sequence[int], threshold: float, title: str = "", spikes=None,
                    reset: str = "zero", subtitle: str = "", height: int | None = None) -> go.Figure:
    """Membrane potential of selected neurons over the spiking steps τ, with their spikes and resets.

    Args:
        v: ``[T, N]`` membrane potential in threshold units (recorded before the reset, as the neuron sees it).
        neurons: indices (0 <= i < N) of the recorded neurons to draw, one line (and legend entry) each.
        threshold: effective threshold θ·s, drawn as a dashed horizontal line labelled
            "threshold θ·s = ...".
        spikes: optional bool ``[T, N]``: each spike is marked (trace "spikes", one star per spike) and its line
            drops at the same τ to the reset value (0 for ``reset="zero"``, v - θ·s for "subtract"), from which
            the next step integrates.
    """
    a = _check_v(v)
    T, N = a.shape
    thr = float(threshold)
    s = None if spikes is None else _check_spikes(spikes, "spikes")
    if s is not None and s.shape != a.shape:
        raise ValueError(f"spikes has shape {s.shape} but v has {a.shape}")
    if reset not in ("zero", "subtract"):
        raise ValueError(f"reset must be 'zero' or 'subtract', got {reset!r}")
    traces, sx, sy = [], [], []
    for i, j in enumerate(neurons):
        if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or not 0 <= j < N:
            raise ValueError(f"neuron index {j!r} is out of range: {N} neurons are recorded (0..{N - 1})")
        xs, ys = [], []
        for t in range(T):
            xs.append(t)
            ys.append(float(a[t, j]))
            if s is not None and s[t, j]:
                sx.append(t)
                sy.append(float(a[t, j]))
                xs.append(t)
                ys.append(0.0 if reset == "zero" else float(a[t, j]) - thr)
        traces.append(go.Scatter(
            x=xs, y=ys, mode="lines+markers", name=f"neuron {int(j)}",
            line=dict(width=3, color=PALETTE[i % len(PALETTE)], dash=DASHES[(i // len(PALETTE)) % 4]),
            marker=dict(size=7),
            hovertemplate=f"neuron {int(j)}<br>τ = %{{x}}<br>v = %{{y:.3f}}<extra></extra>",
        ))
    if s is not None:
        traces.append(go.Scatter(
            x=sx, y=sy, mode="markers", name="spike, then reset",
            marker=dict(symbol="star", size=16, color="#E69F00", line=dict(color=INK, width=1)),
            hovertemplate="spike at τ = %{x}<br>v = %{y:.3f}<extra></extra>",
        ))
    line, label = _hline(thr, f"threshold θ·s = {thr:g}")
    notes = [label] + ([_centre_annotation("select neurons to plot")] if len(neurons) == 0 else [])
    return _figure(title or "Membrane potential traces", height, subtitle, data=traces, shapes=[line],
                   annotations=notes, xaxis=dict(title=dict(text=SPIKING_STEP), dtick=1 if T <= 32 else None),
                   yaxis=dict(title=dict(text="membrane potential v")))


# ------------------------------------------------------------------------------------------ firing rate

def firing_rate_bars(rates: Mapping[str, float], title: str = "", base_rates: Mapping[str, float] | None = None,
                     name: str = "firing rate", base_name: str = "scale 1.0", highlight: str | None = None,
                     horizontal: bool = False, subtitle: str = "", height: int | None = None) -> go.Figure:
    """Firing rate (fraction of neurons spiking per spiking step) of each layer, layers in the given order.

    Args:
        rates: layer label -> rate: solid bars (trace ``name``).
        base_rates: optional rates to compare with, drawn as hollow "ghost" bars behind the solid ones (trace
            ``base_name``, e.g. the rates at threshold scale 1.0).
        highlight: a layer label whose solid bar is drawn in another colour (the selected layer).
        horizontal: layers on the y axis (first on top), rates on x. Too many names for a projector font:
            the axis names each part of the network once, in the middle of its bars (the first word of a label:
            "Down", "Middle", "Up", "Output"), dotted lines separate its levels (the part of a label before
            " · ": "Down 1", "Down 2"), the highlighted bar carries its whole name in a box beside its end, and
            the legend sits under the plot.
    """
    if not rates:
        return empty_figure("no spiking layers recorded", title, height)
    names = list(rates)
    vals = np.asarray([float(rates[k]) for k in names], dtype=np.float64)
    traces, tops = [], [vals]
    cat, val = ("y", "x") if horizontal else ("x", "y")
    orientation = "h" if horizontal else "v"
    if base_rates:
        base = np.asarray([float(base_rates.get(k, np.nan)) for k in names], dtype=np.float64)
        tops.append(base)
        traces.append(go.Bar(**{cat: names, val: base}, orientation=orientation, name=base_name,
                             marker=dict(color="rgba(0,0,0,0)", line=dict(color="#555555", width=2)),
                             hovertemplate=f"%{{{cat}}}<br>{base_name}: %{{{val}:.3f}}<extra></extra>"))
    colours = [PALETTE[1] if k == highlight else PALETTE[0] for k in names]
    traces.append(go.Bar(**{cat: names, val: vals}, orientation=orientation, name=name,
                         marker=dict(color=colours, opacity=0.85, line=dict(color=INK, width=0.5)),
                         hovertemplate=f"%{{{cat}}}<br>{name}: %{{{val}:.3f}}<extra></extra>"))
    allv = np.concatenate(tops)
    top = float(np.nanmax(allv)) if np.isfinite(allv).any() else 0.0
    cat_axis = dict(title=dict(text="" if horizontal else "layer (forward order)"), type="category",
                    categoryorder="array", categoryarray=names, showgrid=False)
    val_axis = dict(title=dict(text="firing rate"), range=[0, max(top * 1.1, 1e-3)])
    annotations, shapes = [], []
    legend = dict(orientation="h", x=1.0, xanchor="right", y=1.0, yanchor="bottom")
    if horizontal:
        parts = _runs([_level(k).split(" ")[0] for k in names])
        cat_axis.update(autorange="reversed", tickmode="array", tickvals=[(a + b) / 2 for _, a, b in parts],
                        ticktext=[part for part, _, _ in parts], tickfont=dict(size=FONT_SIZE - 2))
        shapes = [dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=a - 0.5, y1=a - 0.5, layer="below",
                       line=dict(color="#777777", width=1, dash="dot"))
                  for _, a, _ in _runs([_level(k) for k in names])[1:]]
        val_axis["title"] = dict(text="")
        legend.update(y=0.0, yanchor="bottom", yref="container")
        if highlight in rates:
            annotations.append(_bar_label(highlight, float(rates[highlight]), max(top * 1.1, 1e-3)))
    else:
        cat_axis.update(tickangle=-45 if len(names) > 4 else 0)
    return _figure(title or "Firing rate per layer", height, subtitle, data=traces, barmode="overlay",
                   bargap=0.25, showlegend=bool(base_rates), annotations=annotations, shapes=shapes, legend=legend,
                   **{f"{cat}axis": cat_axis, f"{val}axis": val_axis})


def _level(label: str) -> str:
    """The level of a layer label: its part before the first " · " ("Down 1 · block 2 · conv 1" -> "Down 1")."""
    return label.split(" · ", 1)[0]


def _runs(keys: Sequence[str]) -> list[tuple[str, int, int]]:
    """(key, first index, last index) of each run of equal consecutive keys."""
    runs: list[tuple[str, int, int]] = []
    for i, k in enumerate(keys):
        if runs and runs[-1][0] == k:
            runs[-1] = (k, runs[-1][1], i)
        else:
            runs.append((k, i, i))
    return runs


def _bar_label(name: str, value: float, end: float) -> dict:
    """The name of a horizontal bar in a white box beside the bar's end, with an arrow to it (to the right of a
    short bar, to the left of a long one), so that it stays inside the plot."""
    right = value < 0.5 * end
    return dict(text=name, x=value, y=name, xref="x", yref="y", showarrow=True, arrowhead=0, arrowwidth=2,
                arrowcolor=PALETTE[1], ax=24 if right else -24, ay=0, xanchor="left" if right else "right",
                font=dict(size=FONT_SIZE - 2, color=INK), bgcolor="white", bordercolor=PALETTE[1], borderwidth=2,
                borderpad=2)


def firing_rate_course(rates: Mapping[str, Sequence[float]], steps: Sequence[int], title: str = "",
                       highlight: str | None = None, height: int | None = None, mark: float | None = None,
                       xtitle: str = DIFFUSION_STEP) -> go.Figure:
    """Firing rate of each layer over the denoising steps, one line (legend entry) per layer.

    Args:
        rates: layer name -> one rate per entry of ``steps``.
        steps: diffusion steps t (x). When they decrease (999 -> 0, the order of generation), the x axis is
            reversed so that generation runs from left to right.
        highlight: the name of a line drawn last (on top), thick and black: the selected layer, never hidden
            under the means.
        mark: an x (e.g. the viewed step's t) marked with a dotted vertical line; ``xtitle`` the x axis title.
    """
    if not rates:
        return empty_figure("no spiking layers recorded", title, height)
    xs = np.asarray(list(steps))
    for name, r in rates.items():
        if len(r) != len(xs):
            raise ValueError(f"firing_rate_course: layer {name!r} has {len(r)} rates but there are "
                             f"{len(xs)} steps")
    order = [k for k in rates if k != highlight] + ([highlight] if highlight in rates else [])
    traces = []
    for i, name in enumerate(order):
        top = name == highlight
        traces.append(go.Scatter(
            x=xs, y=np.asarray(rates[name], dtype=np.float64), mode="lines", name=name,
            line=dict(width=5 if top else 2.5, color=INK if top else PALETTE[i % len(PALETTE)],
                      dash="solid" if top else DASHES[(i // len(PALETTE)) % 4]),
            hovertemplate=f"{name}<br>t = %{{x}}<br>firing rate = %{{y:.3f}}<extra></extra>",
        ))
    decreasing = xs.size > 1 and bool(np.all(np.diff(xs.astype(np.float64)) < 0))
    shapes = [] if mark is None else [dict(type="line", xref="x", x0=mark, x1=mark, yref="paper", y0=0, y1=1,
                                           line=dict(color="#888888", dash="dot", width=2))]
    return _figure(title or "Firing rate over denoising steps", height, data=traces, shapes=shapes,
                   xaxis=dict(title=dict(text=xtitle), autorange="reversed" if decreasing else True),
                   yaxis=dict(title=dict(text="firing rate"), rangemode="tozero"))


# ------------------------------------------------------------------------------------------------- TSM

def tsm_heatmap(weights: Mapping[str, np.ndarray] | None, title: str = "", trained: int | None = None,
                height: int | None = None) -> go.Figure:
    """TSM weights of all layers: layers (y, first layer on top) x spiking steps τ (x).

    The colour scale is centred at 1.0, the initial value. ``trained``: the T the weights were learned for; when
    ``weights`` hold more steps (a run at a larger T), a dashed line separates the steps τ >= trained, which repeat
    the last learned weight. ``weights`` empty or None gives a figure that says "This model has no TSM weights
    (TSM off)".
    """
    if not weights:
        return empty_figure(NO_TSM_MESSAGE, title or "TSM weights", height)
    names = list(weights)
    rows = [np.asarray(weights[k], dtype=np.float64).reshape(-1) for k in names]
    lengths = {r.size for r in rows}
    if len(lengths) != 1:
        raise ValueError(f"tsm_heatmap: all layers must have the same number of time steps, got {sorted(lengths)}")
    z = np.stack(rows)                                                   # [layers, T]
    T = z.shape[1]
    finite = z[np.isfinite(z)]
    d = max(float(np.abs(finite - 1.0).max()) if finite.size else 0.0, 1e-3)
    fig = _figure(title or "TSM weights", height or max(420, 26 * len(names) + 200))
    fig.add_trace(go.Heatmap(
        z=z, x=np.arange(T), y=names, zmin=1.0 - d, zmax=1.0 + d, zmid=1.0, colorscale=DIVERGING,
        colorbar=dict(title=dict(text="weight<br>(initial 1.0)")),
        hovertemplate="%{y}<br>τ = %{x}<br>weight = %{z:.3f}<extra></extra>",
    ))
    if trained is not None and 0 < trained < T:
        fig.add_vline(x=trained - 0.5, line=dict(color=INK, width=3, dash="dash"),
                      annotation_text=f"beyond the trained T = {trained}: last weight repeated",
                      annotation_position="top right", annotation_font=dict(size=FONT_SIZE - 4, color=INK))
    fig.update_xaxes(title_text=SPIKING_STEP, dtick=1 if T <= 32 else None, showgrid=False)
    fig.update_yaxes(title_text="", autorange="reversed", type="category", showgrid=False)
    return fig


def tsm_curve(weights, layer: str, title: str = "", trained: int | None = None,
              height: int | None = None) -> go.Figure:
    """TSM weights of one layer over the spiking steps τ, with a dashed line at 1.0 (initial value).

    ``trained``: the T the weights were learned for; steps τ >= trained (a run at a larger T, which repeats the
    last learned weight) get hollow markers and a trace of their own, "repeated (beyond the trained T)".
    ``weights`` None or empty gives the "no TSM" figure (as :func:`tsm_heatmap`).
    """
    if weights is None or np.size(weights) == 0:
        return empty_figure(NO_TSM_MESSAGE, title or f"TSM weights · {layer}", height)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1:
        raise ValueError(f"tsm_curve: expected weights [T], got shape {tuple(w.shape)}")
    T = w.size
    n = T if trained is None else min(int(trained), T)
    fig = _figure(title or f"TSM weights · {layer}", height)
    fig.add_trace(go.Scatter(
        x=np.arange(n), y=w[:n], mode="lines+markers", name=str(layer), showlegend=False,
        line=dict(width=3, color=PALETTE[0]), marker=dict(size=10),
        hovertemplate="τ = %{x}<br>weight = %{y:.3f}<extra></extra>",
    ))
    if n < T:
        fig.add_trace(go.Scatter(
            x=np.arange(n - 1, T), y=w[n - 1:], mode="lines+markers", name="repeated (beyond the trained T)",
            line=dict(width=2, color=PALETTE[0], dash="dot"),
            marker=dict(size=10, symbol="circle-open", line=dict(width=2)),
            hovertemplate="τ = %{x}<br>weight = %{y:.3f} (repeated)<extra></extra>",
        ))
        fig.update_layout(showlegend=True, legend=dict(x=0.0, y=0.0, yanchor="bottom"))
    fig.add_hline(y=1.0, line=dict(dash="dash", color=INK, width=2), annotation_text="initial value 1.0",
                  annotation_position="top left", annotation_font=dict(size=FONT_SIZE - 2, color=INK))
    fig.update_xaxes(title_text=SPIKING_STEP, dtick=1 if T <= 32 else None)
    fig.update_yaxes(title_text="TSM weight")
    return fig


# ---------------------------------------------------------------------------------------------- energy

def energy_bars(snn_mj: float, ann_mj: float | None, title: str = "", height: int | None = None) -> go.Figure:
    """Energy per image of the SNN vs. its ANN counterpart (mJ), ratio ANN / SNN in the title; ``ann_mj`` None:
    the SNN's bar alone (there is no ANN counterpart to compare with)."""
    snn = float(snn_mj)
    ann = None if ann_mj is None else float(ann_mj)
    for name, val in (("snn_mj", snn), ("ann_mj", ann)):
        if val is not None and (not math.isfinite(val) or val < 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {val!r}")
    if ann is None:
        fig = _figure(title or "Energy per image: SNN (no ANN counterpart)", height)
        fig.add_trace(go.Bar(x=["SNN"], y=[snn], marker=dict(color=[PALETTE[2]], line=dict(color=INK, width=1)),
                             text=[f"{snn:.3g} mJ"], textposition="outside", cliponaxis=False,
                             textfont=dict(size=FONT_SIZE), hovertemplate="%{x}: %{y:.4g} mJ<extra></extra>",
                             showlegend=False))
        fig.update_xaxes(showgrid=False)
        fig.update_yaxes(title_text="energy per image (mJ)", range=[0, max(snn, 1e-9) * 1.2])
        return fig
    if snn > 0:
        ratio = f"{ann / snn:.2f}×"
    else:
        ratio = "∞" if ann > 0 else "n/a"
    fig = _figure(title or f"Energy per image: ANN / SNN = {ratio}", height)
    fig.add_trace(go.Bar(
        x=["SNN", "ANN"], y=[snn, ann], marker=dict(color=[PALETTE[2], PALETTE[1]], line=dict(color=INK, width=1)),
        text=[f"{snn:.3g} mJ", f"{ann:.3g} mJ"], textposition="outside", cliponaxis=False,
        textfont=dict(size=FONT_SIZE), hovertemplate="%{x}: %{y:.4g} mJ<extra></extra>", showlegend=False,
    ))
    fig.update_xaxes(showgrid=False)
    fig.update_yaxes(title_text="energy per image (mJ)", range=[0, max(snn, ann, 1e-9) * 1.2])
    return fig
