"""Recording spikes and membrane potentials per spiking layer (after spikingjelly's ``monitor``).

A ``Probe`` is handed to the denoiser as its ``monitor`` argument (never attached to the shared model), so
two requests recording at the same time cannot see each other's data::

    with Probe(max_neurons=256, seed=0) as probe:
        eps = model(x_t, t, monitor=probe)
    frames = probe.frames            # {layer name: ProbeFrame}, detached numpy on the CPU
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch


@dataclass
class ProbeFrame:
    """One spiking layer during one denoiser call.

    Attributes:
        spikes: bool ``[T, B, N]`` for the N recorded neurons.
        v: float16 ``[T, B, N]`` membrane potential (before reset), in the same units as ``threshold``.
        firing_rate: spikes per neuron per time step over the whole layer (all M neurons, T, B).
        threshold: the threshold in force, theta * threshold_scale.
        neuron_index: int ``[N]`` indices of the recorded neurons in the flattened layer ``[C*H*W]``.
        num_neurons: M, the neurons of the layer (per image).
        shape: the layer's ``(C, H, W)``.
    """

    spikes: np.ndarray
    v: np.ndarray
    firing_rate: float
    threshold: float
    neuron_index: np.ndarray
    num_neurons: int
    shape: tuple

    @property
    def nbytes(self) -> int:
        return self.spikes.nbytes + self.v.nbytes + self.neuron_index.nbytes


class Probe:
    """Collects a ``ProbeFrame`` per spiking layer for each denoiser call it is handed to.

    Args:
        max_neurons: N, neurons recorded per layer (a fixed, seeded subset when the layer has more).
        seed: seed of the subset; the same seed and layer always give the same neurons.
    """

    def __init__(self, max_neurons: int = 256, seed: int = 0):
        if int(max_neurons) < 1:
            raise ValueError(f"max_neurons must be >= 1, got {max_neurons}")
        self.max_neurons = int(max_neurons)
        self.seed = int(seed)
        self.frames: dict[str, ProbeFrame] = {}
        self._active = False

    def __enter__(self) -> "Probe":
        self.frames = {}
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._active = False

    def neuron_index(self, layer: str, num_neurons: int) -> np.ndarray:
        """The recorded subset of a layer of ``num_neurons`` neurons (sorted, seeded by seed and layer name;
        read-only: the same array for every probe with this seed)."""
        return _neuron_index(self.seed, self.max_neurons, layer, int(num_neurons))

    # ---- monitor protocol
    def on_spikes(self, layer, spikes: torch.Tensor, v: torch.Tensor, threshold: float) -> None:
        if not self._active:
            raise RuntimeError("Probe used outside its `with` block: use `with Probe() as probe: model(..., monitor=probe)`")
        shape = tuple(spikes.shape[2:])
        num = math.prod(shape)
        idx = self.neuron_index(layer.name, num)
        at = _positions(self.seed, self.max_neurons, layer.name, shape, str(spikes.device))   # in any memory layout
        self.frames[layer.name] = ProbeFrame(
            spikes=spikes[at].bool().cpu().numpy(),
            v=v[at].to(torch.float16).cpu().numpy(),
            firing_rate=float(spikes.float().mean()),
            threshold=float(threshold),
            neuron_index=idx,
            num_neurons=int(num),
            shape=shape,
        )

    def on_synapses(self, layer, conv, conv_input) -> None:
        pass


@lru_cache(maxsize=4096)
def _neuron_index(seed: int, max_neurons: int, layer: str, num_neurons: int) -> np.ndarray:
    if num_neurons <= max_neurons:
        idx = np.arange(num_neurons)
    else:
        rng = np.random.default_rng([seed, zlib.crc32(layer.encode())])
        idx = np.sort(rng.choice(num_neurons, max_neurons, replace=False))
    idx.flags.writeable = False
    return idx


@lru_cache(maxsize=4096)
def _positions(seed: int, max_neurons: int, layer: str, shape: tuple, device: str) -> tuple:
    """An index of ``[T, B, *shape]`` giving ``[T, B, N]``: the recorded neurons of the flattened layer."""
    coords = np.unravel_index(_neuron_index(seed, max_neurons, layer, math.prod(shape)), shape)
    return (slice(None), slice(None)) + tuple(torch.from_numpy(np.ascontiguousarray(c)).to(device) for c in coords)


class Monitors:
    """Fan one call out to several monitors (a probe and an energy meter)."""

    def __init__(self, *monitors):
        self.monitors = [m for m in monitors if m is not None]
        self.wants_potentials = any(getattr(m, "wants_potentials", True) for m in self.monitors)

    def on_spikes(self, layer, spikes, v, threshold):
        for m in self.monitors:
            m.on_spikes(layer, spikes, v, threshold)

    def on_synapses(self, layer, conv, conv_input):
        for m in self.monitors:
            m.on_synapses(layer, conv, conv_input)


def combine(*monitors):
    """None, the single monitor, or a ``Monitors`` fan-out."""
    ms = [m for m in monitors if m is not None]
    if not ms:
        return None
    return ms[0] if len(ms) == 1 else Monitors(*ms)
