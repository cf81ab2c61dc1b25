import numpy as np
import plotly.graph_objects as go
import pytest

from sdm import viz


def _texts(fig):
    return [a.text for a in fig.layout.annotations]


def _trace(fig, name):
    (tr,) = [d for d in fig.data if d.name == name]
    return tr


# ------------------------------------------------------------------------------------------- spikes

def test_spike_raster_markers_and_text():
    rng = np.random.default_rng(1)
    spikes = rng.random((4, 64)) < 0.2
    fig = viz.spike_raster(spikes, total_neurons=4096, title="layer")
    assert isinstance(fig, go.Figure)
    tr = _trace(fig, "spikes")
    assert len(tr.x) == len(tr.y) == spikes.sum()
    t, n = np.nonzero(spikes)
    assert sorted(zip(np.asarray(tr.x).tolist(), np.asarray(tr.y).tolist())) == sorted(zip(t.tolist(), n.tolist()))
    assert any("showing 64 of 4,096 neurons" in s for s in _texts(fig))


def test_spike_raster_without_spikes():
    fig = viz.spike_raster(np.zeros((4, 16), bool), total_neurons=16)
    assert len(_trace(fig, "spikes").x) == 0
    assert any("no spikes" in s for s in _texts(fig))
    assert any("showing 16 of 16 neurons" in s for s in _texts(fig))
    fig.to_json()                                          # still a valid figure


def test_spike_raster_rejects_batch_dimension():
    with pytest.raises(ValueError, match="T, N"):
        viz.spike_raster(np.zeros((4, 2, 8), bool), total_neurons=8)


def test_trajectory_raster_positions_and_separators():
    rng = np.random.default_rng(2)
    T, N, K = 4, 32, 6
    steps = [rng.random((T, N)) < 0.3 for _ in range(K)]
    fig = viz.spike_raster_trajectory(steps, step_labels=[50, 40, 30, 20, 10, 0], total_neurons=512)
    tr = _trace(fig, "spikes")
    k, t, n = np.nonzero(np.stack(steps))
    got = sorted(zip(np.asarray(tr.x).tolist(), np.asarray(tr.y).tolist()))
    assert got == sorted(zip((k * T + t).tolist(), n.tolist()))
    sep = np.asarray(_trace(fig, "step boundaries").x, dtype=float)
    assert sorted(set(sep[np.isfinite(sep)].tolist())) == [s * T - 0.5 for s in range(1, K)]
    assert list(fig.layout.xaxis.ticktext) == ["50", "40", "30", "20", "10", "0"]
    assert any("showing 32 of 512 neurons" in s for s in _texts(fig))


def test_trajectory_raster_subsamples_large_runs():
    rng = np.random.default_rng(3)
    steps = [rng.random((4, 256)) < 0.5 for _ in range(1000)]
    fig = viz.spike_raster_trajectory(steps, list(range(999, -1, -1)), total_neurons=8192)
    tr = _trace(fig, "spikes")
    assert isinstance(tr, go.Scattergl)
    assert len(tr.x) == viz.MAX_RASTER_MARKERS
    assert len(fig.layout.xaxis.tickvals) <= 20


# ----------------------------------------------------------------------------------------- membrane

def test_membrane_traces_threshold_line():
    v = np.random.default_rng(4).normal(size=(4, 10)).astype(np.float16)
    fig = viz.membrane_traces(v, [0, 3, 7], threshold=1.5)
    assert [d.name for d in fig.data] == ["neuron 0", "neuron 3", "neuron 7"]
    dashed = [s for s in fig.layout.shapes if s.line.dash == "dash"]
    assert len(dashed) == 1 and dashed[0].y0 == dashed[0].y1 == 1.5
    assert any("threshold θ·s = 1.5" in s for s in _texts(fig))
    with pytest.raises(ValueError):
        viz.membrane_traces(v, [10], threshold=1.0)


