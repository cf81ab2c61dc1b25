"""Cross-session batching of denoiser calls (sdm.explorer.batching): what a session gets never depends on whom it
was batched with."""
import threading
import time

import numpy as np

import pytest
import torch

from sdm.energy import EnergyMeter
from sdm.explorer.batching import DenoiserBatcher


def _run(pipe, seed, scale, batcher=None, meter=None, grid=1, steps=6, sampler="ddim", record=False):
    out, frames = None, []
    for out in pipe.steps(seed=seed, num_inference_steps=steps, sampler=sampler, threshold_scale=scale,
                          batch_size=grid, meter=meter, denoiser=batcher.denoiser(pipe) if batcher else None,
                          record=record, max_neurons=8):
        frames.append(out.probes)
    return (out.sample, frames) if record else out.sample


def _together(pipe, batcher, jobs, **kw):
    """Run each (seed, scale, grid) of ``jobs`` in its own thread through ``batcher``, all released at once."""
    results, meters, errors = {}, {}, []
    barrier = threading.Barrier(len(jobs))

    def one(i, seed, scale, grid, *record):       # (a job's own record=, else kw's)
        try:
            meters[i] = EnergyMeter()
            barrier.wait(timeout=30)
            results[i] = _run(pipe, seed, scale, batcher, meters[i], grid=grid, **{**kw, **(
                {"record": record[0]} if record else {})})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    return results, meters


def test_unet_rows_do_not_depend_on_the_batch(tiny_pipe, one_torch_thread):
    # at inference each image's time embedding is its own: rows bitwise equal to a batch-1 call, any timesteps
    from sdm.neurons import RunContext
    m, T = tiny_pipe.model, tiny_pipe.config.T
    xs = [tiny_pipe.initial_noise(s, 1) for s in range(3)]
    ts = [999, 400, 7]
    with torch.no_grad():
        alone = [m.run(x, torch.tensor([t]), RunContext(T=T, batch=1)) for x, t in zip(xs, ts)]
        together = m.run(torch.cat(xs), torch.tensor(ts), RunContext(T=T, batch=3))
    for i in range(3):
        assert torch.equal(alone[i][0], together[i])


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_batched_sessions_get_bitwise_their_solo_images_and_energy(tiny_pipe, one_torch_thread, sampler):
    jobs = [(seed, 1.05, 1) for seed in (3, 4, 5, 6)] + [(9, 1.05, 2)]
    solo = {}
    for i, (seed, scale, grid) in enumerate(jobs):
        meter = EnergyMeter()
        solo[i] = (_run(tiny_pipe, seed, scale, meter=meter, grid=grid, sampler=sampler), meter.report(tiny_pipe.config))
    batcher = DenoiserBatcher(max_rows=8, workers=1)
    for _ in range(2):          # the first round checks the shapes, the second batches the ones found equal
        results, meters = _together(tiny_pipe, batcher, jobs, sampler=sampler)
        for i in range(len(jobs)):
            assert torch.equal(results[i], solo[i][0]), f"job {i}"
            rep = meters[i].report(tiny_pipe.config)
            assert rep.total_sops == solo[i][1].total_sops
            assert rep.energy_mj == solo[i][1].energy_mj
            assert {n: l.spikes for n, l in rep.per_layer.items()} == {
                n: l.spikes for n, l in solo[i][1].per_layer.items()}
    assert batcher.stats["calls"] == 2 * sum(6 for _ in jobs)
    assert batcher.stats["batches"] > 0, batcher.stats          # it did batch, after its checks
    assert batcher.stats["checks"] >= 1
    assert any(batcher.verdicts().values())       # (a shape whose potentials round differently is not batched)


