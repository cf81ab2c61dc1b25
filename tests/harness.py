"""The app launched as a Space runs it, for tests and benchmarks: ``python app.py`` in its own process on a free
loopback port, driven through gradio_client, measured from /proc, stopped by its PID.

    from harness import launch_app

    with launch_app(checkpoints, SDM_RUN_BUDGET_S="7") as app:     # env overrides for the server
        c = app.client()
        start(c, steps=20)                                          # /new_trajectory on tiny-sdm
        print(app.cpu_seconds(), app.rss_mb(), app.threads())

Its own process, so that its CPU seconds and RSS are the server's alone and the clients do not compete with it for
the GIL. ``serve_demo`` is the in-process counterpart (a built ``gr.Blocks`` on a free port) for tests that call
into the app's objects. Tests import this module (pytest.ini puts tests/ on sys.path); bench scripts put tests/ on
sys.path themselves. It imports neither pytest nor the test files.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
LAYER_ARGS = dict(layer="down.0.blocks.0.conv1.act", raster_mode="step", neurons=[])   # a layer tiny-sdm records


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LaunchedApp:
    """A running ``python app.py``: its ``url`` and ``pid``, gradio_client clients of it, its CPU time, RSS and
    threads read from /proc (Linux), and ``stop()``."""

    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc, self.url = proc, url

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, **kwargs):
        """A gradio_client Client of the app; the images stay on the server unless ``download_files`` says so."""
        from gradio_client import Client
        return Client(self.url, **{"verbose": False, "download_files": False, **kwargs})

    def descendants(self) -> list[int]:
        """The server's live child processes and theirs (its denoiser workers: sdm.explorer.workers)."""
        parents: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                parents.setdefault(ppid, []).append(int(entry))
        found, todo = [], [self.pid]
        while todo:
            kids = parents.get(todo.pop(), [])
            found += kids
            todo += kids
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server and its live child processes have spent so far."""
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """``cpu_seconds`` in two: (the server's own, its live child processes' together)."""
        split = [0.0, 0.0]
        for pid in [self.pid] + self.descendants():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue                    # (a child that just ended)
            split[pid != self.pid] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return split[0], split[1]

    def cpu_seconds_in(self, seconds: float) -> float:
        """CPU seconds the server spends in the next ``seconds`` of wall time (sleeps meanwhile)."""
        start = self.cpu_seconds()
        time.sleep(seconds)
        return self.cpu_seconds() - start

    def proc_status(self, key: str) -> int:
        """A field of /proc/PID/status as its integer (kB for ``VmRSS``, a count for ``Threads``)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(f"no {key} in /proc/{self.pid}/status")

    def rss_mb(self) -> float:
        return self.proc_status("VmRSS") / 1024

    def children_rss_mb(self) -> float:
        """The resident memory of the server's child processes together (MB)."""
        total = 0
        for pid in self.descendants():
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            except OSError:
                continue
        return total / 1024

    def threads(self) -> int:
        return self.proc_status("Threads")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; idempotent."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def launch_app(checkpoints: str | Path | None = None, *, repo: str | Path = ROOT, port: int | None = None,
               timeout: float = 120.0, **env: str) -> Iterator[LaunchedApp]:
    """Start ``python app.py`` of ``repo``, wait until it answers, yield it as a ``LaunchedApp``, stop it on the way
    out (an exception, a failed test and Ctrl-C included).

    Args:
        checkpoints: the folder it serves (``SDM_CHECKPOINTS``); None keeps the environment's, else the app's own.
        repo: the checkout whose app.py runs (another git worktree, to compare commits).
        port: the port on 127.0.0.1; None picks a free one.
        timeout: seconds to wait for the first page.
        env: more environment for the server, e.g. ``SDM_RUN_BUDGET_S="7"``, ``SDM_TORCH_THREADS="1"``.
    The server's output goes to /dev/null; ``SDM_QUIET_APP=0`` in the environment shows it. Under pytest the server
    computes its batches in its denoiser worker processes, as in production (the tests' own explorers do not:
    conftest.py), unless ``env`` says otherwise.
    """
    port = port or free_port()
    inherited = dict(os.environ)
    if inherited.pop("SDM_DENOISER_PROCESSES_FROM_TESTS", None):
        inherited.pop("SDM_DENOISER_PROCESSES", None)
    env = dict(inherited, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1", **env)
    if checkpoints is not None:
        env["SDM_CHECKPOINTS"] = str(checkpoints)
    quiet = os.environ.get("SDM_QUIET_APP", "1") == "1"
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.STDOUT)
    app = LaunchedApp(proc, f"http://127.0.0.1:{port}/")
    try:
        _wait_until_it_answers(app, timeout)
        yield app
    finally:
        app.stop()


def _wait_until_it_answers(app: LaunchedApp, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        if app.proc.poll() is not None:
            raise RuntimeError(f"app.py exited with code {app.proc.returncode} before serving (SDM_QUIET_APP=0 "
                               "shows its output)")
        try:
            with urlopen(app.url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise TimeoutError(f"app.py did not answer on {app.url} within {timeout:.0f} s")
        time.sleep(0.5)


@contextmanager
def serve_demo(demo, **launch_kwargs) -> Iterator[str]:
    """Launch a built ``gr.Blocks`` in this process on a free loopback port; yield its URL; close it afterwards."""
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_kwargs)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


# --------------------------------------------------------------------------------------------- driving it
def write_tiny_checkpoint(root: Path, description: str) -> None:
    """``root/tiny-sdm``: the fixtures' tiny-sdm at 2 base channels, random weights (seed 0): the same 19 recorded
    layers, about 70 ms a step for 16 images, so that a scenario on a launched app takes seconds."""
    import torch
    import sdm
    from sdm.checkpoints import save_checkpoint

    tiny = sdm.load_pipeline("tiny-sdm", FIXTURES)
    torch.manual_seed(0)
    save_checkpoint(root / "tiny-sdm", sdm.SpikingUNet(tiny.config.replace(base_channels=2, time_embed_dim=8)),
                    tiny.diffusion, {"name": "tiny-sdm", "description": description})


def start(c, steps: int, grid: int = 1, seed: int = 0):
    """/new_trajectory on tiny-sdm: DDIM, ``steps`` steps, ``grid`` images, threshold scale 1.0."""
    return c.predict(checkpoint="tiny-sdm", seed=seed, sampler="ddim", num_steps=steps, threshold_scale=1.0,
                     grid_size=grid, api_name="/new_trajectory", **LAYER_ARGS)


def start_heavy(c, api_name: str = "/step"):
    """A 1000-step trajectory of 16 images, then a request for all of it (``/step`` n_steps=1000, or
    ``/run_to_end``), submitted: returns its Job, to cancel or to let the time budget stop."""
    start(c, steps=1000, grid=16)
    n_steps = {"n_steps": 1000} if api_name == "/step" else {}
    return c.submit(**n_steps, threshold_scale=1.0, api_name=api_name, **LAYER_ARGS)
