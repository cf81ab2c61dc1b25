"""Denoiser calls of different sessions computed together: a class on its own seeds shares the CPU's batch speed-up.

On one core a denoiser call of fmnist-sdm-t4 costs about 10-11 ms per image in a batch of 4-16 against 14 ms alone
(``bench/server_costs.py``). Thirty students each moving the slider run thirty generated-image runs at once, each on
its own noise; ``DenoiserBatcher`` gathers the calls that wait at the same moment (same model and T; any seed, any
diffusion step, any threshold scale: each image has its own; recorded or not) into one call of the network, and
hands each its rows, its probe frames and its energy counts back.

    batcher = DenoiserBatcher()
    for out in pipe.steps(seed=7, threshold_scale=1.05, denoiser=batcher.denoiser(pipe)): ...

No thread of its own: the first waiting call computes its group (the calls waiting with the same model and T, up to
``max_rows`` images), the others wait for their rows, and when it is done the next group is computed by one of its
callers. At most ``workers`` groups run at once (one per core: the app runs one torch thread per request). With
``processes`` (``sdm.explorer.workers``, as the app runs it: ``DenoiserBatcher.for_server``) that caller hands the
batch to a worker process and waits on a pipe, out of the server's GIL.

What a session sees never depends on whom it was batched with: an image's rows are bitwise what it gets alone.
At inference ``SpikingUNet`` computes each image's time embedding, first and output convolution at batch 1 for that,
and the pipeline runs channels-last weights, whose convolutions give each image's rows what it gets alone on this
CPU. A convolution's kernel may still round differently at another batch size on another machine (oneDNN picks its
algorithm by shape; with NCHW weights the 1x1 shortcuts of fmnist-sdm-t4 did at 4+ images, by about 1e-6 in a
membrane potential, which flipped a spike, and so the noise prediction, in about 1 image-call of 640). So the first
batch of each shape (model, T, images, torch threads, one threshold scale or several) is also computed image by
image and compared: the noise prediction and every layer's spikes and membrane potentials (the potentials: a rounding
that flips no spike in this batch would in another; a kernel's rounding depends on the shape, not the data). Equal,
that shape is batched from then on; not, its calls are computed one by one (still correct, without the speed-up).
The first batch's callers get the image-by-image results. On fmnist-sdm-t4 (one torch thread) every shape checked
batches (T = 1 does not). ``prepare`` checks ahead the shapes a class will use (the app: at start-up, for the lesson
presets), so that no lesson waits for a check computed in the server.
"""
from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..energy import EnergyMeter
from ..pipeline import SpikingDiffusionPipeline
from ..probes import Probe
from .results import set_thread_niceness
from .split import SplitMonitor, _Layers, row_digest
from .workers import READY_TIMEOUT_S, ProcessWorkers, WorkerLost

__all__ = ["DenoiserBatcher", "SplitMonitor"]


def _stop_at_exit(ref: "weakref.ref[DenoiserBatcher]") -> None:
    batcher = ref()
    if batcher is not None:
        batcher.stop()


@dataclass(eq=False)
class _Call:
    """One waiting denoiser call: its inputs, its meter, and (once computed) its noise prediction or error."""

    pipe: SpikingDiffusionPipeline
    sample: torch.Tensor            # [b, C, H, W]
    timestep: int
    scale: float
    time_steps: int
    meter: EnergyMeter | None
    record: bool = False
    max_neurons: int = 256
    probe_seed: int = 0
    eps: torch.Tensor | None = None
    frames: dict = field(default_factory=dict)
    error: BaseException | None = None
    done: bool = False
    group_key: tuple = field(init=False)

    def __post_init__(self):
        # what must be the same in one batch: T and the image shape (each image has its own timestep and threshold
        # scale; a recorded call's probe sees its rows, an unrecorded one's meter its own)
        self.group_key = (int(self.time_steps), tuple(self.sample.shape[1:]), self.sample.dtype)

    def alone(self) -> None:
        """Computed on its own: exactly ``run_denoiser``."""
        self.eps, self.frames = self.pipe.run_denoiser(self.sample, self.timestep, self.scale, self.time_steps,
                                                       record=self.record, max_neurons=self.max_neurons,
                                                       probe_seed=self.probe_seed, meter=self.meter)

    @property
    def rows(self) -> int:
        return int(self.sample.shape[0])


