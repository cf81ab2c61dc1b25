"""sdm.explorer.display: what the panels show, computed from a session."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import FIXTURES
from sdm.explorer import ModelRegistry, Session, display

LAYER = "down.0.blocks.0.conv1.act"


@pytest.fixture(scope="module")
def reg():
    return ModelRegistry(FIXTURES)


@pytest.fixture()
def sess(reg):
    s = Session()
    s.start(reg.get("tiny-sdm"), "tiny-sdm", seed=1, num_steps=5)
    s.advance(2, 1.0)
    return s


def test_layer_names():
    assert display.short_layer_name("down.0.blocks.1.conv2.act") == "down0.b1.conv2"
    assert display.short_layer_name("out.act") == "out"
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
    assert list(lines)[0] == "down0.b0.conv1 (selected)" and "down (mean)" in lines and "up (mean)" in lines
    assert lines["down0.b0.conv1 (selected)"] == [rec.rates[LAYER] for rec in sess.records]
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
    assert len(xs) == len(x0s) == 4 and labels[-1] == "next" and labels[0] == f"t={sess.records[0].timestep}"
    sess.advance(10, 1.0)
    assert display.filmstrip_frames(sess)[2][-1] == "final"


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
