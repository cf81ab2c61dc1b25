"""The explorer's per-tab state machine: one recorded reverse-diffusion trajectory that you start, advance, scrub,
preview at another threshold scale and continue from. Gradio-free: ``app.py`` keeps one ``Session`` per browser tab in
``gr.State``; what the panels show is computed from it by ``sdm.explorer.display``.

    registry = ModelRegistry()                      # loaded pipelines, shared read-only by every session
    sess = Session()
    sess.start(registry.get("fmnist-sdm-t4"), "fmnist-sdm-t4", seed=0, sampler="ddim", num_steps=50, grid=1,
               threshold_scale=1.0)                 # draws x_T and takes step 1
    sess.advance(10, threshold_scale=1.0)           # Step x10
    sess.scrub(3)                                   # view step 3 (1-based, as in the UI)
    sess.preview(1.05)                              # what step 3 predicts with the threshold scaled by 1.05
    sess.ensure_base()                              # ... and with scale 1.0, for the side-by-side view
    sess.continue_from_view(1.05)                   # re-run step 3 with 1.05 (drops steps 3..)
    while not sess.is_done: sess.advance(1, 1.05)   # and carry on from there

Vocabulary: a *step* is one denoiser call plus one scheduler update. Step k (1-based) denoises x_t at timestep
``t_k``; its record keeps x_t, the predicted x̂₀ and ε̂, and the probes of image 0. ``x`` is the sample after
the last recorded step (x_T before any step, the image after the last one).

Memory: per step the record keeps x_t in float32 (so that a trajectory can be resumed exactly), x̂₀ and ε̂ in
float16, and for every spiking layer the spikes (bool) and membrane potentials (float16) of ``max_neurons``
neurons of image 0, plus per-layer firing rates and the step's energy. A trajectory that would need more than
``MAX_STATE_BYTES`` is refused up front with a message that says what to lower.

Every method validates all of its arguments (``sdm.explorer.validation``) before it changes anything, once: the
pipeline is then called through its unchecked ``run_steps`` / ``run_denoiser``. Long runs go one step at a time
(``stepping``) under a time budget (``within_budget``), which hands control back at cancel points.
"""
from __future__ import annotations

import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Generator, NamedTuple, TypeVar

import numpy as np
import torch

from ..energy import EnergyMeter
from .heap import release_memory
from ..pipeline import SpikingDiffusionPipeline
from .results import final_difference
from .validation import (MAX_NEURONS, check_grid, check_layer, check_neurons, check_num_steps, check_number,
                         check_raster_mode, check_sampler, check_scale, check_seed, check_spiking_steps,
                         check_step_count)

__all__ = ["MAX_STATE_BYTES", "MAX_CACHED_FINALS", "YIELD_EVERY_S", "Session", "StepRecord", "Preview", "Settings",
           "View", "Generated", "Trajectory", "Superseded", "OverBudget", "within_budget", "estimate_state_bytes",
           "numpy_f16", "numpy_f32"]

MAX_STATE_BYTES = 160 * 2 ** 20     # recorded data per session
MAX_CACHED_FINALS = 8               # final images kept for the comparisons
YIELD_EVERY_S = 0.1                 # a long run hands control back this often (where a cancelled request stops)
TRIM_AFTER_STEPS = 32               # after a run of this many steps, freed heap memory goes back (heap.release_memory)

Tick = TypeVar("Tick")
Result = TypeVar("Result")


class Superseded(RuntimeError):
    """The trajectory was restarted or truncated (by another event of the same session) while a run was going."""


class OverBudget(ValueError):
    """A run went on longer than its time budget (``within_budget``): ``last`` is its last tick (``Session.stepping``:
    (steps taken, steps asked for)), ``budget_s`` the budget."""

    def __init__(self, last, budget_s: float):
        super().__init__(f"stopped after {budget_s:.0f} s (last tick: {last!r})")
        self.last = last
        self.budget_s = budget_s