def test_membrane_heatmap_neurons_by_time():
    v = np.random.default_rng(5).normal(size=(4, 10)).astype(np.float16)
    fig = viz.membrane_heatmap(v, threshold=2.0)
    hm = fig.data[0]
    assert np.asarray(hm.z).shape == (10, 4)
    assert hm.zmin <= -2.0 and hm.zmax >= 2.0
    cb = hm.colorbar
    # the threshold is a bold tick of the colour bar; the ticks too close to it (here +max = θ·s) are left out
    assert cb.title.text == "v" and list(cb.tickvals) == [2.0, -2.0, 0.0] and cb.ticktext[0] == "<b>θ·s = 2</b>"
    ticks = np.array(viz.membrane_heatmap(np.array([[0.0], [3.0]]), threshold=1.0).data[0].colorbar.tickvals)
    assert sorted(ticks.tolist()) == [-3.0, 0.0, 1.0, 3.0]
    close = viz.membrane_heatmap(np.array([[0.0], [1.1]]), threshold=1.0).data[0].colorbar
    assert 1.1 not in list(close.tickvals) and 1.0 in list(close.tickvals)
    assert fig.layout.xaxis.title.text == "spiking step τ"


# ------------------------------------------------------------------------------------ rates, TSM, etc.

def test_firing_rate_plots():
    fig = viz.firing_rate_bars({"down.0.res.0.conv1": 0.1, "mid.conv": 0.3, "up.0.conv": 0.2})
    assert list(fig.data[0].x) == ["down.0.res.0.conv1", "mid.conv", "up.0.conv"]
    course = viz.firing_rate_course({"a": [0.1, 0.2, 0.3], "b": [0.3, 0.2, 0.1]}, steps=[999, 500, 0])
    assert [d.name for d in course.data] == ["a", "b"]
    assert list(course.data[0].x) == [999, 500, 0]
    with pytest.raises(ValueError):
        viz.firing_rate_course({"a": [0.1]}, steps=[1, 2])


def test_tsm_heatmap_empty_and_data():
    fig = viz.tsm_heatmap({})
    assert viz.NO_TSM_MESSAGE in _texts(fig) and len(fig.data) == 0
    w = {"down.0.res.0.conv1": np.array([1.0, 1.1, 0.9, 1.2]), "mid.conv": np.ones(4)}
    fig = viz.tsm_heatmap(w)
    assert np.asarray(fig.data[0].z).shape == (2, 4)
    assert list(fig.data[0].y) == list(w)


def test_tsm_curve():
    fig = viz.tsm_curve(np.array([1.0, 1.2, 0.8]), "mid.conv")
    assert list(fig.data[0].y) == [1.0, 1.2, 0.8]
    assert any(s.line.dash == "dash" and s.y0 == 1.0 for s in fig.layout.shapes)
    assert viz.NO_TSM_MESSAGE in _texts(viz.tsm_curve(None, "x"))
    assert viz.NO_TSM_MESSAGE in _texts(viz.tsm_curve(np.array([]), "x"))


def test_energy_and_empty_figure():
    fig = viz.energy_bars(0.5, 2.0)
    assert list(fig.data[0].y) == [0.5, 2.0]
    assert "4.00" in fig.layout.title.text
    e = viz.empty_figure("nothing yet")
    assert _texts(e) == ["nothing yet"] and len(e.data) == 0


def test_membrane_traces_mark_spikes_and_resets():
    v = np.array([[0.5, 0.2], [1.2, 0.4], [0.7, 0.6]], dtype=np.float16)   # neuron 0 spikes at τ = 1
    s = v > 1.0
    fig = viz.membrane_traces(v, [0, 1], threshold=1.0, spikes=s)
    n0 = _trace(fig, "neuron 0")
    assert list(n0.x) == [0, 1, 1, 2] and list(n0.y) == pytest.approx([0.5, 1.2, 0.0, 0.7], abs=1e-3)  # drop to 0
    assert list(_trace(fig, "neuron 1").x) == [0, 1, 2]
    marks = _trace(fig, "spike, then reset")
    assert list(marks.x) == [1] and list(marks.y) == pytest.approx([1.2], abs=1e-3)
    sub = viz.membrane_traces(v, [0], threshold=1.0, spikes=s, reset="subtract")
    assert list(_trace(sub, "neuron 0").y) == pytest.approx([0.5, 1.2, 0.2, 0.7], abs=1e-3)  # v - θ·s
    assert fig.layout.xaxis.title.text == "spiking step τ"
    with pytest.raises(ValueError, match="shape"):
        viz.membrane_traces(v, [0], threshold=1.0, spikes=s[:2])


