"""Fair sharing of the launched app, measured from outside as a public Space's users would meet it.

    python bench/fair_sharing.py                       # this checkout
    python bench/fair_sharing.py --repo /tmp/old       # another checkout (e.g. a git worktree of an older commit)

Starts ``python app.py`` of the checkout in its own process, serving a tiny spiking UNet (tests/fixtures' tiny-sdm
at 2 base channels: about 70 ms a step for 16 images, so that the scenarios take seconds) and prints:

1. cancel: 4 clients each start a 1000-step trajectory of 16 images, submit /step n_steps=1000 and cancel it 3 s
   later; the server's CPU seconds in the 3 s after the cancels (about 0 when the work stopped) and its threads;
2. light under heavy: two clients send /step n_steps=1000 on 1000-step, 16-image trajectories; a third one's
   /new_trajectory and /step latency (a request not answered in 20 s is given up);
3. memory: RSS of the server before 30 tabs (20 steps of 16 images each), with them, and 10 s after they closed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from harness import LAYER_ARGS, LaunchedApp, launch_app, start, start_heavy, write_tiny_checkpoint  # noqa: E402


def cancel_scenario(srv: LaunchedApp) -> None:
    clients = [srv.client() for _ in range(4)]
    jobs = [start_heavy(c) for c in clients]
    time.sleep(3)
    for j in jobs:
        j.cancel()
    time.sleep(1)
    print(f"1. after 4 cancelled /step n_steps=1000 (grid 16): {srv.cpu_seconds_in(3):.2f} CPU s in the next 3 s; "
          f"{srv.threads()} threads; RSS {srv.rss_mb():.0f} MB")
    for c in clients:
        c.close()


def light_scenario(srv: LaunchedApp, timeout: float = 20.0) -> None:
    heavy = [srv.client() for _ in range(2)]
    jobs = [start_heavy(h) for h in heavy]
    time.sleep(1.5)
    light = srv.client()
    waits = []
    for i in range(4):
        t0 = time.perf_counter()
        job = (light.submit(checkpoint="tiny-sdm", seed=0, sampler="ddim", num_steps=20, threshold_scale=1.0,
                            grid_size=1, api_name="/new_trajectory", **LAYER_ARGS) if i == 0 else
               light.submit(n_steps=1, threshold_scale=1.0, api_name="/step", **LAYER_ARGS))
        try:
            job.result(timeout=timeout)
        except Exception:  # noqa: BLE001 - a timeout is the figure
            waits.append(float("inf"))
            break
        waits.append(time.perf_counter() - t0)
    running = sum(not j.done() for j in jobs)
    shown = ", ".join("> %.0f s (gave up)" % timeout if w == float("inf") else f"{w:.2f}" for w in waits)
    print(f"2. a light request while two /step n_steps=1000 (grid 16) run ({running} still running): {shown} s")
    for j in jobs:
        j.cancel()
    for c in heavy + [light]:
        c.close()


def memory_scenario(srv: LaunchedApp) -> None:
    def session(seed):
        c = srv.client()
        start(c, 20, 16, seed)
        c.predict(threshold_scale=1.0, api_name="/run_to_end", **LAYER_ARGS)
        return c

    session(99).close()
    time.sleep(3)
    base = srv.rss_mb()
    with ThreadPoolExecutor(4) as pool:
        held = list(pool.map(session, range(30)))
    peak = srv.rss_mb()
    for c in held:
        c.close()
    time.sleep(10)
    print(f"3. RSS before 30 tabs {base:.0f} MB, with them {peak:.0f} MB, 10 s after they closed {srv.rss_mb():.0f} MB "
          f"({srv.rss_mb() - base:+.0f} MB)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose app.py to serve (default: this one)")
    p.add_argument("--port", type=int, default=7911)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_checkpoint(Path(tmp), "random weights, for bench/fair_sharing.py")
        repo = args.repo.resolve()
        for scenario in (cancel_scenario, light_scenario, memory_scenario):
            with launch_app(tmp, repo=repo, port=args.port, timeout=180, PYTHONPATH=str(repo)) as srv:
                scenario(srv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
