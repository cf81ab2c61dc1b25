"""Synaptic operations, MACs and an energy estimate (paper Eqs. 19-20, 45 nm figures).

* A spiking layer's SOPs are counted from the real spikes of a denoiser call: every spike costs one
  accumulate per synapse it drives (its fan-out), counted exactly at the borders and strides of the conv
  it feeds: ``SOPs = sum over output positions of (spikes in the receptive field) * C_out``.
* Analog layers cost MACs: the first conv (once per call: its input is constant over T), the time-embedding
  MLP and its per-block projections, the 1x1 shortcut convs (T times), and the readout over T. T is the number of
  spiking time steps each call actually ran (``start_call(batch, T)``), which may differ from the trained one.
* E = 0.9 pJ x SOPs + 4.6 pJ x MACs. The ANN counterpart costs 4.6 pJ x its MACs.
"""
from __future__ import annotations


from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn
import torch.nn.functional as F

from .config import ModelConfig

PJ_PER_SOP = 0.9
PJ_PER_MAC = 4.6


@dataclass
class LayerEnergy:
    """One spiking layer, summed over every denoiser call measured (per image)."""

    neurons: int = 0          # M, neurons of the layer per image
    spikes: float = 0.0       # spikes per image
    sops: float = 0.0         # synaptic operations per image
    firing_rate: float = 0.0  # spikes / (neurons * T * calls)


@dataclass
class EnergyReport:
    """Energy of generating one image.

    Attributes:
        calls: denoiser calls per image (the number of inference steps).
        total_sops: SOPs per image over all calls.
        snn_macs: the SNN's analog MACs per image over all calls.
        ann_macs: the ANN counterpart's MACs per image over the same number of calls.
        energy_mj: this model's own estimated energy per image in millijoules (SOPs plus analog MACs for an SNN,
            MACs for an ANN).
        ann_energy_mj: the ANN counterpart's energy per image over the same calls (the reference of ``ratio``).
        per_layer: {layer name: LayerEnergy}.
    """

    calls: int
    total_sops: float
    snn_macs: float
    ann_macs: float
    energy_mj: float
    ann_energy_mj: float
    per_layer: dict[str, LayerEnergy] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """This model's energy / the ANN counterpart's."""
        return self.energy_mj / self.ann_energy_mj if self.ann_energy_mj else float("nan")

    @property
    def mean_firing_rate(self) -> float:
        tot = sum(l.neurons for l in self.per_layer.values())
        return sum(l.firing_rate * l.neurons for l in self.per_layer.values()) / tot if tot else 0.0



@lru_cache(maxsize=256)
def _reach(kernel_size: tuple, stride: tuple, padding: tuple, dilation: tuple, h: int, w: int,
           device: str) -> torch.Tensor:
    """How many output positions of a convolution each input pixel reaches, ``[h, w]`` (exact integers, float64,
    read-only): the gradient of the sum of a 1-channel convolution with a kernel of ones."""
    with torch.enable_grad():
        x = torch.zeros(1, 1, h, w, dtype=torch.float64, device=device, requires_grad=True)
        ones = torch.ones(1, 1, *kernel_size, dtype=torch.float64, device=device)
        F.conv2d(x, ones, stride=stride, padding=padding, dilation=dilation).sum().backward()
    return x.grad[0, 0].detach()


def _conv_reach(conv: nn.Conv2d, conv_input: torch.Tensor) -> torch.Tensor:
    if conv.groups != 1:
        raise NotImplementedError("grouped convolutions are not counted")
    h, w = conv_input.shape[-2:]
    return _reach(tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), int(h),
                  int(w), str(conv_input.device))


def conv_sops_per_image(conv: nn.Conv2d, conv_input: torch.Tensor, T: int, batch: int) -> torch.Tensor:
    """``conv_sops`` of each image of a ``[T*B, C_in, H, W]`` call at once, ``[B]`` float64: the same exact integers
    (spikes per pixel and reaches are small integers, so no sum rounds whatever its order)."""
    reach = _conv_reach(conv, conv_input)
    per_pixel = conv_input.view(T, batch, *conv_input.shape[1:]).float().sum(dim=(0, 2)).double()   # [B, H, W]
    return (per_pixel * reach).sum(dim=(1, 2)) * conv.out_channels


def conv_sops(conv: nn.Conv2d, conv_input: torch.Tensor) -> torch.Tensor:
    """Exact synaptic operations of binary ``conv_input [N, C_in, H, W]`` through ``conv`` (a scalar tensor).

    A spike at pixel (y, x) of any input channel reaches ``out_channels`` synapses at every output position whose
    window holds it: the spikes summed over images and channels (exact small integers), times each pixel's reach
    (``_reach``, computed once per layer shape), times ``out_channels``. No convolution per call."""
    reach = _conv_reach(conv, conv_input)
    per_pixel = conv_input.float().sum(dim=(0, 1)).double()
    return (per_pixel * reach).sum() * conv.out_channels


