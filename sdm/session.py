"""The explorer's per-user state: one recorded reverse-diffusion trajectory you can step, scrub, re-run at
another threshold scale, compare and export. Gradio-free: ``app.py`` keeps one ``Session`` per browser tab in
``gr.State`` and only formats what it returns; the tests and ``bench/app_latency.py`` drive it directly.

    registry = ModelRegistry()                      # loaded pipelines, shared read-only by every session
    sess = Session()
    sess.start(registry.get("fmnist-sdm-t4"), "fmnist-sdm-t4", seed=0, sampler="ddim", num_steps=50, grid=1,
               threshold_scale=1.0)                 # draws x_T and takes step 1
    sess.advance(10, threshold_scale=1.0)           # Step x10
    sess.scrub(3)                                   # view step 3 (1-based, as in the UI)
    sess.preview(1.05)                              # what step 3 predicts with the threshold scaled by 1.05
    sess.continue_from_view(1.05)                   # re-run step 3 with 1.05 (drops steps 3..)
    while not sess.is_done: sess.advance(1, 1.05)   # and carry on from there
    paths = sess.export("out/")                     # GIF, MP4, PNG and NPZ

Vocabulary: a *step* is one denoiser call plus one scheduler update. Step k (1-based) denoises x_t at timestep
``t_k``; its record keeps x_t, the predicted x̂₀ and ε̂, and the probes of image 0. ``x`` is the sample after
the last recorded step (x_T before any step, the image after the last one).

Memory: per step the record keeps x_t in float32 (so that a trajectory can be resumed exactly), x̂₀ and ε̂ in
float16, and for every spiking layer the spikes (bool) and membrane potentials (float16) of ``max_neurons``
neurons of image 0, plus per-layer firing rates and the step's energy. A trajectory that would need more than
``MAX_STATE_BYTES`` is refused up front with a message that says what to lower.
"""
from __future__ import annotations

import hashlib
import math
import numbers
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import export as _export
from . import viz
from .checkpoints import ann_counterpart_name
from .energy import EnergyMeter
from .pipeline import SpikingDiffusionPipeline, list_checkpoints, load_pipeline

__all__ = [
    "DEFAULT_CHECKPOINT", "SAMPLERS", "GRID_SIZES", "SCALE_MIN", "SCALE_MAX", "SCALE_STEP", "MAX_STEPS", "MAX_SEED",
    "MAX_NEURONS", "MAX_STATE_BYTES", "ModelRegistry", "Session", "StepRecord", "Preview", "Superseded",
    "check_seed", "check_layer", "check_num_steps", "check_scale", "check_grid", "check_sampler", "check_step_count",
    "estimate_state_bytes", "short_layer_name", "layer_stage",
]

DEFAULT_CHECKPOINT = "fmnist-sdm-t4"
SAMPLERS = ("ddim", "ddpm")
GRID_SIZES = (1, 4, 16)
SCALE_MIN, SCALE_MAX, SCALE_STEP = 0.90, 1.10, 0.001
MAX_STEPS = 1000
MAX_SEED = 2 ** 31 - 1
MAX_NEURONS = 64                    # neurons recorded per layer (of image 0)
MAX_STATE_BYTES = 160 * 2 ** 20     # recorded data per session
MAX_CACHED_FINALS = 8               # final images kept for the comparisons
MAX_EXPORT_FRAMES = 200             # GIF / MP4 frames (evenly spaced, first and last always in)
EPS_DISPLAY_RANGE = 3.0             # eps is shown mapped from [-3, 3] to black..white


class Superseded(RuntimeError):
    """The trajectory was restarted or truncated (by another event of the same session) while a run was going."""


# ---------------------------------------------------------------------------------------------- validation

def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _number(name: str, value, lo: float, hi: float, integer: bool, hint: str = "") -> float | int:
    kind = "an integer" if integer else "a number"
    rng = f"between {_fmt(lo)} and {_fmt(hi)}"
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
        got = f"{value!r} (a {type(value).__name__})" if isinstance(value, str) else repr(value)
        raise ValueError(f"{name} must be {kind} {rng}, got {got}{hint}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number {rng}, got {value!r}{hint}")
    if integer:
        if not v.is_integer():
            raise ValueError(f"{name} must be a whole number {rng}, got {value!r}{hint}")
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be {rng}, got {value!r}{hint}")
    return int(v) if integer else v


def check_seed(seed) -> int:
    """A seed: whole number in [0, 2^31 - 1]."""
    return _number("seed", seed, 0, MAX_SEED, True)