def test_rate_bars_with_ghost_bars_and_a_highlight():
    rates, base = {"a": 0.1, "b": 0.3}, {"a": 0.2, "b": 0.25}
    fig = viz.firing_rate_bars(rates, base_rates=base, name="s = 1.05", base_name="s = 1.0", highlight="b",
                               horizontal=True)
    ghost, solid = fig.data
    assert ghost.name == "s = 1.0" and list(ghost.x) == [0.2, 0.25] and ghost.marker.color == "rgba(0,0,0,0)"
    assert solid.name == "s = 1.05" and list(solid.x) == [0.1, 0.3] and list(solid.y) == ["a", "b"]
    assert solid.marker.color[1] != solid.marker.color[0] and fig.layout.barmode == "overlay"
    assert fig.layout.xaxis.range[1] >= 0.3


def test_rate_course_draws_the_highlight_last():
    course = viz.firing_rate_course({"sel": [0.1, 0.2], "mean": [0.3, 0.2]}, steps=[999, 0], highlight="sel")
    assert [d.name for d in course.data] == ["mean", "sel"]
    assert course.data[1].line.width > course.data[0].line.width
    assert course.layout.xaxis.title.text == "diffusion step t"


def test_tsm_plots_mark_the_steps_beyond_the_trained_T():
    w = np.array([1.0, 1.2, 0.8, 0.8, 0.8])
    curve = viz.tsm_curve(w, "x", trained=3)
    assert list(curve.data[0].y) == [1.0, 1.2, 0.8]
    rep = _trace(curve, "repeated (beyond the trained T)")
    assert list(rep.x) == [2, 3, 4] and rep.marker.symbol == "circle-open"
    heat = viz.tsm_heatmap({"a": w}, trained=3)
    assert any(s.x0 == 2.5 for s in heat.layout.shapes)
    assert not viz.tsm_heatmap({"a": w}, trained=5).layout.shapes


def test_horizontal_rate_bars_name_every_part_and_the_highlighted_bar_at_projector_size():
    names = ["Down 1 · block 1 · conv 1", "Down 1 · block 1 · conv 2", "Down 2 · block 1 · conv 1", "Middle · block 1",
             "Up 1 · block 1 · conv 1", "Up 1 · upsample", "Output"]
    rates = {n: 0.1 * (i + 1) for i, n in enumerate(names)}
    fig = viz.firing_rate_bars(rates, base_rates=rates, highlight="Up 1 · upsample", horizontal=True, subtitle="sub")
    y = fig.layout.yaxis
    assert list(y.ticktext) == ["Down", "Middle", "Up", "Output"] and list(y.tickvals) == [1.0, 3.0, 4.5, 6.0]
    assert [s.y0 for s in fig.layout.shapes] == [1.5, 2.5, 3.5, 5.5]                  # between levels
    label, = fig.layout.annotations                                                  # the highlighted bar, named
    assert label.text == "Up 1 · upsample" and label.y == "Up 1 · upsample" and label.x == pytest.approx(0.6)
    assert label.bgcolor == "white" and label.font.size >= 16
    # every text of the figure at 16 px or more, the title at 20 or more
    assert y.tickfont.size >= 16 and viz.TEMPLATE.layout.legend.font.size >= 16 and fig.layout.title.subtitle.font.size >= 16
    assert viz.TEMPLATE.layout.title.font.size >= 20 and viz.TEMPLATE.layout.xaxis.tickfont.size >= 16


def test_energy_bars_without_an_ann_counterpart():
    fig = viz.energy_bars(0.5, None)
    assert list(fig.data[0].x) == ["SNN"] and "no ANN counterpart" in fig.layout.title.text
