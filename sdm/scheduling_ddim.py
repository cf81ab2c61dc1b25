"""DDIM sampler (Song et al. 2021), in the shape of diffusers' DDIMScheduler."""
from __future__ import annotations

import math

import torch

from .config import DiffusionConfig
from .scheduling_ddpm import SchedulerBase, SchedulerOutput


class DDIMScheduler(SchedulerBase):
    """Deterministic (eta = 0) or stochastic (eta > 0) DDIM.

    Args:
        config: the forward process.
        eta: 0 gives DDIM, 1 roughly DDPM's variance.
    """

    def __init__(self, config: DiffusionConfig | None = None, eta: float = 0.0):
        super().__init__(config)
        eta = float(eta)
        if not (math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
        self.eta = eta

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
             generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None) -> SchedulerOutput:
        """One reverse step x_t -> x_{t_prev} (Song et al. Eq. 12).

        Args:
            model_output: predicted noise eps ``[B, C, H, W]``.
            timestep: the current t (one of ``self.timesteps``).
            sample: x_t ``[B, C, H, W]``.
            generator: source of the added noise when eta > 0 (None: the global RNG).
            variance_noise: the noise z itself ``[B, C, H, W]``, instead of drawing it (as diffusers'
                ``variance_noise``); not together with ``generator``. Unused when sigma_t = 0 (eta = 0, last step).
        Returns:
            SchedulerOutput(prev_sample, pred_original_sample), each ``[B, C, H, W]``.
        """
        self._check_noise_args(sample, generator, variance_noise)
        t = int(timestep)
        # 1. the previous timestep is looked up in self.timesteps, not recomputed from a stride
        prev_t = self.previous_timestep(t)
        # 2. abar_t and abar_{t_prev}
        alpha_prod_t = self._alpha_prod(t)
        alpha_prod_prev = self._alpha_prod(prev_t)
        # 3. predicted x0, clipped; the noise is then re-derived from the clipped x0 (as diffusers does since
        #    0.16). Keeping the raw model_output makes x0 and the direction disagree whenever x0 is clipped,
        #    which at large t is almost always: samples of small models then come out as grey blotches.
        x0 = self._pred_x0(model_output, sample, alpha_prod_t)
        if self.config.clip_sample:
            model_output = (sample - math.sqrt(alpha_prod_t) * x0) / math.sqrt(1 - alpha_prod_t)
        # 4. sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
        sigma = self.eta * math.sqrt((1 - alpha_prod_prev) / (1 - alpha_prod_t)) * math.sqrt(1 - alpha_prod_t / alpha_prod_prev)
        # 5. direction pointing to x_t
        direction = math.sqrt(max(1 - alpha_prod_prev - sigma ** 2, 0.0)) * model_output
        # 6. x_{t_prev} = sqrt(abar_prev) x0 + direction + sigma z
        prev = math.sqrt(alpha_prod_prev) * x0 + direction
        if sigma > 0:
            prev = prev + sigma * self._noise(sample, generator, variance_noise)
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0)
