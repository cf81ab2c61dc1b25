"""sdm.explorer.session: the per-tab state machine (start, advance, scrub, preview, continue) on the tiny fixtures."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from sdm.explorer import (MAX_STATE_BYTES, ModelRegistry, OverBudget, Session, Superseded, estimate_state_bytes,
                          within_budget)

LAYER = "down.0.blocks.0.conv1.act"


@pytest.fixture(scope="module")
def pipe():
    return ModelRegistry(FIXTURES).get("tiny-sdm")


def started(pipe, steps=6, **kw) -> Session:
    sess = Session()
    sess.start(pipe, "tiny-sdm", seed=kw.pop("seed", 3), num_steps=steps, **kw)
    return sess


def test_start_takes_the_first_step_and_advance_the_next(pipe):
    sess = started(pipe)
    assert sess.num_recorded == 1 and sess.view_index == 0 and not sess.is_done
    assert sess.advance(2, 1.0) == 2 and sess.num_recorded == 3 and sess.view_index == 2
    assert sess.advance(100, 1.0) == 3 and sess.is_done
    with pytest.raises(ValueError, match="finished"):
        sess.advance(1, 1.0)
    # the recorded trajectory is the pipeline's own
    outs = list(pipe.steps(seed=3, num_inference_steps=6))
    np.testing.assert_array_equal(sess.x, outs[-1].sample.numpy())
    assert [r.timestep for r in sess.records] == [o.timestep for o in outs]


def test_invalid_arguments_change_nothing(pipe):
    sess = started(pipe)
    x, gen = sess.x.copy(), sess.generation
    for call in (lambda: sess.advance(0, 1.0), lambda: sess.advance(1, 2.0), lambda: sess.scrub(5),
                 lambda: sess.preview(float("nan")), lambda: sess.continue_from_view("1"),
                 lambda: sess.start(pipe, "tiny-sdm", seed=-1), lambda: sess.start(pipe, "tiny-sdm", grid=3),
                 lambda: sess.check_view("nope"), lambda: sess.check_view(LAYER, "step", [64])):
        with pytest.raises(ValueError):
            call()
    assert sess.num_recorded == 1 and sess.generation == gen and sess.settings.seed == 3
    np.testing.assert_array_equal(sess.x, x)


def test_view_arguments(pipe):
    sess = started(pipe)
    v = sess.check_view("", None, ["2", 2, 7])
    assert v.layer == pipe.layer_names()[0] and v.raster_mode == "step" and v.neurons == [2, 7]
    fresh = Session()
    assert fresh.view_for(pipe.layer_names(), "tiny-sdm", LAYER, "trajectory", [63]).neurons == [63]
    with pytest.raises(ValueError, match="New trajectory"):
        fresh.check_view(LAYER)


def test_scrub_preview_and_continue(pipe):
    sess = started(pipe)
    sess.advance(3, 1.0)
    rec = sess.scrub(2)
    assert rec.index == 1 and sess.view_index == 1
    pv = sess.preview(1.05)
    assert pv is not None and pv.index == 1 and not np.array_equal(pv.x0, rec.x0)
    assert sess.num_recorded == 4                                   # a preview records nothing
    assert sess.preview(rec.scale) is None and sess.preview_data is None
    gen = sess.continue_from_view(1.05)
    assert sess.num_recorded == 2 and sess.records[1].scale == 1.05 and sess.generation == gen
    np.testing.assert_array_equal(sess.records[1].x0, pv.x0)       # the preview was exactly that step
    with pytest.raises(Superseded):
        sess.advance(1, 1.05, generation=gen - 1)


def test_concurrent_events_of_one_tab_never_interleave(pipe):
    sess = started(pipe, steps=20)
    errors = []

    def worker():
        try:
            for _ in range(4):
                sess.advance(1, 1.0)
        except ValueError as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sess.num_recorded == 13
    assert [r.index for r in sess.records] == list(range(13))


def test_memory_is_estimated_up_front_and_freed_by_close(pipe):
    sess = started(pipe, steps=1000, grid=16, sampler="ddpm")
    sess.advance(3, 1.0)
    per_step = sum(r.nbytes for r in sess.records) / sess.num_recorded
    assert estimate_state_bytes(pipe, 1000, 16) >= per_step * 1000
    assert estimate_state_bytes(pipe, 1000, 16) <= MAX_STATE_BYTES
    rec = sess.records[0]
    assert rec.x_t.dtype == np.float32 and rec.x0.dtype == np.float16
    assert all(a.dtype == bool and a.shape == (4, 64) for a in rec.spikes.values())
    sess.close()
    assert sess.nbytes() == 0 and not sess.started
    with pytest.raises(ValueError, match="lower the number of steps or the grid size"):
        Session(max_bytes=2 ** 20).start(pipe, "tiny-sdm", num_steps=1000, grid=16)


def test_an_ann_session_records_no_probes():
    pipe = ModelRegistry(FIXTURES).get("tiny-ann")
    sess = Session()
    sess.start(pipe, "tiny-ann", num_steps=3)
    assert not sess.spiking and sess.records[0].spikes == {} and sess.records[0].rates == {}
    assert sess.check_view(None).layer == pipe.layer_names()[0]
    torch.testing.assert_close(torch.from_numpy(sess.x), pipe.steps(num_inference_steps=3).__next__().sample)


def test_spiking_time_steps_are_a_setting_of_the_trajectory(pipe):
    sess = started(pipe, steps=4, time_steps=8)
    sess.advance(1, 1.0)
    assert sess.settings.spiking_steps == 8
    assert all(a.shape == (8, 64) for r in sess.records for a in r.spikes.values())
    four = started(pipe, steps=4)
    four.advance(1, 1.0)
    assert four.settings.spiking_steps == 4 and not np.array_equal(sess.x, four.x)
    # the trajectory is the pipeline's own at T = 8, and the previews run at T = 8 too
    outs = list(pipe.steps(seed=3, num_inference_steps=4, time_steps=8))
    np.testing.assert_array_equal(sess.x, outs[1].sample.numpy())
    assert all(a.shape == (8, 64) for a in sess.preview(1.05).spikes.values())
    # energy counts the spiking steps actually run: about twice the SOPs of T = 4
    ratio = sum(r.sops for r in sess.records) / sum(r.sops for r in four.records)
    assert 1.5 < ratio < 2.5
    assert estimate_state_bytes(pipe, 100, 1, time_steps=8) > estimate_state_bytes(pipe, 100, 1)
    for bad in (3, 0, 16, "8", 2.5):
        with pytest.raises(ValueError, match="spiking time steps T must be one of 1, 2, 4, 8"):
            started(pipe, time_steps=bad)
    ann = Session()
    ann.start(ModelRegistry(FIXTURES).get("tiny-ann"), "tiny-ann", num_steps=2, time_steps=8)
    assert ann.settings.spiking_steps == 1                                  # an ANN has no spiking steps


def test_stepping_under_a_time_budget(pipe):
    """The one run loop: stepping() yields (taken, asked) after every step but the last; within_budget() hands
    control back at most every yield_every_s and stops with OverBudget once the budget has passed."""
    ref = started(pipe)
    ref.advance(5, 1.02)
    sess = started(pipe)
    assert list(sess.stepping(None, 1.02)) == [(1, 5), (2, 5), (3, 5), (4, 5)]       # to the end: 5 more steps
    assert sess.is_done and np.array_equal(sess.x, ref.x)                            # bitwise what advance() gives
    now = [0.0]

    def clock():
        now[0] += 1.0
        return now[0]

    sess = started(pipe)
    assert list(within_budget(sess.stepping(3, 1.0), 10.0, yield_every_s=1.5, clock=clock)) == [(2, 3)]
    assert sess.num_recorded == 4
    with pytest.raises(OverBudget) as e:
        list(within_budget(sess.stepping(2, 1.0), 0.5, clock=clock))
    assert e.value.last == (1, 2) and sess.num_recorded == 5                          # stopped after one step
    with pytest.raises(ValueError, match="threshold scale"):
        next(sess.stepping(1, 1.5))
    # another event restarts the trajectory: the run stops there, without an error
    sess = started(pipe)
    steps = sess.stepping(3, 1.0)
    assert next(steps) == (1, 3)
    sess.start(pipe, "tiny-sdm", seed=4, num_steps=6)
    assert list(steps) == [] and sess.num_recorded == 1