def within_budget(ticks: Generator[Tick, None, Result], budget_s: float, yield_every_s: float = YIELD_EVERY_S,
                  clock=time.monotonic) -> Generator[Tick, None, Result]:
    """Drive ``ticks`` (a generator that yields after every unit of work: ``Session.stepping``, the comparisons'
    ``*_steps``) for at most ``budget_s`` seconds: yields its latest tick at most every ``yield_every_s`` (a cancel
    point: a cancelled request stops there, between two units of work) and returns its result. Raises
    ``OverBudget`` (and closes ``ticks``) when a tick comes after ``budget_s`` has passed."""
    start = last_yield = clock()
    while True:
        try:
            tick = next(ticks)
        except StopIteration as stop:
            return stop.value
        now = clock()
        if now - start > budget_s:
            ticks.close()
            raise OverBudget(tick, budget_s)
        if now - last_yield > yield_every_s:
            last_yield = now
            yield tick


class View(NamedTuple):
    """What the neuron panels show, validated: a layer of the checkpoint, 'step' | 'trajectory', neuron indices."""

    layer: str
    raster_mode: str
    neurons: list[int]


def estimate_state_bytes(pipe: SpikingDiffusionPipeline, num_steps: int, grid: int,
                         max_neurons: int = MAX_NEURONS, time_steps: int | None = None) -> int:
    """Upper bound of what a fully recorded trajectory keeps: images of every step plus the probes of image 0
    (``time_steps``: the spiking time steps T it runs, None: the trained ``cfg.T``)."""
    c = pipe.config
    pixels = grid * c.image_channels * c.image_size * c.image_size
    per_step = pixels * (4 + 2 + 2) + 512
    if c.spiking:
        T = c.time_steps if time_steps is None else int(time_steps)
        per_step += len(pipe.layer_names()) * (T * max_neurons * 3 + 160)
    return num_steps * per_step + pixels * 4



@dataclass
class StepRecord:
    """One recorded step (see the module docstring). Arrays are numpy; probes are of image 0 only."""

    index: int                              # 0-based
    timestep: int
    scale: float                            # threshold scale the step ran with
    x_t: np.ndarray                         # float32 [B, C, H, W], the denoiser input
    x0: np.ndarray                          # float16 [B, C, H, W], predicted x_0
    eps: np.ndarray                         # float16 [B, C, H, W], predicted noise
    spikes: dict[str, np.ndarray] = field(default_factory=dict)   # layer -> bool [T, N]
    v: dict[str, np.ndarray] = field(default_factory=dict)        # layer -> float16 [T, N]
    rates: dict[str, float] = field(default_factory=dict)         # layer -> firing rate (whole layer, batch)
    thresholds: dict[str, float] = field(default_factory=dict)    # layer -> theta * scale
    sops: float = 0.0                       # per image
    energy_mj: float = 0.0                  # per image, this model
    ann_mj: float = 0.0                     # per image, the ANN counterpart over the same call

    @cached_property
    def nbytes(self) -> int:
        """(Computed once: a record is not changed after it is made, and the session pool sums every session's
        records at each request.)"""
        n = self.x_t.nbytes + self.x0.nbytes + self.eps.nbytes + 512
        n += sum(a.nbytes for a in self.spikes.values()) + sum(a.nbytes for a in self.v.values())
        return n + 160 * len(self.rates)


@dataclass
class Preview:
    """The viewed step re-run with another threshold scale (nothing recorded changes): a threshold preview, or the
    step at scale 1.0 for the side-by-side view (``Session.ensure_base``)."""

    index: int
    scale: float
    x0: np.ndarray
    eps: np.ndarray
    spikes: dict[str, np.ndarray]
    v: dict[str, np.ndarray]
    rates: dict[str, float]
    thresholds: dict[str, float]

    @property
    def nbytes(self) -> int:
        return (self.x0.nbytes + self.eps.nbytes + sum(a.nbytes for a in self.spikes.values())
                + sum(a.nbytes for a in self.v.values()))


@dataclass(frozen=True)
class Trajectory:
    """A whole recorded trajectory, read-only (its arrays are not writeable), as ``SharedResults`` keeps it for every
    session with the same settings: ``Session.snapshot`` makes it, ``Session.adopt`` shows it."""

    records: tuple[StepRecord, ...]
    x: np.ndarray                           # float32 [B, C, H, W], the generated image
    neuron_index: dict[str, np.ndarray]
    num_neurons: dict[str, int]

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.records) + self.x.nbytes + sum(a.nbytes for a in self.neuron_index.values())