class EnergyMeter:
    """Monitor that counts spikes and SOPs per layer over any number of denoiser calls."""

    wants_potentials = False        # spikes are enough: the neurons keep no copy of their potentials for it

    def __init__(self):
        self.calls = 0
        self.images = 0
        self._calls_at: dict[int | None, int] = {}   # calls per spiking time steps T (None: the model's own)
        self._spikes: dict[str, float] = {}
        self._sops: dict[str, float] = {}
        self._neurons: dict[str, int] = {}
        self._steps: dict[str, int] = {}   # neuron-time-steps seen: T * B per call

    def start_call(self, batch: int, time_steps: int | None = None) -> None:
        """A denoiser call of ``batch`` images at ``time_steps`` spiking steps (None: the model's own T) begins."""
        self.calls += 1
        self.images = batch
        self._calls_at[time_steps] = self._calls_at.get(time_steps, 0) + 1

    def on_spikes(self, layer, spikes: torch.Tensor, v, threshold) -> None:
        T, B = spikes.shape[:2]
        self.count_spikes(layer.name, float(spikes.sum()), int(spikes[0, 0].numel()), T * B)

    def on_synapses(self, layer, conv, conv_input) -> None:
        self.count_sops(layer.name, float(conv_sops(conv, conv_input)))

    def count_spikes(self, name: str, spikes: float, neurons: int, steps: int) -> None:
        """Add a layer's spikes of one call (``neurons`` per image, ``steps`` = T * B neuron-time-steps each)."""
        self._spikes[name] = self._spikes.get(name, 0.0) + spikes
        self._neurons[name] = neurons
        self._steps[name] = self._steps.get(name, 0) + steps

    def layer_counts(self) -> dict[str, tuple[float, int, int, "float | None"]]:
        """What ``count_spikes`` and ``count_sops`` added so far, per layer: (spikes, neurons, steps, SOPs or None);
        another meter given them counts the same (``sdm.explorer.workers`` hands a worker's counts back so)."""
        return {n: (self._spikes[n], self._neurons[n], self._steps[n], self._sops.get(n)) for n in self._spikes}

    def count_sops(self, name: str, sops: float) -> None:
        """Add a layer's synaptic operations of one call."""
        self._sops[name] = self._sops.get(name, 0.0) + sops

    def report(self, cfg: ModelConfig) -> EnergyReport:
        """Per-image figures for the calls measured so far (``images`` per call)."""
        if self.calls == 0 or self.images == 0:
            raise ValueError("EnergyMeter.report(): no denoiser call was measured")
        per_image = 1.0 / self.images
        per_layer = {
            n: LayerEnergy(neurons=self._neurons[n], spikes=self._spikes[n] * per_image,
                           sops=self._sops.get(n, 0.0) * per_image,
                           firing_rate=self._spikes[n] / (self._neurons[n] * self._steps[n]))
            for n in self._spikes
        }
        total_sops = sum(l.sops for l in per_layer.values())
        snn_macs = sum(analog_macs(cfg if T is None or not cfg.spiking else cfg.replace(T=T)) * n
                       for T, n in self._calls_at.items())
        ann_macs = ann_macs_per_call(cfg) * self.calls
        return EnergyReport(
            calls=self.calls, total_sops=total_sops, snn_macs=snn_macs, ann_macs=ann_macs,
            energy_mj=(PJ_PER_SOP * total_sops + PJ_PER_MAC * snn_macs) * 1e-9,
            ann_energy_mj=PJ_PER_MAC * ann_macs * 1e-9, per_layer=per_layer)


def _count_macs(cfg: ModelConfig, skip_spike_convs: bool) -> int:
    """MACs of one denoiser call at batch 1, from forward hooks on a throw-away model of this config."""
    from .unet import SpikingUNet, SpikeConv  # local import: unet imports nothing from here
    model = SpikingUNet(cfg).eval()
    skip = set()
    if skip_spike_convs:
        # convs fed by spikes cost SOPs, counted from real spikes
        skip = {id(m.conv) for m in model.modules() if isinstance(m, SpikeConv)}
    total = [0]

    def hook(mod, inp, out):
        if id(mod) in skip:
            return
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total[0] += out.numel() * k
        elif isinstance(mod, nn.Linear):
            total[0] += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    x = torch.zeros(1, cfg.image_channels, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        model(x, torch.zeros(1, dtype=torch.long))
    for h in handles:
        h.remove()
    if skip_spike_convs and cfg.time_steps > 1:
        # readout: the mean over T of the output layer's spikes
        total[0] += cfg.time_steps * cfg.base_channels * cfg.channel_mult[0] * cfg.image_size ** 2
    return total[0]


@lru_cache(maxsize=64)
def analog_macs(cfg: ModelConfig) -> int:
    """The SNN's MACs per denoiser call and image: first conv, time embedding, shortcuts, readout."""
    return _count_macs(cfg, skip_spike_convs=cfg.spiking)


@lru_cache(maxsize=64)
def ann_macs_per_call(cfg: ModelConfig) -> int:
    """MACs per call and image of the ANN counterpart of ``cfg`` (same convolutions, SiLU, T = 1)."""
    return _count_macs(cfg.replace(neuron="ann", tsm=False), skip_spike_convs=False)
