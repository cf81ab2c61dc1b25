"""sdm.explorer.compare: whole runs at two scales, or against the ANN counterpart, from the same noise."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import FIXTURES
from sdm.explorer import ModelRegistry, Session, compare


@pytest.fixture(scope="module")
def reg():
    return ModelRegistry(FIXTURES)


def started(reg, name="tiny-sdm", steps=4) -> Session:
    s = Session()
    s.start(reg.get(name), name, seed=2, num_steps=steps)
    return s


def test_scales_share_the_noise_and_are_cached(reg):
    sess = started(reg)
    seen = []
    r = compare.compare_scales(sess, 1.05, progress=lambda f, d: seen.append((f, d)))
    pipe = reg.get("tiny-sdm")
    np.testing.assert_allclose(r["base"], next(iter(reversed(list(pipe.steps(seed=2, num_inference_steps=4))))).sample.numpy())
    assert not np.array_equal(r["base"], r["scaled"]) and r["mean_abs_diff"] > 0
    assert seen[-1][0] == pytest.approx(1.0) and seen[0][1] == "scale 1.000"
    assert r["base_energy"]["sops"] != r["scaled_energy"]["sops"]
    again = compare.compare_scales(sess, 1.05, progress=lambda f, d: pytest.fail("not cached"))
    np.testing.assert_array_equal(again["scaled"], r["scaled"])


def test_a_finished_trajectory_is_reused(reg):
    sess = started(reg)
    sess.advance(10, 1.0)
    x, _ = compare.final_image(sess, 1.0, progress=lambda f, d: pytest.fail("recomputed"))
    np.testing.assert_array_equal(x, sess.x)


def test_ann_counterpart(reg):
    sess = started(reg)
    r = compare.compare_ann(sess, reg, 1.0)
    assert r["ann_name"] == "tiny-ann" and r["snn"].shape == r["ann"].shape
    assert r["energy_ratio"] == pytest.approx(r["snn_energy"]["energy_mj"] / r["ann_energy"]["energy_mj"])
    with pytest.raises(ValueError, match="itself an ANN"):
        compare.compare_ann(started(reg, "tiny-ann"), reg)
    with pytest.raises(ValueError, match="threshold scale"):
        compare.compare_scales(sess, 2.0)