@dataclass(frozen=True)
class Generated:
    """The images generated from this trajectory's x_T at threshold scale 1.0 and at ``scale`` (every step at that
    scale), for the side-by-side view once a trajectory is finished (or on request): while the run at ``scale`` is
    in progress, ``image`` is its x̂₀ after ``steps_done`` steps.

    Attributes:
        generation: the session's generation it belongs to (a new trajectory makes it stale).
        base, image: float32 ``[B, C, H, W]`` in model space ([-1, 1]).
    """

    generation: int
    scale: float
    base: np.ndarray
    image: np.ndarray
    steps_done: int
    num_steps: int

    @property
    def done(self) -> bool:
        return self.steps_done >= self.num_steps

    @property
    def final_difference(self) -> float | None:
        """Mean absolute pixel difference in [0, 1] of the two generated images; None while the run at s goes on."""
        return final_difference(self.image, self.base) if self.done else None


@dataclass(frozen=True)
class Settings:
    checkpoint: str
    seed: int
    sampler: str
    num_steps: int
    grid: int
    spiking_steps: int = 1          # spiking time steps T of every denoiser call (the pipeline's time_steps; 1: ANN)
    ann_counterpart: str | None = None   # the ANN checkpoint the energy is compared with (None: there is none)


def numpy_f16(t: torch.Tensor) -> np.ndarray:
    """A tensor as a float16 numpy copy on the CPU (how a record keeps x̂₀ and ε̂)."""
    return t.detach().to("cpu", torch.float16).numpy().copy()


def numpy_f32(t: torch.Tensor) -> np.ndarray:
    """A tensor as a float32 numpy copy on the CPU (how a record keeps x_t: a trajectory resumes from it exactly)."""
    return t.detach().to("cpu", torch.float32).numpy().copy()


def _probe_dicts(frames: dict) -> tuple[dict, dict, dict, dict]:
    spikes, v, rates, thr = {}, {}, {}, {}
    for name, f in frames.items():
        spikes[name] = np.ascontiguousarray(f.spikes[:, 0])
        v[name] = np.ascontiguousarray(f.v[:, 0]).astype(np.float16, copy=False)
        rates[name] = float(f.firing_rate)
        thr[name] = float(f.threshold)
    return spikes, v, rates, thr


