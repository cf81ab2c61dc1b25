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
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LAYER_ARGS = dict(layer="down.0.blocks.0.conv1.act", raster_mode="step", neurons=[])


def make_checkpoint(root: Path) -> None:
    import torch
    import sdm
    from sdm.checkpoints import save_checkpoint

    tiny = sdm.load_pipeline("tiny-sdm", ROOT / "tests" / "fixtures")
    torch.manual_seed(0)
    save_checkpoint(root / "tiny-sdm", sdm.SpikingUNet(tiny.config.replace(base_channels=2, time_embed_dim=8)),
                    tiny.diffusion, {"name": "tiny-sdm", "description": "random weights, for bench/fair_sharing.py"})


class Server:
    def __init__(self, repo: Path, checkpoints: Path, port: int):
        env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
                   SDM_CHECKPOINTS=str(checkpoints), GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(repo))
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}/"
        t0 = time.time()
        while True:
            try:
                with urlopen(self.url, timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.time() - t0 > 180:
                    raise RuntimeError("app.py did not start")
                time.sleep(0.5)

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def status(self, key: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def rss_mb(self) -> float:
        return self.status("VmRSS") / 1024

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def client(url):
    from gradio_client import Client
    return Client(url, verbose=False, download_files=False)


def start(c, steps, grid, seed=0):
    c.predict(checkpoint="tiny-sdm", seed=seed, sampler="ddim", num_steps=steps, threshold_scale=1.0,
              grid_size=grid, api_name="/new_trajectory", **LAYER_ARGS)


def cancel_scenario(srv: Server) -> None:
    clients = [client(srv.url) for _ in range(4)]
    jobs = []
    for c in clients:
        start(c, 1000, 16)
        jobs.append(c.submit(n_steps=1000, threshold_scale=1.0, api_name="/step", **LAYER_ARGS))
    time.sleep(3)
    for j in jobs:
        j.cancel()
    time.sleep(1)
    t0 = srv.cpu()
    time.sleep(3)
    print(f"1. after 4 cancelled /step n_steps=1000 (grid 16): {srv.cpu() - t0:.2f} CPU s in the next 3 s; "
          f"{srv.status('Threads')} threads; RSS {srv.rss_mb():.0f} MB")
    for c in clients:
        c.close()


def light_scenario(srv: Server, timeout: float = 20.0) -> None:
    heavy = [client(srv.url) for _ in range(2)]
    jobs = []
    for h in heavy:
        start(h, 1000, 16)
        jobs.append(h.submit(n_steps=1000, threshold_scale=1.0, api_name="/step", **LAYER_ARGS))
    time.sleep(1.5)
    light = client(srv.url)
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


def memory_scenario(srv: Server) -> None:
    def session(seed):
        c = client(srv.url)
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
        make_checkpoint(Path(tmp))
        for scenario in (cancel_scenario, light_scenario, memory_scenario):
            srv = Server(args.repo.resolve(), Path(tmp), args.port)
            try:
                scenario(srv)
            finally:
                srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