def check_num_steps(num_steps) -> int:
    """Inference steps of a trajectory: whole number in [1, 1000]."""
    return _number("number of steps", num_steps, 1, MAX_STEPS, True)


def check_step_count(n) -> int:
    """Steps to take at once (Step, Step x10): whole number in [1, 1000]."""
    return _number("steps per click", n, 1, MAX_STEPS, True)


def check_scale(scale) -> float:
    """Threshold-guidance scale: a finite number in [0.90, 1.10] (rounded to the slider's 0.001 grid)."""
    s = _number("threshold scale", scale, SCALE_MIN, SCALE_MAX, False, " (1.0 = no guidance)")
    return round(s, 6)


def check_grid(grid) -> int:
    """Images per trajectory: 1, 4 or 16."""
    if isinstance(grid, bool) or not isinstance(grid, numbers.Real) or not math.isfinite(float(grid)) \
            or float(grid) not in GRID_SIZES:
        raise ValueError(f"grid size must be one of {', '.join(map(str, GRID_SIZES))} images, got {grid!r}")
    return int(grid)


def check_sampler(sampler) -> str:
    """'ddim' or 'ddpm' (case-insensitive)."""
    s = sampler.strip().lower() if isinstance(sampler, str) else sampler
    if s not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)} (DDIM or DDPM), got {sampler!r}")
    return s


def check_layer(layers: list[str], layer, checkpoint: str = "this model") -> str:
    """``layer`` if it is one of ``layers``; '' or None give the first layer."""
    if layer is None or layer == "":
        return layers[0] if layers else ""
    if not isinstance(layer, str) or layer not in layers:
        shown = ", ".join(layers[:6]) + (", ..." if len(layers) > 6 else "")
        raise ValueError(f"layer {layer!r} is not a layer of {checkpoint}; its layers are {shown}")
    return layer


def short_layer_name(name: str) -> str:
    """'down.0.blocks.1.conv2.act' -> 'down0.b1.conv2' (for crowded plot axes)."""
    parts = [p for p in name.split(".") if p not in ("act", "blocks")]
    out: list[str] = []
    for p in parts:
        if p.isdigit() and out and not out[-1][-1].isdigit() and out[-1] in ("down", "up", "mid"):
            out[-1] += p
        elif p.isdigit() and out:
            out.append("b" + p)
        else:
            out.append(p)
    return ".".join(out) or name


def layer_stage(name: str) -> str:
    """'down' | 'mid' | 'up' | 'out': the part of the UNet a layer belongs to."""
    head = name.split(".", 1)[0]
    return head if head in ("down", "mid", "up") else "out"


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def estimate_state_bytes(pipe: SpikingDiffusionPipeline, num_steps: int, grid: int,
                         max_neurons: int = MAX_NEURONS) -> int:
    """Upper bound of what a fully recorded trajectory keeps: images of every step plus the probes of image 0."""
    c = pipe.config
    pixels = grid * c.image_channels * c.image_size * c.image_size
    per_step = pixels * (4 + 2 + 2) + 512
    if c.spiking:
        per_step += len(pipe.layer_names()) * (c.time_steps * max_neurons * 3 + 160)
    return num_steps * per_step + pixels * 4


# ------------------------------------------------------------------------------------------------- models

