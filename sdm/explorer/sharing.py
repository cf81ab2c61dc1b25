"""How the sessions of one server use its ``SharedResults``: a whole trajectory recorded once for every session with
the same settings, the images generated at threshold scale 1.0 and at the slider's scale from the same noise, and the
lesson presets computed ahead. Gradio-free: ``app.Explorer`` calls these with its registry and its results.

    results = SharedResults(max_bytes=256 * 2 ** 20)
    sig = registry.signature("fmnist-sdm-t4")
    for tick in run_to_end(sess, results, sig, 1.0): ...       # Run to end: recorded once for the class
    for tick in generated_images(sess, results, sig, 1.05): ... # sess.generated: the images at 1.0 and 1.05

What a session sees never depends on the cache: a shared trajectory is bitwise the one the session would record
(same pipeline, seed, sampler, steps, T, grid and scale from x_T), and a generated image is ``final_image_stream``'s,
bitwise the final sample of a solo run at that scale.
"""
from __future__ import annotations

import functools
import inspect
import threading
from typing import Callable, Generator, Iterable

import numpy as np

from ..pipeline import SpikingDiffusionPipeline
from .batching import DenoiserBatcher
from .registry import ModelRegistry
from .results import Final, ResultKey, SharedResults, final_image_stream
from .session import Generated, Session, Settings, Trajectory
from .validation import MAX_NEURONS, check_scale

__all__ = ["WARM_SCALES", "InFlight", "trajectory_key", "final_key", "run_to_end", "generated_images", "record_trajectory",
           "preset_keys", "preset_models", "compute_key", "shared_trajectory", "preview"]

#: threshold scales whose generated images the start-up warming computes for the first lesson (the lesson flow's)
WARM_SCALES = (1.05, 0.95)

#: a run's progress, as ``Session.stepping`` yields it: (steps done, steps in all)
Tick = tuple[int, int]


class _Incomplete(Exception):
    """A run that was to be shared stopped early (its session restarted or continued): nothing is stored."""


def _time_steps(pipe: SpikingDiffusionPipeline, s: Settings) -> int | None:
    return s.spiking_steps if pipe.config.spiking else None


def trajectory_key(s: Settings, pipe: SpikingDiffusionPipeline, signature, scale: float,
                   max_neurons: int = MAX_NEURONS) -> ResultKey:
    """The key of a whole recorded trajectory of settings ``s`` run at ``scale`` from x_T."""
    return ResultKey.of("trajectory", s.checkpoint, signature, seed=s.seed, sampler=s.sampler, num_steps=s.num_steps,
                        time_steps=_time_steps(pipe, s), threshold_scale=scale, grid=s.grid,
                        extra=(("max_neurons", int(max_neurons)),))


def final_key(s: Settings, pipe: SpikingDiffusionPipeline, signature, scale: float) -> ResultKey:
    """The key of the images generated with settings ``s`` at ``scale`` (an ANN: at any scale, keyed at 1.0)."""
    scale = scale if pipe.config.spiking else 1.0
    return ResultKey.of("final", s.checkpoint, signature, seed=s.seed, sampler=s.sampler, num_steps=s.num_steps,
                        time_steps=_time_steps(pipe, s), threshold_scale=scale, grid=s.grid)


# ------------------------------------------------------------------------------------------ Run to end
def run_to_end(sess: Session, results: SharedResults, signature, threshold_scale,
               batcher: DenoiserBatcher | None = None) -> Generator[Tick, None, int]:
    """``sess.stepping(None, threshold_scale)`` (Run to end), computed once for every session with the same settings,
    then ``generated_images`` at that scale (the trio shows the generated images once the trajectory is finished).

    When every recorded step of ``sess`` comes from one run from x_T at ``threshold_scale``, the whole trajectory is
    a pure function of ``trajectory_key``: the first session to ask records it (its own stepping, streamed as usual)
    and stores a read-only ``Trajectory``; the others stream its progress and ``Session.adopt`` it, bitwise what
    they would have recorded. Otherwise (a trajectory run at several scales, or continued) it steps on its own.

    Yields (steps done, steps in all) after every step (this session's, or the one recording it); returns the steps
    taken (those adopted included). ``batcher``: computes the denoiser calls together with other sessions' (a class
    on its own seeds), bitwise as alone; None: alone.
    """
    scale = check_scale(threshold_scale)
    with sess.lock:
        sess.require()
        pipe, s, generation = sess.pipe, sess.settings, sess.generation
        # (keys round the scale to 6 decimals: a scale they would round is not shared)
        shareable = not sess.is_done and sess.uniform_scale() == scale == round(scale, 6)
        before = sess.num_recorded
    if not shareable:
        taken = yield from sess.stepping(None, scale, batcher=batcher)
    else:
        key = trajectory_key(s, pipe, signature, scale, sess.max_neurons)

        def compute() -> Generator[Tick, None, Trajectory]:
            yield from sess.stepping(None, scale, generation, batcher)
            try:
                if sess.generation != generation:
                    raise ValueError("restarted")
                return sess.snapshot()
            except ValueError:
                raise _Incomplete from None

        try:
            traj = yield from results.get_or_compute(key, compute)
        except _Incomplete:
            return sess.num_recorded - before
        sess.adopt(traj, generation)
        taken = sess.num_recorded - before
    with sess.lock:
        done = sess.is_done and sess.generation == generation
    if done:
        yield from generated_images(sess, results, signature, scale, batcher)
    return taken


