"""The spiking UNet (SDDPM / SDM) and its ANN counterpart, built from one ``ModelConfig``.

Layout (paper: SDDPM, reused by SDM), all tensors of the residual stream are ``[T*B, C, H, W]``:

* sinusoidal time embedding -> Linear -> SiLU -> Linear, in float, computed once per call;
* direct encoding: the first (analog) conv sees x_t once; its output is repeated over T;
* "pre-spike" res blocks: neuron -> conv -> BN -> + time embedding -> neuron -> conv -> BN, plus a shortcut,
  summed in float; BatchNorm runs over the flattened ``[T*B]`` batch;
* down-sampling: neuron -> stride-2 conv; up-sampling: neuron -> nearest x2 -> conv;
* output: neuron -> conv, averaged over T. The conv is linear, so it is applied once to the mean of the spikes:
  the same result as T convolutions, at 1/T of the cost;
* optional preconditioning (``cfg.precondition``): eps = c_skip(t) x_t + c_out(t) F, with F the network above.
  With abar = alphas_cumprod[t] and s = sigma_data, the weights are those of the best linear guess of eps from x_t
  and the scale of what remains: c_skip = sqrt(1-abar) / (1 - abar + abar s^2),
  c_out = sqrt(abar) s / sqrt(1 - abar + abar s^2). At small t, c_skip ~ 0 and c_out ~ 1 (F predicts eps alone);
  at large t, c_skip ~ 1 and c_out ~ 0, so the spiking layers' coarse copy of x_t no longer limits the prediction.

``neuron="ann"`` builds the same convolutions with SiLU in place of the neurons, and T = 1.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .config import ModelConfig, DiffusionConfig
from .neurons import (RunContext, SpikingNeuron, QuantClipReLU, AnalogActivation, make_activation,
                      check_threshold_scale, check_time_steps)


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (DDPM). timesteps ``[B]`` -> ``[B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class SpikeConv(nn.Module):
    """neuron -> [nearest x2] -> conv -> [BN]: one spiking layer and the synapses it drives."""

    def __init__(self, cfg: ModelConfig, cin: int, cout: int, k: int = 3, stride: int = 1,
                 upsample: bool = False, bn: bool = True):
        super().__init__()
        self.act = make_activation(cfg)
        self.upsample = upsample
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=not bn)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()

    def spikes(self, h: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        """``[T*B, C, H, W]`` currents -> spikes (or activations) of the same shape."""
        s = self.act(h.view(ctx.T, ctx.batch, *h.shape[1:]), ctx.threshold_scale, ctx.monitor)
        s = s.reshape(h.shape)
        if self.upsample:
            s = F.interpolate(s, scale_factor=2.0, mode="nearest")
        if ctx.monitor is not None and isinstance(self.act, SpikingNeuron):
            ctx.monitor.on_synapses(self.act, self.conv, s)
        return s

    def forward(self, h: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        return self.bn(self.conv(self.spikes(h, ctx)))


class ResBlock(nn.Module):
    pointwise_linear = False    # the 1x1 shortcut as a matrix product (``SpikingUNet.channels_last``)

    def __init__(self, cfg: ModelConfig, cin: int, cout: int):
        super().__init__()
        self.conv1 = SpikeConv(cfg, cin, cout)
        self.temb = nn.Linear(cfg.time_embed_dim, cout)
        self.conv2 = SpikeConv(cfg, cout, cout)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        h = self.conv1(x, ctx)
        C, H, W = h.shape[1:]
        # the time embedding is constant over T: project once, broadcast over the T copies
        h = (h.view(ctx.T, ctx.batch, C, H, W) + project(self.temb, temb)[None, :, :, None, None]).view(-1, C, H, W)
        h = self.conv2(h, ctx)
        if self.pointwise_linear and isinstance(self.shortcut, nn.Conv2d):
            return h + _pointwise(self.shortcut, x)
        return h + self.shortcut(x)


class RowwiseEmbedding:
    """The time embedding of a batch at inference: one ``[1, E]`` row per distinct timestep, and each image's row
    (``inverse [B]``). See ``SpikingUNet.time_embedding``."""

    def __init__(self, rows: list[torch.Tensor], inverse: torch.Tensor):
        self.rows, self.inverse = rows, inverse


def project(linear: nn.Linear, temb: "torch.Tensor | RowwiseEmbedding") -> torch.Tensor:
    """``linear(temb)`` ``[B, out]``; a ``RowwiseEmbedding``'s rows each projected on their own (batch 1)."""
    if not isinstance(temb, RowwiseEmbedding):
        return linear(temb)
    if len(temb.rows) == 1:
        return linear(temb.rows[0]).expand(len(temb.inverse), -1)
    return torch.cat([linear(r) for r in temb.rows])[temb.inverse]