def test_recorded_runs_batch_with_their_own_probes(tiny_pipe, one_torch_thread):
    jobs = [(seed, 0.95, 1) for seed in (21, 22, 23)]
    solo = {i: _run(tiny_pipe, seed, scale, record=True, steps=4) for i, (seed, scale, _) in enumerate(jobs)}
    batcher = DenoiserBatcher(workers=1)
    for _ in range(2):
        results, _ = _together(tiny_pipe, batcher, jobs, steps=4, record=True)
        for i in range(len(jobs)):
            sample, frames = results[i]
            assert torch.equal(sample, solo[i][0])
            for got, want in zip(frames, solo[i][1]):
                assert got.keys() == want.keys() and got
                for name in want:           # each session's own neurons (seeded by its seed), spikes and potentials
                    assert np.array_equal(got[name].neuron_index, want[name].neuron_index)
                    assert np.array_equal(got[name].spikes, want[name].spikes)
                    assert np.array_equal(got[name].v, want[name].v)
                    assert got[name].firing_rate == want[name].firing_rate
    assert batcher.stats["batches"] > 0


@pytest.fixture(scope="module")
def worker_processes(one_torch_thread):
    from sdm.explorer.workers import ProcessWorkers
    pool = ProcessWorkers(1).start()
    deadline = time.monotonic() + 60
    while not pool.usable and time.monotonic() < deadline:      # (until then the batches are computed here)
        time.sleep(0.05)
    assert pool.usable
    yield pool
    pool.close()


@pytest.mark.parametrize("where", ["threads", "processes"])
def test_sessions_at_other_scales_recorded_or_not_share_a_batch_and_get_their_solo_run(tiny_pipe, one_torch_thread,
                                                                                        request, where):
    # one threshold scale per image: the slider's runs at 1.05 and 0.95 and a recorded Run to end at 1.0 batch
    # together, each bitwise as alone (images, probes with their own threshold, energy), computed in this process
    # or in a worker process (sdm.explorer.workers)
    jobs = [(31, 1.05, 1, False), (32, 0.95, 1, False), (33, 1.0, 1, True), (34, 0.95, 1, True)]
    solo = {}
    for i, (seed, scale, grid, record) in enumerate(jobs):
        meter = EnergyMeter()
        solo[i] = (_run(tiny_pipe, seed, scale, meter=meter, record=record, steps=4), meter.report(tiny_pipe.config))
    pool = request.getfixturevalue("worker_processes") if where == "processes" else None
    batcher = DenoiserBatcher(workers=1, processes=pool)
    for _ in range(2):
        results, meters = _together(tiny_pipe, batcher, jobs, steps=4)
        for i, (seed, scale, grid, record) in enumerate(jobs):
            got, want = results[i], solo[i][0]
            if record:
                (got, got_frames), (want, want_frames) = got, want
                for g, w in zip(got_frames, want_frames):
                    assert g.keys() == w.keys() and g
                    for name in w:
                        assert np.array_equal(g[name].spikes, w[name].spikes)
                        assert np.array_equal(g[name].v, w[name].v)
                        assert g[name].threshold == w[name].threshold == pytest.approx(scale)
                        assert g[name].firing_rate == w[name].firing_rate
            assert torch.equal(got, want), f"job {i}"
            rep = meters[i].report(tiny_pipe.config)
            assert (rep.total_sops, rep.energy_mj) == (solo[i][1].total_sops, solo[i][1].energy_mj)
    assert batcher.stats["batches"] > 0 and all(batcher.verdicts().values()), batcher.verdicts()
    assert any(key[-2] for key in batcher.verdicts())          # a batch with thresholds per image was checked
    assert all(key[-1] == (pool is not None) for key in batcher.verdicts())      # (computed where asked)
    if pool is not None:
        assert pool.alive and pool.stats["batches"] > 0 and pool.stats["checks"] > 0


