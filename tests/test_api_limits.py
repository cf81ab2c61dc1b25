"""Fair sharing on a public Space (2 CPU cores): a cancelled request stops computing, heavy users leave room for a
light one, a closed tab's memory goes back to the system, uploads are refused. All through the launched app."""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import FIXTURES, import_app
from harness import LAYER_ARGS, launch_app, start, start_heavy, write_tiny_checkpoint
from sdm.explorer import ModelRegistry

app = import_app()
pytestmark = pytest.mark.serial      # latency and CPU time of a server: nothing else may run meanwhile
RUN_BUDGET_S = 7.0


def info(result, keys=app.VIEW_KEYS) -> dict:
    return result[keys.index("info") - 1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python app.py`` in its own process, as a Space runs it, serving tiny-sdm at 2 base channels (the same 19
    recorded layers, about 70 ms a step for 16 images), with a 7 s budget per heavy request. No lesson preset is
    computed ahead (SDM_WARM_PRESETS=0) and no finished result is kept for other sessions (SDM_RESULTS_MB=0): these
    tests measure what requests compute and what sessions hold, and the warming (a background job that pauses while
    requests run) and the shared cache (bounded on its own) would be counted as theirs. tests/test_explorer_results.py
    and tests/test_explorer_sharing.py test those two."""
    root = tmp_path_factory.mktemp("ckpts")
    write_tiny_checkpoint(root, "random weights, for the limits tests")
    with launch_app(root, SDM_RUN_BUDGET_S=str(RUN_BUDGET_S), SDM_WARM_PRESETS="0",
                    SDM_RESULTS_MB="0") as srv:
        yield srv


def test_a_cancelled_request_stops_computing(server):
    c = server.client()
    job = start_heavy(c)
    time.sleep(2.0)
    assert server.cpu_seconds_in(1.0) > 0.5, "the step was not computing"
    job.cancel()
    time.sleep(1.0)                                  # the step in flight finishes
    spent = server.cpu_seconds_in(2.0)
    assert spent < 0.4, f"{spent:.2f} CPU s in 2 s after the cancel: the request kept computing"
    # the session is usable, at the step where the cancel stopped it
    r = c.predict(n_steps=1, threshold_scale=1.0, api_name="/step", **LAYER_ARGS)
    assert 2 < info(r)["steps_done"] < 1000
    c.close()


def test_a_light_request_is_answered_within_2_s_while_two_heavy_ones_run(server):
    heavy = [server.client() for _ in range(2)]
    jobs = [start_heavy(h, "/run_to_end") for h in heavy]
    time.sleep(1.5)
    light = server.client()
    waits = []
    for i in range(4):
        t0 = time.perf_counter()
        if i == 0:
            start(light, steps=20)
        else:
            light.predict(n_steps=1, threshold_scale=1.0, api_name="/step", **LAYER_ARGS)
        waits.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        light.predict(threshold_scale=1.03 + i / 100, api_name="/set_threshold", **LAYER_ARGS)
        waits.append(time.perf_counter() - t0)
        if not all(not j.done() for j in jobs):
            break
    print(f"\nlight requests under two heavy runs: max {max(waits):.2f} s, {[round(w, 2) for w in waits]}")
    assert len(waits) >= 4, f"the heavy runs ended after {len(waits)} light requests"
    assert max(waits) < 2.0, waits
    for j in jobs:
        j.cancel()
    for c in heavy + [light]:
        c.close()


def test_a_heavy_request_is_bounded_and_says_so(server):
    c = server.client()
    start(c, steps=1000, grid=16)
    t0 = time.perf_counter()
    r = c.predict(threshold_scale=1.0, api_name="/run_to_end", **LAYER_ARGS)
    took = time.perf_counter() - t0
    assert not info(r)["done"] and info(r)["steps_done"] > 2
    assert took < RUN_BUDGET_S + 10
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="longer than one request may compute"):
        c.predict(threshold_scale=1.05, api_name="/compare_scales")
    c.close()


def test_closed_tabs_free_their_memory(server):
    """30 tabs each record 12 steps of 16 images, then close; the server's RSS comes back to within 50 MB of where it
    was before them."""
    def session(seed):
        c = server.client()
        start(c, steps=12, grid=16, seed=seed)
        c.predict(threshold_scale=1.0, api_name="/run_to_end", **LAYER_ARGS)
        return c

    session(99).close()                                 # warm: the allocator, gradio's and torch's caches
    time.sleep(3)
    base = server.rss_mb()
    with ThreadPoolExecutor(4) as pool:                 # four tabs at a time: both cores busy
        held = list(pool.map(session, range(30)))
    peak = server.rss_mb()
    with ThreadPoolExecutor(8) as pool:                 # closing a client ends its heartbeat: about 1 s each
        list(pool.map(lambda c: c.close(), held))
    del held
    after = base + 1e9
    deadline = time.time() + 30
    while after - base >= min(50, (peak - base) / 3) and time.time() < deadline:
        time.sleep(1)
        after = server.rss_mb()
    print(f"\n30 sessions of 12 steps x 16 images: server RSS {base:.0f} -> {peak:.0f} -> {after:.0f} MB after closing "
          "them")
    assert peak - base > 30, "the sessions did not hold memory: the test measures nothing"
    assert after - base < 50, (base, peak, after)
    assert after - base < (peak - base) / 3, ("most of what the sessions held was not freed", base, peak, after)


def test_uploads_are_refused(server):
    r = httpx.post(server.url + "gradio_api/upload", files={"files": ("big.bin", os.urandom(64 * 1024))}, timeout=30)
    assert r.status_code >= 400, r.text[:200]


def test_queue_and_groups_are_bounded():
    demo = app.build_demo(app.Explorer(ModelRegistry(FIXTURES)))
    assert demo._queue.max_size == app.QUEUE_MAX_SIZE
    limits = {fn.concurrency_id: fn.concurrency_limit for fn in demo.fns.values() if fn.concurrency_id}
    assert limits["interactive"] == app.INTERACTIVE_LIMIT and limits["heavy"] == app.HEAVY_LIMIT
    assert any(any(t[1] == "unload" for t in fn.targets) for fn in demo.fns.values())
    # a full queue says so in words a user acts on
    import asyncio
    from types import SimpleNamespace

    demo._queue.max_size = 0
    ok, msg, status = asyncio.run(demo._queue.push(body=SimpleNamespace(fn_index=0), request=None, username=None))
    assert not ok and status == "queue_full" and msg.startswith("The server is busy") and "try again" in msg


def test_concurrent_cancels_leave_no_threads_computing(server):
    clients = [server.client() for _ in range(4)]
    jobs = [start_heavy(c) for c in clients]
    time.sleep(2.0)
    for j in jobs:
        j.cancel()
    time.sleep(1.5)
    spent = server.cpu_seconds_in(2.0)
    names = sorted(t.name for t in threading.enumerate())
    assert spent < 0.5, f"{spent:.2f} CPU s in 2 s after 4 cancels; threads: {names}"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda c: c.close(), clients))
