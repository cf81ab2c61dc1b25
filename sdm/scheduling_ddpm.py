"""DDPM sampler (Ho et al. 2020), in the shape of diffusers' DDPMScheduler: the caller owns the loop."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .config import DiffusionConfig


@dataclass
class SchedulerOutput:
    """Result of one reverse step.

    Attributes:
        prev_sample: x_{t_prev} ``[B, C, H, W]``.
        pred_original_sample: the predicted x_0 ``[B, C, H, W]``.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def make_betas(cfg: DiffusionConfig) -> torch.Tensor:
    """The forward-process betas ``[num_train_timesteps]`` (float64)."""
    n = cfg.num_train_timesteps
    if cfg.beta_schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float64)
    # cosine (Nichol & Dhariwal 2021), betas clipped at 0.999
    f = lambda t: math.cos((t / n + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(n)], dtype=torch.float64)


class SchedulerBase:
    """What DDPM and DDIM share: the forward process, the timesteps, and x0 from a noise prediction."""

    def __init__(self, config: DiffusionConfig | None = None):
        self.config = config or DiffusionConfig()
        self.betas = make_betas(self.config)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose ``num_inference_steps`` evenly spaced ("leading") timesteps, largest first."""
        n_train = self.config.num_train_timesteps
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise ValueError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
        if not 1 <= num_inference_steps <= n_train:
            raise ValueError(f"num_inference_steps must be between 1 and {n_train}, got {num_inference_steps}")
        ratio = n_train // num_inference_steps
        self.timesteps = torch.from_numpy((np.arange(num_inference_steps) * ratio)[::-1].copy()).long()
        self.num_inference_steps = int(num_inference_steps)

    def previous_timestep(self, timestep: int) -> int:
        """The next timestep in ``self.timesteps`` after ``timestep`` (-1 after the last)."""
        if self.timesteps is None:
            raise ValueError(f"{type(self).__name__}.step() called before set_timesteps(): "
                             "call scheduler.set_timesteps(num_inference_steps) first")
        if getattr(self, "_next_of", (None,))[0] is not self.timesteps:    # (one lookup table per schedule)
            ts = [int(t) for t in self.timesteps]
            table = {}
            for i, t in enumerate(ts):
                table.setdefault(t, ts[i + 1] if i + 1 < len(ts) else -1)
            self._next_of = (self.timesteps, table)
        prev = self._next_of[1].get(int(timestep))
        if prev is None:
            raise ValueError(f"timestep {int(timestep)} is not one of the scheduled timesteps")
        return prev

    def _alpha_prod(self, t: int) -> float:
        if getattr(self, "_abar", (None,))[0] is not self.alphas_cumprod:    # as floats, once
            self._abar = (self.alphas_cumprod, self.alphas_cumprod.tolist())
        return self._abar[1][t] if t >= 0 else 1.0

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        a = self.alphas_cumprod.to(x0.device)[timesteps].float().view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def _pred_x0(self, model_output, sample, alpha_prod_t):
        x0 = (sample - math.sqrt(1 - alpha_prod_t) * model_output) / math.sqrt(alpha_prod_t)
        return x0.clamp(-1.0, 1.0) if self.config.clip_sample else x0

    @staticmethod
    def _check_noise_args(sample: torch.Tensor, generator, variance_noise) -> None:
        if variance_noise is None:
            return
        if generator is not None:
            raise ValueError("pass either generator or variance_noise to step(), not both: variance_noise is the "
                             "noise itself, a generator only draws it")
        if tuple(variance_noise.shape) != tuple(sample.shape):
            raise ValueError(f"variance_noise must have the shape of the sample {tuple(sample.shape)}, "
                             f"got {tuple(variance_noise.shape)}")

    @staticmethod
    def _noise(sample: torch.Tensor, generator, variance_noise) -> torch.Tensor:
        """z ``[B, C, H, W]``: ``variance_noise`` as given, else drawn from ``generator`` (None: the global RNG)."""
        if variance_noise is not None:
            return variance_noise.to(device=sample.device, dtype=sample.dtype)
        return torch.randn(sample.shape, generator=generator, dtype=sample.dtype, device=sample.device)


class DDPMScheduler(SchedulerBase):
    """Ancestral DDPM sampling with the "fixed small" posterior variance."""

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
             generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None) -> SchedulerOutput:
        """One reverse step x_t -> x_{t_prev}.

        Args:
            model_output: predicted noise eps ``[B, C, H, W]``.
            timestep: the current t (one of ``self.timesteps``).
            sample: x_t ``[B, C, H, W]``.
            generator: source of the added noise (None: the global RNG).
            variance_noise: the noise z itself ``[B, C, H, W]``, instead of drawing it (as diffusers'
                ``variance_noise``); not together with ``generator``. Unused at the last step, which adds no noise.
        Returns:
            SchedulerOutput(prev_sample, pred_original_sample), each ``[B, C, H, W]``.
        """
        self._check_noise_args(sample, generator, variance_noise)
        t = int(timestep)
        prev_t = self.previous_timestep(t)
        # 1. abar_t, abar_{t_prev}, and the effective beta_t of this (possibly strided) step
        alpha_prod_t = self._alpha_prod(t)
        alpha_prod_prev = self._alpha_prod(prev_t)
        beta_prod_t = 1 - alpha_prod_t
        current_alpha_t = alpha_prod_t / alpha_prod_prev
        current_beta_t = 1 - current_alpha_t
        # 2. x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)   (Ho et al. Eq. 15), clipped to [-1, 1]
        x0 = self._pred_x0(model_output, sample, alpha_prod_t)
        # 3. posterior mean mu_t = c0 x0 + ct x_t   (Ho et al. Eq. 7)
        c0 = math.sqrt(alpha_prod_prev) * current_beta_t / beta_prod_t
        ct = math.sqrt(current_alpha_t) * (1 - alpha_prod_prev) / beta_prod_t
        prev = c0 * x0 + ct * sample
        # 4. add sigma_t z with sigma_t^2 = (1 - abar_prev) / (1 - abar_t) beta_t, except at the last step
        if prev_t >= 0:
            var = max((1 - alpha_prod_prev) / (1 - alpha_prod_t) * current_beta_t, 1e-20)
            prev = prev + math.sqrt(var) * self._noise(sample, generator, variance_noise)
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0)
