"""sdm.explorer.results: one bounded, read-only cache of finished results shared by every session, computed once."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from conftest import FIXTURES
from sdm.explorer import ModelRegistry, Session, compare
from sdm.explorer.results import Final, ResultKey, SharedResults, final_difference, final_image_stream

SIG = (("model.safetensors", 100, 1), ("config.json", 10, 1), ("card.json", 10, 1))


def key(seed=0, signature=SIG, scale=1.0, kind="final") -> ResultKey:
    return ResultKey.of(kind, "tiny-sdm", signature, seed=seed, sampler="ddim", num_steps=4, time_steps=4,
                        threshold_scale=scale, grid=1)


def drain(gen):
    """Run a generator to its end; returns (its ticks, its return value)."""
    ticks = []
    while True:
        try:
            ticks.append(next(gen))
        except StopIteration as stop:
            return ticks, stop.value


def counting(steps=3, delay=0.0, value=None, started=None):
    """A compute factory that counts its calls; each run yields ``steps`` ticks and returns a 1 kB array."""
    calls = []

    def compute():
        calls.append(1)
        if started is not None:
            started.set()
        for i in range(steps):
            time.sleep(delay)
            yield (i + 1) / steps
        return np.zeros(256, np.float32) if value is None else value

    return compute, calls


def test_eight_threads_asking_for_one_key_compute_it_once():
    results = SharedResults(max_bytes=10_000)
    compute, calls = counting(steps=5, delay=0.05)
    got, ticks = [None] * 8, [None] * 8
    go = threading.Barrier(8)

    def ask(i):
        go.wait()
        ticks[i], got[i] = drain(results.get_or_compute(key(), compute))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1
    assert all(g is got[0] for g in got)                       # one stored value, the same object for all
    s = results.stats()
    assert s["computes"] == 1 and s["entries"] == 1 and s["bytes"] == 1024
    assert s["joins"] + s["hits"] == 7
    streamed = [t for t in ticks if t]                         # the one computing and those that waited on it ...
    assert len(streamed) == 8 - s["hits"] >= 2
    assert all(t[-1] == pytest.approx(1.0) for t in streamed)  # ... saw its progress to the end
    _, again = drain(results.get_or_compute(key(), compute))
    assert again is got[0] and len(calls) == 1 and results.stats()["hits"] >= 1


def test_least_recently_used_entries_go_first_when_the_bytes_exceed_the_cap():
    results = SharedResults(max_bytes=3000)
    for seed in range(3):
        results.put(key(seed), np.zeros(250, np.float32))     # 1000 bytes each
    assert results.nbytes() == 3000 and len(results) == 3
    results.get(key(0))                                        # 0 is now the most recent: 1 is the oldest
    results.put(key(3), np.zeros(250, np.float32))
    assert key(1) not in results and key(0) in results and key(2) in results and key(3) in results
    assert results.nbytes() == 3000 and results.stats()["evictions"] == 1
    results.put(key(4), np.zeros(2000, np.float32), nbytes=8000)   # larger than the cap: returned, not kept
    assert key(4) not in results and results.nbytes() == 3000
    assert results.trim(1000) == 2000 and len(results) == 1 and key(3) in results


def test_another_file_signature_or_scale_is_another_entry():
    results = SharedResults(max_bytes=10_000)
    results.put(key(), np.ones(4, np.float32))
    newer = tuple((f, size, mtime + 1) for f, size, mtime in SIG)
    assert results.get(key(signature=newer)) is None
    assert results.get(key(scale=1.05)) is None and results.get(key(kind="trajectory")) is None
    assert results.get(key(scale=1.0000000001)) is not None    # the same slider value, rounded
    assert key(signature=[list(s) for s in SIG]) == key()      # lists from JSON are the same key


def test_stored_arrays_are_read_only():
    results = SharedResults(max_bytes=10_000)
    x = np.zeros((1, 1, 4, 4), np.float32)
    stored = results.put(key(), Final(x, {"sops": 1.0, "energy_mj": 2.0, "ann_mj": 3.0}))
    got = results.get(key())
    assert got is stored
    with pytest.raises(ValueError):
        got.image[0, 0, 0, 0] = 1.0
    with pytest.raises(TypeError):
        got.energy["sops"] = 0.0
    image, energy = got
    assert dict(energy) == {"sops": 1.0, "energy_mj": 2.0, "ann_mj": 3.0} and image.shape == (1, 1, 4, 4)
    pair = results.put(key(1), (np.zeros(3), np.ones(3)))
    assert not pair[0].flags.writeable and not pair[1].flags.writeable


def test_a_cancelled_computation_lets_a_waiter_take_over():
    results = SharedResults(max_bytes=10_000)
    started = threading.Event()
    compute, calls = counting(steps=20, delay=0.02, started=started)
    first = results.get_or_compute(key(), compute)
    next(first)                                                # the first request computes ...
    waited = {}

    def waiter():
        waited["ticks"], waited["value"] = drain(results.get_or_compute(key(), compute))

    t = threading.Thread(target=waiter)
    t.start()
    deadline = time.time() + 20
    while results.waiting(key()) == 0 and time.time() < deadline:
        time.sleep(0.01)
    assert results.waiting(key()) == 1
    next(first)
    first.close()                                              # ... and is cancelled
    t.join(10)
    assert not t.is_alive(), "the waiter hangs on a cancelled computation"
    assert len(calls) == 2 and waited["value"] is results.get(key())
    assert results.stats()["takeovers"] == 1 and results.stats()["in_flight"] == 0


def test_a_failed_computation_lets_a_waiter_take_over():
    results = SharedResults(max_bytes=10_000)
    release = threading.Event()
    calls = []

    def compute():
        calls.append(1)
        if len(calls) == 1:
            yield 0.5
            release.wait(5)
            raise RuntimeError("the first one fails")
        yield 1.0
        return np.ones(2, np.float32)

    first = results.get_or_compute(key(), compute)
    next(first)
    out = {}
    t = threading.Thread(target=lambda: out.update(r=drain(results.get_or_compute(key(), compute))[1]))
    t.start()
    deadline = time.time() + 20
    while results.waiting(key()) == 0 and time.time() < deadline:
        time.sleep(0.01)
    release.set()
    with pytest.raises(RuntimeError, match="first one fails"):
        drain(first)
    t.join(10)
    assert not t.is_alive() and len(calls) == 2
    np.testing.assert_array_equal(out["r"], np.ones(2, np.float32))


def test_warm_fills_entries_in_the_background_and_stop_ends_it_between_steps():
    results = SharedResults(max_bytes=100_000)
    compute, calls = counting(steps=2)
    w = results.warm([key(s) for s in range(3)], lambda k: compute())
    w.join(30)
    assert w.daemon and not w.is_alive() and w.done == [key(s) for s in range(3)]
    assert all(key(s) in results for s in range(3)) and len(calls) == 3

    steps_run, closed = [], threading.Event()

    def slow(k):
        try:
            for i in range(1000):
                time.sleep(0.01)
                steps_run.append(i)
                yield i / 1000
        except GeneratorExit:
            closed.set()
            raise
        return np.zeros(1)

    w = results.warm([key(10), key(11)], slow)
    deadline = time.time() + 20
    while len(steps_run) < 5 and time.time() < deadline:
        time.sleep(0.01)
    if hasattr(os, "getpriority"):                              # the default: the lowest priority, this thread only
        assert os.getpriority(os.PRIO_PROCESS, w.native_id_seen) == 19
        assert os.getpriority(os.PRIO_PROCESS, 0) == os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t0 = time.perf_counter()
    results.stop()
    assert not w.is_alive() and time.perf_counter() - t0 < 5.0   # (a nice-19 thread on a busy machine)
    assert closed.is_set() and len(steps_run) < 1000           # it stopped between steps, before the end
    assert key(10) not in results and key(11) not in results and results.stats()["in_flight"] == 0


def test_warm_pauses_while_asked_unless_someone_waits_for_its_result():
    results = SharedResults(max_bytes=100_000)
    busy = threading.Event()
    busy.set()
    compute, calls = counting(steps=3, delay=0.01)
    w = results.warm([key()], lambda k: compute(), pause_while=busy.is_set)
    time.sleep(0.3)
    assert key() not in results and len(calls) == 0            # paused before its first step
    busy.clear()
    w.join(30)
    assert key() in results


def test_a_warming_hands_its_half_done_computation_to_the_request_that_waits_for_it():
    """A request that waits on a result the (nice 19) warming is computing takes the computation over between two
    steps and finishes it in its own thread, from where the warming was: nothing is computed twice, and the request
    no longer waits behind a thread that gets the CPU last (30 students waited 30 s on it beside a busy process)."""
    results = SharedResults(max_bytes=100_000)
    threads, calls = [], []                              # the threads of key(1)'s steps

    def compute(k):
        calls.append(1)
        for i in range(40):
            if k == key(1):
                threads.append(threading.get_native_id())
            time.sleep(0.01)
            yield (i + 1) / 40
        return np.ones(8, np.float32)

    w = results.warm([key(1), key(2)], compute)
    deadline = time.time() + 20
    while len(threads) < 5 and time.time() < deadline:
        time.sleep(0.005)
    ticks, value = drain(results.get_or_compute(key(1), lambda: compute(key(1))))
    me = threading.get_native_id()
    w.join(30)
    np.testing.assert_array_equal(value, np.ones(8, np.float32))
    assert not w.is_alive() and w.handed == [key(1)] and w.done == [key(2)]
    assert key(1) in results and key(2) in results
    assert len(threads) == 40                            # key(1)'s 40 steps: begun by the warming, ended here
    assert threads[0] == w.native_id_seen and threads[-1] == me and len(ticks) < 40
    assert threads == sorted(threads, key=lambda t: t == me)  # one handover: the warming's steps, then this thread's
    s = results.stats()
    assert s["handovers"] == 1 and len(calls) == 2 and s["computes"] == 3   # key(1) started once, taken over once


def test_final_difference_on_known_arrays():
    a = np.full((1, 1, 2, 2), -1.0, np.float32)                # black
    b = np.ones((1, 1, 2, 2), np.float32)                      # white
    assert final_difference(a, b) == pytest.approx(1.0)
    assert final_difference(a, a) == 0.0
    c = np.array([[[[-1.0, 0.0], [1.0, 3.0]]]], np.float32)    # 3.0 clips to white
    assert final_difference(c, b) == pytest.approx((1.0 + 0.5 + 0.0 + 0.0) / 4)
    with pytest.raises(ValueError, match="one shape"):
        final_difference(a, b[:, :, :1])


@pytest.fixture(scope="module")
def reg():
    return ModelRegistry(FIXTURES)


def test_the_stream_ends_with_a_solo_runs_image_bitwise_and_yields_after_the_first_step(reg):
    pipe = reg.get("tiny-sdm")
    ticks, final = drain(final_image_stream(pipe, 3, "ddim", 5, 4, 4, 0.95))
    solo = list(pipe.steps(seed=3, num_inference_steps=5, sampler="ddim", threshold_scale=0.95, batch_size=4,
                           time_steps=4))
    assert final.image.dtype == np.float32 and final.image.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(final.image, solo[-1].sample.numpy())
    assert [f for f, _ in ticks] == pytest.approx([(i + 1) / 5 for i in range(5)])
    np.testing.assert_array_equal(ticks[0][1], solo[0].pred_original_sample.numpy())   # x̂0 of step 1
    # the same image and energy as the comparisons' final_image of a session with these settings
    sess = Session()
    sess.start(pipe, "tiny-sdm", seed=3, num_steps=5, grid=4, time_steps=4)
    x, energy = compare.final_image(sess, 0.95)
    np.testing.assert_array_equal(final.image, x)
    assert dict(final.energy) == energy


def test_the_stream_runs_an_ann_with_no_time_steps(reg):
    pipe = reg.get("tiny-ann")
    ticks, final = drain(final_image_stream(pipe, 0, "ddpm", 3, 1, None, 1.0))
    solo = list(pipe.steps(seed=0, num_inference_steps=3, sampler="ddpm"))
    np.testing.assert_array_equal(final.image, solo[-1].sample.numpy())
    assert len(ticks) == 3


def test_a_shared_stream_serves_two_sessions_one_read_only_image(reg):
    pipe = reg.get("tiny-sdm")
    results = SharedResults(max_bytes=2 ** 20)
    k = ResultKey.of("final", "tiny-sdm", SIG, seed=1, sampler="ddim", num_steps=4, time_steps=4,
                     threshold_scale=1.05, grid=1)
    runs = []

    def compute():
        runs.append(1)
        return final_image_stream(pipe, 1, "ddim", 4, 1, 4, 1.05)

    _, a = drain(results.get_or_compute(k, compute))
    ticks, b = drain(results.get_or_compute(k, compute))
    assert a is b and ticks == [] and len(runs) == 1 and not b.image.flags.writeable
    solo = list(pipe.steps(seed=1, num_inference_steps=4, threshold_scale=1.05, time_steps=4))[-1].sample.numpy()
    np.testing.assert_array_equal(b.image, solo)
    assert results.nbytes() == b.nbytes
