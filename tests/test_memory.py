"""Memory bounds of one app session, on the layer layout of the shipped default checkpoint.

A 1000-step DDPM trajectory with recording, at the largest grid (16 images), must keep the session's state under
200 MB; closing the tab (gr.State's delete_callback) or an hour idle (its time-to-live) frees it.

What a session records per step depends on the image size, the grid, T, the number of spiking layers and the
neurons recorded per layer (64, fewer than any layer has), not on the layers' widths. So the 1000 real steps run on
a model with the default checkpoint's config at 1 base channel (same layers, same recording, about 40 ms a step
instead of 400); the test checks that both record the same bytes per step.
"""
from __future__ import annotations

import gc
import pickle

import pytest
import torch

from conftest import FIXTURES, import_app
from sdm import SpikingDiffusionPipeline, SpikingUNet
from sdm.explorer import MAX_STATE_BYTES, ModelRegistry, Session, estimate_state_bytes

LIMIT = 200 * 2 ** 20


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")
app = import_app()


@pytest.fixture(scope="module")
def narrow_default():
    """(name, the shipped default pipeline, the same architecture at 1 base channel with random weights)."""
    reg = ModelRegistry()  # the shipped checkpoints/
    name = reg.default_name()
    if name is None:
        pytest.skip("no shipped checkpoints")
    pipe = reg.get(name)
    c = pipe.config
    torch.manual_seed(0)
    narrow = SpikingUNet(c.replace(base_channels=1, time_embed_dim=4))
    return name, pipe, SpikingDiffusionPipeline(narrow, pipe.diffusion, dict(pipe.card), name=name)


def test_a_1000_step_ddpm_trajectory_with_recording_stays_under_200_mb(narrow_default):
    name, shipped, pipe = narrow_default
    assert pipe.layer_names() == shipped.layer_names()
    assert estimate_state_bytes(pipe, 1000, 16) == estimate_state_bytes(shipped, 1000, 16)
    gc.collect()
    base = rss_mb()
    sess = Session()
    sess.start(pipe, name, seed=0, sampler="ddpm", num_steps=1000, grid=16)
    sess.advance(999, 1.0)
    assert sess.is_done and sess.num_recorded == 1000
    gc.collect()
    retained = (rss_mb() - base) * 2 ** 20
    counted = sess.nbytes()
    pickled = len(pickle.dumps(sess.records, protocol=pickle.HIGHEST_PROTOCOL))
    print(f"\n{name} layout, DDPM 1000 steps, 16 images: state {counted / 2**20:.1f} MB counted, "
          f"{retained / 2**20:.1f} MB more RSS, {pickled / 2**20:.1f} MB pickled")
    assert counted < LIMIT and retained < LIMIT and pickled < LIMIT
    assert counted <= MAX_STATE_BYTES

    # the shipped model records the same per step (one real step of it)
    real = Session()
    real.start(shipped, name, seed=0, sampler="ddpm", num_steps=1000, grid=16)
    assert real.records[0].nbytes == sess.records[0].nbytes
    assert {k: v.shape for k, v in real.records[0].spikes.items()} == \
        {k: v.shape for k, v in sess.records[0].spikes.items()}

    # every step is there: the whole trajectory can be scrubbed and exported
    assert sess.records[0].index == 0 and sess.records[-1].index == 999

    # closing the tab frees it
    app._free_session(sess)
    assert sess.nbytes() == 0 and not sess.started


def test_idle_and_closed_sessions_are_freed_by_the_state():
    demo = app.build_demo(app.Explorer(ModelRegistry(FIXTURES)))
    states = [b for b in demo.blocks.values() if b.__class__.__name__ == "State" and b.time_to_live]
    assert states, "the session gr.State has no time-to-live"
    st = states[0]
    assert st.time_to_live == app.STATE_TTL_S <= 3600
    assert st.delete_callback is app._free_session
    app._free_session(None)          # a tab that never started a trajectory
    app._free_session("not a session")
