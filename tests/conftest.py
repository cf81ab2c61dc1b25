import os
from pathlib import Path

import pytest
import torch

from harness import FIXTURES, serve_demo

# Under pytest-xdist (`-n 2`, the README's command) each worker computes with one torch thread: two workers of two
# threads each on the 2 cores we test on fought for them (a test of 1000 denoiser calls took 4x its solo time).
# Processes the tests launch (python app.py, python -m sdm.train) choose their own threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# The explorers the tests build in this process compute their batches in its own threads: each would otherwise spawn
# two denoiser worker processes (torch imported in each, some 300 MB) once its start-up warming ends. The tests of
# the workers build their own ``ProcessWorkers``; an app the tests launch gets the server's default
# (``harness.launch_app`` does not pass this on).
if "SDM_DENOISER_PROCESSES" not in os.environ:
    os.environ["SDM_DENOISER_PROCESSES"] = "0"
    os.environ["SDM_DENOISER_PROCESSES_FROM_TESTS"] = "1"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_pipe():
    import sdm
    return sdm.load_pipeline("tiny-sdm", FIXTURES)


@pytest.fixture(scope="module")
def one_torch_thread():
    """As app.main() does: one intra-op thread per request (on a busy 2-core machine, two threads fight)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def import_app():
    """Import app.py with its module-level ``demo`` built on the tiny fixtures, never on the shipped checkpoints."""
    saved = os.environ.get("SDM_CHECKPOINTS")
    os.environ["SDM_CHECKPOINTS"] = str(FIXTURES)
    try:
        import app
    finally:
        if saved is None:
            os.environ.pop("SDM_CHECKPOINTS", None)
        else:
            os.environ["SDM_CHECKPOINTS"] = saved
    return app


@pytest.fixture(scope="session")
def served():
    """The app on the fixtures, launched in this process, with one torch thread per request as app.main() sets
    (two threads per request on two cores thrash under concurrent requests); yields its URL."""
    app = import_app()
    from sdm.explorer import ModelRegistry

    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    demo = app.build_demo(app.Explorer(ModelRegistry(FIXTURES)))
    try:
        with serve_demo(demo, **app.launch_kwargs()) as url:
            yield url
    finally:
        torch.set_num_threads(threads)