@pytest.mark.parametrize("where", ["threads", "processes"])
def test_prepare_checks_a_class_s_batch_shapes_ahead(tiny_pipe, one_torch_thread, request, where):
    # groups of 2 and 4 one-image calls, one scale and several: checked before any class arrives, so the class's
    # own batches are computed batched at once (no check), bitwise as alone
    processes = request.getfixturevalue("worker_processes") if where == "processes" else None
    batcher = DenoiserBatcher(max_rows=4, workers=1, processes=processes)
    T = tiny_pipe.config.T
    assert batcher.prepare(tiny_pipe, T) == 4
    keys = batcher.verdicts()
    assert sorted((k[3], k[5]) for k in keys) == [(2, False), (2, True), (4, False), (4, True)]
    assert all(k[6] is (where == "processes") for k in keys)      # where they will be computed
    assert batcher.prepare(tiny_pipe, T) == 0 and batcher.stats["checks"] == 4
    jobs = [(seed, 1.05 if seed % 2 else 0.95, 1) for seed in (81, 82, 83, 84)]
    solo = {i: _run(tiny_pipe, seed, scale, steps=3) for i, (seed, scale, _) in enumerate(jobs)}
    results, _ = _together(tiny_pipe, batcher, jobs, steps=3)
    assert all(torch.equal(results[i], solo[i]) for i in range(len(jobs)))
    assert batcher.stats["checks"] == 4 and batcher.stats["batches"] > 0
    if processes is not None:
        assert processes.stats["batches"] > 0


def test_start_prepares_after_the_warming_in_a_thread_of_its_own(tiny_pipe, one_torch_thread):
    warming = threading.Thread(target=time.sleep, args=(0.3,))
    warming.start()
    batcher = DenoiserBatcher(max_rows=2, workers=1)
    # (niceness 0: this test waits for it; at 19 beside the other pytest worker it could starve)
    thread = batcher.start(after=warming, prepare=[(tiny_pipe, tiny_pipe.config.T)], niceness=0)
    assert thread is not None and not batcher.verdicts()         # not before the warming ends
    thread.join(60)
    assert not warming.is_alive() and len(batcher.verdicts()) == 2
    assert batcher.start() is None                                # (no processes, nothing to prepare: no thread)


def test_a_session_s_first_step_goes_through_the_batcher(tiny_pipe, one_torch_thread):
    from sdm.explorer import Session
    alone, through = Session(), Session()
    alone.start(tiny_pipe, "tiny-sdm", seed=5, num_steps=4, threshold_scale=1.05)
    batcher = DenoiserBatcher()
    through.start(tiny_pipe, "tiny-sdm", seed=5, num_steps=4, threshold_scale=1.05, batcher=batcher)
    assert batcher.stats["calls"] == 1
    assert np.array_equal(alone.x, through.x) and np.array_equal(alone.records[0].x0, through.records[0].x0)


def test_a_call_alone_stays_in_the_server_with_worker_processes(tiny_pipe, worker_processes):
    # nothing to batch with: computed here (a round trip to a worker would cost more than it saves), bitwise solo
    want, want_frames = _run(tiny_pipe, 51, 0.95, record=True, steps=3)
    before = dict(worker_processes.stats)
    batcher = DenoiserBatcher(processes=worker_processes)
    got, got_frames = _run(tiny_pipe, 51, 0.95, batcher, record=True, steps=3)
    assert torch.equal(got, want)
    for g, w in zip(got_frames, want_frames):
        assert all(np.array_equal(g[n].v, w[n].v) and np.array_equal(g[n].spikes, w[n].spikes) for n in w)
    assert dict(worker_processes.stats) == before and batcher.stats["calls"] == 3


def test_a_check_through_a_worker_finds_a_batch_that_rounds_differently(tiny_pipe, worker_processes, monkeypatch):
    # the worker's batch is compared with this process's solo calls by digests of every layer's rows: a potential
    # one ulp off here (a stand-in for another kernel) makes the shape unbatchable
    import sdm.explorer.batching as batching
    real = batching.row_digest
    monkeypatch.setattr(batching, "row_digest",
                        lambda s, v, i: real(s, None if v is None else torch.nextafter(v, v + 1), i))
    jobs = [(seed, 1.0, 1) for seed in (61, 62, 63, 64)]
    solo = {i: _run(tiny_pipe, seed, scale, steps=3) for i, (seed, scale, _) in enumerate(jobs)}
    batcher = DenoiserBatcher(workers=1, processes=worker_processes)
    results, _ = _together(tiny_pipe, batcher, jobs, steps=3)
    assert all(torch.equal(results[i], solo[i]) for i in range(len(jobs)))
    assert batcher.stats["checks"] >= 1 and not any(batcher.verdicts().values())


