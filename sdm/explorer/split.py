"""Monitors of a batch of several sessions' denoiser calls (``DenoiserBatcher``, in the server or in a worker process
of ``sdm.explorer.workers``): each call's probe and energy meter see only its rows, and the batch check sees every
layer.
"""
from __future__ import annotations

import hashlib

import torch

from ..energy import EnergyMeter, conv_sops_per_image

__all__ = ["SplitMonitor", "row_digest"]


class SplitMonitor:
    """A monitor for a batch of several calls: each call's probe and energy meter see only its rows, as in a call of
    its own. The meters' counts of every call are computed at once per layer (bitwise the same: spike and synapse
    counts are exact small integers, whatever the order of their sums).

    ``on_spikes`` gets ``[T, B, ...]`` tensors, ``on_synapses`` a ``[T*B, ...]`` conv input (``SpikeConv.spikes``);
    ``spans`` gives each call's rows ``(start, stop)`` of B; ``probes`` and ``meters`` each call's (or None).
    """

    def __init__(self, probes: list, meters: list, spans: list[tuple[int, int]], T: int, batch: int):
        self.probes = [(p, a, b) for p, (a, b) in zip(probes, spans) if p is not None]
        self.meters = [(m, a, b) for m, (a, b) in zip(meters, spans) if m is not None]
        self.T, self.batch = T, batch
        self.wants_potentials = bool(self.probes)        # (the meters count spikes only)

    def on_spikes(self, layer, spikes: torch.Tensor, v, threshold) -> None:
        for probe, a, b in self.probes:       # threshold: one per image (float64 [B]), as a float for a call alone
            probe.on_spikes(layer, spikes[:, a:b], v[:, a:b], float(threshold[a]) if torch.is_tensor(threshold)
                            else threshold)
        if self.meters:
            per_image = spikes.sum(dim=tuple(d for d in range(spikes.dim()) if d != 1)).tolist()     # [B]
            neurons = int(spikes[0, 0].numel())
            for meter, a, b in self.meters:
                meter.count_spikes(layer.name, float(sum(per_image[a:b])), neurons, self.T * (b - a))

    def on_synapses(self, layer, conv, conv_input: torch.Tensor) -> None:
        if self.meters:
            per_image = conv_sops_per_image(conv, conv_input, self.T, self.batch).tolist()
            for meter, a, b in self.meters:
                meter.count_sops(layer.name, float(sum(per_image[a:b])))

    def start_call(self, batch: int, time_steps=None) -> None:
        """(``run_denoiser`` starts its meter's call: each part's meter was started for its own rows already.)"""


def row_digest(spikes: torch.Tensor, v: "torch.Tensor | None", i: int) -> bytes:
    """A digest of image ``i``'s spikes and membrane potentials in one layer (``[T, B, ...]`` each, any memory
    layout): equal digests, bitwise equal values (for the batch check of ``ProcessWorkers``)."""
    h = hashlib.blake2b(digest_size=16)
    for a in (spikes, v):
        if a is not None:
            h.update(a[:, i].contiguous().numpy().tobytes())
    return h.digest()


class _Layers:
    """A monitor that keeps every spiking layer's spikes and membrane potentials ``[T, B, ...]`` of one call (for
    ``DenoiserBatcher._check``), and hands everything on to ``meter`` (an ``EnergyMeter``, or None)."""

    def __init__(self, meter: EnergyMeter | None = None):
        self.seen: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.meter = meter

    def start_call(self, batch: int, time_steps=None) -> None:
        if self.meter is not None:
            self.meter.start_call(batch, time_steps)

    def on_spikes(self, layer, spikes, v, threshold) -> None:
        self.seen[layer.name] = (spikes.clone(), v.clone() if torch.is_tensor(v) else None)
        if self.meter is not None:
            self.meter.on_spikes(layer, spikes, v, threshold)

    def on_synapses(self, layer, conv, conv_input) -> None:
        if self.meter is not None:
            self.meter.on_synapses(layer, conv, conv_input)

    def rows_equal(self, alone: "_Layers", a: int, b: int) -> bool:
        """Rows a:b of this (batched) call's layers are bitwise ``alone``'s: spikes and membrane potentials."""
        if self.seen.keys() != alone.seen.keys():
            return False
        for name, (spikes, v) in self.seen.items():
            s1, v1 = alone.seen[name]
            if not torch.equal(spikes[:, a:b], s1) or (v is None) != (v1 is None) or \
                    (v is not None and not torch.equal(v[:, a:b], v1)):
                return False
        return True