class SpikingUNet(nn.Module):
    """Noise predictor eps_theta(x_t, t).

    Args:
        cfg: the architecture; ``cfg.neuron`` selects LIF / IF spiking neurons or the ANN counterpart.
        diffusion: the noise schedule, used only by ``cfg.precondition`` (default: ``DiffusionConfig()``).
    """

    def __init__(self, cfg: ModelConfig, diffusion: DiffusionConfig | None = None):
        super().__init__()
        self.cfg = cfg
        self.diffusion = diffusion or DiffusionConfig()
        if cfg.precondition:  # derived from the schedule, so not part of the weights file
            from .scheduling_ddpm import make_betas
            abar = torch.cumprod(1.0 - make_betas(self.diffusion), dim=0).float()
            self.register_buffer("alphas_cumprod", abar, persistent=False)
        ch = cfg.base_channels
        E = cfg.time_embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(ch, E), nn.SiLU(), nn.Linear(E, E))
        self.conv_in = nn.Conv2d(cfg.image_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        chans = [ch]
        cur = ch
        for i, mult in enumerate(cfg.channel_mult):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.blocks.append(ResBlock(cfg, cur, ch * mult))
                cur = ch * mult
                chans.append(cur)
            level.downsample = None
            if i != len(cfg.channel_mult) - 1:
                level.downsample = SpikeConv(cfg, cur, cur, stride=2)
                chans.append(cur)
            self.down.append(level)

        self.mid = nn.ModuleList([ResBlock(cfg, cur, cur), ResBlock(cfg, cur, cur)])

        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(cfg.channel_mult))):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.blocks.append(ResBlock(cfg, cur + chans.pop(), ch * mult))
                cur = ch * mult
            level.upsample = SpikeConv(cfg, cur, cur, upsample=True) if i != 0 else None
            self.up.append(level)

        self.out = SpikeConv(cfg, cur, cfg.image_channels, bn=False)
        nn.init.zeros_(self.out.conv.weight)
        nn.init.zeros_(self.out.conv.bias)
        for name, m in self.named_modules():
            if isinstance(m, (SpikingNeuron, QuantClipReLU, AnalogActivation)):
                m.name = name
        if cfg.thresholds and cfg.spiking:  # per-layer thresholds of a converted SNN (its ANN twin ignores them)
            neurons = self.neurons()
            if len(cfg.thresholds) != len(neurons):
                raise ValueError(f"config gives {len(cfg.thresholds)} thresholds for {len(neurons)} spiking layers")
            for n, thr in zip(neurons, cfg.thresholds):
                n.threshold = float(thr)

    # ------------------------------------------------------------------ introspection
    def activations(self) -> list[tuple[str, nn.Module]]:
        """(name, activation module) in forward order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, (SpikingNeuron, QuantClipReLU, AnalogActivation))]

    def layer_names(self) -> list[str]:
        return [n for n, _ in self.activations()]

    def neurons(self) -> list[SpikingNeuron]:
        return [m for _, m in self.activations() if isinstance(m, SpikingNeuron)]

    def enable_tsm(self) -> None:
        """Switch TSM on in every spiking layer (weights start at 1: outputs unchanged), on the model's device."""
        device = next(self.parameters()).device
        for m in self.neurons():
            m.enable_tsm(device)
        object.__setattr__(self, "cfg", self.cfg.replace(tsm=True))

    def tsm_weights(self) -> dict[str, torch.Tensor]:
        return {m.name: m.tsm.detach() for m in self.neurons() if m.tsm is not None}

    @torch.no_grad()
    def fuse_batchnorm(self) -> "SpikingUNet":
        """Fold every eval-mode BatchNorm into its conv, in place. For inference only (the pipeline calls it)."""
        for m in self.modules():
            if isinstance(m, SpikeConv) and isinstance(m.bn, nn.BatchNorm2d):
                bn, conv = m.bn, m.conv
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                                  padding=conv.padding, bias=True).to(conv.weight.device)
                fused.weight.copy_(conv.weight * scale[:, None, None, None])
                b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                fused.bias.copy_((b - bn.running_mean) * scale + bn.bias)
                m.conv, m.bn = fused, nn.Identity()
        self.eval()
        return self

    memory_format = None    # the activations' layout, set with the weights' by ``channels_last`` (None: as they come)

    def channels_last(self) -> "SpikingUNet":
        """Weights and activations in channels-last layout, in place, and the 1x1 shortcuts as matrix products: oneDNN's
        NHWC convolutions are about 25% faster on a CPU, and each image of a batch gets, bitwise, what it gets alone
        (NCHW 1x1 convolutions of fmnist-sdm-t4 round differently at 4+ images; NHWC ones of the tiny test model
        too; the matrix product does not; checked per batch shape by ``sdm.explorer.batching``). For inference (the
        pipeline calls it)."""
        self.to(memory_format=torch.channels_last)
        self.memory_format = torch.channels_last
        for m in self.modules():
            if isinstance(m, ResBlock):
                m.pointwise_linear = True
        return self

    # ------------------------------------------------------------------ forward
    def precondition_weights(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_skip, c_out), each ``[B]``, for ``cfg.precondition`` (see the module docstring)."""
        abar = self.alphas_cumprod[timesteps.long().clamp(0, len(self.alphas_cumprod) - 1)]
        s2 = self.cfg.sigma_data ** 2
        denom = 1.0 - abar + abar * s2
        return (1.0 - abar).sqrt() / denom, (abar * s2).sqrt() / denom.sqrt()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, threshold_scale: float = 1.0, monitor=None,
                time_steps: int | None = None) -> torch.Tensor:
        """Predict the noise (checks ``threshold_scale`` and ``time_steps``, then ``run``).

        Args:
            x: noisy images ``[B, C, H, W]`` in model space.
            timesteps: diffusion timesteps ``[B]`` (or a scalar).
            threshold_scale: threshold guidance for this call (1.0 = off).
            monitor: optional probe / energy meter observing every spiking layer.
            time_steps: spiking time steps T of this call (None: the trained ``cfg.T``). The same weights run for
                any T; TSM weights follow ``sdm.neurons.tsm_weights_at`` (beyond the trained T, the last repeats).
        Returns:
            eps prediction ``[B, C, H, W]``.
        """
        threshold_scale = check_threshold_scale(threshold_scale)
        ctx = RunContext(T=check_time_steps(time_steps, self.cfg), batch=x.shape[0], threshold_scale=threshold_scale,
                         monitor=monitor)
        return self.run(x, timesteps, ctx)

    def time_embedding(self, timesteps: torch.Tensor) -> "torch.Tensor | RowwiseEmbedding":
        """silu(time_mlp(sinusoid(t))) ``[B, E]``, which each block projects (as in DDPM).

        Under ``torch.no_grad`` (inference) a ``RowwiseEmbedding`` instead: each distinct timestep embedded and
        projected on its own, as at batch 1. A linear layer's matrix product rounds differently at batch 1 and at
        batch B, which can flip a spike; so each image of a batch gets, bitwise, what it gets alone, whatever the
        other images and their timesteps (cross-session batching relies on it), and a batch of one timestep (an
        evaluation) embeds it once. Training keeps the batched product."""
        ch = self.cfg.base_channels
        if torch.is_grad_enabled():
            return F.silu(self.time_mlp(timestep_embedding(timesteps, ch)))
        uniq, inverse = torch.unique(timesteps, return_inverse=True)
        rows = [F.silu(self.time_mlp(timestep_embedding(u.view(1), ch))) for u in uniq]
        return RowwiseEmbedding(rows, inverse)

    def run(self, x: torch.Tensor, timesteps: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        """``forward`` with its per-call settings already checked (``ctx.batch`` is ``x.shape[0]``): the pipeline
        checks them once per call of its own, not once per denoiser call."""
        B, T = ctx.batch, ctx.T
        if not torch.is_tensor(timesteps) or timesteps.dim() == 0:
            timesteps = torch.full((B,), int(timesteps), device=x.device)
        temb = self.time_embedding(timesteps)
        # inference: the first and the output convolution run image by image, as the time embedding: at 1 input or
        # output channel they round differently at batch 1 and at batch B (the others do not with channels-last
        # weights, checked by sdm.explorer.batching), so each image of a batch gets, bitwise, what it gets alone
        per_image = isinstance(temb, RowwiseEmbedding) and B > 1

        # direct encoding: analog pixels, constant over T -> computed once
        h = _each_image(self.conv_in, x) if per_image else self.conv_in(x)
        if T > 1:
            h = h.unsqueeze(0).expand(T, *h.shape).reshape(T * B, *h.shape[1:])
        if self.memory_format is not None:
            h = h.contiguous(memory_format=self.memory_format)
        hs = [h]
        for level in self.down:
            for block in level.blocks:
                h = block(h, temb, ctx)
                hs.append(h)
            if level.downsample is not None:
                h = level.downsample(h, ctx)
                hs.append(h)
        for block in self.mid:
            h = block(h, temb, ctx)
        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), temb, ctx)
            if level.upsample is not None:
                h = level.upsample(h, ctx)

        s = self.out.spikes(h, ctx)  # [T*B, C, H, W]
        if T > 1:  # readout: the mean over T, then the (linear) output conv once
            w = torch.full((T,), 1.0 / T, device=s.device).to(s.dtype)
            s = torch.einsum("t,tbchw->bchw", w, s.view(T, B, *s.shape[1:]))
        out = _each_image(self.out.conv, s) if per_image else self.out.conv(s)
        if self.cfg.precondition:
            with torch.autocast(x.device.type, enabled=False):  # bf16 would cost the skip its precision
                x = x.to(torch.promote_types(x.dtype, torch.float32))
                c_skip, c_out = self.precondition_weights(timesteps)
                skip = c_skip[:, None, None, None] * x
            out = skip + c_out[:, None, None, None].to(out.dtype) * out
        return out


def _pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution of channels-last ``x [N, C, H, W]`` as one matrix product over its pixels (a view both ways):
    each pixel's result then does not depend on the batch, which oneDNN's 1x1 convolutions do not promise."""
    y = F.linear(x.permute(0, 2, 3, 1), conv.weight.reshape(conv.out_channels, -1), conv.bias)
    return y.permute(0, 3, 1, 2)


def _each_image(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for ``x [B, ...]``, one image at a time (as at batch 1)."""
    return torch.cat([conv(x[i:i + 1]) for i in range(x.shape[0])])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