def test_batches_are_computed_in_the_server_until_the_workers_are_ready(tiny_pipe, one_torch_thread):
    from sdm.explorer.workers import ProcessWorkers
    jobs = [(71, 1.05, 1), (72, 0.95, 1), (73, 1.05, 1)]
    solo = {i: _run(tiny_pipe, seed, scale, steps=3) for i, (seed, scale, _) in enumerate(jobs)}
    pool = ProcessWorkers(1)                     # not started: the first batch starts it and does not wait for it
    try:
        batcher = DenoiserBatcher(workers=1, processes=pool)
        results, _ = _together(tiny_pipe, batcher, jobs, steps=3)
        assert all(torch.equal(results[i], solo[i]) for i in range(len(jobs)))
        assert pool._procs and pool.stats["batches"] == 0 and batcher.stats["batches"] + batcher.stats["checks"] > 0
    finally:
        pool.close()


def test_a_lost_worker_process_leaves_the_batches_to_the_server(tiny_pipe, one_torch_thread):
    from sdm.explorer.workers import ProcessWorkers
    jobs = [(41, 1.05, 1), (42, 1.05, 1), (43, 0.95, 1)]
    solo = {i: _run(tiny_pipe, seed, scale, steps=4) for i, (seed, scale, _) in enumerate(jobs)}
    pool = ProcessWorkers(1).start()
    try:
        deadline = time.monotonic() + 60
        while not pool.usable and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.usable
        pool._procs[0][0].kill()
        pool._procs[0][0].join(10)
        batcher = DenoiserBatcher(workers=1, processes=pool)
        for _ in range(2):
            results, _ = _together(tiny_pipe, batcher, jobs, steps=4)
            assert all(torch.equal(results[i], solo[i]) for i in range(len(jobs)))
        assert pool.broken and "ended" in pool.broken and not pool.alive
        assert batcher.stats["batches"] > 0 and pool.stats["batches"] == 0
    finally:
        pool.close()


def test_groups_keep_models_and_row_limits_apart(tiny_pipe, one_torch_thread):
    batcher = DenoiserBatcher(max_rows=3, workers=1)
    seen = []
    real = tiny_pipe.run_denoiser

    def spy(sample, timestep, threshold_scale, *a, **k):
        seen.append((sample.shape[0], threshold_scale))
        return real(sample, timestep, threshold_scale, *a, **k)

    tiny_pipe.run_denoiser = spy
    try:
        jobs = [(1, 1.05, 1), (2, 1.05, 1), (3, 0.95, 1), (4, 1.05, 1), (5, 1.05, 2)]
        _together(tiny_pipe, batcher, jobs, steps=3)
    finally:
        del tiny_pipe.run_denoiser
    assert all(rows <= 3 for rows, _ in seen)
    assert max(rows for rows, _ in seen) > 1
    # a batch of several scales gives each image its own: a float64 scale per row
    mixed = [s for rows, s in seen if torch.is_tensor(s)]
    assert mixed and all(s.dtype == torch.float64 and set(s.tolist()) <= {1.05, 0.95} for s in mixed)