class ModelRegistry:
    """Pipelines by checkpoint name, loaded once and shared read-only by all sessions.

    A checkpoint that fails to load does not break the others: ``get`` raises a ValueError that says what is
    wrong, ``summary`` returns the message. Failed loads are retried on the next request (a checkpoint that
    was being written may be complete by then); loaded ones are never reloaded.

    Args:
        root: the checkpoints folder (None: ``$SDM_CHECKPOINTS`` or ``checkpoints/``).
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else None
        self._pipes: dict[str, SpikingDiffusionPipeline] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        from .checkpoints import checkpoints_dir
        return str(self.root if self.root is not None else checkpoints_dir())

    def names(self) -> list[str]:
        """Checkpoint folders available now (sorted)."""
        return list_checkpoints(self.root)

    def default_name(self) -> str | None:
        """fmnist-sdm-t4 when present, else the first spiking checkpoint that loads, else the first that loads."""
        names = self.names()
        if DEFAULT_CHECKPOINT in names and self._try(DEFAULT_CHECKPOINT):
            return DEFAULT_CHECKPOINT
        first = None
        for n in names:
            if self._try(n):
                if self._pipes[n].config.spiking:
                    return n
                first = first or n
        return first

    def _try(self, name: str) -> bool:
        try:
            self.get(name)
            return True
        except ValueError:
            return False

    def check_name(self, name) -> str:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"checkpoint must be a name, got {name!r}; available: {self._available()}")
        name = name.strip()
        if name not in self._pipes and name not in self.names():
            raise ValueError(f"checkpoint {name!r} not found in {self.where}; available: {self._available()}")
        return name

    def _available(self) -> str:
        names = self.names()
        return ", ".join(names) if names else "(none: train one with python -m sdm.train)"

    def get(self, name) -> SpikingDiffusionPipeline:
        """The loaded pipeline. Raises ValueError for unknown names and for checkpoints that do not load."""
        name = self.check_name(name)
        pipe = self._pipes.get(name)
        if pipe is not None:
            return pipe
        with self._lock:
            if name in self._pipes:
                return self._pipes[name]
            try:
                pipe = load_pipeline(name, self.root)
            except Exception as e:  # noqa: BLE001 - any failure is reported, the app stays up
                msg = f"checkpoint {name!r} cannot be loaded: {e}"
                self._errors[name] = msg
                raise ValueError(msg) from None
            self._errors.pop(name, None)
            self._pipes[name] = pipe
            return pipe

    def error(self, name: str) -> str | None:
        """The load error of a checkpoint (None if it loaded or was never tried)."""
        return self._errors.get(name)

    def summary(self, name) -> str:
        """The card's one-line summary, or the reason the checkpoint cannot be used."""
        try:
            return self.get(name).summary()
        except ValueError as e:
            return f"⚠ {e}"

    def ann_counterpart(self, name: str) -> str | None:
        """The ANN checkpoint to compare with: card field ``ann_counterpart``, else '<data set prefix>-ann'."""
        pipe = self.get(name)
        names = self.names()
        wanted = ann_counterpart_name(name, pipe.card)
        if wanted == name or wanted not in names:
            return None
        return wanted


# ------------------------------------------------------------------------------------------------ records

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
    snn_mj: float = 0.0                     # per image
    ann_mj: float = 0.0                     # per image, the ANN counterpart over the same call

    @property
    def nbytes(self) -> int:
        n = self.x_t.nbytes + self.x0.nbytes + self.eps.nbytes + 512
        n += sum(a.nbytes for a in self.spikes.values()) + sum(a.nbytes for a in self.v.values())
        return n + 160 * len(self.rates)


@dataclass
class Preview:
    """The viewed step re-run with another threshold scale (nothing recorded changes)."""

    index: int
    scale: float
    x0: np.ndarray
    eps: np.ndarray
    spikes: dict[str, np.ndarray]
    v: dict[str, np.ndarray]
    rates: dict[str, float]
    thresholds: dict[str, float]


@dataclass(frozen=True)
class Settings:
    checkpoint: str
    seed: int
    sampler: str
    num_steps: int
    grid: int


def _f16(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float16).numpy().copy()


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


def _probe_dicts(frames: dict) -> tuple[dict, dict, dict, dict]:
    spikes, v, rates, thr = {}, {}, {}, {}
    for name, f in frames.items():
        spikes[name] = np.ascontiguousarray(f.spikes[:, 0])
        v[name] = np.ascontiguousarray(f.v[:, 0]).astype(np.float16, copy=False)
        rates[name] = float(f.firing_rate)
        thr[name] = float(f.threshold)
    return spikes, v, rates, thr


# ------------------------------------------------------------------------------------------------ session

