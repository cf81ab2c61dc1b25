"""Spiking neurons (LIF / IF), TSM weights and threshold guidance.

All activations here are multi-step: they take ``x_seq [T, B, ...]`` and return spikes of the same shape.

* Dynamics follow ``snntorch.Leaky`` (explicit state, ``reset_delay=True``), which ``tests/test_neurons.py``
  checks step by step against snntorch itself::

      zero reset:      U[n] = beta * (1 - S[n-1]) * U[n-1] + I[n]
      subtract reset:  U[n] = beta * U[n-1] + I[n] - S[n-1] * theta
      S[n] = H(U[n] - theta)                       (ATan surrogate gradient, snntorch.surrogate.atan)

  The reset term is detached from the graph, as in snntorch. IF neurons are LIF with beta = 1.
  We run the recurrence ourselves instead of calling ``snn.Leaky`` because ``Leaky.forward`` stores
  ``mem``/``reset`` on the module: a shared model could then not serve two requests at once.
* **TSM** (paper Eq. 16): ``I[n] <- I[n] * p[n]`` with one learnable scalar per layer and time step,
  ``p`` of shape ``[T]`` initialised to 1. Run at another number of spiking steps than it was trained for
  (``time_steps`` of the forward call), a layer uses ``tsm_weights_at(p, T)``: the first T learned weights when T is
  smaller, and beyond the trained steps the last learned weight, repeated.
* **Threshold guidance** (paper Eq. 18): ``theta' = theta * threshold_scale``, where ``threshold_scale`` is
  an argument of every forward call and never stored on the module.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn



class Monitor(Protocol):
    """Something that watches a denoiser call (see ``sdm.probes.Probe`` and ``sdm.energy.EnergyMeter``)."""

    #: whether ``on_spikes`` needs the membrane potentials (an energy meter does not: ``v`` is then None, and the
    #: neuron keeps no copy of them); a monitor without this attribute gets them
    wants_potentials: bool

    def on_spikes(self, layer: "SpikingNeuron", spikes: torch.Tensor, v: "torch.Tensor | None",
                  threshold: float) -> None: ...

    def on_synapses(self, layer: "SpikingNeuron", conv: nn.Conv2d, conv_input: torch.Tensor) -> None: ...


@dataclass(frozen=True)
class RunContext:
    """Per-call settings threaded through the network: never stored on a module.

    Attributes:
        T: spiking time steps of this call (1 for an ANN).
        batch: B, so that ``[T*B, ...]`` tensors can be viewed as ``[T, B, ...]``.
        threshold_scale: threshold guidance, multiplies every neuron's threshold.
        monitor: optional probe / energy meter, or None (costs nothing).

    ``threshold_scale`` may be a float64 tensor ``[B]``, one scale per image, at inference (``DenoiserBatcher``): each
    image's threshold is then the float32 of theta * its scale, as a float scale gives it; the monitor is then told
    the threshold of each image (a ``[B]`` float64 tensor).
    """

    T: int
    batch: int
    threshold_scale: "float | torch.Tensor" = 1.0     # or one per image, float64 [B] (a batch of sessions)
    monitor: Any = None


def check_threshold_scale(threshold_scale: float) -> float:
    """The library's check of a threshold-guidance scale: a finite number > 0, where a value enters
    (``SpikingUNet.forward`` and the pipeline's public methods; below them it is trusted). The explorer's slider
    allows a part of this range, ``validation.check_scale``."""
    try:
        s = float(threshold_scale)
    except (TypeError, ValueError):
        raise ValueError(f"threshold_scale must be a number, got {threshold_scale!r}") from None
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"threshold_scale must be finite and > 0 (typically 0.9-1.1), got {threshold_scale!r}")
    return s


def tsm_weights_at(p: torch.Tensor, T: int) -> torch.Tensor:
    """TSM weights for a run of ``T`` spiking steps, from the weights ``p [T_trained]`` learned for another T.

    The rule: step n < T_trained uses its learned weight p[n]; every step beyond the trained ones repeats the last
    learned weight p[T_trained - 1] (for T < T_trained, the first T weights). Returns ``[T]``.
    """
    n = p.shape[0]
    if T <= n:
        return p[:T]
    return torch.cat([p, p[-1:].expand(T - n)])


MAX_TIME_STEPS = 64


def check_time_steps(time_steps, cfg=None) -> int:
    """The one check of a number of spiking time steps T: a whole number in [1, 64]. With a model's ``cfg`` it is
    the T of one call of that model: ``None`` gives its own (``cfg.time_steps``, 1 for an ANN), and an ANN, which
    has no spiking time steps, takes only None or 1. (The explorer offers fewer: ``validation.check_spiking_steps``
    builds on this.)"""
    if time_steps is None and cfg is not None:
        return cfg.time_steps
    try:
        ok = isinstance(time_steps, numbers.Real) and not isinstance(time_steps, bool) \
            and float(time_steps).is_integer() and 1 <= time_steps <= MAX_TIME_STEPS
    except OverflowError:
        ok = False
    if not ok:
        trained = f" (None: the trained T = {cfg.time_steps})" if cfg is not None else ""
        raise ValueError(f"time_steps must be a whole number between 1 and {MAX_TIME_STEPS}{trained}, "
                         f"got {time_steps!r}")
    if cfg is not None and not cfg.spiking and time_steps != 1:
        raise ValueError(f"this model is an ANN ({cfg.neuron}): it has no spiking time steps; pass time_steps=None, "
                         f"got {time_steps!r}")
    return int(time_steps)


class SpikingNeuron(nn.Module):
    """Multi-step LIF/IF neuron layer with optional TSM.

    Args:
        T: spiking time steps (length of the TSM weight vector).
        beta: leak factor in [0, 1]; 1.0 gives an IF neuron.
        threshold: base firing threshold theta.
        reset: "zero" (hard reset, default) or "subtract".
        tsm: create the TSM weights ``p`` (shape [T], init 1.0).
        v_init: initial membrane potential as a fraction of the threshold (0.5 for converted ANNs).
    """

    def __init__(self, T: int, beta: float = 0.9, threshold: float = 1.0, reset: str = "zero", tsm: bool = False,
                 v_init: float = 0.0):
        super().__init__()
        if reset not in ("zero", "subtract"):
            raise ValueError(f"reset must be 'zero' or 'subtract', got {reset!r}")
        self.T = T
        self.beta = float(min(max(beta, 0.0), 1.0))  # snntorch clamps beta to [0, 1]
        self.threshold = float(threshold)
        self.reset = reset
        self.tsm = nn.Parameter(torch.ones(T)) if tsm else None
        self.v_init = float(v_init)
        self.name = ""  # qualified module name, set by the model after construction

    def extra_repr(self) -> str:
        kind = "IF" if self.beta == 1.0 else f"LIF beta={self.beta}"
        return f"{kind}, threshold={self.threshold}, reset={self.reset}, T={self.T}, tsm={self.tsm is not None}"

    def enable_tsm(self, device: torch.device | str | None = None) -> None:
        """Turn TSM on (weights initialised to 1, so the output is unchanged), on ``device`` (default: torch's).
        A neuron has no tensors of its own to take a device from, so its model passes its device."""
        if self.tsm is None:
            self.tsm = nn.Parameter(torch.ones(self.T, device=device))

    def forward(self, x_seq: torch.Tensor, threshold_scale: float = 1.0, monitor: Monitor | None = None) -> torch.Tensor:
        """Args:
            x_seq: input current ``[T, B, ...]``.
            threshold_scale: threshold guidance for this call only.
            monitor: optional observer, given spikes and membrane potential (in threshold units of theta').
        Returns:
            spikes ``[T, B, ...]`` (0/1, dtype of the input).
        """
        T = x_seq.shape[0]
        x = x_seq.float()
        if self.tsm is not None:  # Eq. 16, TSM: the input current of step n is scaled by p[n]
            x = x * tsm_weights_at(self.tsm, T).view(T, *([1] * (x.dim() - 1)))
        thr = self.threshold * threshold_scale
        record = monitor is not None and getattr(monitor, "wants_potentials", True)    # (else v is None: no copy)
        if torch.is_grad_enabled() and x.requires_grad:
            spikes, v = _MultiStepNeuron.apply(x, thr, self.beta, self.reset == "zero", record, self.v_init)
        elif torch.is_tensor(thr):      # one threshold per image [B] (float64): as float32, broadcast over a row
            rows = (x.shape[1],) + (1,) * (x.dim() - 2)
            spikes, v, _ = _run_neuron(x, thr.to(x.dtype).view(rows), self.beta, self.reset == "zero", record,
                                       v_init=self.v_init, v_start=(self.v_init * thr).to(x.dtype).view(rows))
        else:
            spikes, v, _ = _run_neuron(x, thr, self.beta, self.reset == "zero", record, v_init=self.v_init)
        if monitor is not None:
            monitor.on_spikes(self, spikes, v, thr)
        return spikes.to(x_seq.dtype)


def _run_neuron(x: torch.Tensor, thr: "float | torch.Tensor", beta: float, zero_reset: bool, record: bool,
                keep_mem: bool = False, v_init: float = 0.0, v_start: "torch.Tensor | None" = None):
    """The recurrence over T with in-place ops. Returns (spikes float [T, ...], v or None, mem history or None).
    ``thr``: a float, or a float32 tensor that broadcasts over one step ``x[t]`` (one threshold per image), with
    ``v_start`` the initial potentials ``v_init * thr`` likewise (passed, not derived here: computed from the float64
    thresholds and then rounded, as a float threshold's product is, bitwise)."""
    T = x.shape[0]
    # spikes as 0/1 in x's (float) dtype from the start: on a CPU a comparison into a float tensor and a multiply by
    # a 0/1 mask are several times faster than into bool, a masked_fill and a bool -> float conversion (same values)
    spikes = torch.empty_like(x)
    keep = torch.empty_like(x[0]) if zero_reset and T > 1 else None     # 1 - S[t-1]: where the membrane is kept
    hist = torch.empty_like(x) if (record or keep_mem) else None
    mem = x[0].clone()
    if v_init:   # U[-1] = v_init * theta (the leak of the empty step is not applied)
        mem.add_(v_init * thr if v_start is None else v_start)
    for t in range(T):
        if t:
            if zero_reset:
                mem.mul_(keep)                  # reset to zero where it spiked
                if beta != 1.0:
                    mem.mul_(beta)
            else:
                if beta != 1.0:
                    mem.mul_(beta)
                if torch.is_tensor(thr):
                    mem.sub_(spikes[t - 1] * thr)       # (0 or theta: exact, as alpha=theta)
                else:
                    mem.sub_(spikes[t - 1], alpha=thr)
            mem.add_(x[t])
        torch.gt(mem, thr, out=spikes[t])  # S = H(U - theta), as snntorch's ATan forward
        if keep is not None and t < T - 1:
            torch.le(mem, thr, out=keep)
        if hist is not None:
            hist[t] = mem
    return spikes, (hist if record else None), hist


class _MultiStepNeuron(torch.autograd.Function):
    """The recurrence with a hand-written BPTT backward (ATan surrogate, detached reset, as in snntorch).

    dL/dU[n] = dL/dS[n] * atan'(U[n] - theta) + dL/dU[n+1] * dU[n+1]/dU[n],
    dU[n+1]/dU[n] = beta * (1 - S[n]) for the zero reset, beta for subtraction.
    """

    @staticmethod
    def forward(ctx, x, thr, beta, zero_reset, record, v_init):
        spikes, v, hist = _run_neuron(x, thr, beta, zero_reset, record, keep_mem=True, v_init=v_init)
        ctx.save_for_backward(hist, spikes)
        ctx.thr, ctx.beta, ctx.zero_reset = thr, beta, zero_reset
        ctx.mark_non_differentiable(hist)
        return spikes, hist

    @staticmethod
    def backward(ctx, grad_spikes, _grad_v):
        hist, spikes = ctx.saved_tensors
        # surrogate derivative of snntorch.surrogate.atan(alpha=2): alpha/2 / (1 + (pi/2 * alpha * u)^2)
        u = hist - ctx.thr
        sg = u.mul_(math.pi).square_().add_(1.0).reciprocal_()
        grad_x = torch.empty_like(hist)
        carry = None
        for t in range(hist.shape[0] - 1, -1, -1):
            g = grad_spikes[t] * sg[t]
            if carry is not None:
                g += carry
            grad_x[t] = g
            if t:
                carry = g * ctx.beta if not ctx.zero_reset else g * (1.0 - spikes[t - 1]) * ctx.beta
        return grad_x, None, None, None, None, None


class _QuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, levels):
        return torch.round(x * levels) / levels

    @staticmethod
    def backward(ctx, g):
        return g, None


class QuantClipReLU(nn.Module):
    """Uniformly quantised clip-ReLU with a learnable clip ``alpha`` (Fast-SNN; paper Section 6).

    ``y = alpha * round(clamp(x / alpha, 0, 1) * L) / L`` with ``L = 2^bits - 1`` levels
    (straight-through estimator for the rounding). Converts to an IF neuron with threshold alpha,
    initial membrane alpha/2 and reset by subtraction, run for T = L steps.
    """

    def __init__(self, bits: int = 2, alpha: float = 6.0):
        super().__init__()
        if bits < 1:
            raise ValueError(f"bits must be >= 1, got {bits}")
        self.bits = bits
        self.levels = 2 ** bits - 1
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.name = ""

    def extra_repr(self) -> str:
        return f"bits={self.bits}, levels={self.levels}"

    def forward(self, x_seq: torch.Tensor, threshold_scale: float = 1.0, monitor=None) -> torch.Tensor:
        a = self.alpha.abs() + 1e-6
        y = torch.clamp(x_seq / a, 0.0, 1.0)
        return _QuantSTE.apply(y, self.levels) * a


class AnalogActivation(nn.Module):
    """The ANN counterpart's activation (SiLU); ignores threshold guidance."""

    def __init__(self):
        super().__init__()
        self.name = ""

    def forward(self, x_seq: torch.Tensor, threshold_scale: float = 1.0, monitor=None) -> torch.Tensor:
        return nn.functional.silu(x_seq)


def make_activation(cfg) -> nn.Module:
    """The activation a ``ModelConfig`` asks for: LIF, IF, SiLU (ann) or quantised clip-ReLU (qann)."""
    if cfg.neuron == "lif":
        return SpikingNeuron(cfg.T, beta=cfg.beta, threshold=cfg.threshold, reset=cfg.reset, tsm=cfg.tsm, v_init=cfg.v_init)
    if cfg.neuron == "if":
        return SpikingNeuron(cfg.T, beta=1.0, threshold=cfg.threshold, reset=cfg.reset, tsm=cfg.tsm, v_init=cfg.v_init)
    if cfg.neuron == "qann":
        return QuantClipReLU(bits=cfg.bits)
    return AnalogActivation()
