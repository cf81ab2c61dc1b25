import threading

import numpy as np
import pytest
import snntorch as snn
import torch

from sdm import ModelConfig, SpikingUNet
from sdm.neurons import SpikingNeuron, check_threshold_scale


class Recorder:
    def __init__(self):
        self.v = None

    def on_spikes(self, layer, spikes, v, threshold):
        self.v, self.threshold = v.clone(), threshold

    def on_synapses(self, *a):
        pass


def run(neuron, x, scale=1.0, grad=False):
    rec = Recorder()
    with torch.set_grad_enabled(grad):
        s = neuron(x, threshold_scale=scale, monitor=rec)
    return s, rec.v


@pytest.mark.parametrize("grad", [False, True])
def test_lif_zero_reset_closed_form(grad):
    # U[n] = beta * (1 - S[n-1]) * U[n-1] + I ; constant I = 0.6, beta = 0.5, theta = 1
    x = torch.full((6, 1, 1), 0.6, requires_grad=grad)
    s, v = run(SpikingNeuron(6, beta=0.5, reset="zero"), x, grad=grad)
    assert torch.allclose(v.flatten(), torch.tensor([0.6, 0.9, 1.05, 0.6, 0.9, 1.05]))
    assert s.flatten().tolist() == [0, 0, 1, 0, 0, 1]


@pytest.mark.parametrize("grad", [False, True])
def test_lif_subtract_reset_closed_form(grad):
    # U[n] = beta * U[n-1] + I - S[n-1] * theta
    x = torch.full((6, 1, 1), 0.6, requires_grad=grad)
    s, v = run(SpikingNeuron(6, beta=0.5, reset="subtract"), x, grad=grad)
    assert torch.allclose(v.flatten(), torch.tensor([0.6, 0.9, 1.05, 0.125, 0.6625, 0.93125]))
    assert s.flatten().tolist() == [0, 0, 1, 0, 0, 0]


def test_if_neuron_closed_form_both_resets():
    # IF = LIF with beta 1: constant 0.3 crosses theta = 1 at the 4th step
    x = torch.full((7, 1), 0.3)
    s, v = run(SpikingNeuron(7, beta=1.0, reset="zero"), x)
    assert torch.allclose(v.flatten(), torch.tensor([0.3, 0.6, 0.9, 1.2, 0.3, 0.6, 0.9]))
    assert s.flatten().tolist() == [0, 0, 0, 1, 0, 0, 0]
    s, v = run(SpikingNeuron(7, beta=1.0, reset="subtract"), x)
    assert torch.allclose(v.flatten(), torch.tensor([0.3, 0.6, 0.9, 1.2, 0.5, 0.8, 1.1]))
    assert s.flatten().tolist() == [0, 0, 0, 1, 0, 0, 1]


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("beta", [0.9, 1.0])
def test_matches_snntorch_leaky_spikes_and_gradients(reset, beta):
    """Our fused recurrence equals snntorch.Leaky stepped with explicit state, forward and backward."""
    x = (torch.randn(5, 3, 40) * 1.5).requires_grad_()
    ours = SpikingNeuron(5, beta=beta, reset=reset)(x, threshold_scale=1.1)
    w = torch.randn_like(ours)
    (ours * w).sum().backward()
    g_ours, x.grad = x.grad.clone(), None
    lif = snn.Leaky(beta=beta, threshold=1.1, reset_mechanism=reset)
    mem, out = torch.zeros(3, 40), []
    for t in range(5):
        spk, mem = lif(x[t], mem)
        out.append(spk)
    ref = torch.stack(out)
    (ref * w).sum().backward()
    assert torch.equal(ours, ref)
    assert torch.allclose(g_ours, x.grad, atol=1e-5)
    # the inference path gives the same spikes as the training path
    with torch.no_grad():
        assert torch.equal(SpikingNeuron(5, beta=beta, reset=reset)(x, threshold_scale=1.1), ref)


def test_tsm_weights_shape_and_gradient():
    cfg = ModelConfig(base_channels=8, channel_mult=(1, 2), time_embed_dim=16, T=4, tsm=True)
    model = SpikingUNet(cfg)
    torch.nn.init.normal_(model.out.conv.weight, std=0.1)
    weights = model.tsm_weights()
    assert len(weights) == len(model.layer_names()) > 0
    assert all(w.shape == (4,) and torch.all(w == 1.0) for w in weights.values())
    loss = model(torch.randn(4, 1, 28, 28), torch.tensor([10, 200, 500, 900])).pow(2).mean()
    loss.backward()
    for n in model.neurons():
        assert n.tsm.grad is not None and n.tsm.grad.shape == (4,)
        assert n.tsm.grad.abs().sum() > 0, n.name


def test_tsm_scales_input_current():
    n = SpikingNeuron(3, beta=1.0, tsm=True)
    n.tsm.data = torch.tensor([1.0, 2.0, 0.5])
    x = torch.full((3, 1), 0.4)
    _, v = run(n, x)
    # I = [0.4, 0.8, 0.2]: U = 0.4, 1.2 (spike), 0 + 0.2
    assert torch.allclose(v.flatten(), torch.tensor([0.4, 1.2, 0.2]))


def _rates(model, x, t, scale):
    rates = []

    class M(Recorder):
        def on_spikes(self, layer, spikes, v, threshold):
            rates.append(float(spikes.mean()))

    with torch.no_grad():
        eps = model(x, t, threshold_scale=scale, monitor=M())
    return eps, float(np.mean(rates))


@pytest.fixture(scope="module")
def model_and_input():
    torch.manual_seed(0)
    model = SpikingUNet(ModelConfig(base_channels=8, channel_mult=(1, 2), time_embed_dim=16)).eval()
    torch.nn.init.normal_(model.out.conv.weight, std=0.1)
    return model, torch.randn(2, 1, 28, 28), torch.tensor([100, 700])


def test_threshold_scale_moves_firing_rate(model_and_input):
    model, x, t = model_and_input
    _, base = _rates(model, x, t, 1.0)
    _, high = _rates(model, x, t, 1.05)
    _, low = _rates(model, x, t, 0.95)
    assert high < base < low


def test_threshold_scale_is_never_stored(model_and_input):
    model, x, t = model_and_input
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = [(n.threshold, n.beta) for n in model.neurons()]
    _rates(model, x, t, 0.9)
    assert attrs == [(n.threshold, n.beta) for n in model.neurons()]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_threads_with_different_scales_equal_serial(model_and_input):
    model, x, t = model_and_input
    scales = [0.92, 1.0, 1.07, 0.997]
    serial = {s: _rates(model, x, t, s) for s in scales}
    results = {}
    barrier = threading.Barrier(len(scales))

    def worker(s):
        barrier.wait()
        for _ in range(3):
            results.setdefault(s, []).append(_rates(model, x, t, s))

    threads = [threading.Thread(target=worker, args=(s,)) for s in scales]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for s in scales:
        for eps, rate in results[s]:
            assert torch.equal(eps, serial[s][0]) and rate == serial[s][1]
    assert len({serial[s][1] for s in scales}) == len(scales)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "abc", None])
def test_bad_threshold_scale_is_refused(bad):
    with pytest.raises(ValueError, match="threshold_scale"):
        check_threshold_scale(bad)
