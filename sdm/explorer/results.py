"""Finished results shared by every session of a server: one computation serves the class.

A generated image batch, or a whole recorded trajectory, is a pure function of (checkpoint, its files' signature,
seed, sampler, steps, spiking time steps T, threshold scale, grid): ``ResultKey``. ``SharedResults`` keeps such
results, read-only, in one bounded LRU store (bytes, not entries) that all sessions read:

    results = SharedResults(max_bytes=256 * 2 ** 20)
    key = ResultKey.of("final", "fmnist-sdm-t4", signature, seed=0, sampler="ddim", num_steps=50, time_steps=4,
                       threshold_scale=1.05, grid=1)
    gen = results.get_or_compute(key, lambda: final_image_stream(pipe, 0, "ddim", 50, 1, 4, 1.05))
    for frac, x0 in gen: ...                 # this request's own steps, or those of the one computing it
    image, energy = stop.value               # (the generator's return value) a read-only Final

Concurrent requests for one key compute it once: the first runs the computation, the others stream its progress
ticks and get the same stored value. If the first is cancelled (its generator closed) or fails, a waiting one takes
over, so nobody waits on a computation that no longer runs. ``warm`` computes lesson presets ahead in a daemon
thread at the lowest CPU priority, stoppable between steps.

**Why not Gradio's ``gr.cache``.** ``gr.cache`` (Gradio 6) memoises an event handler by a hash of its inputs, but our
handlers' results depend on the ``gr.State`` session (checkpoint, seed, steps, T and grid live there) and on the
checkpoint files' signature, not only on the inputs; it does not deduplicate concurrent misses (30 students at once
would still compute 30 times), hands every hit the same mutable object, replays every yielded preview (stored too),
and counts its memory apart from the server's cap on recordings. This module is gradio-free, so the same cache
serves the CLI and the tests, and its ``nbytes()`` is counted under the ``SessionPool``'s cap.

**Wiring it to the memory cap** (``sdm/explorer/pool.py`` counts only sessions): either give the pool the rest of
the cap, ``SessionPool(MAX_TOTAL_BYTES - results.max_bytes)`` (the sum stays under the cap by construction), or let
``SessionPool.touch`` add ``results.nbytes()`` to its total and call ``results.trim(...)`` before it frees a
session's recording (finished results are cheaper to recompute than a user's trajectory is to lose).
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Generator, Iterable, Mapping, NamedTuple

import numpy as np

from ..energy import EnergyMeter
from ..pipeline import SpikingDiffusionPipeline

__all__ = ["KINDS", "Final", "ResultKey", "SharedResults", "Warming", "final_difference", "final_image_stream"]

KINDS = ("final", "trajectory", "preview")
#: a leader whose consumer has not advanced it for this long is presumed gone: a waiter takes over
STALL_S = 120.0

Compute = Callable[[], Generator[Any, None, Any]]


@dataclass(frozen=True)
class ResultKey:
    """What a shared result is a pure function of. Build it with ``ResultKey.of`` (normalises the types, so that
    1.05 from a slider and from the API give the same key).

    Attributes:
        kind: "final" (a generated image batch and its energy), "trajectory" (a whole recorded run) or "preview"
            (one recorded step of a trajectory re-run at another threshold scale).
        checkpoint: the checkpoint's name.
        signature: its files' ((file, size, mtime_ns), ...) when the pipeline was loaded: new weights under the
            same name are another entry.
        seed, sampler, num_steps, grid: the run's settings.
        time_steps: spiking time steps T each denoiser call ran (None: an ANN).
        threshold_scale: the threshold guidance of every step (rounded to 6 decimals).
        extra: anything else the value depends on (e.g. ``(("max_neurons", 256),)`` for a recorded trajectory).
    """

    kind: str
    checkpoint: str
    signature: tuple
    seed: int
    sampler: str
    num_steps: int
    time_steps: int | None
    threshold_scale: float
    grid: int
    extra: tuple = ()

    @classmethod
    def of(cls, kind: str, checkpoint: str, signature: Iterable, *, seed: int, sampler: str, num_steps: int,
           time_steps: int | None, threshold_scale: float, grid: int, extra: Iterable = ()) -> "ResultKey":
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        return cls(kind, str(checkpoint), tuple(tuple(s) if isinstance(s, (list, tuple)) else s for s in signature),
                   int(seed), str(sampler).lower(), int(num_steps), None if time_steps is None else int(time_steps),
                   round(float(threshold_scale), 6), int(grid), tuple(extra))


class Final(NamedTuple):
    """A generated image batch: ``image`` float32 ``[B, C, H, W]`` in model space ([-1, 1]) and its energy per
    image ``{"sops", "energy_mj", "ann_mj"}``. Unpacks as ``image, energy = final``."""

    image: np.ndarray
    energy: Mapping[str, float]

    @property
    def nbytes(self) -> int:
        return int(self.image.nbytes) + 64 * len(self.energy)


def _frozen(value: Any) -> Any:
    """``value`` made read-only where it can be: numpy arrays (also inside tuples and a ``Final``) stop being
    writeable, a Final's energy becomes a read-only mapping. Other values are the caller's to keep immutable."""
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
        return value
    if isinstance(value, Final):
        return Final(_frozen(np.ascontiguousarray(value.image, dtype=np.float32)),
                     MappingProxyType(dict(value.energy)))
    if type(value) is tuple:
        return tuple(_frozen(v) for v in value)
    return value


def _size(value: Any, nbytes: int | None) -> int:
    if nbytes is not None:
        return int(nbytes)
    size = getattr(value, "nbytes", None)
    if callable(size):
        size = size()
    if size is None and type(value) is tuple:
        size = sum(_size(v, None) for v in value)
    if size is None:
        raise TypeError(f"cannot tell the size of a {type(value).__name__}: pass nbytes=, or give it an nbytes "
                        "attribute or method")
    return int(size)


@dataclass
class _Flight:
    """A computation in progress: its latest tick (``version`` counts them) and how it ended."""

    state: str = "running"              # running -> done | abandoned (a handed-over one is abandoned too)
    tick: Any = None
    version: int = 0
    value: Any = None
    waiters: int = 0
    last: float = field(default_factory=time.monotonic)


class SharedResults:
    """Finished results by ``ResultKey``, shared read-only by all sessions, at most ``max_bytes`` in all (the least
    recently used dropped first); thread-safe. A value larger than ``max_bytes`` is returned but not kept.

    Args:
        max_bytes: cap on the stored values' bytes.
        stall_s: a computation whose consumer has not advanced it for this long is presumed gone (a waiter takes
            over).
    """

    def __init__(self, max_bytes: int, stall_s: float = STALL_S):
        self.max_bytes = int(max_bytes)
        self.stall_s = float(stall_s)
        self._entries: OrderedDict[ResultKey, tuple[Any, int]] = OrderedDict()
        self._flights: dict[ResultKey, _Flight] = {}
        self._bytes = 0
        self._cond = threading.Condition()
        self._counts = dict(hits=0, misses=0, computes=0, joins=0, takeovers=0, handovers=0, evictions=0)
        # computations a background warming left half-way to the request that waits for them: key -> generator
        self._handed: dict[ResultKey, Generator[Any, None, Any]] = {}
        self._warmings: list[Warming] = []

    # ------------------------------------------------------------------ the store
    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)

    def __contains__(self, key: ResultKey) -> bool:
        with self._cond:
            return key in self._entries

    def nbytes(self) -> int:
        """Bytes of the stored values (what the server's memory cap should count)."""
        with self._cond:
            return self._bytes

    def get(self, key: ResultKey) -> Any | None:
        """The stored value (read-only), or None. Counts a hit or a miss."""
        with self._cond:
            hit = self._entries.get(key)
            if hit is None:
                self._counts["misses"] += 1
                return None
            self._entries.move_to_end(key)
            self._counts["hits"] += 1
            return hit[0]

    def put(self, key: ResultKey, value: Any, nbytes: int | None = None) -> Any:
        """Store ``value`` (made read-only: see ``_frozen``) under ``key`` and return what is stored. Its size is
        ``nbytes``, else ``value.nbytes`` (attribute or method). If ``key`` is already stored, the stored value
        wins (both are the same pure function's result) and is returned."""
        value = _frozen(value)
        size = _size(value, nbytes)
        with self._cond:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit[0]
            if size > self.max_bytes:
                return value
            self._entries[key] = (value, size)
            self._bytes += size
            self._evict(self.max_bytes)
        return value

    def trim(self, max_bytes: int) -> int:
        """Drop the least recently used entries until at most ``max_bytes`` remain. Returns the bytes freed."""
        with self._cond:
            before = self._bytes
            self._evict(int(max_bytes))
            return before - self._bytes

    def clear(self) -> None:
        with self._cond:
            self._entries.clear()
            self._bytes = 0

    def _evict(self, limit: int) -> None:
        while self._bytes > limit and self._entries:
            _, (_, size) = self._entries.popitem(last=False)
            self._bytes -= size
            self._counts["evictions"] += 1

    def stats(self) -> dict:
        """{"hits", "misses", "computes", "joins" (requests that waited on another's computation), "takeovers"
        (computations restarted after the one they waited on stopped), "evictions", "bytes", "entries",
        "max_bytes", "in_flight"}."""
        with self._cond:
            return dict(self._counts, bytes=self._bytes, entries=len(self._entries), max_bytes=self.max_bytes,
                        in_flight=len(self._flights))

    # ------------------------------------------------------------------ compute once
    def get_or_compute(self, key: ResultKey, compute: Compute, nbytes: int | None = None,
                       hand_over: bool = False) -> Generator[Any, None, Any]:
        """The stored value of ``key``, computed once however many ask at the same time.

        A generator: iterate it (yielding progress ticks) and take its return value. On a hit it yields nothing. On a
        miss, the first caller runs ``compute()`` (a new generator that yields ticks and returns the value) and
        yields its ticks; later callers for the same key yield that computation's ticks as they come (the latest one
        first) and return the value it stored. Closing a computing caller's generator (a cancelled request) closes
        ``compute``'s; if it stops that way, raises, or is not advanced for ``stall_s``, one waiting caller starts
        ``compute`` again for itself and the others.

        Args:
            compute: called with no arguments, in the computing caller's thread, to start the computation.
            nbytes: the value's size (default: its ``nbytes``).
            hand_over: as soon as another caller waits for the value, stop between two ticks and leave the
                half-done computation to it (it goes on from there, in its own thread), then return None. For a
                background warming at the lowest CPU priority: a request that waits on it must not compute at nice
                19 behind every other process (a class waited 30 s on a preset warming beside a busy process).
        Returns:
            The stored, read-only value (a value too large for the cache is returned, not stored); None when
            handed over.
        """
        first = True
        while True:
            with self._cond:
                hit = self._entries.get(key)
                if hit is not None:
                    self._entries.move_to_end(key)
                    self._counts["hits"] += 1
                    return hit[0]
                if first:
                    self._counts["misses"] += 1
                flight = self._flights.get(key)
                lead = flight is None
                if lead:
                    flight = self._flights[key] = _Flight()
                    self._counts["computes"] += 1
                    if not first:
                        self._counts["takeovers"] += 1
                else:
                    flight.waiters += 1
                    if first:
                        self._counts["joins"] += 1
            first = False
            if lead:
                return (yield from self._lead(key, flight, compute, nbytes, hand_over))
            done, value = yield from self._follow(key, flight)
            if done:
                return value

    def _lead(self, key: ResultKey, flight: _Flight, compute: Compute, nbytes: int | None, hand_over: bool):
        with self._cond:
            gen = self._handed.pop(key, None)
            if gen is not None:
                self._counts["handovers"] += 1
        gen = gen if gen is not None else compute()
        finished = handed = False
        try:
            while True:
                if hand_over:
                    with self._cond:
                        if flight.waiters:                       # someone waits: they go on from here
                            self._handed[key] = gen
                            handed = True
                            return None
                try:
                    tick = next(gen)
                except StopIteration as stop:
                    value = stop.value
                    break
                tick = _frozen(tick)
                with self._cond:
                    flight.tick, flight.version, flight.last = tick, flight.version + 1, time.monotonic()
                    self._cond.notify_all()
                yield tick
            stored = self.put(key, value, nbytes)
            finished = True
            return stored
        finally:
            if not finished and not handed:
                gen.close()
            with self._cond:
                if flight.state == "running":
                    flight.state = "done" if finished else "abandoned"
                    flight.value = stored if finished else None
                if self._flights.get(key) is flight:
                    del self._flights[key]
                self._cond.notify_all()

    def _follow(self, key: ResultKey, flight: _Flight):
        """Stream ``flight``'s ticks; returns (True, value) when it stored one, (False, None) when it stopped."""
        seen = 0
        try:
            while True:
                with self._cond:
                    while flight.state == "running" and flight.version == seen:
                        if time.monotonic() - flight.last > self.stall_s:
                            flight.state = "abandoned"          # its consumer is gone: take over
                            if self._flights.get(key) is flight:
                                del self._flights[key]
                            self._cond.notify_all()
                            break
                        self._cond.wait(timeout=min(1.0, self.stall_s))
                    if flight.state == "abandoned":
                        return False, None
                    if flight.version == seen:                  # done, its last tick seen
                        return True, flight.value
                    seen, tick = flight.version, flight.tick
                yield tick
        finally:
            with self._cond:
                flight.waiters -= 1

    def waiting(self, key: ResultKey) -> int:
        """How many requests wait on the computation of ``key`` now (0 when none runs)."""
        with self._cond:
            flight = self._flights.get(key)
            return flight.waiters if flight is not None else 0

    # ------------------------------------------------------------------ ahead of time
    def warm(self, keys: Iterable[ResultKey], compute: Callable[[ResultKey], Generator[Any, None, Any]],
             pause_while: Callable[[], bool] | None = None, niceness: int = 19) -> "Warming":
        """Compute ``keys`` not stored yet, one after the other, in a daemon thread at the lowest CPU priority.

        Args:
            compute: ``compute(key)`` returns the generator ``get_or_compute`` runs for it.
            pause_while: checked between steps: while it returns True (e.g. the server has requests in flight), the
                warming waits, unless a request waits on the very result it is computing.
            niceness: the thread's nice level on Linux (19, the default: it computes only with CPU no one else
                wants; 0: the process's own priority, for a caller that waits for the result).
        Returns:
            The running ``Warming``: ``.stop()`` ends it between two steps (also ``SharedResults.stop()``).
        """
        w = Warming(self, list(keys), compute, pause_while, niceness)
        with self._cond:
            self._warmings = [x for x in self._warmings if x.is_alive()] + [w]
        w.start()
        return w

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop every warming between two steps and wait (up to ``timeout`` s each) for its thread to end."""
        with self._cond:
            warmings = list(self._warmings)
        for w in warmings:
            w.stop(timeout)
        with self._cond:
            handed, self._handed = list(self._handed.values()), {}
        for gen in handed:                  # left by a warming to a waiter that went away before taking it
            gen.close()


def set_thread_niceness(niceness: int) -> None:
    """The calling thread at nice ``niceness`` (Linux: a thread's own priority; 19: only CPU no one else wants; 0:
    unchanged). A process or thread started from it afterwards inherits it."""
    if not niceness:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass


class Warming(threading.Thread):
    """A background run of ``SharedResults.warm``; ``done`` lists the keys it stored (or found stored), ``handed``
    those it left half-way to a request that waited for them."""

    def __init__(self, results: SharedResults, keys: list[ResultKey],
                 compute: Callable[[ResultKey], Generator[Any, None, Any]], pause_while: Callable[[], bool] | None,
                 niceness: int = 19):
        super().__init__(name="sdm-results-warm", daemon=True)
        self.results, self.keys, self.compute, self.pause_while = results, keys, compute, pause_while
        self.niceness = int(niceness)
        self.native_id_seen: int | None = None
        self.done: list[ResultKey] = []
        self.handed: list[ResultKey] = []      # left half-way to a request that waited for it (it finishes them)
        self.error: BaseException | None = None
        self._stop_asked = threading.Event()

    @property
    def stopped(self) -> bool:
        """Whether it was asked to stop (``stop``; at the server's exit), rather than left to finish."""
        return self._stop_asked.is_set()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask it to stop at the next step boundary and wait for it (up to ``timeout`` s)."""
        self._stop_asked.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        self.native_id_seen = threading.get_native_id()
        set_thread_niceness(self.niceness)
        try:
            for key in self.keys:
                if self._stop_asked.is_set():
                    return
                gen = self.results.get_or_compute(key, lambda key=key: self.compute(key), hand_over=True)
                try:
                    while True:
                        self._pause(key)
                        if self._stop_asked.is_set():
                            return
                        next(gen)
                except StopIteration as stop:
                    (self.done if stop.value is not None else self.handed).append(key)
                finally:
                    gen.close()
        except Exception as e:  # noqa: BLE001 - a failed preset must not take the server down; kept for the log
            self.error = e

    def _pause(self, key: ResultKey) -> None:
        if self.pause_while is None:
            return
        while (not self._stop_asked.is_set() and self.pause_while()
               and not self.results.waiting(key)):
            self._stop_asked.wait(0.05)


# ---------------------------------------------------------------------------------------------- images
def final_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute pixel difference, in [0, 1], between two image batches in model space ([-1, 1]); each is
    mapped to [0, 1] as ``sdm.pipeline.to_unit`` does ((x + 1) / 2, clipped).

    Args:
        a, b: float arrays of one shape, e.g. ``[B, C, H, W]``.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"the two batches must have one shape, got {a.shape} and {b.shape}")
    ua = (np.clip(a, -1.0, 1.0) + 1.0) / 2.0
    ub = (np.clip(b, -1.0, 1.0) + 1.0) / 2.0
    return float(np.abs(ua - ub).mean())


def final_image_stream(pipe: SpikingDiffusionPipeline, seed: int, sampler: str, num_steps: int, grid: int,
                       time_steps: int | None, threshold_scale: float,
                       batcher=None) -> Generator[tuple[float, np.ndarray], None, Final]:
    """A whole run from x_T, one denoising step at a time: the image ``compare.final_image`` (or a solo
    ``pipe.steps`` run) gives for these settings, bitwise, with a preview after every step.

    Args:
        pipe: the model; seed, sampler, num_steps: as ``pipe.steps``; grid: images at once (its ``batch_size``).
        time_steps: spiking time steps T per denoiser call (None: the trained T; None for an ANN).
        threshold_scale: threshold guidance of every step.
        batcher: a ``DenoiserBatcher`` computing the calls with other sessions' (bitwise the same), or None.
    Yields:
        (fraction done, x̂0 of that step: float32 ``[B, C, H, W]`` in model space), after each step; the first after
        step 1 (at ~22 ms a denoiser call, a picture within 0.5 s is step ~15 of DDIM 50).
    Returns:
        ``Final(image, energy)``: the last sample (float32 ``[B, C, H, W]``, model space) and its energy per image
        ``{"sops", "energy_mj", "ann_mj"}``.
    """
    meter = EnergyMeter()
    out = None
    for out in pipe.steps(seed=seed, num_inference_steps=num_steps, sampler=sampler, threshold_scale=threshold_scale,
                          batch_size=grid, meter=meter, time_steps=time_steps,
                          denoiser=batcher.denoiser(pipe) if batcher is not None else None):
        yield (out.index + 1) / out.num_steps, _f32(out.pred_original_sample)
    rep = meter.report(pipe.config)
    return Final(_f32(out.sample), {"sops": rep.total_sops, "energy_mj": rep.energy_mj, "ann_mj": rep.ann_energy_mj})


def _f32(t) -> np.ndarray:
    return t.detach().to("cpu").float().numpy().copy()
