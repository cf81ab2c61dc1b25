"""Worker processes for ``DenoiserBatcher``: the batches of a class computed outside the server's GIL.

A denoiser call is some 700 small torch operations, and a thread takes the GIL back after each one. In the app's
process thirty sessions' threads, gradio's event loop and the pictures all want the GIL too, so a batch waited for
it between operations: measured with one pure-Python thread spinning beside 30 generated-image runs, they took 851 s
instead of 8.8 s, and under a class on its own seeds the two batch workers were busy 46 s for some 28 s of work.
A ``ProcessWorkers`` pool computes each batch in a process of its own (``spawn``ed, one torch thread each, the
same code and libraries), which holds no lock of the server: the server's threads wait on a pipe meanwhile.

    workers = ProcessWorkers(2)
    batcher = DenoiserBatcher(processes=workers)     # batches go to the processes; checks and single calls stay here

What a session gets does not change: a worker loads the checkpoint from the same files, runs the same
``SplitMonitor`` per call (its probe frames, its energy counts) and the first batch of each shape is still compared
with the server's own image-by-image results (``DenoiserBatcher._check``). A pipeline that has no files (built in
memory) or is not on the CPU is computed in the server as before; a worker that fails is replaced by the server
computing its batches itself (``broken``), with a log line.
"""
from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import queue
import threading
import weakref
from collections import Counter
from pathlib import Path

import numpy as np
import torch

__all__ = ["ProcessWorkers", "WorkerLost", "READY_TIMEOUT_S"]

log = logging.getLogger("sdm.workers")

READY_TIMEOUT_S = 60.0      # a worker that has not imported torch and sdm by then is given up


_POOLS: "weakref.WeakSet[ProcessWorkers]" = weakref.WeakSet()


@atexit.register
def _exiting() -> None:
    """At the server's exit no pool starts a worker any more, and a worker's pipe closing is no news. (Registered at
    import, after torch, whose import registers multiprocessing's exit handler that ends the daemon workers: so this
    runs first.)"""
    for pool in list(_POOLS):
        pool._closed = True


class WorkerLost(RuntimeError):
    """A worker process ended or its pipe broke: the batch is to be computed in the server."""


def _files_signature(folder: Path) -> tuple:
    return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir() if p.is_file()))


class ProcessWorkers:
    """``n`` worker processes (started on first use), each computing one batch at a time.

    Args:
        n: processes (default 2: the Space's cores; the batcher's ``workers`` should not exceed it).
        threads: torch threads in each (default: this process's ``torch.get_num_threads()`` when they start, as the
            batch checks assume).
    """

    def __init__(self, n: int = 2, threads: int | None = None):
        if n < 1:
            raise ValueError("ProcessWorkers needs n >= 1")
        self.n = int(n)
        self.threads = threads
        self.broken: str | None = None          # why the pool stopped (then every batch is computed in the server)
        self.stats: Counter = Counter()         # batches, checks: computed in a worker
        self._idle: queue.Queue = queue.Queue()
        self._procs: list = []
        self._lock = threading.Lock()
        self._keys: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # pipeline -> (folder, signature)
        self._ready, self._closed = 0, False
        _POOLS.add(self)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "ProcessWorkers":
        """Start the processes now (else at the first batch); each imports torch and sdm, a few seconds."""
        with self._lock:
            if self._procs or self.broken or self._closed:
                return self
            self._spawn_locked()
        return self

    def _spawn_locked(self) -> None:
        """Start the next worker (under ``_lock``). One at a time: each imports torch and sdm (a few CPU seconds),
        and two at once took both cores from the app's start-up warming."""
        if self._closed or len(self._procs) >= self.n or self.broken:
            return
        ctx = mp.get_context("spawn")
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(there, int(self.threads or torch.get_num_threads())), daemon=True,
                           name="sdm-denoiser")
        proc.start()
        there.close()
        self._procs.append((proc, here))
        threading.Thread(target=self._await_ready, args=(proc, here), daemon=True, name="sdm-denoiser-ready").start()

    def _await_ready(self, proc, conn) -> None:
        """A worker says "ready" once it has imported torch and sdm; only then does it take batches, and the next
        one starts."""
        try:
            if not conn.poll(READY_TIMEOUT_S) or conn.recv() != "ready":
                raise EOFError("no answer")
        except (EOFError, OSError) as e:
            if self._closed:                    # (closed, or the server exits: multiprocessing ends its daemons)
                return
            self.broken = f"a worker process ended before it was ready ({type(e).__name__}: {e})"
            log.warning("denoiser worker %s: %s; the server computes the batches itself", proc.pid, self.broken)
            self._idle.put(None)                # wakes a batch that waits for a worker: it is computed here
            return
        with self._lock:
            self._ready += 1
            self._spawn_locked()
        self._idle.put((proc, conn))

    @property
    def usable(self) -> bool:
        """Started, every worker ready, none lost: a batch sent now is computed at once (else the batcher computes
        it in the server meanwhile)."""
        return bool(self._procs) and self.broken is None and self._ready >= self.n

    def close(self) -> None:
        """Stop the processes (they are daemons: they also end with the server)."""
        with self._lock:
            self._closed = True
            procs, self._procs = self._procs, []
        for proc, conn in procs:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()

    @property
    def alive(self) -> bool:
        return bool(self._procs) and self.broken is None

    def serves(self, pipe) -> bool:
        """Whether a batch of ``pipe`` can go to a worker: a checkpoint loaded from files, on the CPU."""
        return self.broken is None and getattr(pipe, "path", None) is not None and pipe.device.type == "cpu"

    def _key(self, pipe) -> tuple:
        key = self._keys.get(pipe)
        if key is None:
            folder = Path(pipe.path)
            key = self._keys[pipe] = (str(folder), _files_signature(folder))
        return key

    # ------------------------------------------------------------------ one batch
    def run(self, pipe, x: torch.Tensor, t: torch.Tensor, scale, time_steps: int, probes: list, spans: list,
            meters: list, full: bool = False):
        """Compute one batch in a worker: as ``pipe.run_denoiser(x, t, scale, time_steps, meter=SplitMonitor(...))``
        in this process.

        Args:
            probes: per call, ``(max_neurons, seed)`` of its probe or None; spans: each call's rows.
            meters: per call, whether it has an energy meter.
            full: instead of probes and meters, a digest of every layer's spikes and potentials per image
                ``{name: [digest of image 0, ...]}`` (``batching.row_digest``, for the batch check: a batch of 16
                images holds some 260 MB of them).
        Returns:
            (eps, frames per call ({} without a probe), counts per call ({layer: (spikes, neurons, steps, sops)} or
            None), layers or None). Raises ``WorkerLost`` if a worker process is gone (the pool is then ``broken``), and
            ``RuntimeError`` with the worker's message if the computation raised there.
        """
        self.start()
        if self.broken:
            raise WorkerLost(f"the denoiser worker processes stopped: {self.broken}")
        folder, signature = self._key(pipe)
        sc = scale.numpy() if torch.is_tensor(scale) else float(scale)
        msg = (folder, signature, x.numpy(), t.numpy(), sc, int(time_steps), probes, spans, meters, bool(full))
        worker = self._idle.get()
        if worker is None:                      # (a worker failed to start meanwhile)
            self._idle.put(None)
            raise WorkerLost(f"the denoiser worker processes stopped: {self.broken}")
        proc, conn = worker
        try:
            conn.send(msg)
            status, payload = conn.recv()
        except (EOFError, OSError, BrokenPipeError) as e:
            self.broken = f"a worker process ended ({type(e).__name__}: {e})"
            log.error("denoiser worker %s: %s; the server computes the batches itself from now on", proc.pid,
                      self.broken)
            raise WorkerLost(self.broken) from e
        self._idle.put((proc, conn))
        self.stats["checks" if full else "batches"] += status == "ok"
        if status != "ok":
            raise RuntimeError(f"denoiser worker: {payload}")
        eps, frames, counts, layers = payload
        return torch.from_numpy(eps), frames, counts, layers