class Session:
    """One user's trajectory. The methods that change it take the session's ``lock``; ``current`` and the
    functions of ``sdm.explorer.display`` only read: hold ``lock`` around a group of them for a consistent
    snapshot (app.py does, for every render).

    The object is created once per browser tab and then reset in place by ``start``, so that events of the
    same tab that overlap always act on the same object.
    """

    def __init__(self, max_neurons: int = MAX_NEURONS, max_bytes: int = MAX_STATE_BYTES):
        self.max_neurons = int(max_neurons)
        self.max_bytes = int(max_bytes)
        self.lock = threading.Lock()
        self.generation = 0
        self.pipe: SpikingDiffusionPipeline | None = None
        self.settings: Settings | None = None
        self.timesteps: list[int] = []
        self.records: list[StepRecord] = []
        self.x: np.ndarray | None = None
        self.view_index = 0                 # the viewed step (0-based; the timeline shows view_index + 1)
        self.preview_data: Preview | None = None
        self.base_data: tuple[int, Preview] | None = None     # (generation, the viewed step at scale 1.0)
        self.pure = False                   # every record comes from one run from x_T (no Continue from here)
        self.generated: Generated | None = None       # the generated images at 1.0 and s (``generated_now``)
        self.show_generated = False         # asked for the generated images before the end of the trajectory
        self.restart_note: str | None = None    # what the status said when this trajectory replaced another one
        self.ui_controls_sent = None        # what the app's buttons last showed this tab (sdm.ui.outputs.controls)
        self.neuron_index: dict[str, np.ndarray] = {}
        self.num_neurons: dict[str, int] = {}
        self.layers: list[str] = []
        self._sched = None
        # final images of whole runs, for the comparisons: settings + scale -> (x [B, C, H, W], energy per image)
        self._finals: OrderedDict[tuple, tuple[np.ndarray, dict]] = OrderedDict()
        self.export_dir: str | None = None      # this session's temporary files (exports), deleted by close()
        self.closed_reason: str | None = None   # why close() freed it, if not at the owner's request

    # ------------------------------------------------------------------ facts
    @property
    def started(self) -> bool:
        return self.settings is not None

    @property
    def num_recorded(self) -> int:
        return len(self.records)

    @property
    def is_done(self) -> bool:
        return self.started and len(self.records) >= self.settings.num_steps

    @property
    def wants_generated(self) -> bool:
        """Whether the threshold slider shows the generated images (finished, or asked for: ``show_generated``)."""
        return self.started and (self.is_done or self.show_generated)

    @property
    def spiking(self) -> bool:
        return self.pipe is not None and self.pipe.config.spiking

    def require(self) -> None:
        if not self.started:
            raise ValueError(self.closed_reason or
                             "no trajectory yet: press “New trajectory” first (API: /new_trajectory)")

    def nbytes(self) -> int:
        """Bytes of recorded data (records, preview and scale-1.0 re-run, cached final images)."""
        n = sum(r.nbytes for r in self.records)
        if self.x is not None:
            n += self.x.nbytes
        for p in (self.preview_data, self.base_data[1] if self.base_data else None):
            if p is not None:
                n += p.x0.nbytes + p.eps.nbytes
                n += sum(a.nbytes for a in p.spikes.values()) + sum(a.nbytes for a in p.v.values())
        n += sum(x.nbytes for x, _ in self._finals.values())
        if self.generated is not None:
            n += self.generated.base.nbytes + self.generated.image.nbytes
        return n

    # ------------------------------------------------------------------ start / step
    @staticmethod
    def _checked(pipe, checkpoint, seed, sampler, num_steps, grid, threshold_scale, time_steps, ann_counterpart):
        """The ``Settings`` and threshold scale of a new trajectory, each value checked (ValueError if bad)."""
        c = pipe.config
        settings = Settings(checkpoint, check_seed(seed), check_sampler(sampler), check_num_steps(num_steps),
                            check_grid(grid), check_spiking_steps(time_steps, c.T, c.spiking), ann_counterpart)
        return settings, check_scale(threshold_scale)

    def repeats(self, pipe: SpikingDiffusionPipeline, checkpoint: str, seed=0, sampler="ddim", num_steps=50,
                grid=1, threshold_scale=1.0, time_steps=None, ann_counterpart: str | None = None) -> bool:
        """Whether ``start`` with these arguments would give exactly what the session holds now: the same model and
        settings, still at its first step, viewed as it was taken (no preview, no generated images). A trajectory
        is a pure function of its settings, so such a restart changes nothing; the app then keeps the session and
        its status (a control that fires twice must not replace "New trajectory: B (was A)" by "New trajectory")."""
        settings, scale = self._checked(pipe, checkpoint, seed, sampler, num_steps, grid, threshold_scale,
                                        time_steps, ann_counterpart)
        with self.lock:
            return (self.started and self.pipe is pipe and self.settings == settings and len(self.records) == 1
                    and self.records[0].scale == scale and self.view_index == 0 and self.preview_data is None
                    and not self.show_generated)

    def start(self, pipe: SpikingDiffusionPipeline, checkpoint: str, seed=0, sampler="ddim", num_steps=50,
              grid=1, threshold_scale=1.0, time_steps=None, ann_counterpart: str | None = None,
              shared: Callable[..., "Trajectory | None"] | None = None, batcher=None) -> None:
        """Reset to a new trajectory: draw x_T (from the seed) and take the first step.

        ``time_steps``: spiking time steps T of every denoiser call of this trajectory (None: the trained T; see
        ``validation.check_spiking_steps``). ``ann_counterpart``: the checkpoint's ANN counterpart
        (``ModelRegistry.ann_counterpart``), whose energy the panels compare with; None: they show none.
        ``shared(settings, scale, pipe, max_neurons)``: a finished trajectory of these settings run from x_T at
        ``scale`` that another session recorded, or None (``sharing.shared_trajectory``); its first step is taken
        instead of computing it (bitwise the same). ``batcher``: a ``DenoiserBatcher`` that computes the first step
        together with other sessions' (a class starting at once; bitwise the same), or None. Raises ValueError for bad
        settings, or when the recording would exceed the memory budget.
        """
        settings, scale = self._checked(pipe, checkpoint, seed, sampler, num_steps, grid, threshold_scale,
                                        time_steps, ann_counterpart)
        need = estimate_state_bytes(pipe, settings.num_steps, settings.grid, self.max_neurons, settings.spiking_steps)
        if need > self.max_bytes:
            raise ValueError(f"recording {settings.num_steps} steps of {settings.grid} image(s) would keep about "
                             f"{need / 2 ** 20:.0f} MB (limit {self.max_bytes / 2 ** 20:.0f} MB per session): "
                             "lower the number of steps or the grid size")
        sched = pipe.scheduler_for(settings.sampler, settings.num_steps)
        x = numpy_f32(pipe.initial_noise(settings.seed, settings.grid))
        with self.lock:
            self.generation += 1
            self.closed_reason = None
            self.pipe = pipe
            self.settings = settings
            self._sched = sched
            self.timesteps = [int(t) for t in sched.timesteps]
            self.records = []
            self.x = x
            self.view_index = 0
            self.preview_data = None
            self.base_data = None
            self.pure, self.generated, self.show_generated = True, None, False
            self.neuron_index, self.num_neurons = {}, {}
            self.layers = pipe.layer_names()
            traj = shared(settings, scale, pipe, self.max_neurons) if shared is not None else None
            if traj is not None and len(traj.records) == settings.num_steps > 1:
                self.records = [traj.records[0]]
                self.x = traj.records[1].x_t                # what its first step gave (read-only: copied on use)
                self.neuron_index, self.num_neurons = dict(traj.neuron_index), dict(traj.num_neurons)
                return
            try:
                self._advance_locked(1, scale, batcher)
            except Exception:
                self.settings = None        # never leave a started session without a step
                raise

    def advance(self, n=1, threshold_scale=1.0, generation: int | None = None) -> int:
        """Take up to ``n`` steps from the head of the trajectory with this threshold scale.

        The view moves to the newest step. Returns the number of steps taken. Raises ValueError when the trajectory
        is already complete. ``generation``: raise ``Superseded`` if the session was restarted or truncated since
        that generation.
        """
        taken = self._advance_checked(check_step_count(n), check_scale(threshold_scale), generation)
        if taken >= TRIM_AFTER_STEPS:
            release_memory(collect=False)
        return taken

    def stepping(self, n=None, threshold_scale=1.0, generation: int | None = None,
                 batcher=None) -> Generator[tuple[int, int], None, int]:
        """``advance`` one step at a time, as a generator: takes up to ``n`` steps (None: to the end), yields (steps
        taken, steps asked for) after every step but the last (where a caller may stop: ``within_budget``, a
        cancelled request) and returns the number taken. Stops early, without an error, when the trajectory is
        restarted or truncated by another event (``Superseded``) since ``generation`` (None: now).
        ``batcher``: a ``DenoiserBatcher`` that computes the denoiser calls together with other sessions' (bitwise
        the same records), or None."""
        n = None if n is None else check_step_count(n)
        scale = check_scale(threshold_scale)
        generation = self.generation if generation is None else generation
        if n is None:
            self.require()
            n = self.settings.num_steps - self.num_recorded
        done = 0
        try:
            while done < n:
                try:
                    self._advance_checked(1, scale, generation, batcher)
                except Superseded:
                    return done
                done += 1
                if self.is_done or done == n:
                    break
                yield done, n
            return done
        finally:
            if done >= TRIM_AFTER_STEPS:
                release_memory(collect=False)

    def _advance_checked(self, n: int, scale: float, generation: int | None, batcher=None) -> int:
        with self.lock:
            self.require()
            if generation is not None and generation != self.generation:
                raise Superseded("the trajectory was restarted")
            if self.is_done:
                raise ValueError("the trajectory is finished: press “New trajectory”, or scrub back and "
                                 "“Continue from here”")
            return self._advance_locked(n, scale, batcher)

    def _advance_locked(self, n: int, scale: float, batcher=None) -> int:
        s = self.settings
        k = len(self.records)
        n = min(n, s.num_steps - k)
        if n <= 0:
            return 0
        cfg = self.pipe.config
        meter = EnergyMeter()
        x = torch.tensor(self.x, dtype=torch.float32, device=self.pipe.device)     # (self.x may be shared)
        gen = self.pipe.run_steps(self._sched, x, s.seed, scale, s.spiking_steps, start_index=k, record=cfg.spiking,
                                  max_neurons=self.max_neurons, meter=meter,
                                  denoiser=batcher.denoiser(self.pipe) if batcher is not None else None)
        done = 0
        prev = (0.0, 0.0, 0.0)
        try:
            for out in gen:
                rep = meter.report(cfg)          # cumulative over this run's calls, per image
                cum = (rep.total_sops, rep.energy_mj, rep.ann_energy_mj)
                sops, energy_mj, ann_mj = (a - b for a, b in zip(cum, prev))
                prev = cum
                spikes, v, rates, thr = _probe_dicts(out.probes)
                for name, f in out.probes.items():
                    if name not in self.neuron_index:
                        self.neuron_index[name] = f.neuron_index
                        self.num_neurons[name] = f.num_neurons
                rec = StepRecord(index=out.index, timestep=out.timestep, scale=scale,
                                 x_t=numpy_f32(out.model_input), x0=numpy_f16(out.pred_original_sample),
                                 eps=numpy_f16(out.pred_noise), spikes=spikes, v=v, rates=rates, thresholds=thr,
                                 sops=sops, energy_mj=energy_mj, ann_mj=ann_mj)
                self.records.append(rec)
                self.x = numpy_f32(out.sample)
                done += 1
                if done >= n:
                    break
        finally:
            gen.close()
        self.view_index = len(self.records) - 1
        self.preview_data = None
        if self.is_done and all(r.scale == scale for r in self.records):
            energy = {"sops": float(sum(r.sops for r in self.records)),
                      "energy_mj": float(sum(r.energy_mj for r in self.records)),
                      "ann_mj": float(sum(r.ann_mj for r in self.records))}
            self.remember_final(self.final_key(scale), self.x, energy)
        return done

    # ------------------------------------------------------------------ scrub / threshold guidance
    def scrub(self, step) -> StepRecord:
        """View recorded step ``step`` (1-based). Clears a threshold preview."""
        with self.lock:
            self.require()
            n = len(self.records)
            k = check_number("timeline step", step, 1, max(n, 1), True,
                        f" ({n} step{'s' if n != 1 else ''} recorded so far)")
            self.view_index = k - 1
            self.preview_data = None
            return self.records[self.view_index]

    def _rerun(self, rec: StepRecord, scale: float, batcher=None) -> Preview:
        """The denoiser of recorded step ``rec`` re-run at another threshold scale (lock held)."""
        x = torch.tensor(rec.x_t)               # a copy: a shared record's arrays are read-only
        denoise = batcher.denoiser(self.pipe) if batcher is not None else self.pipe.run_denoiser
        eps, frames = denoise(x, rec.timestep, scale, self.settings.spiking_steps, record=self.spiking,
                              max_neurons=self.max_neurons, probe_seed=self.settings.seed)
        g = self.pipe.step_noise_generator(self.settings.seed, rec.index, 0)
        x0 = self._sched.step(eps, rec.timestep, x, generator=g).pred_original_sample
        spikes, v, rates, thr = _probe_dicts(frames)
        return Preview(rec.index, scale, numpy_f16(x0), numpy_f16(eps), spikes, v, rates, thr)

    def preview(self, threshold_scale, shared: Callable[[tuple, Callable[[], Preview]], Preview] | None = None,
                batcher=None) -> Preview | None:
        """Re-run the denoiser of the viewed step with another threshold scale (Eq. 18) and keep the result as
        a preview: x̂₀, ε̂ and the probes change, the recorded trajectory does not. Returns None (and clears the
        preview) when the scale is the one the step was recorded with.

        ``shared(parts, compute)``: where the step is a pure function of the settings (every record from one run
        from x_T at one scale), gives the preview for ``parts`` = (that scale, the step's index, ``threshold_scale``,
        max_neurons), calling ``compute()`` only if no other session computed it (``sharing.preview``).
        ``batcher``: a ``DenoiserBatcher`` for the re-run (bitwise the same), or None."""
        scale = check_scale(threshold_scale)
        with self.lock:
            self.require()
            rec = self.records[self.view_index]
            if abs(scale - rec.scale) < 1e-9:
                self.preview_data = None
                return None
            uniform = self.uniform_scale()
            if shared is not None and uniform is not None:
                self.preview_data = shared((uniform, rec.index, scale, self.max_neurons),
                                           lambda: self._rerun(rec, scale, batcher))
            else:
                self.preview_data = self._rerun(rec, scale, batcher)
            return self.preview_data

    def base_record(self) -> StepRecord | Preview | None:
        """The viewed step at threshold scale 1.0 (no guidance), for the side-by-side view: the record itself when
        it ran at 1.0, the preview when it is at 1.0, the one ``ensure_base`` computed, else None. Only reads."""
        rec, pv = self.current()
        if rec.scale == 1.0 or not self.spiking:     # an ANN has no thresholds: every scale gives the same step
            return rec
        if pv is not None and pv.scale == 1.0:
            return pv
        if self.base_data is not None and self.base_data[0] == self.generation and \
                self.base_data[1].index == rec.index:
            return self.base_data[1]
        return None

    def ensure_base(self) -> StepRecord | Preview:
        """``base_record``, computing it first (one denoiser call at scale 1.0, kept until the view moves on) when
        the viewed step ran at another scale."""
        with self.lock:
            self.require()
            base = self.base_record()
            if base is None:
                base = self._rerun(self.records[self.view_index], 1.0)
                self.base_data = (self.generation, base)
            return base

    def continue_from_view(self, threshold_scale) -> int:
        """Drop the steps from the viewed one on and re-run the viewed step with this threshold scale; further
        ``advance`` calls carry on from there. Returns the new generation (see ``advance``)."""
        scale = check_scale(threshold_scale)
        with self.lock:
            self.require()
            k = self.view_index
            self.x = self.records[k].x_t.copy()
            del self.records[k:]
            self.preview_data = None
            self.pure, self.generated, self.show_generated = False, None, False
            self.generation += 1
            self._advance_locked(1, scale)
            return self.generation

    # ------------------------------------------------------------------ shared trajectories, generated images
    def uniform_scale(self) -> float | None:
        """The threshold scale of every recorded step when they all come from one run from x_T at one scale (what a
        shared trajectory is keyed by), else None. Only reads (caller holds ``lock`` for a consistent answer)."""
        if not self.started or not self.pure or not self.records:
            return None
        scale = self.records[0].scale
        return scale if all(r.scale == scale for r in self.records) else None

    def snapshot(self) -> Trajectory:
        """The finished trajectory, read-only (its arrays stop being writeable: nothing here writes into a record),
        to share with other sessions. Raises ValueError unless it is finished and ``uniform_scale`` is set."""
        with self.lock:
            if not self.is_done or self.uniform_scale() is None:
                raise ValueError("only a finished trajectory run at one threshold scale from x_T can be shared")
            for r in self.records:
                for a in (r.x_t, r.x0, r.eps, *r.spikes.values(), *r.v.values()):
                    a.flags.writeable = False
            self.x.flags.writeable = False
            return Trajectory(tuple(self.records), self.x, dict(self.neuron_index), dict(self.num_neurons))

    def adopt(self, traj: Trajectory, generation: int) -> bool:
        """Show a shared trajectory (``snapshot`` of a session with the same settings and scale: bitwise what this one
        would record) as if it had run here: its records, image and neurons; the view moves to the last step.
        Returns False (and changes nothing) when the session was restarted or continued since ``generation``."""
        with self.lock:
            if generation != self.generation or not self.started or len(traj.records) != self.settings.num_steps:
                return False
            self.records = list(traj.records)
            self.x = traj.x
            self.neuron_index, self.num_neurons = dict(traj.neuron_index), dict(traj.num_neurons)
            self.view_index = len(self.records) - 1
            self.preview_data = None
            scale = self.records[-1].scale
            energy = {"sops": float(sum(r.sops for r in self.records)),
                      "energy_mj": float(sum(r.energy_mj for r in self.records)),
                      "ann_mj": float(sum(r.ann_mj for r in self.records))}
            self.remember_final(self.final_key(scale), self.x, energy)
            return True

    def generated_now(self) -> Generated | None:
        """The generated images the side-by-side view shows now: those of this trajectory, once it is finished or
        when asked for (``show_generated``), else None (the viewed step's x̂₀ is shown). Only reads."""
        g = self.generated
        if g is None or g.generation != self.generation or not (self.is_done or self.show_generated):
            return None
        return g

    # ------------------------------------------------------------------ view arguments
    def check_view(self, layer, raster_mode="step", neurons=None) -> View:
        """Validate what the neuron panels are asked to show (before any state changes): ``layer`` must be a layer
        of this checkpoint ('' or None: the first), ``raster_mode`` 'step' or 'trajectory', ``neurons`` indices
        of recorded neurons of that layer."""
        self.require()
        return self.view_for(self.layers, self.settings.checkpoint, layer, raster_mode, neurons)

    def view_for(self, layers: list[str], checkpoint: str, layer, raster_mode="step", neurons=None) -> View:
        """``check_view`` against the layers of a checkpoint about to be started (nothing recorded yet: a layer
        records at most ``max_neurons`` neurons)."""
        layer = check_layer(layers, layer, checkpoint)
        mode = check_raster_mode(raster_mode)
        n = min(self.num_neurons.get(layer, self.max_neurons), self.max_neurons) \
            if self.started and self.settings.checkpoint == checkpoint else self.max_neurons
        return View(layer, mode, check_neurons(neurons, n))

    def current(self) -> tuple[StepRecord, Preview | None]:
        """The viewed step's record and the threshold preview shown over it (None when not previewing)."""
        self.require()
        return self.records[self.view_index], self.preview_data

    # ------------------------------------------------------------------ final images (for the comparisons)
    def final_key(self, threshold_scale: float, checkpoint: str | None = None) -> tuple:
        """The cache key of this session's whole run at one scale (and checkpoint: the ANN counterpart)."""
        s = self.settings
        return (checkpoint or s.checkpoint, s.seed, s.sampler, s.num_steps, s.grid, s.spiking_steps,
                round(threshold_scale, 6))

    def cached_final(self, key: tuple) -> tuple[np.ndarray, dict] | None:
        hit = self._finals.get(key)
        return (hit[0], dict(hit[1])) if hit is not None else None

    def remember_final(self, key: tuple, x: np.ndarray, energy: dict) -> None:
        """Keep a final image (model space, float32 [B, C, H, W]) and its energy per image; at most
        ``MAX_CACHED_FINALS``, least recently stored dropped first."""
        self._finals[key] = (x.astype(np.float32, copy=True), dict(energy))
        self._finals.move_to_end(key)
        while len(self._finals) > MAX_CACHED_FINALS:
            self._finals.popitem(last=False)

    # ------------------------------------------------------------------ cleanup
    def close(self, reason: str | None = None) -> None:
        """Free the recording and delete this session's files (the tab closed, or ``reason``: say why to the
        owner's next request). A run in progress stops at its next step (``Superseded``)."""
        with self.lock:
            self.closed_reason = reason
            self.records = []
            self.preview_data = None
            self.base_data = None
            self._finals.clear()
            self.generated = None
            self.x = None
            self.settings = None
            self.generation += 1
            if self.export_dir:
                shutil.rmtree(self.export_dir, ignore_errors=True)
                self.export_dir = None