class DenoiserBatcher:
    """Gathers concurrent denoiser calls (recorded or not) into batches (see the module docstring).

    Args:
        max_rows: images in one batch at most (16: past it a CPU batch gains little and a caller waits longer).
        workers: groups computed at once (default 2, the Space's cores).
        processes: a ``ProcessWorkers`` pool that computes the batches (and the checks' batched half) outside this
            process's GIL, or None: in the calling thread.
    """

    def __init__(self, max_rows: int = 16, workers: int = 2, processes: "ProcessWorkers | None" = None):
        if max_rows < 1 or workers < 1:
            raise ValueError("DenoiserBatcher needs max_rows >= 1 and workers >= 1")
        self.max_rows, self.workers = int(max_rows), int(workers)
        self.processes = processes
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._running = 0
        self._verdicts: dict[tuple, bool] = {}     # batch shape -> its rows are bitwise the image-by-image ones
        self.stats: Counter = Counter()             # calls, batches, batched_calls, checks, unbatchable
        self._stopping = threading.Event()          # (``stop``)
        self._starting: threading.Thread | None = None

    @classmethod
    def for_server(cls) -> "DenoiserBatcher":
        """The app's batcher: its batches computed in ``SDM_DENOISER_PROCESSES`` worker processes (default 2, the
        Space's cores; 0: in the server's own threads), started by ``start`` or at the first batch."""
        raw = os.environ.get("SDM_DENOISER_PROCESSES", "2")
        if not raw.strip().isdigit():
            raise ValueError(f"SDM_DENOISER_PROCESSES must be a whole number of worker processes (0: none), got {raw!r}")
        n = int(raw)
        return cls(processes=ProcessWorkers(n) if n > 0 else None)

    def start(self, after: "threading.Thread | None" = None, prepare: list | None = None,
              niceness: int = 19) -> "threading.Thread | None":
        """Start the worker processes (if any; one after the other, see ``ProcessWorkers``) now, or once the thread
        ``after`` ends (the app's start-up warming of the lesson presets: started beside it, they delayed the lesson's
        generated images by seconds). Until they are ready the batches are computed in the server; a batch before
        then starts them. ``prepare``: ``(pipe, time_steps)`` pairs whose batch shapes to check once the workers are
        ready (``prepare``), in the same thread, at nice ``niceness`` (19: only with CPU no one else wants); the thread
        is returned (None when there is nothing to do in one)."""
        if not prepare and (self.processes is None or after is None):
            if self.processes is not None:
                self.processes.start()
            return None

        def run():
            if after is not None:
                after.join()
                if getattr(after, "stopped", False):     # (the server exits: results.SharedResults.stop)
                    return
            if self._stopping.is_set():
                return
            if self.processes is not None:
                self.processes.start()
            set_thread_niceness(niceness)   # (only now: a process or thread started from this one would inherit it)
            for pipe, time_steps in prepare or ():
                self.prepare(pipe, time_steps)
        thread = self._starting = threading.Thread(target=run, daemon=True, name="sdm-start-workers")
        atexit.register(_stop_at_exit, weakref.ref(self))
        thread.start()
        return thread

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop ``start``'s thread between two checks and wait for it (up to ``timeout`` s; at the server's exit: a
        daemon thread inside a torch call when the interpreter ends aborts the process)."""
        self._stopping.set()
        thread = self._starting
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def prepare(self, pipe: SpikingDiffusionPipeline, time_steps: int, wait_s: float = READY_TIMEOUT_S) -> int:
        """Check ahead the batch shapes a class will ask for with ``pipe`` at ``time_steps``: one-image calls in
        groups of 2, 4, ... up to ``max_rows`` (``_take``), at one threshold scale and at several, where they will be
        computed (once the worker processes are ready: waits up to ``wait_s`` for them). Without it the first
        batch of each shape is checked while a class waits (its images computed one by one in the server). The
        inputs are noise at spread timesteps (a kernel's rounding depends on the shape, not the data). Returns the
        shapes checked now (those checked before are skipped)."""
        if self.processes is not None and self.processes.serves(pipe):
            self.processes.start()
            deadline = time.monotonic() + wait_s
            while not (self.processes.usable or self.processes.broken or self._stopping.is_set()) \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
        remote = self._remote(pipe)
        checked, n = 0, 2
        steps = pipe.diffusion.num_train_timesteps
        while n <= self.max_rows:
            for mixed in (False, True):
                group = [_Call(pipe, pipe.initial_noise(i, 1), (61 * i + 7) % steps,
                               1.0 + 0.01 * i if mixed else 1.0, time_steps, None) for i in range(n)]
                key = self._shape_key(group, remote)
                with self._cond:
                    known = key in self._verdicts
                if self._stopping.is_set():
                    return checked
                if not known:
                    self._check(group, key, remote)
                    checked += 1
            n *= 2
        return checked

    def _remote(self, pipe) -> bool:
        """Whether this batch goes to a worker process: there are workers for this pipeline and they are ready."""
        if self.processes is None or not self.processes.serves(pipe):
            return False
        if not self.processes.usable:
            self.processes.start()      # (no-op once started: their imports go on meanwhile)
            return False
        return True

    def denoiser(self, pipe: SpikingDiffusionPipeline) -> Callable:
        """For ``pipe.steps(denoiser=...)`` / ``run_steps``: ``pipe.run_denoiser``, through this batcher."""
        def call(sample, timestep, threshold_scale, time_steps, record=False, max_neurons=256, probe_seed=0,
                 meter=None):
            return self.denoise(pipe, sample, timestep, threshold_scale, time_steps, record=record,
                                max_neurons=max_neurons, probe_seed=probe_seed, meter=meter)
        return call

    def verdicts(self) -> dict[tuple, bool]:
        """Each batch shape checked so far -> whether it is batched (bitwise equal to image by image)."""
        with self._cond:
            return dict(self._verdicts)

    def denoise(self, pipe: SpikingDiffusionPipeline, sample: torch.Tensor, timestep: int, threshold_scale: float,
                time_steps: int, record: bool = False, max_neurons: int = 256, probe_seed: int = 0,
                meter: EnergyMeter | None = None) -> tuple[torch.Tensor, dict]:
        """``pipe.run_denoiser(...)`` with these arguments, possibly computed in one batch with other sessions'
        calls: bitwise the same (noise prediction, probe frames) and the same meter counts."""
        call = _Call(pipe, sample, int(timestep), float(threshold_scale), int(time_steps), meter, bool(record),
                     int(max_neurons), int(probe_seed))
        with self._cond:
            self.stats["calls"] += 1
            self._pending.append(call)
            while not call.done:
                if self._running < self.workers and self._pending:
                    group = self._take()
                    self._running += 1
                    self._cond.release()
                    try:
                        self._compute(group)
                    finally:
                        self._cond.acquire()
                        self._running -= 1
                        self._cond.notify_all()
                else:
                    self._cond.wait()
        if call.error is not None:
            raise call.error
        return call.eps, call.frames

    # ------------------------------------------------------------------ internals
    def _take(self) -> list[_Call]:
        """The oldest waiting call and those waiting with the same settings, up to ``max_rows`` images (under the
        lock; calls of one image each: the largest power of two of them); removed from the queue."""
        first = self._pending[0]
        group, rows = [], 0
        for c in self._pending:
            if c.pipe is first.pipe and c.group_key == first.group_key and (not group or rows + c.rows <= self.max_rows):
                group.append(c)
                rows += c.rows
        if rows == len(group) > 2:
            # one image each (the usual case): a power of two, so that few batch shapes need their first check
            group = group[:1 << (len(group).bit_length() - 1)]
        for c in group:
            self._pending.remove(c)
        return group

    def _compute(self, group: list[_Call]) -> None:
        try:
            if len(group) == 1:
                self._one_by_one(group)
                return
            remote = self._remote(group[0].pipe)
            key = self._shape_key(group, remote)
            with self._cond:
                verdict = self._verdicts.get(key)
            if verdict is None:
                self._check(group, key, remote)
            elif verdict:
                self._batched(group, remote)
            else:
                self._one_by_one(group)
        except BaseException as e:  # noqa: BLE001 - every caller of the group gets the error
            for c in group:
                if not c.done:
                    c.error = e
        finally:
            for c in group:
                c.done = True

    def _shape_key(self, group: list[_Call], remote: bool = False) -> tuple:
        """What a convolution's algorithm can depend on: the architecture, T, the image shape, the batch, the
        threads (not the weights or what is recorded), whether the thresholds are given per image, and where the
        batch is computed."""
        first = group[0]
        return (repr(first.pipe.config), str(first.pipe.device), first.group_key, sum(c.rows for c in group),
                torch.get_num_threads(), len({c.scale for c in group}) > 1,      # (thresholds per image or one)
                remote)                                                         # (in a worker process or here)

    def _one_by_one(self, group: list[_Call]) -> None:
        for c in group:
            c.alone()
            c.done = True

    @staticmethod
    def _inputs(group: list[_Call]) -> tuple[torch.Tensor, torch.Tensor, "float | torch.Tensor",
                                             list[tuple[int, int]]]:
        """The batch of a group: its samples, each image's timestep and threshold scale (a float when they share
        one), and each call's rows ``(start, stop)``."""
        x = torch.cat([c.sample for c in group])
        t = torch.cat([torch.full((c.rows,), c.timestep, dtype=torch.long) for c in group])
        scales = {c.scale for c in group}
        scale = group[0].scale if len(scales) == 1 else \
            torch.cat([torch.full((c.rows,), c.scale, dtype=torch.float64) for c in group])
        spans, a = [], 0
        for c in group:
            spans.append((a, a + c.rows))
            a += c.rows
        return x, t, scale, spans

    def _run_batch(self, group: list[_Call], remote: bool = False) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        pipe, first = group[0].pipe, group[0]
        x, t, scale, spans = self._inputs(group)
        for c in group:
            if c.meter is not None:
                c.meter.start_call(c.rows, c.time_steps)
        if remote:
            try:
                eps, frames, counts, _ = self.processes.run(
                    pipe, x, t, scale, first.time_steps, [(c.max_neurons, c.probe_seed) if c.record else None
                                                          for c in group], spans, [c.meter is not None for c in group])
            except WorkerLost:
                pass            # computed here instead (the pool logged why)
            else:
                for c, f, n in zip(group, frames, counts):
                    c.frames = f
                    for name, (spikes, neurons, steps, sops) in (n or {}).items():
                        c.meter.count_spikes(name, spikes, neurons, steps)
                        if sops is not None:
                            c.meter.count_sops(name, sops)
                return eps, spans
        probes = [Probe(max_neurons=c.max_neurons, seed=c.probe_seed) if c.record else None for c in group]
        meters = [c.meter for c in group]
        monitor = (SplitMonitor(probes, meters, spans, first.time_steps, x.shape[0])
                   if any(m is not None for m in probes + meters) else None)
        with ExitStack() as stack:
            for p in probes:
                if p is not None:
                    stack.enter_context(p)
            eps, _ = pipe.run_denoiser(x, t, scale, first.time_steps, meter=monitor)
        for c, p in zip(group, probes):
            if p is not None:
                c.frames = p.frames
        return eps, spans

    def _batched(self, group: list[_Call], remote: bool = False) -> None:
        eps, spans = self._run_batch(group, remote)
        for c, (a, b) in zip(group, spans):
            c.eps = eps[a:b]
        with self._cond:
            self.stats["batches"] += 1
            self.stats["batched_calls"] += len(group)

    def _check(self, group: list[_Call], key: tuple, remote: bool = False) -> None:
        """The first batch of a shape: computed both ways and compared, the result and every layer's spikes and
        membrane potentials (a convolution that rounds differently changes a potential first, and a spike only
        where the potential is that close to the threshold: in this batch or in a later one). The callers get the
        image-by-image results."""
        pipe, first = group[0].pipe, group[0]
        x, t, scale, spans = self._inputs(group)
        together, digests, eps = _Layers(), None, None
        if remote:
            try:    # the batch as the processes compute it, against this process's calls alone
                eps, _, _, digests = self.processes.run(pipe, x, t, scale, first.time_steps, [], spans, [],
                                                        full=True)
            except WorkerLost:
                pass
        if eps is None:
            eps, _ = pipe.run_denoiser(x, t, scale, first.time_steps, meter=together)
        same = True
        for c, (a, b) in zip(group, spans):
            alone = _Layers(c.meter)
            c.eps, c.frames = pipe.run_denoiser(c.sample, c.timestep, c.scale, c.time_steps, record=c.record,
                                                max_neurons=c.max_neurons, probe_seed=c.probe_seed, meter=alone)
            c.done = True
            if digests is not None:
                rows = alone.seen.items()
                same = same and torch.equal(eps[a:b], c.eps) and digests.keys() == alone.seen.keys() and all(
                    digests[n][a + i] == row_digest(sp, v, i) for n, (sp, v) in rows for i in range(b - a))
            else:
                same = same and torch.equal(eps[a:b], c.eps) and together.rows_equal(alone, a, b)
        with self._cond:
            self._verdicts[key] = same
            self.stats["checks"] += 1
            if not same:
                self.stats["unbatchable"] += 1
