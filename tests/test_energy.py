import pytest
import torch
from torch import nn

from sdm import ModelConfig
from sdm.energy import EnergyMeter, PJ_PER_MAC, PJ_PER_SOP, analog_macs, ann_macs_per_call, conv_sops
from sdm.neurons import SpikingNeuron


def test_zero_spikes_give_zero_sops():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    assert conv_sops(conv, torch.zeros(2, 4, 5, 5)).item() == 0


def test_sops_are_spikes_times_fanout():
    conv = nn.Conv2d(2, 5, 3, padding=1)
    x = torch.zeros(1, 2, 6, 6)
    x[0, 0, 3, 3] = 1  # an interior spike reaches 3x3 positions x 5 output channels
    assert conv_sops(conv, x).item() == 45
    x[0, 1, 0, 0] = 1  # a corner spike reaches only 2x2 positions
    assert conv_sops(conv, x).item() == 45 + 20
    strided = nn.Conv2d(2, 5, 3, stride=2, padding=1)
    y = torch.zeros(1, 2, 6, 6)
    y[0, 0, 3, 3] = 1  # stride 2: output row o sees input rows 2o-1..2o+1, so row 3 is seen by o = 1, 2
    assert conv_sops(strided, y).item() == 20
    y[0, 0, 3, 3], y[0, 0, 2, 2] = 0, 1  # row 2 only by o = 1
    assert conv_sops(strided, y).item() == 5


def test_sops_equal_counting_every_synapse():
    # the channel-summed count against the definition: every (spike, output position, output channel) it reaches
    torch.manual_seed(0)
    for conv in (nn.Conv2d(5, 7, 3, padding=1), nn.Conv2d(5, 3, 3, stride=2, padding=1), nn.Conv2d(5, 4, 1)):
        x = (torch.rand(3, 5, 9, 9) < 0.3).float()
        with torch.no_grad():
            reached = nn.Conv2d(5, 5 * conv.out_channels, conv.kernel_size, stride=conv.stride,
                                padding=conv.padding, bias=False, groups=5)
            reached.weight.fill_(1.0)
            expected = reached(x).sum()
        assert conv_sops(conv, x).item() == expected.item() > 0


def test_meter_follows_spike_counts():
    layer = SpikingNeuron(4)
    layer.name = "l"
    conv = nn.Conv2d(3, 7, 1)
    meter = EnergyMeter()
    meter.start_call(2)
    spikes = torch.zeros(4, 2, 3, 4, 4)
    spikes[0, 0, 0, 0, 0] = 1
    spikes[1, 1, 2, 3, 3] = 1
    spikes[3, 0, 1, 1, 1] = 1
    meter.on_spikes(layer, spikes, None, 1.0)
    meter.on_synapses(layer, conv, spikes.view(8, 3, 4, 4))
    cfg = ModelConfig(base_channels=8, channel_mult=(1, 2), time_embed_dim=16)
    rep = meter.report(cfg)
    l = rep.per_layer["l"]
    assert l.spikes == pytest.approx(3 / 2)  # per image
    assert l.sops == pytest.approx(3 * 7 / 2)
    assert l.firing_rate == pytest.approx(3 / (48 * 4 * 2))
    assert rep.energy_mj == pytest.approx((PJ_PER_SOP * 3 * 7 / 2 + PJ_PER_MAC * analog_macs(cfg)) * 1e-9)
    # twice the spikes: twice the SOPs
    meter2 = EnergyMeter()
    meter2.start_call(2)
    meter2.on_spikes(layer, spikes, None, 1.0)
    meter2.on_synapses(layer, conv, torch.cat([spikes, spikes], 1).view(8, 6, 4, 4)[:, :3] * 0 + 2 * spikes.view(8, 3, 4, 4))
    assert meter2.report(cfg).per_layer["l"].sops == pytest.approx(2 * l.sops)


def test_ann_macs_exceed_snn_analog_macs():
    cfg = ModelConfig(base_channels=8, channel_mult=(1, 2), time_embed_dim=16)
    assert 0 < analog_macs(cfg) < ann_macs_per_call(cfg)
    # an ANN's analog MACs are all of its MACs
    assert analog_macs(cfg.replace(neuron="ann")) == ann_macs_per_call(cfg)


def test_report_without_calls_is_an_error():
    with pytest.raises(ValueError, match="no denoiser call"):
        EnergyMeter().report(ModelConfig())