def test_two_models_never_share_a_batch(tiny_pipe, one_torch_thread):
    import sdm
    from conftest import FIXTURES
    other = sdm.load_pipeline("tiny-sdm", FIXTURES)
    with torch.no_grad():
        for p in other.model.parameters():      # another model: a batch of both would give one of them wrong images
            p.mul_(1.5)
    jobs = [(tiny_pipe, seed) for seed in (1, 2, 3)] + [(other, seed) for seed in (1, 2, 3)]
    solo = [_run(pipe, seed, 1.0, steps=3) for pipe, seed in jobs]
    batcher = DenoiserBatcher(workers=1)
    got, barrier = {}, threading.Barrier(len(jobs))

    def student(i, pipe, seed):
        barrier.wait(timeout=30)
        got[i] = _run(pipe, seed, 1.0, batcher, steps=3)

    for _ in range(2):          # the second round batches what the first checked
        threads = [threading.Thread(target=student, args=(i, *job)) for i, job in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert all(torch.equal(got[i], solo[i]) for i in range(len(jobs)))
    assert batcher.stats["batches"] > 0
    assert not torch.equal(solo[0], solo[3])


def test_a_failing_batch_reaches_its_callers_and_the_next_call_works(tiny_pipe, one_torch_thread):
    batcher = DenoiserBatcher()
    bad = tiny_pipe.initial_noise(0, 1)[:, :, :5]         # a wrong image size: the network raises
    with pytest.raises(RuntimeError):
        batcher.denoise(tiny_pipe, bad, 10, 1.0, tiny_pipe.config.T)
    x = tiny_pipe.initial_noise(0, 1)
    assert torch.equal(batcher.denoise(tiny_pipe, x, 10, 1.0, tiny_pipe.config.T)[0],
                       tiny_pipe.run_denoiser(x, 10, 1.0, tiny_pipe.config.T)[0])


def test_a_shape_that_rounds_differently_is_computed_one_by_one(tiny_pipe, one_torch_thread, monkeypatch):
    # stand-in for a convolution whose batch kernel rounds differently: the batched rows are off by one ulp
    real = tiny_pipe.run_denoiser

    def rounding(sample, timestep, *a, **k):
        eps, frames = real(sample, timestep, *a, **k)
        return (eps + 1e-7 if sample.shape[0] > 1 else eps), frames

    monkeypatch.setattr(tiny_pipe, "run_denoiser", rounding)
    jobs = [(seed, 1.0, 1) for seed in (11, 12, 13)]
    solo = {i: _run(tiny_pipe, seed, scale) for i, (seed, scale, _) in enumerate(jobs)}
    batcher = DenoiserBatcher(workers=1)
    results, _ = _together(tiny_pipe, batcher, jobs, steps=6)
    for i in range(len(jobs)):
        assert torch.equal(results[i], solo[i])
    assert batcher.stats["unbatchable"] >= 1 and not any(batcher.verdicts().values())
    assert batcher.stats["batches"] == 0


def test_the_servers_batcher_takes_its_processes_from_the_environment(monkeypatch):
    monkeypatch.setenv("SDM_DENOISER_PROCESSES", "0")
    assert DenoiserBatcher.for_server().processes is None
    monkeypatch.setenv("SDM_DENOISER_PROCESSES", "3")
    assert DenoiserBatcher.for_server().processes.n == 3          # (not started: a batch or start() starts them)
    monkeypatch.setenv("SDM_DENOISER_PROCESSES", "two")
    with pytest.raises(ValueError, match="SDM_DENOISER_PROCESSES must be a whole number"):
        DenoiserBatcher.for_server()


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_rows"):
        DenoiserBatcher(max_rows=0)
    with pytest.raises(ValueError, match="workers"):
        DenoiserBatcher(workers=0)


_EXIT_EARLY = """
import logging, sys, time
logging.basicConfig()
sys.path.insert(0, "tests")
from conftest import import_app, FIXTURES
app = import_app()
from sdm.explorer import ModelRegistry
demo = app.build_demo(app.Explorer(ModelRegistry(FIXTURES)))
time.sleep(float(sys.argv[1]))      # the app exits while its warming runs, or its workers start, or they are up
"""


@pytest.mark.parametrize("after_s", [0.5, 4.0])
def test_a_server_that_exits_while_its_workers_start_exits_cleanly(after_s):
    # (it used to start its workers during its own exit, once the warming was stopped: "a worker process ended
    # before it was ready", and at times a C++ abort)
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = {k: v for k, v in os.environ.items() if k != "SDM_DENOISER_PROCESSES_FROM_TESTS"}
    env["SDM_DENOISER_PROCESSES"] = "1"
    out = subprocess.run([sys.executable, "-c", _EXIT_EARLY, str(after_s)], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "before it was ready" not in out.stderr and "terminate called" not in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
