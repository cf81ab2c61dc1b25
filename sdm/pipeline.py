"""SpikingDiffusionPipeline: the public contract used by the app, the CLI and the tests.

    pipe = sdm.load_pipeline("fmnist-sdm-t4")
    for out in pipe.steps(seed=0, num_inference_steps=50, sampler="ddim", threshold_scale=1.0, record=True):
        out.sample, out.pred_original_sample, out.pred_noise, out.probes[layer].spikes

``steps()`` is a generator yielding one ``StepOutput`` per reverse step (improved-diffusion's
``p_sample_loop_progressive``); ``sample()`` drains it. All randomness derives from ``seed``: image i's x_T and
its noise at step k depend only on (seed, i, k), so a trajectory can be resumed from any step with another
threshold scale and stay comparable, and image i is the same in a grid of 1, 4 or 16.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .checkpoints import card_dataset, list_checkpoints as _list_checkpoints, load_checkpoint, resolve_checkpoint
from .config import DiffusionConfig, ModelConfig
from .energy import EnergyMeter, EnergyReport
from .neurons import RunContext, check_threshold_scale, check_time_steps, tsm_weights_at
from .probes import Probe, ProbeFrame, combine
from .scheduling_ddim import DDIMScheduler
from .scheduling_ddpm import DDPMScheduler
from .unet import SpikingUNet, count_parameters

SAMPLERS = ("ddim", "ddpm")
MAX_BATCH = 256


@dataclass
class StepOutput:
    """One reverse-diffusion step.

    Attributes:
        index: 0-based step index; ``num_steps`` steps in all.
        timestep: the diffusion timestep t that was denoised.
        model_input: x_t ``[B, C, H, W]`` fed to the denoiser (model space, [-1, 1]).
        sample: x_{t_prev} after the step ``[B, C, H, W]``; after the last step, the image.
        pred_original_sample: predicted x_0 ``[B, C, H, W]``.
        pred_noise: predicted noise eps ``[B, C, H, W]``.
        probes: {layer name: ProbeFrame} when recording, else {}.
        threshold_scale: the threshold guidance used for this step.
        time_steps: the spiking time steps T the denoiser ran (1 for an ANN).
    """

    index: int
    num_steps: int
    timestep: int
    model_input: torch.Tensor
    sample: torch.Tensor
    pred_original_sample: torch.Tensor
    pred_noise: torch.Tensor
    threshold_scale: float
    probes: dict[str, ProbeFrame] = field(default_factory=dict)
    time_steps: int = 1

    @property
    def is_last(self) -> bool:
        return self.index == self.num_steps - 1


def _seed_int(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer between {lo} and {hi}, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
    return int(value)


class SpikingDiffusionPipeline:
    """A loaded denoiser plus its diffusion process. Safe to share between threads: nothing per call is stored.

    Args:
        model: the noise predictor (moved to eval mode; its BatchNorm is folded into the convs).
        diffusion: the forward process it was trained with.
        card: its model card.
        name: the checkpoint name.
    """

    def __init__(self, model: SpikingUNet, diffusion: DiffusionConfig | None = None, card: dict | None = None,
                 name: str = "", path: Path | None = None):
        self.model = model.eval().fuse_batchnorm().channels_last()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.diffusion = diffusion or DiffusionConfig()
        self.card = card or {}
        self.name = name
        self.path = path

    @property
    def device(self) -> torch.device:
        """Where the weights are now (read at each call: on ZeroGPU they are on the CPU outside ``spaces.GPU``
        functions and on CUDA inside them)."""
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ facts
    @property
    def config(self) -> ModelConfig:
        return self.model.cfg

    def layer_names(self) -> list[str]:
        """The spiking layers (activations for an ANN) in forward order."""
        return self.model.layer_names()

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.model)

    def tsm_weights(self, time_steps: int | None = None) -> dict[str, np.ndarray]:
        """{layer: TSM weights [T]}; empty when the model has no TSM. ``time_steps``: the weights a run at that T
        uses (``sdm.neurons.tsm_weights_at``: beyond the trained T the last learned weight repeats)."""
        return self.run_tsm_weights(check_time_steps(time_steps, self.config))

    def run_tsm_weights(self, time_steps: int | None) -> dict[str, np.ndarray]:
        """``tsm_weights`` for a ``time_steps`` already checked (None: the trained T)."""
        T = self.config.time_steps if time_steps is None else int(time_steps)
        return {k: tsm_weights_at(v, T).cpu().numpy().copy() for k, v in self.model.tsm_weights().items()}

    # ------------------------------------------------------------------ randomness
    def initial_noise(self, seed: int, batch_size: int = 1, offset: int = 0) -> torch.Tensor:
        """x_T ``[B, C, H, W]``: image i from its own generator seeded by (seed, offset + i)."""
        c = self.config
        out = torch.empty(batch_size, c.image_channels, c.image_size, c.image_size)
        for i in range(batch_size):
            g = torch.Generator().manual_seed(_seed_int(seed, offset + i, 0x7E57))
            out[i] = torch.randn(out.shape[1:], generator=g)
        return out.to(self.device)

    def step_noise_generator(self, seed: int, index: int, image: int = 0) -> torch.Generator:
        """The generator of image ``image``'s noise at step ``index``, seeded by (seed, image, index + 1)."""
        return torch.Generator().manual_seed(_seed_int(seed, image, index + 1))

    def step_noise(self, seed: int, index: int, batch_size: int = 1, offset: int = 0) -> torch.Tensor:
        """z ``[B, C, H, W]`` of step ``index`` (the scheduler's ``variance_noise``): image i from its own
        ``step_noise_generator(seed, index, offset + i)``, so that image i's noise does not depend on the batch."""
        c = self.config
        out = torch.empty(batch_size, c.image_channels, c.image_size, c.image_size)
        for i in range(batch_size):
            out[i] = torch.randn(out.shape[1:], generator=self.step_noise_generator(seed, index, offset + i),
                                 dtype=torch.float32)
        return out.to(self.device)

    def make_scheduler(self, sampler: str = "ddim", num_inference_steps: int = 50, eta: float = 0.0):
        """A scheduler with its timesteps set (the library's check of ``sampler`` and ``num_inference_steps``)."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        return self.scheduler_for(sampler, _check_int("num_inference_steps", num_inference_steps, 1,
                                                      self.diffusion.num_train_timesteps), eta)

    def scheduler_for(self, sampler: str, num_inference_steps: int, eta: float = 0.0):
        """``make_scheduler`` for arguments already checked (the explorer's validator checked them once)."""
        sched = DDIMScheduler(self.diffusion, eta=eta) if sampler == "ddim" else DDPMScheduler(self.diffusion)
        sched.set_timesteps(num_inference_steps)
        return sched

    # ------------------------------------------------------------------ one denoiser call
    @torch.no_grad()
    def denoise(self, sample: torch.Tensor, timestep: int, threshold_scale: float = 1.0, record: bool = False,
                max_neurons: int = 256, probe_seed: int = 0, meter: EnergyMeter | None = None,
                time_steps: int | None = None):
        """Run the denoiser once.

        Args:
            sample: x_t ``[B, C, H, W]``.
            timestep: t.
            threshold_scale: threshold guidance.
            record: collect a ProbeFrame per spiking layer (its spikes and v are ``[T, B, N]`` at this call's T).
            meter: optional EnergyMeter to count spikes and SOPs.
            time_steps: spiking time steps T of this call (None: the trained T; 1-64; an ANN takes None or 1).
        Returns:
            (eps ``[B, C, H, W]``, {layer: ProbeFrame})
        """
        return self.run_denoiser(sample, timestep, check_threshold_scale(threshold_scale),
                                 check_time_steps(time_steps, self.config), record, max_neurons, probe_seed, meter)

    @torch.no_grad()
    def run_denoiser(self, sample: torch.Tensor, timestep: "int | torch.Tensor", threshold_scale: float, time_steps: int,
                     record: bool = False, max_neurons: int = 256, probe_seed: int = 0,
                     meter: EnergyMeter | None = None):
        """``denoise`` without its checks, for a caller that checked ``threshold_scale`` (> 0) and ``time_steps``
        (an int the model takes) at its own boundary: ``steps()`` once per run, the explorer's validator once per
        request. Nothing below re-checks them."""
        t = (timestep.to(self.device, torch.long) if torch.is_tensor(timestep)      # one per image (a batch of sessions)
             else torch.full((sample.shape[0],), int(timestep), dtype=torch.long, device=self.device))
        if meter is not None:
            meter.start_call(sample.shape[0], time_steps)
        if record:
            with Probe(max_neurons=max_neurons, seed=probe_seed) as probe:
                ctx = RunContext(T=time_steps, batch=sample.shape[0], threshold_scale=threshold_scale,
                                 monitor=combine(probe, meter))
                eps = self.model.run(sample, t, ctx)
            return eps, probe.frames
        ctx = RunContext(T=time_steps, batch=sample.shape[0], threshold_scale=threshold_scale, monitor=meter)
        return self.model.run(sample, t, ctx), {}

    # ------------------------------------------------------------------ the loop
    def steps(self, seed: int = 0, num_inference_steps: int = 50, sampler: str = "ddim", threshold_scale: float = 1.0,
              batch_size: int = 1, record: bool = False, eta: float = 0.0, sample: torch.Tensor | None = None,
              start_index: int = 0, max_neurons: int = 256, meter: EnergyMeter | None = None,
              image_offset: int = 0, time_steps: int | None = None,
              denoiser: Callable | None = None) -> Iterator[StepOutput]:
        """Yield one StepOutput per reverse step.

        Args:
            seed: all randomness (x_T and per-step noise) derives from it.
            num_inference_steps: steps of the sampler (1..1000).
            sampler: "ddim" or "ddpm".
            threshold_scale: threshold guidance (1.0 = off).
            batch_size: images generated at once.
            record: attach a ProbeFrame per spiking layer to each step.
            eta: DDIM's eta.
            sample: resume from this x_t ``[B, C, H, W]`` instead of drawing x_T ...
            start_index: ... at this step index (use the ``sample`` of step start_index - 1).
            max_neurons: neurons recorded per layer.
            meter: optional EnergyMeter.
            image_offset: index of the first image (for generating large sets in batches).
            time_steps: spiking time steps T of every denoiser call (None: the trained T). The same weights run
                at any T in 1-64; TSM weights beyond the trained T repeat the last learned one.
            denoiser: called instead of ``run_denoiser`` (same arguments, same result) for every step; the
                explorer passes a ``DenoiserBatcher``'s, which computes the calls of several sessions together.
        """
        seed = _check_int("seed", seed, 0, 2 ** 63 - 1)
        threshold_scale = check_threshold_scale(threshold_scale)
        time_steps = check_time_steps(time_steps, self.config)
        batch_size = _check_int("batch_size", batch_size, 1, MAX_BATCH)
        sched = self.make_scheduler(sampler, num_inference_steps, eta)
        n = len(sched.timesteps)
        start_index = _check_int("start_index", start_index, 0, n - 1)
        if sample is None:
            if start_index:
                raise ValueError("start_index > 0 needs the sample to resume from")
            x = self.initial_noise(seed, batch_size, image_offset)
        else:
            c = self.config
            expected = (c.image_channels, c.image_size, c.image_size)
            if sample.dim() != 4 or tuple(sample.shape[1:]) != expected:
                raise ValueError(f"sample must have shape [B, {', '.join(map(str, expected))}], got {tuple(sample.shape)}")
            x = sample.to(self.device, torch.float32)
        yield from self.run_steps(sched, x, seed, threshold_scale, time_steps, start_index, record, max_neurons, meter,
                                  image_offset, denoiser)

    def run_steps(self, sched, x: torch.Tensor, seed: int, threshold_scale: float, time_steps: int,
                  start_index: int = 0, record: bool = False, max_neurons: int = 256,
                  meter: EnergyMeter | None = None, image_offset: int = 0,
                  denoiser: Callable | None = None) -> Iterator[StepOutput]:
        """The loop of ``steps()`` without its checks, for a caller that checked every argument at its own boundary
        (the explorer's validator): x_t ``[B, C, H, W]`` on ``self.device`` from step ``start_index`` of ``sched``
        (``make_scheduler``), ``time_steps`` an int the model takes."""
        n = len(sched.timesteps)
        stochastic = not (isinstance(sched, DDIMScheduler) and sched.eta == 0)
        for i in range(start_index, n):
            t = int(sched.timesteps[i])
            eps, frames = (denoiser or self.run_denoiser)(x, t, threshold_scale, time_steps, record=record,
                                                          max_neurons=max_neurons, probe_seed=seed, meter=meter)
            # one step() for the whole batch; image j's noise still comes from its own generator
            # (seed, image_offset + j, i), so image j does not depend on the batch it is in
            noise = self.step_noise(seed, i, x.shape[0], image_offset) if stochastic else None
            out = sched.step(eps, t, x, variance_noise=noise)
            yield StepOutput(index=i, num_steps=n, timestep=t, model_input=x, sample=out.prev_sample,
                             pred_original_sample=out.pred_original_sample, pred_noise=eps,
                             threshold_scale=threshold_scale, probes=frames, time_steps=time_steps)
            x = out.prev_sample

    def sample(self, n: int = 16, seed: int = 0, num_inference_steps: int = 50, sampler: str = "ddim",
               threshold_scale: float = 1.0, eta: float = 0.0, batch_size: int = 64, progress: bool = False,
               time_steps: int | None = None) -> np.ndarray:
        """Generate ``n`` images. Returns float32 numpy ``[n, C, H, W]`` in [0, 1].

        Image i is the one ``steps(seed=seed, image_offset=i)`` ends with, whatever ``batch_size``.
        ``time_steps``: spiking time steps T per denoiser call (None: the trained T).
        """
        n = _check_int("n", n, 1, 1_000_000)
        batch_size = _check_int("batch_size", batch_size, 1, MAX_BATCH)
        seed = _check_int("seed", seed, 0, 2 ** 63 - 1)
        threshold_scale = check_threshold_scale(threshold_scale)
        time_steps = check_time_steps(time_steps, self.config)
        sched = self.make_scheduler(sampler, num_inference_steps, eta)
        chunks = []
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=n * len(sched.timesteps), desc=f"sampling {n} images", unit="step", leave=False)
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            out = None
            for out in self.run_steps(sched, self.initial_noise(seed, b, start), seed, threshold_scale, time_steps,
                                      image_offset=start):
                if bar is not None:
                    bar.update(b)
            chunks.append(to_unit(out.sample))
        if bar is not None:
            bar.close()
        return np.concatenate(chunks)

    def energy(self, seed: int = 0, threshold_scale: float = 1.0, num_inference_steps: int = 50,
               sampler: str = "ddim", batch_size: int = 1, time_steps: int | None = None) -> EnergyReport:
        """Energy per generated image, measured from the spikes of a real trajectory (at ``time_steps`` spiking
        steps per call, None: the trained T; SOPs and the analog MACs both count the T actually run)."""
        meter = EnergyMeter()
        for _ in self.steps(seed=seed, num_inference_steps=num_inference_steps, sampler=sampler,
                            threshold_scale=threshold_scale, batch_size=batch_size, meter=meter,
                            time_steps=time_steps):
            pass
        return meter.report(self.config)

    def summary(self) -> str:
        """One line for menus: data set, neuron, T, parameters, FID if known."""
        c = self.config
        data = card_dataset(self.card) or "?"
        fid = self.card.get("metrics", {}).get("fid")
        kind = (c.neuron.upper() + (f" T={c.T}" if c.spiking else "") + (" +TSM" if c.tsm else "")
                + (" +skip" if c.precondition else ""))
        s = f"{data} · {kind} · {self.num_parameters / 1e6:.2f}M params"
        if fid is not None:
            s += f" · FID {fid:.1f}"
        return s


def to_unit(x: torch.Tensor) -> np.ndarray:
    """Model space [-1, 1] -> numpy float32 in [0, 1]."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()


def list_checkpoints(root: str | Path | None = None) -> list[str]:
    """Names of the checkpoint folders under checkpoints/ (or ``root``)."""
    return _list_checkpoints(root)


def load_pipeline(name_or_path: str | Path, checkpoints_dir: str | Path | None = None,
                  device: str = "cpu", max_parameters: int | None = None) -> SpikingDiffusionPipeline:
    """Load a checkpoint by name (a folder under checkpoints/) or by folder path.

    ``max_parameters``: refuse a larger model before building it (``sdm.checkpoints.load_checkpoint``).

    Raises:
        FileNotFoundError naming the available checkpoints for an unknown name; ValueError for a corrupt file.
    """
    folder = resolve_checkpoint(name_or_path, checkpoints_dir)
    model, diffusion, card = load_checkpoint(folder, device=device, max_parameters=max_parameters)
    return SpikingDiffusionPipeline(model, diffusion, card, name=folder.name, path=folder)