class Session:
    """One user's trajectory. The methods that change it take the session's ``lock``; the view accessors
    (``current``, ``view_images``, ``probe``, ``rates``, ``info``, ...) only read: hold ``lock`` around a group
    of them for a consistent snapshot (app.py does, for every render).

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
        self.view = 0
        self.preview_data: Preview | None = None
        self.neuron_index: dict[str, np.ndarray] = {}
        self.num_neurons: dict[str, int] = {}
        self.layers: list[str] = []
        self._sched = None
        # final images of whole runs, for the comparisons: settings + scale -> (x [B, C, H, W], energy per image)
        self._finals: OrderedDict[tuple, tuple[np.ndarray, dict]] = OrderedDict()
        self._export_dir: str | None = None

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
    def steps_left(self) -> int:
        return self.settings.num_steps - len(self.records) if self.started else 0

    @property
    def spiking(self) -> bool:
        return self.pipe is not None and self.pipe.config.spiking

    def require(self) -> None:
        if not self.started:
            raise ValueError("no trajectory yet: press “New trajectory” first (API: /new_trajectory)")

    def nbytes(self) -> int:
        """Bytes of recorded data (records, preview, cached final images)."""
        n = sum(r.nbytes for r in self.records)
        if self.x is not None:
            n += self.x.nbytes
        if self.preview_data is not None:
            p = self.preview_data
            n += p.x0.nbytes + p.eps.nbytes
            n += sum(a.nbytes for a in p.spikes.values()) + sum(a.nbytes for a in p.v.values())
        return n + sum(x.nbytes for x, _ in self._finals.values())

    # ------------------------------------------------------------------ start / step
    def start(self, pipe: SpikingDiffusionPipeline, checkpoint: str, seed=0, sampler="ddim", num_steps=50,
              grid=1, threshold_scale=1.0) -> None:
        """Reset to a new trajectory: draw x_T (from the seed) and take the first step.

        Raises ValueError for bad settings, or when the recording would exceed the memory budget.
        """
        settings = Settings(checkpoint, check_seed(seed), check_sampler(sampler), check_num_steps(num_steps),
                            check_grid(grid))
        scale = check_scale(threshold_scale)
        need = estimate_state_bytes(pipe, settings.num_steps, settings.grid, self.max_neurons)
        if need > self.max_bytes:
            raise ValueError(f"recording {settings.num_steps} steps of {settings.grid} image(s) would keep about "
                             f"{need / 2 ** 20:.0f} MB (limit {self.max_bytes / 2 ** 20:.0f} MB per session): "
                             "lower the number of steps or the grid size")
        sched = pipe.make_scheduler(settings.sampler, settings.num_steps)
        x = _f32(pipe.initial_noise(settings.seed, settings.grid))
        with self.lock:
            self.generation += 1
            self.pipe = pipe
            self.settings = settings
            self._sched = sched
            self.timesteps = [int(t) for t in sched.timesteps]
            self.records = []
            self.x = x
            self.view = 0
            self.preview_data = None
            self.neuron_index, self.num_neurons = {}, {}
            self.layers = pipe.layer_names()
            try:
                self._advance_locked(1, scale)
            except Exception:
                self.settings = None        # never leave a started session without a step
                raise

    def advance(self, n=1, threshold_scale=1.0, generation: int | None = None) -> int:
        """Take up to ``n`` steps from the head of the trajectory with this threshold scale.

        The view moves to the newest step. Returns the number of steps taken (0 when the trajectory is complete).
        ``generation``: raise ``Superseded`` if the session was restarted or truncated since that generation.
        """
        n = check_step_count(n)
        scale = check_scale(threshold_scale)
        with self.lock:
            self.require()
            if generation is not None and generation != self.generation:
                raise Superseded("the trajectory was restarted")
            return self._advance_locked(n, scale)

    def _advance_locked(self, n: int, scale: float) -> int:
        s = self.settings
        k = len(self.records)
        n = min(n, s.num_steps - k)
        if n <= 0:
            return 0
        cfg = self.pipe.config
        meter = EnergyMeter()
        gen = self.pipe.steps(seed=s.seed, num_inference_steps=s.num_steps, sampler=s.sampler,
                              threshold_scale=scale, batch_size=s.grid, record=cfg.spiking,
                              sample=torch.from_numpy(self.x), start_index=k, max_neurons=self.max_neurons,
                              meter=meter)
        done = 0
        prev = (0.0, 0.0, 0.0)
        try:
            for out in gen:
                rep = meter.report(cfg)          # cumulative over this run's calls, per image
                cum = (rep.total_sops, rep.energy_mj, rep.ann_energy_mj)
                sops, snn_mj, ann_mj = (a - b for a, b in zip(cum, prev))
                prev = cum
                spikes, v, rates, thr = _probe_dicts(out.probes)
                for name, f in out.probes.items():
                    if name not in self.neuron_index:
                        self.neuron_index[name] = f.neuron_index
                        self.num_neurons[name] = f.num_neurons
                rec = StepRecord(index=out.index, timestep=out.timestep, scale=scale, x_t=_f32(out.model_input),
                                 x0=_f16(out.pred_original_sample), eps=_f16(out.pred_noise), spikes=spikes, v=v,
                                 rates=rates, thresholds=thr, sops=sops, snn_mj=snn_mj, ann_mj=ann_mj)
                self.records.append(rec)
                self.x = _f32(out.sample)
                done += 1
                if done >= n:
                    break
        finally:
            gen.close()
        self.view = len(self.records) - 1
        self.preview_data = None
        if self.is_done and all(r.scale == scale for r in self.records):
            energy = {"sops": float(sum(r.sops for r in self.records)),
                      "snn_mj": float(sum(r.snn_mj for r in self.records)),
                      "ann_mj": float(sum(r.ann_mj for r in self.records))}
            self._remember_final(self._final_key(scale), self.x, energy)
        return done

    # ------------------------------------------------------------------ scrub / threshold guidance
    def scrub(self, step) -> StepRecord:
        """View recorded step ``step`` (1-based). Clears a threshold preview."""
        with self.lock:
            self.require()
            n = len(self.records)
            k = _number("timeline step", step, 1, max(n, 1), True,
                        f" ({n} step{'s' if n != 1 else ''} recorded so far)")
            self.view = k - 1
            self.preview_data = None
            return self.records[self.view]

    def preview(self, threshold_scale) -> Preview | None:
        """Re-run the denoiser of the viewed step with another threshold scale (Eq. 18) and keep the result as
        a preview: x̂₀, ε̂ and the probes change, the recorded trajectory does not. Returns None (and clears the
        preview) when the scale is the one the step was recorded with."""
        scale = check_scale(threshold_scale)
        with self.lock:
            self.require()
            rec = self.records[self.view]
            if abs(scale - rec.scale) < 1e-9:
                self.preview_data = None
                return None
            x = torch.from_numpy(rec.x_t)
            eps, frames = self.pipe.denoise(x, rec.timestep, scale, record=self.spiking,
                                            max_neurons=self.max_neurons, probe_seed=self.settings.seed)
            g = self.pipe.step_noise_generator(self.settings.seed, rec.index, 0)
            x0 = self._sched.step(eps, rec.timestep, x, generator=g).pred_original_sample
            spikes, v, rates, thr = _probe_dicts(frames)
            self.preview_data = Preview(rec.index, scale, _f16(x0), _f16(eps), spikes, v, rates, thr)
            return self.preview_data

    def continue_from_view(self, threshold_scale) -> int:
        """Drop the steps from the viewed one on and re-run the viewed step with this threshold scale; further
        ``advance`` calls carry on from there. Returns the new generation (see ``advance``)."""
        scale = check_scale(threshold_scale)
        with self.lock:
            self.require()
            k = self.view
            self.x = self.records[k].x_t.copy()
            del self.records[k:]
            self.preview_data = None
            self.generation += 1
            self._advance_locked(1, scale)
            return self.generation

    # ------------------------------------------------------------------ what the views show
    def current(self) -> tuple[StepRecord, Preview | None]:
        self.require()
        return self.records[self.view], self.preview_data

    def view_images(self) -> dict[str, np.ndarray]:
        """x_t, x̂₀, ε̂ of the viewed step (the preview's x̂₀ / ε̂ when previewing): float32 [B, C, H, W] in
        [0, 1]; ε̂ is mapped from [-3, 3]."""
        rec, pv = self.current()
        src = pv or rec
        return {"x_t": viz.to_display(rec.x_t), "x0": viz.to_display(src.x0.astype(np.float32)),
                "eps": viz.to_display(src.eps.astype(np.float32) / EPS_DISPLAY_RANGE)}

    def check_layer(self, layer) -> str:
        """A layer name of this checkpoint ('' or None: the first one)."""
        self.require()
        return check_layer(self.layers, layer, self.settings.checkpoint)

    def probe(self, layer: str) -> dict | None:
        """The viewed step's probe of ``layer`` (image 0): spikes bool [T, N], v float16 [T, N], threshold,
        num_neurons M, neuron_index [N]. None for an ANN (no spikes)."""
        rec, pv = self.current()
        src = pv or rec
        if layer not in src.spikes:
            return None
        return {"spikes": src.spikes[layer], "v": src.v[layer], "threshold": src.thresholds[layer],
                "num_neurons": self.num_neurons[layer], "neuron_index": self.neuron_index[layer]}

    def rates(self) -> dict[str, float]:
        """Firing rate per layer at the viewed step, layers in forward order."""
        rec, pv = self.current()
        return dict((pv or rec).rates)

    def trajectory_spikes(self, layer: str) -> tuple[list[np.ndarray], list[int]]:
        """Spikes [T, N] of ``layer`` for every recorded step (the preview substituted at the viewed step) and
        the steps' timesteps."""
        self.require()
        out = []
        for r in self.records:
            src = self.preview_data if (self.preview_data is not None and r.index == self.preview_data.index) else r
            if layer in src.spikes:
                out.append(src.spikes[layer])
        if len(out) != len(self.records):
            return [], []
        return out, [r.timestep for r in self.records]

    def rate_course(self, layer: str | None = None) -> tuple[dict[str, list[float]], list[int]]:
        """Firing rate over the recorded steps: the neuron-weighted mean of each part of the UNet (down, mid,
        up, out) and of the selected layer. Returns ({line name: rates}, timesteps)."""
        self.require()
        if not self.spiking or not self.records:
            return {}, []
        stages: dict[str, list[str]] = {}
        for name in self.layers:
            if name in self.num_neurons:
                stages.setdefault(layer_stage(name), []).append(name)
        lines: dict[str, list[float]] = {}
        if layer and layer in self.num_neurons:
            lines[f"{short_layer_name(layer)} (selected)"] = []
        for st in stages:
            lines[f"{st} (mean)"] = []
        pv = self.preview_data
        for r in self.records:
            rates = pv.rates if (pv is not None and pv.index == r.index) else r.rates
            if layer and layer in self.num_neurons:
                lines[f"{short_layer_name(layer)} (selected)"].append(rates[layer])
            for st, names in stages.items():
                w = np.array([self.num_neurons[n] for n in names], dtype=np.float64)
                lines[f"{st} (mean)"].append(float(np.dot(w, [rates[n] for n in names]) / w.sum()))
        return lines, [r.timestep for r in self.records]

    def energy(self) -> dict:
        """SOPs and energy per image over the recorded steps (exact spikes of this trajectory)."""
        self.require()
        sops = float(sum(r.sops for r in self.records))
        snn = float(sum(r.snn_mj for r in self.records))
        ann = float(sum(r.ann_mj for r in self.records))
        return {"steps": len(self.records), "num_steps": self.settings.num_steps, "sops": sops, "snn_mj": snn,
                "ann_mj": ann, "ratio": snn / ann if ann else float("nan"), "spiking": self.spiking}

    def filmstrip_frames(self, max_frames: int = 10) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
        """Image 0 along the trajectory so far: (x_t frames, x̂₀ frames, labels), at most ``max_frames`` evenly
        spaced ones, the current sample last. Frames are display [C, H, W]."""
        self.require()
        n = len(self.records)
        idx = viz.pick_frames(n + 1, max_frames)
        xs, x0s, labels = [], [], []
        for i in idx:
            if i < n:
                r = self.records[i]
                xs.append(viz.to_display(r.x_t[0]))
                x0s.append(viz.to_display(r.x0[0].astype(np.float32)))
                labels.append(f"t={r.timestep}")
            else:
                xs.append(viz.to_display(self.x[0]))
                x0s.append(viz.to_display(self.x[0]))
                labels.append("final" if self.is_done else "next")
        return xs, x0s, labels

    def info(self) -> dict:
        """A JSON-able summary of the session (for the API and the tests)."""
        self.require()
        rec, pv = self.current()
        s = self.settings
        rates = self.rates()
        mean_rate = None
        if rates:
            w = np.array([self.num_neurons.get(n, 1) for n in rates], dtype=np.float64)
            mean_rate = float(np.dot(w, list(rates.values())) / w.sum())
        e = self.energy()
        return {
            "checkpoint": s.checkpoint, "seed": s.seed, "sampler": s.sampler, "num_steps": s.num_steps,
            "grid_size": s.grid, "steps_done": len(self.records), "done": self.is_done,
            "step": self.view + 1, "timestep": rec.timestep, "recorded_scale": rec.scale,
            "threshold_scale": pv.scale if pv else rec.scale, "previewing": pv is not None,
            "x0_mean": float((pv or rec).x0.astype(np.float32).mean()), "x0_digest": _digest((pv or rec).x0),
            "sample_digest": _digest(self.x), "mean_firing_rate": mean_rate,
            "firing_rates": {k: round(v, 6) for k, v in rates.items()},
            "energy": {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in e.items()},
            "state_mb": round(self.nbytes() / 2 ** 20, 3),
        }

    # ------------------------------------------------------------------ comparisons
    def _final_key(self, scale: float, checkpoint: str | None = None) -> tuple:
        s = self.settings
        return (checkpoint or s.checkpoint, s.seed, s.sampler, s.num_steps, s.grid, round(scale, 6))

    def _remember_final(self, key: tuple, x: np.ndarray, energy: dict) -> None:
        self._finals[key] = (x.astype(np.float32, copy=True), dict(energy))
        self._finals.move_to_end(key)
        while len(self._finals) > MAX_CACHED_FINALS:
            self._finals.popitem(last=False)

    def final_image(self, threshold_scale, pipe: SpikingDiffusionPipeline | None = None,
                    checkpoint: str | None = None, progress: Callable[[float, str], None] | None = None,
                    desc: str = "") -> tuple[np.ndarray, dict]:
        """The final sample (model space, float32 [B, C, H, W]) of this session's seed, sampler, steps and grid
        run at one threshold scale from the start, with its energy per image ({"sops", "snn_mj", "ann_mj"}).
        ``pipe``/``checkpoint``: another model (the ANN counterpart), same seed and noise. Cached per session
        (a finished trajectory run at one scale is reused)."""
        scale = check_scale(threshold_scale)
        with self.lock:
            self.require()
            s = self.settings
            pipe = pipe or self.pipe
            key = self._final_key(scale, checkpoint)
            hit = self._finals.get(key)
        if hit is not None:
            return hit[0], dict(hit[1])
        meter = EnergyMeter()
        out = None
        for out in pipe.steps(seed=s.seed, num_inference_steps=s.num_steps, sampler=s.sampler, threshold_scale=scale,
                              batch_size=s.grid, meter=meter):
            if progress is not None:
                progress((out.index + 1) / out.num_steps, desc)
        x = _f32(out.sample)
        rep = meter.report(pipe.config)
        energy = {"sops": rep.total_sops, "snn_mj": rep.energy_mj, "ann_mj": rep.ann_energy_mj}
        with self.lock:
            if self.settings == s:
                self._remember_final(key, x, energy)
        return x, energy

    def compare_scales(self, threshold_scale, progress=None) -> dict:
        """Final images at scale 1.0 and at ``threshold_scale`` from the same seed and noise."""
        scale = check_scale(threshold_scale)
        a, ea = self.final_image(1.0, progress=(lambda f, d: progress(f / 2, d)) if progress else None,
                                 desc="scale 1.000")
        b, eb = self.final_image(scale, progress=(lambda f, d: progress(0.5 + f / 2, d)) if progress else None,
                                 desc=f"scale {scale:.3f}")
        return {"base": a, "scaled": b, "scale": scale, "base_energy": ea, "scaled_energy": eb,
                "mean_abs_diff": float(np.abs(a - b).mean())}

    def compare_ann(self, ann_pipe: SpikingDiffusionPipeline, ann_name: str, threshold_scale=1.0,
                    progress=None) -> dict:
        """This model (at ``threshold_scale``) and its ANN counterpart, from the same seed and noise."""
        scale = check_scale(threshold_scale)
        self.require()
        c, ca = self.pipe.config, ann_pipe.config
        if (c.image_channels, c.image_size) != (ca.image_channels, ca.image_size):
            raise ValueError(f"{ann_name} makes {ca.image_size}x{ca.image_size}x{ca.image_channels} images but "
                             f"{self.settings.checkpoint} makes {c.image_size}x{c.image_size}x{c.image_channels}: "
                             "they cannot start from the same noise")
        snn, es = self.final_image(scale, progress=(lambda f, d: progress(f / 2, d)) if progress else None,
                                   desc=self.settings.checkpoint)
        ann, ea = self.final_image(1.0, pipe=ann_pipe, checkpoint=ann_name,
                                   progress=(lambda f, d: progress(0.5 + f / 2, d)) if progress else None,
                                   desc=ann_name)
        return {"snn": snn, "ann": ann, "scale": scale, "snn_energy": es, "ann_energy": ea, "ann_name": ann_name}

    # ------------------------------------------------------------------ export
    def export_frames(self, max_frames: int = MAX_EXPORT_FRAMES, target_px: int = 256) -> list[np.ndarray]:
        """uint8 [H, W, 3] frames of the whole grid: x_t of every recorded step plus the current sample, each
        with a progress bar under it (so no two frames are alike). At most ``max_frames``, evenly spaced."""
        self.require()
        s = self.settings
        states = [r.x_t for r in self.records] + [self.x]
        idx = viz.pick_frames(len(states), max_frames)
        ncol = int(math.ceil(math.sqrt(s.grid)))
        size = self.pipe.config.image_size
        scale = max(1, target_px // (ncol * size))
        frames = []
        for i in idx:
            img = viz.image_grid(viz.to_display(states[i]), nrow=ncol, pad=2, scale=scale)
            frames.append(_with_progress_bar(img, i / max(len(states) - 1, 1)))
        return frames

    def export(self, out_dir: str | Path | None = None, fps: float = 10.0,
               progress: Callable[[float, str], None] | None = None) -> dict[str, str]:
        """Write the trajectory as GIF and MP4, the current sample as PNG, and the recording as NPZ.

        Args:
            out_dir: folder for the files (None: this session's own temporary folder, emptied on each export).
        Returns:
            {"gif", "mp4", "png", "npz"} -> file path.
        """
        with self.lock:
            self.require()
            s = self.settings
            if out_dir is None:
                if self._export_dir is None:
                    self._export_dir = tempfile.mkdtemp(prefix="sdm-explorer-export-")
                out = Path(self._export_dir)
                for old in out.iterdir():
                    old.unlink(missing_ok=True)
            else:
                out = Path(out_dir)
                out.mkdir(parents=True, exist_ok=True)
            stem = f"sdm_{s.checkpoint}_seed{s.seed}_{s.sampler}{s.num_steps}_grid{s.grid}_step{len(self.records)}"
            frames = self.export_frames()
            ncol = int(math.ceil(math.sqrt(s.grid)))
            final = viz.image_grid(viz.to_display(self.x), nrow=ncol, pad=2,
                                   scale=max(1, 512 // (ncol * self.pipe.config.image_size)))
            records, meta = self._npz_payload()
        paths = {}
        if progress:
            progress(0.1, "GIF")
        paths["gif"] = _export.write_gif(frames, out / f"{stem}.gif", fps=fps)
        if progress:
            progress(0.4, "MP4")
        paths["mp4"] = _export.write_mp4(frames, out / f"{stem}.mp4", fps=fps)
        if progress:
            progress(0.7, "PNG and NPZ")
        paths["png"] = _export.write_png(final, out / f"{stem}.png")
        meta["frames"] = len(frames)
        paths["npz"] = _export.save_npz(out / f"{stem}.npz", records, meta)
        return paths

    def _npz_payload(self) -> tuple[dict[str, np.ndarray], dict]:
        s = self.settings
        recs = self.records
        data: dict[str, np.ndarray] = {
            "step_index": np.array([r.index for r in recs], dtype=np.int32),
            "timesteps": np.array([r.timestep for r in recs], dtype=np.int32),
            "threshold_scale": np.array([r.scale for r in recs], dtype=np.float32),
            "x_t": np.stack([r.x_t for r in recs]).astype(np.float16),
            "x0": np.stack([r.x0 for r in recs]),
            "eps": np.stack([r.eps for r in recs]),
            "sample": self.x.astype(np.float32),
            "sops": np.array([r.sops for r in recs], dtype=np.float64),
        }
        layers = [n for n in self.layers if n in self.num_neurons]
        if layers:
            data["firing_rate"] = np.array([[r.rates[n] for n in layers] for r in recs], dtype=np.float32)
            for n in layers:
                data[f"spikes/{n}"] = np.stack([r.spikes[n] for r in recs])          # [K, T, N] bool
                data[f"v/{n}"] = np.stack([r.v[n] for r in recs])                    # [K, T, N] float16
                data[f"neuron_index/{n}"] = np.asarray(self.neuron_index[n], dtype=np.int64)
        cfg = self.pipe.config
        meta = {
            "checkpoint": s.checkpoint, "seed": s.seed, "sampler": s.sampler, "num_steps": s.num_steps,
            "grid_size": s.grid, "steps_recorded": len(recs), "T": cfg.time_steps, "neuron": cfg.neuron,
            "tsm": cfg.tsm, "layers": layers, "num_neurons": {n: self.num_neurons[n] for n in layers},
            "recorded_image": 0, "max_neurons": self.max_neurons,
            "base_threshold": {n: recs[0].thresholds[n] / recs[0].scale for n in layers} if recs and layers else {},
            "shapes": {"spikes": "[steps, T, neurons] bool", "v": "[steps, T, neurons] float16, threshold units",
                       "x_t/x0/eps": "[steps, B, C, H, W] float16, model space [-1, 1]",
                       "sample": "[B, C, H, W] float32, the sample after the last step"},
            "summary": self.pipe.summary(),
        }
        return data, meta

    # ------------------------------------------------------------------ cleanup
    def close(self) -> None:
        """Free the recording and delete exported files (gr.State's delete_callback)."""
        with self.lock:
            self.records = []
            self.preview_data = None
            self._finals.clear()
            self.x = None
            self.settings = None
            self.generation += 1
            if self._export_dir:
                shutil.rmtree(self._export_dir, ignore_errors=True)
                self._export_dir = None


def _with_progress_bar(img: np.ndarray, frac: float, height: int = 6) -> np.ndarray:
    """Append a progress bar (dark fill on light gray) under a uint8 [H, W, 3] image."""
    h, w = img.shape[:2]
    bar = np.full((height, w, 3), 225, dtype=np.uint8)
    bar[:, : int(round(frac * w))] = (0, 114, 178)
    return np.concatenate([img, bar], axis=0)
