"""A class on one server: N students follow the lesson flow at the same time on a launched ``python app.py``.

    python bench/classroom_load.py                      # 30 clients, the same lesson (seed 0), fmnist-sdm-t4, DDIM 50
    python bench/classroom_load.py --own-seeds          # each student on their own seed (seed = client index)
    python bench/classroom_load.py --clients 3 --checkpoints-dir tests/fixtures --checkpoint tiny-sdm --steps 10

Starts the app of a checkout (``--repo``, default this one) in its own process on a free loopback port
(``tests/harness.py``), waits until it is idle (its start-up warming done, its denoiser processes up and its batch
shapes checked, as a server is before a lesson; ``--no-settle``: at once), connects N ``gradio_client`` clients (one thread each), and once all
are connected each runs
the lesson flow at once: /new_trajectory (DDIM, ``--steps`` steps, grid 1, threshold scale 1.0, the checkpoint's own
T), /run_to_end (drained to its last output), /set_threshold 1.05, then 0.95. Everything is bounded by ``--timeout``:
a request still unanswered then is cancelled and counted as an error.

Prints p50, p95 and max seconds per action and for the whole flow, the errors (of which refused: "the server is
busy" / "queue is full"), the server's CPU seconds (its denoiser worker processes included, and each apart) and RSS (the server's,
and its workers') before and after, and the ``final_difference`` of the last
/set_threshold output at 1.05 and 0.95 (the mean absolute pixel difference between the images generated at s and at
1.0; "n/a" where the app does not report it).
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from harness import LaunchedApp, launch_app  # noqa: E402

ACTIONS = ("new_trajectory", "run_to_end", "set_threshold 1.05", "set_threshold 0.95")
VIEW = dict(layer="", raster_mode="step", neurons=[])        # '' : the checkpoint's first layer
REFUSED = ("server is busy", "queue is full")


@dataclass
class Student:
    """One client's flow: seconds per action that answered, its error (if any) and the last /set_threshold infos."""

    index: int
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    infos: dict[str, dict] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        return self.error is not None and any(r in self.error.lower() for r in REFUSED)


def lesson(srv: LaunchedApp, student: Student, args, ready: threading.Barrier, deadline: float) -> None:
    """Connect, wait for the whole class, then run the flow; every request bounded by the global deadline."""
    jobs, client = [], None
    try:
        client = srv.client()
    except Exception as e:  # noqa: BLE001 - a failed connection is an error of this student, counted
        student.error = f"connect: {type(e).__name__}: {e}"
    try:
        ready.wait(timeout=max(1.0, deadline - time.time()))
        if client is None:
            return
        seed = student.index if args.own_seeds else 0
        calls = [
            ("new_trajectory", dict(checkpoint=args.checkpoint, seed=seed, sampler="ddim", num_steps=args.steps,
                                    threshold_scale=1.0, grid_size=1, api_name="/new_trajectory", **VIEW)),
            ("run_to_end", dict(threshold_scale=1.0, api_name="/run_to_end", **VIEW)),
            ("set_threshold 1.05", dict(threshold_scale=1.05, api_name="/set_threshold", **VIEW)),
            ("set_threshold 0.95", dict(threshold_scale=0.95, api_name="/set_threshold", **VIEW)),
        ]
        for name, kwargs in calls:
            t0 = time.perf_counter()
            job = client.submit(**kwargs)
            jobs.append(job)
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("the global timeout passed")
            result = job.result(timeout=left)          # a streaming endpoint: its last output
            student.seconds[name] = time.perf_counter() - t0
            if isinstance(result, (list, tuple)) and result and isinstance(result[-1], dict):
                student.infos[name] = result[-1]
    except Exception as e:  # noqa: BLE001 - every failure is a figure of the benchmark
        student.error = ("TimeoutError: no answer before the global timeout" if isinstance(e, TimeoutError)
                         else f"{type(e).__name__}: {e}".strip())
        for job in jobs:
            if not job.done():
                job.cancel()
    finally:
        if client is not None:
            client.close()