# ------------------------------------------------------------------------------------------ generated images
def generated_images(sess: Session, results: SharedResults, signature, threshold_scale,
                     batcher: DenoiserBatcher | None = None) -> Generator[Tick, None, Generated | None]:
    """Fill ``sess.generated`` with the images generated from this trajectory's x_T at threshold scale 1.0 and at
    ``threshold_scale`` (every step at that scale), and their difference's inputs.

    The image at 1.0 is the session's own when its finished trajectory ran at 1.0 from x_T (bitwise a solo run's),
    else the shared result; the image at s comes from ``SharedResults`` (computed once for everyone asking, kept for
    repeated scales). While the run at s goes on, ``sess.generated.image`` is its x̂₀ after every step, so the picture
    follows from the first step. Yields (steps done, steps in all) after every step computed; returns what it stored
    (None when the session was restarted meanwhile). ``batcher``: as for ``run_to_end``.
    """
    scale = round(check_scale(threshold_scale), 6)     # as keys are: the same image with or without the cache
    with sess.lock:
        sess.require()
        pipe, s, generation = sess.pipe, sess.settings, sess.generation
        own_scale = sess.uniform_scale() if sess.is_done else None
        own = sess.x if own_scale is not None else None
        old = sess.generated if sess.generated is not None and sess.generated.generation == generation else None
    if not pipe.config.spiking:
        scale = 1.0                                     # an ANN: no thresholds, the same image at every scale
    n = s.num_steps

    def show(g: Generated) -> Generated | None:
        with sess.lock:
            if sess.generation != generation:
                return None
            sess.generated = g
            return g

    def image_at(sc: float, stream: bool, base: np.ndarray | None) -> Generator[Tick, None, np.ndarray]:
        if own is not None and sc == own_scale:
            return own
        if old is not None and old.done and old.scale == sc:
            return old.image
        if old is not None and sc == 1.0:
            return old.base
        gen = results.get_or_compute(final_key(s, pipe, signature, sc),
                                     lambda: final_image_stream(pipe, s.seed, s.sampler, n, s.grid,
                                                                _time_steps(pipe, s), sc, batcher))
        while True:
            try:
                frac, x0 = next(gen)
            except StopIteration as stop:
                final: Final = stop.value
                return final.image
            k = int(round(frac * n))
            if stream and base is not None:
                show(Generated(generation, sc, base, x0, min(k, n - 1), n))
            yield k, n

    base = yield from image_at(1.0, False, None)
    image = yield from image_at(scale, True, base)
    return show(Generated(generation, scale, base, image, n, n))


# ------------------------------------------------------------------------------------------ New trajectory
def shared_trajectory(results: SharedResults, signature_of: Callable[[str], tuple]) -> Callable:
    """For ``Session.start(shared=...)``: the finished trajectory another session (or the start-up warming) stored
    for these settings and scale, or None. A class starting the same lesson then takes its first step from it
    instead of computing it 30 times."""
    def lookup(settings: Settings, scale: float, pipe: SpikingDiffusionPipeline, max_neurons: int):
        return results.get(trajectory_key(settings, pipe, signature_of(settings.checkpoint), scale, max_neurons))
    return lookup


# ------------------------------------------------------------------------------------------ the slider's preview
def preview(sess: Session, results: SharedResults, signature_of: Callable[[str], tuple], threshold_scale,
            batcher: DenoiserBatcher | None = None):
    """``sess.preview(threshold_scale)``, computed once for every session that views the same step of the same
    trajectory (same settings, every step from one run from x_T at one scale) at the same threshold scale: a class
    moving the slider together re-runs that step once. The shared preview's arrays are read-only; what a session
    sees is bitwise what it would have computed. ``signature_of``: a checkpoint's file signature by name
    (``ModelRegistry.signature``); ``batcher``: as for ``run_to_end``. Returns what ``Session.preview`` returns."""
    def shared(parts, compute):
        recorded_at, index, scale, max_neurons = parts
        s = sess.settings
        key = ResultKey.of("preview", s.checkpoint, signature_of(s.checkpoint), seed=s.seed, sampler=s.sampler,
                           num_steps=s.num_steps, time_steps=_time_steps(sess.pipe, s), threshold_scale=scale,
                           grid=s.grid, extra=(("max_neurons", int(max_neurons)), ("step", int(index)),
                                               ("recorded_at", float(recorded_at))))
        gen = results.get_or_compute(key, lambda: _frozen_preview(compute))
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    return sess.preview(threshold_scale, shared, batcher)