def _serve(conn, threads: int) -> None:
    """A worker process: answer batches until told to stop (None) or the pipe closes."""
    torch.set_num_threads(threads)
    from ..energy import EnergyMeter
    from ..pipeline import load_pipeline
    from ..probes import Probe
    from .split import SplitMonitor, _Layers, row_digest
    from .heap import keep_freed_blocks, release_memory
    keep_freed_blocks()             # a batch reuses the previous one's pages (13% of a call went to page faults)
    conn.send("ready")
    pipes: dict = {}
    served = 0
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        try:
            folder, signature, x, t, scale, T, probe_specs, spans, metered, full = msg
            pipe = pipes.get((folder, signature))
            if pipe is None:
                pipe = pipes[(folder, signature)] = load_pipeline(folder)
            x, t = torch.from_numpy(x), torch.from_numpy(t)
            scale = torch.from_numpy(scale) if isinstance(scale, np.ndarray) else scale
            if full:
                layers = _Layers()
                eps, _ = pipe.run_denoiser(x, t, scale, T, meter=layers)
                digests = {n: [row_digest(s, v, i) for i in range(x.shape[0])] for n, (s, v) in layers.seen.items()}
                conn.send(("ok", (eps.contiguous().numpy(), [], [], digests)))
                del layers, digests
                release_memory(collect=False)        # (a check's copies of every layer: tens of MB)
                continue
            meters = [EnergyMeter() if m else None for m in metered]
            for m, (a, b) in zip(meters, spans):
                if m is not None:
                    m.start_call(b - a, T)
            probes = [Probe(max_neurons=p[0], seed=p[1]) if p is not None else None for p in probe_specs]
            monitor = SplitMonitor(probes, meters, spans, T, x.shape[0]) \
                if any(m is not None for m in probes + meters) else None
            for p in probes:
                if p is not None:
                    p.__enter__()
            eps, _ = pipe.run_denoiser(x, t, scale, T, meter=monitor)
            frames = [p.frames if p is not None else {} for p in probes]
            counts = [None if m is None else m.layer_counts() for m in meters]
            conn.send(("ok", (eps.contiguous().numpy(), frames, counts, None)))
            served += 1
            if served % 64 == 0:
                release_memory(collect=False)        # glibc keeps freed batch memory otherwise
        except Exception as e:  # noqa: BLE001 - the server raises it for the batch's callers
            conn.send(("error", f"{type(e).__name__}: {e}"))