def settle(srv: LaunchedApp, idle_cpu_s: float = 0.05, window_s: float = 1.0, limit_s: float = 120.0) -> float:
    """Wait until the server (with its child processes) spends under ``idle_cpu_s`` CPU seconds in ``window_s``:
    its start-up warming of the lesson presets is done and its denoiser processes have started. Returns the wait."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s and srv.cpu_seconds_in(window_s) >= idle_cpu_s:
        pass
    return time.perf_counter() - t0


def percentiles(values: list[float]) -> str:
    if not values:
        return f"{'-':>7} {'-':>7} {'-':>7} {0:>4}"
    v = np.asarray(values)
    return f"{np.percentile(v, 50):7.2f} {np.percentile(v, 95):7.2f} {v.max():7.2f} {len(v):>4}"


def report(students: list[Student], before: tuple[float, ...], after: tuple[float, ...], wall: float,
           args) -> None:
    mode = "own seeds" if args.own_seeds else "same seed (0)"
    print(f"classroom_load: {len(students)} clients, {args.checkpoint}, DDIM {args.steps}, grid 1, {mode}; "
          f"wall {wall:.1f} s")
    print(f"{'seconds':<20} {'p50':>7} {'p95':>7} {'max':>7} {'n':>4}")
    for name in ACTIONS:
        print(f"{name:<20} {percentiles([s.seconds[name] for s in students if name in s.seconds])}")
    flows = [sum(s.seconds.values()) for s in students if s.error is None and len(s.seconds) == len(ACTIONS)]
    print(f"{'flow':<20} {percentiles(flows)}")
    errors = [s for s in students if s.error is not None]
    print(f"errors: {len(errors)} (refused: {sum(s.refused for s in errors)})")
    for s in errors[:5]:
        print(f"  client {s.index}: {s.error[:200]}")
    own, kids = after[3] - before[3], after[4] - before[4]
    print(f"server CPU seconds (with its denoiser processes): {before[0]:.1f} before, {after[0]:.1f} after "
          f"({after[0] - before[0]:+.1f}: server {own:.1f}, denoiser processes {kids:.1f}); "
          f"RSS {before[1]:.0f} MB before, {after[1]:.0f} MB after, and its denoiser "
          f"processes {before[2]:.0f} / {after[2]:.0f} MB")
    for name in ACTIONS[2:]:
        values = [s.infos[name].get("final_difference") for s in students if name in s.infos]
        values = [v for v in values if isinstance(v, (int, float))]
        shown = (f"median {np.median(values):.4f} (min {min(values):.4f}, max {max(values):.4f}, n {len(values)})"
                 if values else "n/a")
        print(f"final_difference at {name.split()[-1]}: {shown}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=30, help="students at once (default 30)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--same-seed", dest="own_seeds", action="store_false",
                       help="every student on seed 0: the same lesson (default)")
    seeds.add_argument("--own-seeds", dest="own_seeds", action="store_true", help="student i on seed i")
    p.set_defaults(own_seeds=False)
    p.add_argument("--checkpoint", default="fmnist-sdm-t4")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--checkpoints-dir", type=Path, default=None,
                   help="the folder the app serves (default: its own, checkpoints/); tests/fixtures for tiny-sdm")
    p.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose app.py to serve (default: this one)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds for the whole class to connect and finish (default 600); later requests are "
                        "cancelled and counted as errors")
    p.add_argument("--no-settle", dest="settle", action="store_false",
                   help="start the class as soon as the server answers, during its start-up warming (default: once "
                        "the server and its denoiser processes are idle, as before a lesson)")
    args = p.parse_args(argv)
    if args.clients < 1:
        p.error("--clients must be at least 1")
    checkpoints = args.checkpoints_dir.resolve() if args.checkpoints_dir is not None else None
    repo = args.repo.resolve()
    with launch_app(checkpoints, repo=repo, timeout=180, PYTHONPATH=str(repo)) as srv:
        if args.settle:
            settled = settle(srv)
            print(f"server settled {settled:.1f} s after it answered (start-up warming done, denoiser processes up, batch "
                  "shapes checked)")
        deadline = time.time() + args.timeout
        students = [Student(i) for i in range(args.clients)]
        ready = threading.Barrier(args.clients + 1)
        threads = [threading.Thread(target=lesson, args=(srv, s, args, ready, deadline), daemon=True)
                   for s in students]
        for t in threads:
            t.start()
        try:
            ready.wait(timeout=max(1.0, deadline - time.time()))     # everyone connected: the lesson starts
        except threading.BrokenBarrierError:
            pass
        before = (srv.cpu_seconds(), srv.rss_mb(), srv.children_rss_mb(), *srv.cpu_split())
        t0 = time.perf_counter()
        for t in threads:
            t.join(max(0.0, deadline - time.time()) + 15)
        wall = time.perf_counter() - t0
        after = (srv.cpu_seconds(), srv.rss_mb(), srv.children_rss_mb(), *srv.cpu_split())
        for s, t in zip(students, threads):
            if t.is_alive() and s.error is None:
                s.error = "TimeoutError: still running after the global timeout"
        report(students, before, after, wall, args)
    return 0 if all(s.error is None for s in students) else 1


if __name__ == "__main__":
    raise SystemExit(main())
