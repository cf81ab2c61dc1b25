import numpy as np
import pytest
import torch

from sdm import ModelConfig, SpikingUNet
from sdm.probes import Probe


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = SpikingUNet(ModelConfig(base_channels=8, channel_mult=(1, 2), time_embed_dim=16)).eval()
    return m


def test_probe_shapes_and_subset(model):
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([1, 2, 3])
    with Probe(max_neurons=50, seed=1) as probe:
        with torch.no_grad():
            model(x, t, monitor=probe)
    assert list(probe.frames) == model.layer_names()
    f = probe.frames["down.0.blocks.0.conv1.act"]
    assert f.spikes.shape == (4, 3, 50) and f.spikes.dtype == np.bool_
    assert f.v.shape == (4, 3, 50) and f.v.dtype == np.float16
    assert f.num_neurons == 8 * 28 * 28 and f.shape == (8, 28, 28)
    assert len(np.unique(f.neuron_index)) == 50
    # spikes are exactly where the membrane potential exceeds the threshold
    v = f.v.astype(np.float32)
    clear = np.abs(v - f.threshold) > 1e-2  # away from float16 rounding at the boundary
    assert clear.mean() > 0.9
    assert np.array_equal(f.spikes[clear], v[clear] > f.threshold)
    assert 0 <= f.firing_rate <= 1


def test_subset_is_fixed_by_seed(model):
    p1, p2, p3 = Probe(max_neurons=20, seed=0), Probe(max_neurons=20, seed=0), Probe(max_neurons=20, seed=9)
    a, b, c = (p.neuron_index("layer", 1000) for p in (p1, p2, p3))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(Probe(max_neurons=20).neuron_index("l", 10), np.arange(10))


def test_threshold_recorded_in_scaled_units(model):
    with Probe() as probe:
        with torch.no_grad():
            model(torch.randn(1, 1, 28, 28), torch.tensor([5]), threshold_scale=0.95, monitor=probe)
    assert all(f.threshold == pytest.approx(0.95) for f in probe.frames.values())


def test_probe_lifecycle(model):
    probe = Probe()
    x, t = torch.randn(1, 1, 28, 28), torch.tensor([5])
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="with"):
            model(x, t, monitor=probe)  # not entered
        with probe:
            model(x, t, monitor=probe)
        first = probe.frames
        assert first
        with probe:  # re-entering starts empty
            assert probe.frames == {}
        with pytest.raises(RuntimeError):
            model(x, t, monitor=probe)  # exited


def test_recording_off_records_nothing(tiny_pipe):
    out = next(tiny_pipe.steps(num_inference_steps=2, record=False))
    assert out.probes == {}