def _frozen_preview(compute):
    """A one-tick computation of a preview whose arrays are made read-only (it is shared between sessions)."""
    p = compute()
    for a in (p.x0, p.eps, *p.spikes.values(), *p.v.values()):
        a.flags.writeable = False
    yield 1.0
    return p


# ------------------------------------------------------------------------------------------ ahead of time
def record_trajectory(pipe: SpikingDiffusionPipeline, checkpoint: str, seed: int, sampler: str, num_steps: int,
                      grid: int, time_steps: int | None, threshold_scale: float,
                      max_neurons: int = MAX_NEURONS) -> Generator[Tick, None, Trajectory]:
    """A whole trajectory recorded in a session of its own (what ``run_to_end`` shares), one step at a time: yields
    (steps done, steps in all), returns the read-only ``Trajectory``."""
    sess = Session(max_neurons=max_neurons)
    sess.start(pipe, checkpoint, seed=seed, sampler=sampler, num_steps=num_steps, grid=grid,
               threshold_scale=threshold_scale, time_steps=time_steps)
    yield from sess.stepping(None, threshold_scale)
    return sess.snapshot()


def compute_key(registry: ModelRegistry, key: ResultKey):
    """The computation of a ``ResultKey`` (for ``SharedResults.warm``): a trajectory or a generated image batch."""
    pipe = registry.get(key.checkpoint)
    if key.kind == "trajectory":
        return record_trajectory(pipe, key.checkpoint, key.seed, key.sampler, key.num_steps, key.grid,
                                 key.time_steps, key.threshold_scale, dict(key.extra)["max_neurons"])
    return final_image_stream(pipe, key.seed, key.sampler, key.num_steps, key.grid, key.time_steps,
                              key.threshold_scale)


def preset_keys(registry: ModelRegistry, presets: Iterable[tuple[str, list]],
                scales: Iterable[float] = WARM_SCALES) -> list[ResultKey]:
    """What to compute ahead for the lesson presets (``presets.lesson_presets``): each preset's whole trajectory,
    and for the first one, its generated images at ``scales`` (the slider's first moves). A preset whose checkpoint
    does not load is left out."""
    keys, first = [], True
    for _, (checkpoint, seed, sampler, steps, scale, grid, T) in presets:
        try:
            pipe = registry.get(checkpoint)
            sig = registry.signature(checkpoint)
        except ValueError:
            continue
        s = Settings(checkpoint, seed, sampler, steps, grid, T if T is not None else pipe.config.time_steps)
        keys.append(trajectory_key(s, pipe, sig, scale))
        if first and pipe.config.spiking:
            keys += [final_key(s, pipe, sig, sc) for sc in scales]
        first = False
    return keys


def preset_models(registry: ModelRegistry, presets: Iterable[tuple[str, list]]) -> list[tuple]:
    """The distinct ``(pipeline, T)`` of the lesson presets' spiking checkpoints that load: the batch shapes a class
    will ask for (``DenoiserBatcher.prepare``)."""
    found: dict = {}
    for _, (checkpoint, _seed, _sampler, _steps, _scale, _grid, T) in presets:
        try:
            pipe = registry.get(checkpoint)
        except ValueError:
            continue
        if pipe.config.spiking:
            found.setdefault((checkpoint, T if T is not None else pipe.config.time_steps), pipe)
    return [(pipe, T) for (_, T), pipe in found.items()]


class InFlight:
    """How many requests a server is running now: the handlers wrapped with ``counted`` count themselves while they
    run (a streaming one until its generator ends), and the start-up warming waits while ``busy()``."""

    def __init__(self):
        self.count = 0
        self._lock = threading.Lock()

    def busy(self) -> bool:
        return self.count > 0

    def _add(self, delta: int) -> None:
        with self._lock:
            self.count += delta

    def counted(self, fn: Callable) -> Callable:
        """``fn`` (a function or a generator function; its signature is kept, as gradio reads it) counted while it
        runs."""
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen(*args, **kwargs):
                self._add(1)
                try:
                    return (yield from fn(*args, **kwargs))
                finally:
                    self._add(-1)
            return gen

        @functools.wraps(fn)
        def plain(*args, **kwargs):
            self._add(1)
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(-1)
        return plain
