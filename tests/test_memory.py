"""Memory bounds of one app session, measured on the shipped default checkpoint (its layer sizes set the cost).

A 1000-step DDPM trajectory with recording, at the largest grid (16 images), must keep the session's state
under 200 MB; closing the tab (gr.State's delete_callback) or an hour idle (its time-to-live) frees it.
"""
from __future__ import annotations

import gc
import pickle
import tracemalloc

import pytest
import torch

from conftest import import_app
from sdm.session import MAX_STATE_BYTES, ModelRegistry, Session

LIMIT = 200 * 2 ** 20
app = import_app()


@pytest.fixture(scope="module")
def default_pipe():
    reg = ModelRegistry()  # the shipped checkpoints/
    name = reg.default_name()
    if name is None:
        pytest.skip("no shipped checkpoints")
    return name, reg.get(name)


def test_a_1000_step_ddpm_trajectory_with_recording_stays_under_200_mb(default_pipe):
    name, pipe = default_pipe
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        sess = Session()
        sess.start(pipe, name, seed=0, sampler="ddpm", num_steps=1000, grid=16)
        sess.advance(999, 1.0)
        assert sess.is_done and sess.num_recorded == 1000
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        torch.set_num_threads(threads)
    retained = held - base
    counted = sess.nbytes()
    pickled = len(pickle.dumps(sess.records, protocol=pickle.HIGHEST_PROTOCOL))
    print(f"\n{name}, DDPM 1000 steps, 16 images: state {counted / 2**20:.1f} MB counted, "
          f"{retained / 2**20:.1f} MB retained (tracemalloc), {pickled / 2**20:.1f} MB pickled, "
          f"peak {peak / 2**20:.1f} MB")
    assert counted < LIMIT and retained < LIMIT and pickled < LIMIT
    assert counted <= MAX_STATE_BYTES
    # every step is there: the whole trajectory can be scrubbed and exported
    assert sess.records[0].index == 0 and sess.records[-1].index == 999

    # closing the tab frees it
    app._free_session(sess)
    assert sess.nbytes() == 0 and not sess.started


def test_idle_and_closed_sessions_are_freed_by_the_state():
    states = [b for b in app.demo.blocks.values() if b.__class__.__name__ == "State" and b.time_to_live]
    assert states, "the session gr.State has no time-to-live"
    st = states[0]
    assert st.time_to_live == app.STATE_TTL_S <= 3600
    assert st.delete_callback is app._free_session
    app._free_session(None)          # a tab that never started a trajectory
    app._free_session("not a session")
