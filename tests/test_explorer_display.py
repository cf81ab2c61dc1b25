"""sdm.explorer.display: what the panels show, computed from a session."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import FIXTURES
from sdm.explorer import ModelRegistry, Session, display

LAYER = "down.0.blocks.0.conv1.act"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reg():
    return ModelRegistry(FIXTURES)


@pytest.fixture()
def sess(reg):
    s = Session()
    s.start(reg.get("tiny-sdm"), "tiny-sdm", seed=1, num_steps=5)
    s.advance(2, 1.0)
    return s


def test_layer_names(reg):
    assert display.layer_label("down.0.blocks.1.conv2.act") == "Down 1 · block 2 · conv 2"
    assert display.layer_label("down.1.downsample.act") == "Down 2 · downsample"
    assert display.layer_label("mid.1.conv1.act") == "Middle · block 2 · conv 1"
    assert display.layer_label("up.0.blocks.2.conv1.act") == "Up 1 · block 3 · conv 1"
    assert display.layer_label("up.1.upsample.act") == "Up 2 · upsample"
    assert display.layer_label("out.act") == "Output"
    assert display.layer_label("something.else") == "something.else"
    coded = display.layer_label("out.act", code=True)
    assert coded.startswith("Output <span") and "out.act</span>" in coded
    names = reg.get("tiny-sdm").layer_names()
    assert len({display.layer_label(n) for n in names}) == len(names)         # one name per layer, no clashes
    assert [display.layer_stage(n) for n in ("down.0.x", "mid.a", "up.1.y", "out.act")] == ["down", "mid", "up", "out"]


def test_images_of_the_viewed_step_and_its_preview(sess):
    imgs = display.view_images(sess)
    assert set(imgs) == {"x_t", "x0", "eps"}
    assert all(a.shape == (1, 1, 28, 28) and a.min() >= 0 and a.max() <= 1 for a in imgs.values())
    np.testing.assert_allclose(imgs["x_t"], np.clip((sess.records[-1].x_t + 1) / 2, 0, 1), atol=1e-6)
    sess.preview(1.08)
    after = display.view_images(sess)
    np.testing.assert_array_equal(after["x_t"], imgs["x_t"])          # x_t is the recorded input
    assert not np.array_equal(after["x0"], imgs["x0"])


def test_probe_rates_and_their_course(sess):
    p = display.probe(sess, LAYER)
    assert p["spikes"].shape == (4, 64) and p["v"].dtype == np.float16 and p["num_neurons"] > 64
    r = display.rates(sess)
    assert list(r) == [n for n in sess.layers if n in sess.num_neurons]
    assert r[LAYER] == pytest.approx(sess.records[-1].rates[LAYER])
    mean = display.mean_firing_rate(sess, r)
    assert min(r.values()) <= mean <= max(r.values())
    lines, ts = display.rate_course(sess, LAYER)
    assert ts == [rec.timestep for rec in sess.records]
    selected = "Down 1 · block 1 · conv 1 (selected)"
    assert list(lines)[-1] == selected and "down (mean)" in lines and "up (mean)" in lines   # drawn last, on top
    assert lines[selected] == [rec.rates[LAYER] for rec in sess.records]
    spikes, labels = display.trajectory_spikes(sess, LAYER)
    assert len(spikes) == 3 and labels == ts


def test_energy_ratio_and_info(sess):
    e = display.energy(sess)
    assert e["steps"] == 3 and e["sops"] > 0 and e["energy_mj"] > 0 and e["ann_mj"] > 0
    assert e["ratio"] == pytest.approx(e["energy_mj"] / e["ann_mj"]) and e["ann_factor"] == pytest.approx(1 / e["ratio"])
    info = display.info(sess)
    assert info["steps_done"] == 3 and info["step"] == 3 and info["energy"]["steps"] == 3
    assert info["mean_firing_rate"] == pytest.approx(display.mean_firing_rate(sess, display.rates(sess)))


def test_filmstrip_ends_with_the_current_sample(sess):
    xs, x0s, labels = display.filmstrip_frames(sess, max_frames=10)
    assert len(xs) == len(x0s) == 4 and labels[0] == f"step 1 · t={sess.records[0].timestep}"
    # the next x_t has no x̂₀ yet: an empty cell, not the noisy x_t again
    assert labels[-1] == "next x_t" and x0s[-1] is None and all(f is not None for f in x0s[:-1])
    np.testing.assert_allclose(xs[-1], np.clip((sess.x[0] + 1) / 2, 0, 1), atol=1e-6)
    sess.advance(10, 1.0)
    xs, x0s, labels = display.filmstrip_frames(sess)
    assert labels[-1] == "final" and np.array_equal(xs[-1], x0s[-1])       # the generated image, in both rows


def test_traced_neurons_default_to_a_spread_of_activity(sess):
    p = display.probe(sess, LAYER)
    auto = display.traced_neurons(sess, LAYER, [])
    counts = p["spikes"].sum(axis=0)
    assert len(auto) == len(set(auto)) <= 4 and counts[auto[0]] == counts.max()
    assert display.traced_neurons(sess, LAYER, [5, 1]) == [5, 1]


def test_notes(reg):
    assert "TSM is on" in display.tsm_note(reg.get("tiny-sdm"))
    assert "no TSM" in display.tsm_note(reg.get("tiny-sdm-vanilla"))
    assert "ANN" in display.tsm_note(reg.get("tiny-ann"))
    assert "tiny-ann" in display.ann_note("tiny-sdm", reg.get("tiny-sdm"), "tiny-ann")
    assert "itself an ANN" in display.ann_note("tiny-ann", reg.get("tiny-ann"), None)


def test_threshold_effect_compares_the_scale_shown_with_1(sess):
    effect = display.threshold_effect(sess, LAYER)
    assert effect["scale"] == 1.0 and not effect["diff"].any() and effect["spikes"] == effect["base_spikes"]
    sess.preview(1.08)
    effect = display.threshold_effect(sess, LAYER)
    rec, pv = sess.current()
    assert effect["scale"] == 1.08 and effect["base_rates"] == rec.rates and effect["rates"] == pv.rates
    np.testing.assert_array_equal(effect["diff"], pv.x0.astype(np.float32) - rec.x0.astype(np.float32))
    assert effect["mean_abs_diff"] > 0
    # spikes per image: rate x neurons x T, summed over the layers; the raster's own count for the layer
    T = sess.settings.spiking_steps
    assert effect["spikes"] == pytest.approx(sum(pv.rates[n] * sess.num_neurons[n] * T for n in pv.rates))
    assert effect["spikes"] < effect["base_spikes"]                          # higher thresholds, fewer spikes
    assert effect["layer_spikes"] == int(pv.spikes[LAYER].sum())
    assert effect["layer_base_spikes"] == int(rec.spikes[LAYER].sum())


def test_threshold_effect_of_a_step_recorded_at_another_scale(reg):
    s = Session()
    s.start(reg.get("tiny-sdm"), "tiny-sdm", seed=1, num_steps=5, threshold_scale=1.05)
    assert s.base_record() is None and display.threshold_effect(s) is None   # not computed yet
    base = s.ensure_base()
    assert base.scale == 1.0 and s.ensure_base() is base                      # computed once, then kept
    effect = display.threshold_effect(s)
    assert effect["scale"] == 1.05 and effect["mean_abs_diff"] > 0
    # the same step run at 1.0 from the start has exactly that x̂₀
    ref = Session()
    ref.start(reg.get("tiny-sdm"), "tiny-sdm", seed=1, num_steps=5, threshold_scale=1.0)
    np.testing.assert_array_equal(base.x0, ref.records[0].x0)
    s.advance(1, 1.05)                                                         # the view moved on: stale
    assert s.base_record() is None


def test_default_layer_shows_the_threshold_effect(reg):
    pipe = reg.get("tiny-sdm")
    layer = display.default_layer(pipe)
    assert layer in pipe.layer_names() and display.default_layer(pipe) == layer
    # it is the layer whose recorded spikes drop most reliably from scale 0.9 to 1.1 over a DDIM-10 run
    drops = {n: [] for n in pipe.layer_names()}
    for out in pipe.steps(seed=0, num_inference_steps=10):
        c = {s: pipe.denoise(out.model_input, out.timestep, s, record=True, max_neurons=64)[1] for s in (0.9, 1.1)}
        for n in drops:
            drops[n].append(int(c[0.9][n].spikes.sum()) - int(c[1.1][n].spikes.sum()))
    assert min(drops[layer]) == max(min(d) for d in drops.values()) > 0
    assert display.default_layer(reg.get("tiny-ann")) == reg.get("tiny-ann").layer_names()[0]


def test_tsm_note_states_the_rule_beyond_the_trained_T(reg):
    pipe = reg.get("tiny-sdm")
    assert "repeats its last learned weight" in display.tsm_note(pipe)
    assert "runs T = 8" in display.tsm_note(pipe, 8) and "τ ≥ 4 repeat the last learned weight" in \
        display.tsm_note(pipe, 8)
    assert "only the first 2 learned weights" in display.tsm_note(pipe, 2)
